"""Attribution that is right by construction: on a cohort with a planted class difference,
the group Integrated-Gradients contrast (patients minus controls, at patch resolution) lies
in the brain and >= 80% of its strongest voxels are in the planted region, for every
normalisation option; patch pooling; explicit targets (class names, each class)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from tests.tfbrain.training.cohort import convert_cohort, planted_cohort, planted_region
from tfbrain.models.loading import load_preset
from tfbrain.training.attribution import (attribution_patch, pool_to_patches,
                                           resolve_targets, write_attribution,
                                           write_group_attribution)
from tfbrain.training.config import TrainConfig
from tfbrain.training.trainer import train

TINY_BACKBONE = {"patch_size": [4, 4, 4, 1], "hidden_dim": 12, "depths": [1, 1], "num_heads": [2, 4],
                 "first_window_size": [2, 2, 2, 4], "window_size": [2, 2, 2, 4],
                 "last_layer_full_msa": False}


@pytest.mark.large
@pytest.mark.parametrize("normalization", ["zscore", "voxelwise"])
def test_map_concentrates_on_the_planted_region(tmp_path, normalization):
    # the planted region is two whole 4^3 input patches: attribution's resolution is the
    # patch (see pool_to_patches), so a region that cuts patches cannot be told apart from
    # the rest of the patches it touches
    paths, labels = planted_cohort(str(tmp_path / "nii"), num_subjects=32, effect=2.0,
                                   oscillation_period=4.0 if normalization == "voxelwise" else 0.0,
                                   region="patches")
    dataset = str(tmp_path / "dataset")
    convert_cohort(paths, labels, dataset, normalization=normalization)
    runs = json.load(open(os.path.join(dataset, "dataset.json")))["runs"]
    assert all(r["offsets"] == [-2, -2, -2] for r in runs)  # what planted_region assumes
    config = TrainConfig.from_dict({
        "data": {"dataset_dir": dataset, "window": 8, "stride": 8, "eval_stride": 8,
                 "batch_size": 4},
        "model": {"backbone": TINY_BACKBONE},
        "optim": {"learning_rate": 3e-3, "epochs": 8, "jit_compile": True},
        "run": {"output_dir": str(tmp_path / "run"), "seed": 3},
        "tensorboard": {"enabled": False}})
    summary = train(config, verbose=0)
    model = load_preset(summary["best"])
    # patients minus controls: each run's map also holds what every brain shares (the path
    # from the background baseline to a brain passes through its anatomy), the same in both
    # classes; the difference keeps what tells them apart
    chosen = ([r["key"] for r in runs if r["label"] == 1][:8]
              + [r["key"] for r in runs if r["label"] == 0][:8])  # vocabulary: control, patient
    details = write_group_attribution(model, dataset, chosen, str(tmp_path / "group.nii.gz"),
                                      window=8, steps=16, target="patient",
                                      class_names=["control", "patient"], contrast="patient")
    group = np.asarray(nib.load(details["nifti"]).dataobj)
    magnitude = np.abs(group)
    top = magnitude >= np.quantile(magnitude, 0.99)
    region = planted_region(kind="patches")
    inside = (top & region).sum() / top.sum()
    chance = region.sum() / runs[0]["mask_voxels"]  # every run has the same brain
    print(f"\n{normalization}: {inside:.0%} of the group contrast's top-1% voxels in the planted "
          f"region ({chance:.0%} of the brain); {details['mass_in_brain']:.0%} of the mass in "
          f"the brain; val AUROC {summary['report'].get('val', {}).get('subject', {}).get('auroc')}")
    assert details["resolution"] == "patch 4x4x4"
    assert details["mass_in_brain"] == pytest.approx(1.0)  # masked by construction
    assert inside >= 0.8


def test_pooling_to_patches_draws_each_patch_mean_inside_the_mask():
    rng = np.random.default_rng(0)
    attribution = rng.normal(size=(8, 8, 6))
    mask = rng.random((8, 8, 6)) > 0.3
    attribution *= mask
    pooled = pool_to_patches(attribution, mask, (4, 4, 4))  # 6 = one 4-patch + a partial one
    assert np.all(pooled[~mask] == 0)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                block = (slice(4 * i, 4 * i + 4), slice(4 * j, 4 * j + 4),
                         slice(4 * k, 4 * k + 4))
                inside = mask[block]
                volume = attribution[block].size  # 64, or 32 in the partial last patch
                assert np.allclose(pooled[block][inside], attribution[block].sum() / volume)


def test_attribution_patch_is_the_backbones_non_overlapping_patch():
    class Backbone:
        patch_size = (4, 4, 4, 1)

    class Task:
        backbone = Backbone()

    assert attribution_patch(Task()) == (4, 4, 4)
    Backbone.patch_stride = (2, 2, 2, 1)  # overlapping tubelets: no patch grid
    assert attribution_patch(Task()) is None
    assert attribution_patch(object()) is None  # e.g. a conv stem


def test_targets_are_explicit():
    class Binary:
        num_classes = 1

    class ThreeWay:
        num_classes = 3

    names = ["rest", "stimulus"]
    assert resolve_targets(Binary(), None, names) == [("default", None)]
    assert resolve_targets(Binary(), "stimulus", names) == [("stimulus", 0)]
    assert resolve_targets(Binary(), "each", names) == [("stimulus", 0)]
    with pytest.raises(ValueError, match="one logit"):
        resolve_targets(Binary(), "rest", names)
    with pytest.raises(ValueError, match="not a class"):
        resolve_targets(Binary(), "faces", names)
    assert resolve_targets(ThreeWay(), "each", ["a", "b", "c"]) == [("a", 0), ("b", 1), ("c", 2)]
    assert resolve_targets(ThreeWay(), "2", ["a", "b", "c"]) == [("unit2", 2)]


def test_attribution_figure_is_written(tmp_path):
    from tfbrain.training.figures import attribution_figure, have_matplotlib

    if not have_matplotlib():
        pytest.skip("the figures extra (matplotlib) is not installed")
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij"))
    anatomy = 100 * ((grid ** 2).sum(0) < 0.8)
    attribution = np.exp(-((grid[0] - 0.4) ** 2 + grid[1] ** 2 + grid[2] ** 2) / 0.05)
    path = attribution_figure(attribution, anatomy, str(tmp_path / "map.png"), title="planted")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_group_figure_is_written(tmp_path):
    from tfbrain.training.figures import group_attribution_figure, have_matplotlib

    if not have_matplotlib():
        pytest.skip("the figures extra (matplotlib) is not installed")
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij"))
    anatomy = 100 * ((grid ** 2).sum(0) < 0.8)
    attribution = np.exp(-((grid[0] - 0.4) ** 2 + grid[1] ** 2 + grid[2] ** 2) / 0.05)
    path = group_attribution_figure(attribution, anatomy, str(tmp_path / "group.png"),
                                    title="patients - controls")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_a_scrubbed_run_is_attributed_over_its_segments(tmp_path):
    """By subject, a run stored as `_seg-<i>` segments gives one map: the mean over the windows
    of all segments (= the window-weighted mean of the per-segment maps), written back on the
    run's grid, with each window's source frames on the run's timeline."""
    import keras

    import tfrecords_tools
    from tests.tfrecords_tools.helpers import confounds_rows, synthetic_run, write_tsv
    from tfbrain.training.attribution import run_attribution

    bold, table = str(tmp_path / "sub-00_bold.nii.gz"), str(tmp_path / "sub-00_desc-confounds_timeseries.tsv")
    synthetic_run(bold, num_frames=24)
    write_tsv(table, confounds_rows(24, high_motion=(11,)))  # segments [0, 11) and [12, 24)
    dataset = str(tmp_path / "dataset")
    config = tfrecords_tools.PreprocessConfig(target_shape=(8, 8, 6), confounds="wm_csf", fd_threshold=0.5,
                                              min_frames=4)
    tfrecords_tools.convert([tfrecords_tools.Run(path=bold, subject="sub-00", key="sub-00_rest",
                                                 confounds_path=table)], dataset, config=config, workers=0,
                            progress=False)
    keras.utils.set_random_seed(0)
    fmri = keras.Input((8, 8, 6, 4, 1), name="fmri")  # (B, D, H, W, T, C)
    hidden = keras.layers.Dense(4, activation="tanh")(fmri)  # (B, D, H, W, T, 4)
    pooled = keras.layers.GlobalAveragePooling3D()(keras.layers.Reshape((8, 8, 24, 4))(hidden))  # (B, 4)
    model = keras.Model(fmri, {"logits": keras.layers.Dense(1)(pooled)})
    model.attributable, model.output_key = True, "logits"
    model.default_attribution_unit = lambda output: 0

    details = write_attribution(model, dataset, "sub-00", str(tmp_path / "map.nii.gz"), window=4, steps=4)
    assert details["run"] == "sub-00_rest"
    assert details["segments"] == ["sub-00_rest_seg-1", "sub-00_rest_seg-2"]
    assert details["window_frames"] == [[0, 4], [4, 8], [12, 16], [16, 20], [20, 24]]
    assert nib.load(details["nifti"]).shape == (10, 12, 8)  # the NIfTI's own grid
    per_segment = [run_attribution(model, dataset, key, window=4, steps=4)[0]["default"]
                   for key in details["segments"]]
    np.testing.assert_allclose(np.load(details["grid"]), (2 * per_segment[0] + 3 * per_segment[1]) / 5,
                               rtol=1e-5, atol=1e-7)
    assert np.abs(per_segment[0] - per_segment[1]).max() > 1e-4  # the weighting is tested, not a constant
