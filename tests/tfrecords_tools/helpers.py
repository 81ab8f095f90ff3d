"""Small synthetic 4D NIfTI runs for the tfrecords_tools tests."""

import os

import nibabel as nib
import numpy as np

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -20], [0, 0, 2.5, -5], [0, 0, 0, 1]])


def synthetic_run(path: str, shape=(10, 12, 8), num_frames: int = 24, seed: int = 0,
                  dtype=np.float32, tr: float = 2.0) -> np.ndarray:
    """A brain-like block of noise on a zero background; returns the data written."""
    rng = np.random.default_rng(seed)
    data = np.zeros(tuple(shape) + (num_frames,), np.float32)
    data[2:-2, 3:-2, 2:-2] = rng.normal(500, 40, data[2:-2, 3:-2, 2:-2].shape)
    data = data.astype(dtype)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_zooms((2.0, 2.0, 2.5, tr))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return data


def synthetic_runs(folder: str, num_subjects: int = 4, **kwargs) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(num_subjects):
        path = os.path.join(folder, f"sub-{i:02d}.nii.gz")
        synthetic_run(path, seed=i, **kwargs)
        paths.append(path)
    return paths


def reference_preprocess(data: np.ndarray, offsets, target_shape, dtype=np.float16) -> np.ndarray:
    """NumPy statement of the SwiFT rule for a zero-background run: (T, D, H, W)."""
    data = data.astype(np.float64)
    mask = np.any(data != 0, axis=3)
    brain = data[mask]
    z = (data - brain.mean()) / brain.std()
    background = z[mask].min()
    z[~mask] = background
    out = np.full((data.shape[3],) + tuple(target_shape), background)
    for t in range(data.shape[3]):
        src, dst = [], []
        for n, size, o in zip(data.shape[:3], target_shape, offsets):
            lo, hi = max(0, -o), min(n, size - o)
            src.append(slice(lo, hi))
            dst.append(slice(lo + o, hi + o))
        out[(t,) + tuple(dst)] = z[tuple(src) + (t,)]
    return out.astype(dtype)


# --- a small fMRIPrep derivatives tree built from the bundled studyforrest run ---

MNI = "MNI152NLin2009cAsym"
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def sample_excerpt(num_frames: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(data (16, 16, 8, T) float32, affine) cut from the bundled real run (LAS, 3 mm)."""
    from tfbrain import sample_data

    img = nib.load(sample_data.studyforrest_localizer()["bold"])
    data = np.asarray(img.dataobj[12:28, 12:28, 5:13, :num_frames], np.float32)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([12.0, 12.0, 5.0]) + img.affine[:3, 3]  # the crop's corner
    return data, affine


def confounds_rows(num_frames: int, seed: int = 0, high_motion=(), drop=()) -> list[dict]:
    """fMRIPrep-like confounds: motion (+ derivatives, squares), WM/CSF, global, two cosines,
    FD (n/a in the first row, as fMRIPrep writes it); frames in `high_motion` get FD 0.9 mm.
    Columns in `drop` are left out."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames)
    columns = {}
    for name in MOTION:
        base = np.cumsum(rng.normal(0, 0.02, num_frames))
        derivative = np.diff(base, prepend=np.nan)
        columns[name] = base
        columns[f"{name}_derivative1"] = derivative
        columns[f"{name}_power2"] = base ** 2
        columns[f"{name}_derivative1_power2"] = derivative ** 2
    columns["white_matter"] = rng.normal(0, 1, num_frames)
    columns["csf"] = np.sin(t / 3.0) + rng.normal(0, 0.1, num_frames)
    columns["global_signal"] = rng.normal(0, 1, num_frames)
    for k in range(2):
        columns[f"cosine{k:02d}"] = np.sqrt(2.0 / num_frames) * np.cos(np.pi * (t + 0.5) * (k + 1) / num_frames)
    fd = np.abs(rng.normal(0.1, 0.03, num_frames))
    fd[list(high_motion)] = 0.9
    fd[0] = np.nan
    columns["framewise_displacement"] = fd
    names = [n for n in columns if n not in drop]
    return [{n: ("n/a" if np.isnan(columns[n][i]) else repr(float(columns[n][i]))) for n in names}
            for i in range(num_frames)]


def write_tsv(path: str, rows: list[dict]) -> None:
    import gzip

    text = "\t".join(rows[0]) + "\n" + "".join("\t".join(r.values()) + "\n" for r in rows)
    with (gzip.open(path, "wt") if path.endswith(".gz") else open(path, "w")) as f:
        f.write(text)


def fmriprep_tree(root: str, num_frames: int = 40) -> dict:
    """An fMRIPrep-style tree from the bundled run; returns {run key: bold path}.

        participants.tsv.gz                       participant_id, age
        sub-01/func/  task-rest (MNI, T1w), task-motor (MNI); confounds .tsv
        sub-02/ses-1/func/  task-rest run-1, run-2 (MNI); confounds .tsv.gz
        sub-02/ses-2/func/  task-rest run-1 (MNI)
        sub-03/func/  task-rest (MNI)

    Each run is the excerpt plus a little subject-specific noise; the MNI runs have a brain
    mask and their confounds file; sub-01's rest run has two high-motion frames (12, 25).
    """
    data, affine = sample_excerpt(num_frames)
    write_tsv(os.path.join(root, "participants.tsv.gz"),
              [{"participant_id": "sub-01", "age": "30"}, {"participant_id": "sub-02", "age": "41"},
               {"participant_id": "sub-03", "age": "25"}])
    mask = (data.mean(axis=3) > 0.2 * np.percentile(data.mean(axis=3), 98)).astype(np.uint8)
    runs = [("01", None, "rest", None, MNI), ("01", None, "rest", None, "T1w"), ("01", None, "motor", None, MNI),
            ("02", "1", "rest", "1", MNI), ("02", "1", "rest", "2", MNI), ("02", "2", "rest", "1", MNI),
            ("03", None, "rest", None, MNI)]
    paths = {}
    for i, (sub, ses, task, run, space) in enumerate(runs):
        folder = os.path.join(root, f"sub-{sub}", *([f"ses-{ses}"] if ses else []), "func")
        os.makedirs(folder, exist_ok=True)
        raw = "_".join([f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + [f"task-{task}"]
                       + ([f"run-{run}"] if run else []))
        noisy = data + np.random.default_rng(i).normal(0, 5, data.shape).astype(np.float32)
        bold = os.path.join(folder, f"{raw}_space-{space}_desc-preproc_bold.nii.gz")
        img = nib.Nifti1Image(noisy, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms(img.header.get_zooms()[:3] + (2.0,))
        nib.save(img, bold)
        paths[f"{raw}_space-{space}"] = bold
        if space == MNI:
            nib.save(nib.Nifti1Image(mask, affine), os.path.join(folder, f"{raw}_space-{space}_desc-brain_mask.nii.gz"))
        suffix = ".tsv.gz" if sub == "02" else ".tsv"
        confounds = os.path.join(folder, f"{raw}_desc-confounds_timeseries{suffix}")
        if not os.path.exists(confounds):
            write_tsv(confounds, confounds_rows(num_frames, seed=i,
                                                high_motion=(12, 25) if (sub, task) == ("01", "rest") else ()))
    return paths
