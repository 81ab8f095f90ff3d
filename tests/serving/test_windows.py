"""Serving-time preprocessing is `tfbrain prepare`'s: windows cut from a NIfTI equal the
windows streamed from the converted dataset, on the bundled studyforrest sample."""

import numpy as np

import tfrecords_tools
from serving.windows import preprocessing_from_file, windows_from_nifti
from tests.test_case import TestCase
from tfbrain.sample_data import studyforrest_localizer


class ServingPreprocessingTest(TestCase):
    def test_nifti_windows_equal_prepared_windows_on_the_sample(self):
        sample = studyforrest_localizer()
        folder = self.get_temp_dir()
        # the demo's settings: voxel-wise z-score after quadratic detrending, mean-EPI mask
        config = tfrecords_tools.PreprocessConfig(target_shape=(48, 48, 24), mask_method="mean",
                                                  normalization="voxelwise", detrend_order=2,
                                                  min_frames=8)
        tfrecords_tools.convert([tfrecords_tools.Run(path=sample["bold"], subject="s01")],
                                folder, config=config, workers=0, progress=False)
        prepared = np.stack([w for w, _, _ in tfrecords_tools.windows(
            folder, None, window=8, shuffle=False, seed=0).as_numpy_iterator()])  # in order
        served = windows_from_nifti(sample["bold"], (48, 48, 24, 8, 1),
                                    preprocessing_from_file(f"{folder}/dataset.json"))
        self.assertEqual(served.shape, prepared.shape)
        np.testing.assert_array_equal(served, prepared)
