"""Group maps in a common grid and atlas parcel tables (tfbrain.training.group_attribution),
and `tfbrain attribute` in group mode on a tiny trained model."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from tfbrain.training.group_attribution import (atlas_on_map_grid, check_common_grid,
                                                load_atlas_names, parcel_table)

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def run_entry(key, shape=(20, 20, 20), affine=AFFINE):
    return {"key": key, "original_shape": [*shape, 16], "original_affine": np.asarray(affine).tolist()}


def save_atlas(path, labels, affine):
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(path))
    return str(path)


def test_common_grid_accepts_one_grid_and_names_the_runs_that_differ():
    shape, affine = check_common_grid("DS", [run_entry("a"), run_entry("b")])
    assert shape == (20, 20, 20) and np.array_equal(affine, AFFINE)
    with pytest.raises(ValueError, match=r"runs 'a' and 'c' are not in one grid \(grid shapes "
                                         r"\(20, 20, 20\) and \(22, 20, 20\)"):
        check_common_grid("DS", [run_entry("a"), run_entry("b"), run_entry("c", (22, 20, 20))])
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.5
    with pytest.raises(ValueError, match=r"affines that differ by up to 1.5 mm"):
        check_common_grid("DS", [run_entry("a"), run_entry("b", affine=shifted)])


def test_parcel_table_on_the_same_grid(tmp_path):
    attribution = np.zeros((6, 6, 6), np.float32)
    attribution[:3] = 2.0
    attribution[3:] = -1.0
    attribution[0, 0, 0] = 6.0
    atlas = np.zeros((6, 6, 6), np.int64)
    atlas[:3, :3, :3] = 1  # 27 voxels, one of them the 6.0
    atlas[3:, 3:, 3:] = 7
    atlas[5, 5, 5] = 9  # a label outside the brain below: no voxel counted
    brain = np.ones((6, 6, 6), bool)
    brain[5, 5, 5] = False
    names = tmp_path / "dseg.tsv"
    names.write_text("index\tname\n1\tfrontal\n7\toccipital\n9\tcsf\n")
    rows, sampling = parcel_table(attribution, AFFINE, brain,
                                  save_atlas(tmp_path / "atlas.nii.gz", atlas, AFFINE), str(names))
    assert sampling == "same grid"
    by_label = {r["label"]: r for r in rows}
    expected_1 = (26 * 2.0 + 6.0) / 27
    assert by_label[1] == {"label": 1, "name": "frontal", "voxels": 27,
                           "mean_abs_attribution": pytest.approx(expected_1),
                           "mean_attribution": pytest.approx(expected_1)}
    assert by_label[7]["voxels"] == 26 and by_label[7]["mean_attribution"] == pytest.approx(-1.0)
    assert by_label[7]["mean_abs_attribution"] == pytest.approx(1.0)
    assert by_label[9]["voxels"] == 0 and by_label[9]["mean_abs_attribution"] is None
    assert [r["label"] for r in rows] == [1, 7, 9]  # most attributed first, empty last


def test_atlas_at_another_resolution_is_read_nearest_neighbour_through_the_affines(tmp_path):
    # the atlas at 6 mm covers the 3 mm map's grid: map voxel i sits at 3i mm, the atlas voxel
    # nearest to it is round(3i / 6) = round(i / 2)
    atlas = np.arange(1, 4 ** 3 + 1).reshape(4, 4, 4)
    atlas_affine = np.diag([6.0, 6.0, 6.0, 1.0])
    labels, inside, sampling = atlas_on_map_grid(atlas, atlas_affine, (6, 6, 6), AFFINE)
    assert sampling == "nearest neighbour through the affines"
    for i, j, k in [(0, 0, 0), (1, 2, 3), (5, 4, 2), (3, 3, 3)]:
        nearest = [int(np.rint(v / 2)) for v in (i, j, k)]
        if all(n < 4 for n in nearest):
            assert labels[i, j, k] == atlas[tuple(nearest)]
            assert inside[i, j, k]
        else:
            assert labels[i, j, k] == 0 and not inside[i, j, k]


def test_mismatched_atlases_are_refused_in_one_line(tmp_path):
    brain = np.ones((6, 6, 6), bool)
    attribution = np.ones((6, 6, 6), np.float32)
    far = AFFINE.copy()
    far[:3, 3] = 500.0  # another space: nothing overlaps
    path = save_atlas(tmp_path / "far.nii.gz", np.ones((6, 6, 6)), far)
    with pytest.raises(ValueError, match=r"--atlas .*far.nii.gz: 100% of the map's brain voxels "
                                         r"fall outside the atlas's field of view"):
        parcel_table(attribution, AFFINE, brain, path)
    zeros = save_atlas(tmp_path / "zeros.nii.gz", np.zeros((6, 6, 6)), AFFINE)
    with pytest.raises(ValueError, match="no brain voxel of the map falls on an atlas label"):
        parcel_table(attribution, AFFINE, brain, zeros)
    probabilistic = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(np.full((6, 6, 6), 0.3, np.float32), AFFINE), str(probabilistic))
    with pytest.raises(ValueError, match="must hold integer labels"):
        parcel_table(attribution, AFFINE, brain, str(probabilistic))
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6, 3), np.int16), AFFINE), str(four_d))
    with pytest.raises(ValueError, match=r"must be a 3D label image; got shape \(6, 6, 6, 3\)"):
        parcel_table(attribution, AFFINE, brain, str(four_d))


def test_label_names_from_bids_or_headerless_tsv(tmp_path):
    bids = tmp_path / "dseg.tsv"
    bids.write_text("index\tname\tcolor\n1\tV1\t#ff0000\n2\tMT\t#00ff00\n")
    assert load_atlas_names(str(bids)) == {1: "V1", 2: "MT"}
    bare = tmp_path / "labels.tsv"
    bare.write_text("1\tV1\n2\tMT\n")
    assert load_atlas_names(str(bare)) == {1: "V1", 2: "MT"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("region\tsize\nV1\t3\n")
    with pytest.raises(ValueError, match="needs columns 'index' and 'name'"):
        load_atlas_names(str(bad))
    broken = tmp_path / "broken.tsv"
    broken.write_text("index\tname\n1\tV1\nx\tMT\n")
    with pytest.raises(ValueError, match="line 3 has no integer label"):
        load_atlas_names(str(broken))


# --- end to end on a tiny trained model -------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.tfbrain.training.cohort import convert_cohort, planted_cohort
    from tests.tfbrain.training.test_trainer import make_config
    from tfbrain.training.trainer import train

    folder = tmp_path_factory.mktemp("group")
    paths, labels = planted_cohort(str(folder / "nii"), num_subjects=12, effect=2.0)
    convert_cohort(paths, labels, str(folder / "dataset"))
    config = make_config(str(folder / "dataset"), str(folder / "run"),
                         optim={"epochs": 1, "steps_per_epoch": 2, "jit_compile": False})
    summary = train(config, verbose=0)
    return str(folder / "dataset"), str(folder / "run"), summary["best"]


def test_group_map_is_the_mean_of_the_runs_maps_and_the_contrast_their_difference(trained,
                                                                                    tmp_path):
    from tfbrain.models.loading import load_preset
    from tfbrain.training.attribution import write_attribution, write_group_attribution

    dataset, _, best = trained
    model = load_preset(best)
    runs = json.load(open(os.path.join(dataset, "dataset.json")))["runs"]
    chosen = [r for r in runs if r["label"] == 1][:2] + [r for r in runs if r["label"] == 0][:1]
    names = ["control", "patient"]
    single = [np.asarray(nib.load(write_attribution(
        model, dataset, r["key"], str(tmp_path / f"{r['key']}.nii.gz"), window=8, steps=4,
        target="patient", class_names=names)["nifti"]).dataobj) for r in chosen]
    keys = [r["key"] for r in chosen]
    group = write_group_attribution(model, dataset, keys, str(tmp_path / "group.nii.gz"),
                                    window=8, steps=4, target="patient", class_names=names)
    image = nib.load(group["nifti"])
    assert np.allclose(image.affine, AFFINE) and image.shape == (20, 20, 20)
    np.testing.assert_allclose(np.asarray(image.dataobj), np.mean(single, axis=0), atol=1e-6)
    assert group["mass_in_brain"] == pytest.approx(1.0)
    contrast = write_group_attribution(model, dataset, keys, str(tmp_path / "contrast.nii.gz"),
                                       window=8, steps=4, target="patient", class_names=names,
                                       contrast="patient")
    np.testing.assert_allclose(np.asarray(nib.load(contrast["nifti"]).dataobj),
                               (single[0] + single[1]) / 2 - single[2], atol=1e-6)
    assert contrast["map"] == "patient (2 runs) - others (1 runs)"
    with pytest.raises(ValueError, match="needs runs of that class and of another"):
        write_group_attribution(model, dataset, keys[:2], str(tmp_path / "x.nii.gz"), window=8,
                                steps=4, class_names=names, contrast="patient")


def test_cli_group_mode_with_atlas_and_one_line_errors(trained, tmp_path, capsys):
    from tfbrain.cli import main

    dataset, run, best = trained
    atlas = np.zeros((20, 20, 20), np.int16)
    atlas[:10] = 1
    atlas[10:] = 2
    atlas_path = save_atlas(tmp_path / "atlas.nii.gz", atlas, AFFINE)
    (tmp_path / "labels.tsv").write_text("index\tname\n1\tleft\n2\tright\n")
    out = tmp_path / "test_group.nii.gz"
    assert main(["attribute", "--model", run, "--split", "test", "--out", str(out), "--steps",
                 "2", "--target", "patient", "--atlas", atlas_path, "--atlas-labels",
                 str(tmp_path / "labels.tsv"), "--quiet"]) == 0
    details = json.loads(capsys.readouterr().out)
    splits = json.load(open(os.path.join(dataset, "splits.json")))["splits"]
    assert sorted(details["runs"]) == sorted(splits["test"])
    assert details["atlas_sampling"] == "same grid"
    with open(tmp_path / "test_group_parcels.csv") as f:
        rows = list(csv.DictReader(f))
    group = np.asarray(nib.load(str(out)).dataobj)
    brain = group != 0  # outside the brain the map is 0 by construction
    assert {r["name"] for r in rows} == {"left", "right"}
    for row in rows:
        voxels = brain & (atlas == int(row["label"]))
        assert int(row["voxels"]) == voxels.sum()
        assert float(row["mean_abs_attribution"]) == pytest.approx(
            np.abs(group[voxels]).mean(), rel=1e-4)
        assert float(row["mean_attribution"]) == pytest.approx(group[voxels].mean(), rel=1e-4,
                                                               abs=1e-9)
    # an atlas in another space: one line, exit 2, before any gradient is computed
    far = AFFINE.copy()
    far[:3, 3] = 900.0
    assert main(["attribute", "--model", best, "--split", "test", "--out",
                 str(tmp_path / "x.nii.gz"), "--atlas",
                 save_atlas(tmp_path / "far.nii.gz", atlas, far)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "far.nii.gz" in err[0] and "field of view" in err[0]
    assert main(["attribute", "--model", best, "--split", "nope", "--out",
                 str(tmp_path / "x.nii.gz")]) == 2
    assert "--split 'nope' is not a split" in capsys.readouterr().err
