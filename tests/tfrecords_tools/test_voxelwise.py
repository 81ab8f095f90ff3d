import os

import numpy as np

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import synthetic_run
from tfrecords_tools import PreprocessConfig, prepare_run


class VoxelwiseNormalizationTest(TestCase):
    def test_each_brain_voxel_has_zero_mean_unit_std_over_time(self):
        path = os.path.join(self.get_temp_dir(), "run.nii.gz")
        data = synthetic_run(path, shape=(10, 12, 8), num_frames=24)
        config = PreprocessConfig(target_shape=None, normalization="voxelwise", mask_method="nonzero",
                                  dtype="float32", min_frames=4)
        metadata, frames = prepare_run(path, config)
        stack = np.stack(list(frames), axis=-1)  # (D, H, W, T)
        brain = np.any(data != 0, axis=3)
        self.assertAllClose(stack[brain].mean(axis=1), 0.0, atol=1e-4)
        self.assertAllClose(stack[brain].std(axis=1), 1.0, atol=1e-3)
        self.assertTrue(np.all(stack[~brain] == 0.0))
        expected = (data[brain] - data[brain].mean(1, keepdims=True)) / data[brain].std(1, keepdims=True)
        self.assertAllClose(stack[brain], expected, atol=1e-4)

    def test_detrending_removes_a_linear_drift(self):
        import nibabel as nib

        path = os.path.join(self.get_temp_dir(), "run.nii.gz")
        rng = np.random.default_rng(1)
        t = np.arange(30, dtype=np.float64)
        signal = rng.normal(0, 1, (4, 4, 4, 30))
        data = 1000 + 5.0 * t + signal  # a strong linear drift under unit noise
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
        config = PreprocessConfig(target_shape=None, normalization="voxelwise", detrend_order=1,
                                  mask_method="none", dtype="float32", min_frames=4)
        _, frames = prepare_run(path, config)
        stack = np.stack(list(frames), axis=-1)
        design = np.stack([np.ones(30), t], axis=1)
        series = signal.reshape(-1, 30)
        residual = series - (series @ np.linalg.pinv(design).T) @ design.T  # least-squares fit removed
        expected = residual / residual.std(axis=1, keepdims=True)
        self.assertAllClose(stack.reshape(-1, 30), expected, atol=2e-3)
        with self.assertRaisesRegex(ValueError, "detrend_order"):
            PreprocessConfig(detrend_order=1)  # needs voxelwise
