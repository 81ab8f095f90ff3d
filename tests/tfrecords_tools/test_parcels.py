import os
import tempfile

import nibabel as nib
import numpy as np

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import AFFINE, synthetic_runs
from tfrecords_tools import PreprocessConfig, convert, read_frames, run_info, runs_from_files
from tfrecords_tools.preprocess import place
from tfrecords_tools.parcels import parcel_time_series


class ParcelTimeSeriesTest(TestCase):
    @classmethod
    def setUpClass(cls):
        folder = tempfile.mkdtemp(prefix="tfbrain_parcels_")
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=1, num_frames=6)
        cls.out = os.path.join(folder, "out")
        convert(runs_from_files(paths, labels=[0]), cls.out,
                config=PreprocessConfig(target_shape=(8, 8, 8), min_frames=4), workers=0,
                progress=False, split_fractions=(1.0, 0.0, 0.0))
        # three box parcels on the run's own (10, 12, 8) grid; label 9 lies outside the crop
        atlas = np.zeros((10, 12, 8), np.int16)
        atlas[2:5, 3:6, 2:4] = 3
        atlas[5:8, 6:10, 3:6] = 7
        atlas[0, 0, 0] = 9
        cls.atlas = atlas
        cls.atlas_path = os.path.join(folder, "atlas.nii.gz")
        nib.save(nib.Nifti1Image(atlas, AFFINE), cls.atlas_path)

    def test_means_over_the_stored_voxels(self):
        parcels = parcel_time_series(self.out, "sub-00", self.atlas_path)
        np.testing.assert_array_equal(parcels.labels, [3, 7, 9])
        frames = np.stack([f["volume"].numpy() for f in read_frames(self.out, run=None)])
        info = run_info(self.out, "sub-00")
        stored_atlas = place(self.atlas, info["offsets"], (8, 8, 8), 0)  # no resampling here
        for k, label in enumerate([3, 7]):
            inside = stored_atlas == label
            self.assertEqual(parcels.voxel_counts[k], inside.sum())
            expected = frames[:, inside].astype(np.float64).mean(axis=1)
            self.assertAllClose(parcels.series[:, k], expected, atol=1e-4)
        self.assertEqual(parcels.series.shape, (6, 3))
        self.assertEqual(parcels.voxel_counts[2], 0)  # cropped away: zeros, and a count of 0
        self.assertAllClose(parcels.series[:, 2], np.zeros(6))
        voxels = np.argwhere(self.atlas == 3)
        centroid = AFFINE[:3, :3] @ voxels.mean(axis=0) + AFFINE[:3, 3]
        self.assertAllClose(parcels.centroids[0], centroid, atol=1e-4)

    def test_selected_labels_and_errors(self):
        parcels = parcel_time_series(self.out, "sub-00", nib.load(self.atlas_path), labels=[7])
        self.assertEqual(parcels.series.shape, (6, 1))
        with self.assertRaisesRegex(ValueError, "do not occur in the atlas"):
            parcel_time_series(self.out, "sub-00", self.atlas_path, labels=[5])
        probabilistic = nib.Nifti1Image(np.full((4, 4, 4), 0.5, np.float32), AFFINE)
        with self.assertRaisesRegex(ValueError, "integer labels"):
            parcel_time_series(self.out, "sub-00", probabilistic)
