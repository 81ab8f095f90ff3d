"""TensorBoard's input slices show something a human recognises: a z-scored frame, or after
voxel-wise normalisation (where a frame is noise) the run's mean EPI, else its brain mask."""

import glob
import os

import nibabel as nib
import numpy as np
import pytest

from tests.tfbrain.training.cohort import convert_cohort, planted_cohort
from tfbrain.training.tensorboard import BrainSlices, display_anatomy


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slices")
    paths, labels = planted_cohort(str(folder / "nii"), num_subjects=2, effect=2.0,
                                   oscillation_period=4.0)
    for normalization in ("zscore", "voxelwise"):
        convert_cohort(paths, labels, str(folder / normalization), normalization=normalization)
    return folder, paths


def test_zscored_frames_are_shown_as_they_are(cohorts):
    folder, _ = cohorts
    anatomy, note = display_anatomy(str(folder / "zscore"), "sub-000")
    assert anatomy is None and "z-scored over the brain" in note


def test_voxelwise_datasets_show_the_runs_mean_epi_on_the_stored_grid(cohorts):
    folder, paths = cohorts
    anatomy, note = display_anatomy(str(folder / "voxelwise"), "sub-001")
    source = np.asarray(nib.load(paths[1]).dataobj, np.float64)  # (20, 20, 20, 16)
    # the brain spans original voxels 2..17: conversion to 16^3 crops 2 per side
    expected = source.mean(axis=-1)[2:18, 2:18, 2:18]
    assert anatomy.shape == (16, 16, 16)
    np.testing.assert_allclose(anatomy, expected, rtol=1e-5)
    assert "mean EPI of run sub-001" in note and "normalised voxel by voxel" in note


def test_without_the_source_the_brain_mask_stands_in(cohorts, tmp_path):
    folder, paths = cohorts
    moved = str(tmp_path / "moved.nii.gz")
    os.rename(paths[0], moved)
    try:
        anatomy, note = display_anatomy(str(folder / "voxelwise"), "sub-000")
    finally:
        os.rename(moved, paths[0])
    brain = np.asarray(nib.load(paths[0]).dataobj)[..., 0] != 0
    np.testing.assert_array_equal(anatomy > 0, brain[2:18, 2:18, 2:18])
    assert "brain mask of run sub-000" in note and "no longer at" in note


def test_slices_and_the_input_frame_are_written_with_descriptions(cohorts, tmp_path):
    import tensorflow as tf

    folder, _ = cohorts
    anatomy, note = display_anatomy(str(folder / "voxelwise"), "sub-001")
    window = np.random.default_rng(0).normal(size=(16, 16, 16, 8, 1)).astype(np.float32)
    BrainSlices(str(tmp_path), window, anatomy, note).on_train_begin()
    descriptions = {}
    for path in glob.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                descriptions[value.tag] = value.metadata.summary_description
    assert set(descriptions) == {f"{group}/{view}" for group in ("slices", "slices_model_input")
                                 for view in ("axial", "coronal", "sagittal")}
    assert "mean EPI" in descriptions["slices/axial"]
    assert "noise by design" in descriptions["slices_model_input/axial"]
