import os

import nibabel as nib
import numpy as np

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import AFFINE, reference_preprocess, synthetic_run
from tfrecords_tools import BadInputError, PreprocessConfig, prepare_run
from tfrecords_tools.preprocess import (place, resampled_grid, to_original_space,
                                        to_stored_grid)


class PreprocessTest(TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        self.path = os.path.join(self.dir, "run.nii.gz")
        self.data = synthetic_run(self.path)
        self.config = PreprocessConfig(target_shape=(8, 8, 8), min_frames=4)

    def test_matches_numpy_reference(self):
        meta, frames = prepare_run(self.path, self.config)
        frames = np.stack(list(frames))
        self.assertEqual(frames.shape, (24, 8, 8, 8))
        self.assertEqual(frames.dtype, np.float16)
        expected = reference_preprocess(self.data, meta["offsets"], (8, 8, 8))
        self.assertAllClose(frames.astype(np.float32), expected.astype(np.float32), atol=2e-3, rtol=1e-3)
        self.assertAlmostEqual(meta["tr"], 2.0)
        self.assertEqual(meta["original_shape"], [10, 12, 8, 24])
        self.assertEqual(meta["brain_voxels_cropped"], 0)  # the 6x7x4 brain fits in 8^3

    def test_zero_background_and_float32(self):
        config = PreprocessConfig(target_shape=(12, 14, 10), background="zero", dtype="float32", min_frames=4)
        meta, frames = prepare_run(self.path, config)
        frame = next(frames)
        self.assertEqual(frame.dtype, np.float32)
        self.assertEqual(meta["background"], 0.0)
        self.assertEqual(frame[0, 0, 0], 0.0)

    def test_to_original_space_is_exact_without_resampling(self):
        meta, frames = prepare_run(self.path, self.config)
        stored = next(frames).astype(np.float32)
        img = to_original_space(stored, meta, fill=np.nan)
        self.assertEqual(img.shape, (10, 12, 8))
        self.assertAllClose(img.affine, AFFINE)
        original = img.get_fdata()
        mask = self.data[..., 0] != 0
        z = (self.data[..., 0][mask] - meta["mean"]) / meta["std"]
        self.assertAllClose(original[mask], z, atol=2e-2, rtol=1e-3)
        # voxel i of the original lands at i + offsets of the stored grid, in world space too
        stored_affine = np.asarray(meta["stored_affine"])
        i = np.array([4, 5, 3, 1.0])
        j = i[:3] + meta["offsets"]
        self.assertAllClose(stored_affine @ np.append(j, 1), AFFINE @ i)

    def test_resampling_round_trip(self):
        config = PreprocessConfig(target_shape=(6, 8, 6), voxel_size=(3.0, 3.0, 3.0), min_frames=4)
        meta, frames = prepare_run(self.path, config)
        self.assertEqual(meta["resampled_shape"], [7, 8, 7])
        frame = next(frames)
        self.assertEqual(frame.shape, (6, 8, 6))
        img = to_original_space(np.ones((6, 8, 6), np.float32), meta)
        self.assertEqual(img.shape, (10, 12, 8))
        self.assertGreater(img.get_fdata()[5, 6, 4], 0.99)  # the brain's centre maps back

    def test_to_stored_grid_places_a_volume_as_the_frames_were(self):
        # a volume on the original grid (here the z-scored first frame, background outside
        # the brain) lands where conversion put that frame, with and without resampling
        for config in (self.config, PreprocessConfig(target_shape=(6, 8, 6), dtype="float32",
                                                     voxel_size=(3.0, 3.0, 3.0), min_frames=4)):
            meta, frames = prepare_run(self.path, config)
            stored = next(frames).astype(np.float32)
            mask = self.data[..., 0] != 0
            original = np.full(mask.shape, meta["background"], np.float32)
            original[mask] = (self.data[..., 0][mask] - meta["mean"]) / meta["std"]
            placed = to_stored_grid(original, meta, stored.shape, fill=meta["background"])
            self.assertEqual(placed.shape, stored.shape)
            brain = stored != np.float32(meta["background"])
            self.assertGreater(brain.sum(), 20)
            self.assertAllClose(placed[brain], stored[brain], atol=2e-2, rtol=1e-3)

    def test_resampled_grid_keeps_field_of_view(self):
        affine, shape = resampled_grid(np.diag([2.0, 2.0, 2.0, 1.0]), (10, 10, 10), (4.0, 4.0, 4.0))
        self.assertEqual(shape, (5, 5, 5))
        self.assertAllClose(affine[:3, 3], [1.0, 1.0, 1.0])  # old corner -1 mm + half a 4 mm voxel

    def test_place_crops_and_pads(self):
        volume = np.arange(24.0).reshape(2, 3, 4)
        out = place(volume, (1, -1, 0), (4, 2, 4), fill=-1)
        self.assertEqual(out.shape, (4, 2, 4))
        self.assertAllClose(out[1:3], volume[:, 1:3])
        self.assertTrue(np.all(out[0] == -1))

    def test_given_mask(self):
        mask_path = os.path.join(self.dir, "mask.nii.gz")
        mask = np.zeros((10, 12, 8), np.uint8)
        mask[3:6, 4:8, 3:5] = 1
        nib.save(nib.Nifti1Image(mask, AFFINE), mask_path)
        meta, _ = prepare_run(self.path, self.config, mask_path=mask_path)
        self.assertEqual(meta["mask_voxels"], 24)

    def test_config_checks_arguments(self):
        with self.assertRaisesRegex(ValueError, "mask_method"):
            PreprocessConfig(mask_method="otsu")
        with self.assertRaisesRegex(ValueError, "target_shape"):
            PreprocessConfig(target_shape=(96, 96))


class BadInputTest(TestCase):
    """Each bad input names the file and the problem."""

    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        self.config = PreprocessConfig(target_shape=(8, 8, 8), min_frames=20)

    def assertBad(self, path, pattern, **kwargs):
        with self.assertRaisesRegex(BadInputError, pattern) as context:
            meta, frames = prepare_run(path, self.config, **kwargs)
        self.assertIn(os.path.basename(context.exception.source), str(context.exception))
        return context.exception

    def test_not_4d(self):
        path = os.path.join(self.dir, "anat.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
        self.assertBad(path, r"anat\.nii\.gz: not 4D \(shape \(4, 4, 4\)\)")

    def test_nan_and_inf(self):
        path = os.path.join(self.dir, "nan.nii.gz")
        data = synthetic_run(path)
        data[5, 6, 4, 7] = np.nan
        data[5, 6, 4, 9] = np.inf
        nib.save(nib.Nifti1Image(data, AFFINE), path)
        self.assertBad(path, r"nan\.nii\.gz: 2 NaN/Inf voxels \(first at voxel \(5, 6, 4\), frame 7\)")

    def test_mask_shape_mismatch(self):
        path = os.path.join(self.dir, "run.nii.gz")
        synthetic_run(path)
        mask_path = os.path.join(self.dir, "mask.nii.gz")
        nib.save(nib.Nifti1Image(np.ones((9, 12, 8), np.uint8), AFFINE), mask_path)
        error = self.assertBad(path, r"mask\.nii\.gz: mask shape mismatch: mask is \(9, 12, 8\)", mask_path=mask_path)
        self.assertIn("run.nii.gz", str(error))

    def test_truncated_gzip(self):
        path = os.path.join(self.dir, "cut.nii.gz")
        synthetic_run(path)
        with open(path, "rb") as f:
            payload = f.read()
        with open(path, "wb") as f:
            f.write(payload[: len(payload) // 2])
        self.assertBad(path, r"cut\.nii\.gz: cannot read NIfTI: corrupt or truncated")

    def test_corrupt_gzip(self):
        path = os.path.join(self.dir, "junk.nii.gz")
        with open(path, "wb") as f:
            f.write(b"\x1f\x8b\x08\x00" + os.urandom(2000))
        self.assertBad(path, r"junk\.nii\.gz: cannot read NIfTI: corrupt or truncated")

    def test_too_few_frames(self):
        path = os.path.join(self.dir, "short.nii.gz")
        synthetic_run(path, num_frames=12)
        self.assertBad(path, r"short\.nii\.gz: too few frames for one window: 12 < 20")

    def test_missing_file(self):
        self.assertBad(os.path.join(self.dir, "nope.nii.gz"), "nope.nii.gz: file not found")


class OrientationTest(TestCase):
    """`orientation="ras"`: the same brain stored as RAS, LPS or with permuted axes gives the same
    frames, and `to_original_space` puts a stored map back exactly on each file's grid."""

    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        rng = np.random.default_rng(0)
        self.ras = np.zeros((9, 11, 7, 6), np.float32)
        self.ras[2:-2, 2:-3, 1:-2] = rng.normal(500, 40, self.ras[2:-2, 2:-3, 1:-2].shape)
        self.ras_affine = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, -20], [0, 0, 2.5, -5], [0, 0, 0, 1]])

    def save(self, name, data, affine):
        path = os.path.join(self.dir, name)
        nib.save(nib.Nifti1Image(data, affine), path)
        return path

    def variants(self):
        """(name, data, affine) of one brain in three voxel orders, all mapping to the same world."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:3, 3] = [self.ras.shape[0] - 1, self.ras.shape[1] - 1, 0]  # LPS voxel -> RAS voxel
        lps = self.ras[::-1, ::-1].copy()
        permute = np.zeros((4, 4))  # stored axes (z, x, y): stored voxel (k, i, j) is RAS voxel (i, j, k)
        permute[0, 1] = permute[1, 2] = permute[2, 0] = permute[3, 3] = 1
        zxy = np.transpose(self.ras, (2, 0, 1, 3)).copy()
        return [("ras", self.ras, self.ras_affine), ("lps", lps, self.ras_affine @ flip),
                ("zxy", zxy, self.ras_affine @ permute)]

    def test_same_frames_and_exact_round_trip(self):
        config = PreprocessConfig(target_shape=(8, 12, 8), min_frames=4, orientation="ras")
        exact = PreprocessConfig(target_shape=None, min_frames=4, orientation="ras", normalization="none",
                                 mask_method="none", dtype="float32")
        frames = {}
        for name, data, affine in self.variants():
            path = self.save(f"{name}.nii.gz", data, affine)
            self.assertEqual("".join(nib.aff2axcodes(affine)), {"ras": "RAS", "lps": "LPS", "zxy": "SRA"}[name])
            meta, stream = prepare_run(path, config)
            frames[name] = np.stack(list(stream))
            self.assertEqual(meta["reorientation"]["from"], "".join(nib.aff2axcodes(affine)))
            self.assertAllClose(meta["reorientation"]["ras_affine"], self.ras_affine)
            self.assertAllClose(meta["original_affine"], affine)
            # a stored map goes back onto this file's own voxel grid
            img = to_original_space(frames[name][0].astype(np.float32), meta, fill=np.nan)
            self.assertEqual(img.shape, data.shape[:3])
            self.assertAllClose(img.affine, affine)
            inside = ~np.isnan(img.get_fdata())
            z = (data[..., 0] - meta["mean"]) / meta["std"]
            self.assertAllClose(img.get_fdata()[inside & (data[..., 0] != 0)],
                                z[inside & (data[..., 0] != 0)], atol=2e-2, rtol=1e-3)
            # without normalisation or crop, the round trip gives the input back bit for bit
            meta, stream = prepare_run(path, exact)
            for t, frame in enumerate(stream):
                np.testing.assert_array_equal(to_original_space(frame, meta).get_fdata(dtype=np.float32),
                                              data[..., t])
        np.testing.assert_array_equal(frames["lps"], frames["ras"])
        np.testing.assert_array_equal(frames["zxy"], frames["ras"])

    def test_resampled_after_reorientation_maps_back(self):
        name, data, affine = self.variants()[2]  # axes (z, x, y)
        config = PreprocessConfig(target_shape=(6, 6, 6), voxel_size=(3.0, 4.0, 3.0), min_frames=4,
                                  orientation="ras")
        meta, _ = prepare_run(self.save("zxy.nii.gz", data, affine), config)
        self.assertEqual(meta["resampled_shape"], [6, 9, 6])  # the RAS grid (9, 11, 7) at 3 x 4 x 3 mm
        img = to_original_space(np.ones((6, 6, 6), np.float32), meta)
        self.assertEqual(img.shape, data.shape[:3])
        self.assertAllClose(img.affine, affine)
        self.assertGreater(img.get_fdata()[3, 4, 5], 0.99)  # the brain's centre, RAS voxel (4, 5, 3)

    def test_mask_is_reoriented_with_its_run(self):
        name, data, affine = self.variants()[1]  # LPS
        mask = np.zeros(data.shape[:3], np.uint8)
        mask[5:7, 5:8, 2:4] = 1
        path = self.save("lps.nii.gz", data, affine)
        mask_path = self.save("lps_mask.nii.gz", mask, affine)
        config = PreprocessConfig(target_shape=None, min_frames=4, orientation="ras", background="zero",
                                  normalization="none", dtype="float32")
        meta, stream = prepare_run(path, config, mask_path=mask_path)
        back = to_original_space(next(stream), meta).get_fdata()
        np.testing.assert_array_equal(back[mask == 1], data[..., 0][mask == 1])
        self.assertTrue(np.all(back[mask == 0] == 0))

    def test_stored_orientation_is_the_default(self):
        meta, _ = prepare_run(self.save("ras.nii.gz", self.ras, self.ras_affine),
                              PreprocessConfig(target_shape=(8, 12, 8), min_frames=4))
        self.assertNotIn("reorientation", meta)
        self.assertNotIn("orientation", PreprocessConfig().to_dict())  # old conversion.json still matches
        self.assertEqual(PreprocessConfig(orientation="ras").to_dict()["orientation"], "ras")
        with self.assertRaisesRegex(ValueError, "`orientation`.*'LPS'"):
            PreprocessConfig(orientation="LPS")
