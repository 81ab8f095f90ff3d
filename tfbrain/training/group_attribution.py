"""Group attribution maps and atlas parcel tables.

A group map is the voxel-wise mean of several runs' maps, so it exists only when the runs
share one grid: the same original shape and affine in `dataset.json` (e.g. fMRIPrep's
MNI152 outputs, all resampled to one template grid). Runs in native space are refused with
the first pair that differs; registering them to a template is the user's step, before
`tfbrain prepare`.

A parcel table summarises a map per label of an integer atlas NIfTI: the voxels of each
label inside the attributed brain, their mean |attribution| and their mean signed
attribution. The atlas is read on the map's grid as is when both grids are the same (shape
and affine), otherwise each map voxel takes the label of the nearest atlas voxel through
the two affines (world millimetres), never interpolated.

Letters: X/Y/Z the original (map) grid's axes.
"""

import csv
import io
import os

import numpy as np

# affines within this many millimetres are one grid (float32 round trips of a NIfTI header)
AFFINE_TOLERANCE_MM = 1e-3
# an atlas whose box leaves more than this share of the brain outside is another space
MAX_BRAIN_OUTSIDE_ATLAS = 0.2


def check_common_grid(dataset_dir: str, run_infos: list[dict]) -> tuple[tuple, np.ndarray]:
    """The (shape, affine) the runs share, or a ValueError naming two runs that differ."""
    first = run_infos[0]
    shape = tuple(first["original_shape"][:3])
    affine = np.asarray(first["original_affine"], np.float64)
    for info in run_infos[1:]:
        other_shape = tuple(info["original_shape"][:3])
        other_affine = np.asarray(info["original_affine"], np.float64)
        if other_shape != shape:
            reason = f"grid shapes {shape} and {other_shape}"
        elif not np.allclose(other_affine, affine, atol=AFFINE_TOLERANCE_MM):
            reason = (f"affines that differ by up to "
                      f"{np.abs(other_affine - affine).max():.3g} mm")
        else:
            continue
        raise ValueError(f"{dataset_dir}: runs {first['key']!r} and {info['key']!r} are not in "
                         f"one grid ({reason}, from dataset.json); a group map averages voxel "
                         "by voxel, so its runs must share a space (e.g. fMRIPrep's MNI outputs)")
    return shape, affine


def load_atlas(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An integer label atlas `(X, Y, Z)` and its affine; one-line errors for anything else."""
    import nibabel as nib

    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for a non-NIfTI
        raise ValueError(f"--atlas {path}: not a readable NIfTI ({error})") from None
    data = np.asarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"--atlas {path}: must be a 3D label image; got shape {data.shape}")
    if not np.all(np.isfinite(data)) or not np.allclose(data, np.round(data)):
        raise ValueError(f"--atlas {path}: must hold integer labels (a probabilistic atlas "
                         "needs thresholding into labels first)")
    return np.round(data).astype(np.int64), np.asarray(image.affine, np.float64)


def load_atlas_names(path: str) -> dict[int, str]:
    """Label names from a TSV: a header with an `index` (or `label`, `id`) column and a
    `name` column (BIDS `dseg.tsv`), or two headerless columns `label<TAB>name`."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f, delimiter="\t") if row and any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"--atlas-labels {path}: empty")
    header = [c.strip().lower() for c in rows[0]]
    index_column = next((header.index(c) for c in ("index", "label", "id") if c in header), None)
    name_column = next((header.index(c) for c in ("name", "label_name", "region")
                        if c in header), None)
    if index_column is not None and name_column is not None:
        body = rows[1:]
    elif len(rows[0]) >= 2 and rows[0][0].strip().lstrip("-").isdigit():
        index_column, name_column, body = 0, 1, rows
    else:
        raise ValueError(f"--atlas-labels {path}: needs columns 'index' and 'name' (a BIDS "
                         f"dseg.tsv) or two headerless columns label<TAB>name; header: {rows[0]}")
    names = {}
    for line, row in enumerate(body, start=2 if body is not rows else 1):
        try:
            names[int(row[index_column])] = row[name_column].strip()
        except (ValueError, IndexError):
            raise ValueError(f"--atlas-labels {path}: line {line} has no integer label and "
                             f"name: {row}") from None
    return names


def atlas_on_map_grid(atlas: np.ndarray, atlas_affine: np.ndarray, shape: tuple,
                      affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels `(X, Y, Z)` on the map's grid, which map voxels fall inside the atlas box,
    how the atlas was read: 'same grid' or 'nearest neighbour through the affines')."""
    if tuple(atlas.shape) == tuple(shape) and np.allclose(atlas_affine, affine,
                                                          atol=AFFINE_TOLERANCE_MM):
        return atlas, np.ones(shape, bool), "same grid"
    voxels = np.indices(shape).reshape(3, -1).astype(np.float64)  # (3, V) map voxels
    world = affine[:3, :3] @ voxels + affine[:3, 3:4]  # (3, V) mm
    inverse = np.linalg.inv(atlas_affine)
    nearest = np.rint(inverse[:3, :3] @ world + inverse[:3, 3:4]).astype(np.int64)  # (3, V)
    inside = np.all((nearest >= 0) & (nearest < np.array(atlas.shape)[:, None]), axis=0)
    labels = np.zeros(nearest.shape[1], np.int64)
    labels[inside] = atlas[tuple(nearest[:, inside])]
    return labels.reshape(shape), inside.reshape(shape), "nearest neighbour through the affines"


def check_atlas(atlas_path: str, names_path: str | None, shape: tuple,
                affine: np.ndarray) -> None:
    """Fail early (before any gradient) on an unreadable atlas or names file, or an atlas
    whose field of view misses the map's grid entirely."""
    atlas, atlas_affine = load_atlas(atlas_path)
    if names_path:
        load_atlas_names(names_path)
    _, inside, _ = atlas_on_map_grid(atlas, atlas_affine, shape, affine)
    if not inside.any():
        raise ValueError(f"--atlas {atlas_path}: none of the map's voxels fall inside the "
                         "atlas's field of view; the atlas is not in the runs' space")


def parcel_table(attribution: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                 atlas_path: str, names_path: str | None = None) -> tuple[list[dict], str]:
    """Rows (label, name, voxels, mean |attribution|, mean signed attribution) for every
    non-zero atlas label, over the label's voxels inside `brain`, most attributed first;
    and how the atlas was sampled. `attribution` and `brain` are `(X, Y, Z)` on the map grid."""
    atlas, atlas_affine = load_atlas(atlas_path)
    names = load_atlas_names(names_path) if names_path else {}
    labels, inside, sampling = atlas_on_map_grid(atlas, atlas_affine, attribution.shape, affine)
    brain_voxels = int(brain.sum())
    outside = float((brain & ~inside).sum()) / max(brain_voxels, 1)
    if outside > MAX_BRAIN_OUTSIDE_ATLAS:
        raise ValueError(f"--atlas {atlas_path}: {outside:.0%} of the map's brain voxels fall "
                         "outside the atlas's field of view; the atlas is not in the runs' space")
    labelled = brain & (labels != 0)
    if not labelled.any():
        raise ValueError(f"--atlas {atlas_path}: no brain voxel of the map falls on an atlas "
                         f"label ({sampling}); the atlas is not in the runs' space")
    rows = []
    for label in np.unique(atlas[atlas != 0]):
        voxels = labelled & (labels == label)
        count = int(voxels.sum())
        values = attribution[voxels]
        rows.append({"label": int(label), "name": names.get(int(label), ""), "voxels": count,
                     "mean_abs_attribution": float(np.abs(values).mean()) if count else None,
                     "mean_attribution": float(values.mean()) if count else None})
    rows.sort(key=lambda r: (r["mean_abs_attribution"] is None,
                             -(r["mean_abs_attribution"] or 0.0), r["label"]))
    return rows, sampling


def write_parcel_table(path: str, rows: list[dict]) -> str:
    """The table as CSV (an empty cell where a label has no brain voxel), written atomically."""
    from tfbrain.atomic import atomic_write_text

    text = io.StringIO()
    writer = csv.writer(text)
    columns = ["label", "name", "voxels", "mean_abs_attribution", "mean_attribution"]
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float)
                                                    else row[c]) for c in columns])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text.getvalue())
    return path
