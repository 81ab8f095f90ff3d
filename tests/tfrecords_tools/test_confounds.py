import os

import nibabel as nib
import numpy as np

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import confounds_rows, sample_excerpt, write_tsv
from tfrecords_tools import BadInputError, PreprocessConfig, prepare_run
from tfrecords_tools.confounds import contiguous_segments, load_design, parse_strategy

NUM_FRAMES = 40


class StrategyTest(TestCase):
    def test_components_and_alias(self):
        self.assertEqual(parse_strategy("motion24+wm_csf+cosine"), ("motion24", "wm_csf", "cosine"))
        self.assertEqual(parse_strategy("simple"), ("motion24", "wm_csf", "cosine"))
        self.assertEqual(parse_strategy("simple+wm_csf+global_signal"),
                         ("motion24", "wm_csf", "cosine", "global_signal"))
        self.assertEqual(parse_strategy(None), ())
        with self.assertRaisesRegex(ValueError, "`confounds`.*'motion36'"):
            parse_strategy("motion6+motion36")
        with self.assertRaisesRegex(ValueError, "'motion36'"):
            PreprocessConfig(confounds="motion36")
        with self.assertRaisesRegex(ValueError, "`fd_threshold`"):
            PreprocessConfig(fd_threshold=0)

    def test_segments(self):
        self.assertEqual(contiguous_segments(np.array([0, 1, 2, 5, 6, 9])), [(0, 3), (5, 7), (9, 10)])
        self.assertEqual(contiguous_segments(np.array([], int)), [])


class DesignTest(TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()

    def table(self, name="c_desc-confounds_timeseries.tsv", **kwargs):
        path = os.path.join(self.dir, name)
        write_tsv(path, confounds_rows(NUM_FRAMES, **kwargs))
        return path

    def test_columns_of_a_strategy_tsv_and_gz(self):
        for name in ("a.tsv", "b.tsv.gz"):
            design = load_design(self.table(name), parse_strategy("motion24+wm_csf+cosine"))
            self.assertEqual(len(design.columns), 24 + 2 + 2)
            self.assertEqual(design.columns[:6], ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"))
            self.assertEqual(design.columns[-2:], ("cosine00", "cosine01"))
            self.assertEqual(design.regressors.shape, (NUM_FRAMES, 28))
            self.assertEqual(design.regressors[0, 6], 0.0)  # the derivative's leading n/a reads as 0
            self.assertTrue(np.all(design.regressors[1:, 6] != 0))
            self.assertEqual(design.kept.tolist(), list(range(NUM_FRAMES)))

    def test_missing_column_names_file_and_column(self):
        path = self.table(drop=("csf",))
        with self.assertRaisesRegex(BadInputError, r"c_desc-confounds_timeseries\.tsv: no column 'csf' "
                                                   r"\(needed by confounds component 'wm_csf'"):
            load_design(path, ("motion6", "wm_csf"))
        path = self.table(drop=("framewise_displacement",))
        with self.assertRaisesRegex(BadInputError, "no column 'framewise_displacement'.*--fd-threshold 0.5"):
            load_design(path, (), fd_threshold=0.5)
        with self.assertRaisesRegex(BadInputError, "40 rows, but the run has 41 frames"):
            load_design(self.table(), ("motion6",), num_frames=41)

    def test_scrubbing_drops_frames_and_short_segments(self):
        path = self.table(high_motion=(12, 25, 27))
        design = load_design(path, (), fd_threshold=0.5, min_segment=5)
        # frames 12, 25 and 27 go; 26 alone (shorter than 5) goes too; FD of frame 0 is n/a -> kept
        self.assertEqual(design.segments, [(0, 12), (13, 25), (28, 40)])
        self.assertEqual(design.kept.tolist(), list(range(0, 12)) + list(range(13, 25)) + list(range(28, 40)))
        with self.assertRaisesRegex(BadInputError, "no 13 contiguous frames have framewise_displacement <= 0.5"):
            load_design(path, (), fd_threshold=0.5, min_segment=13)


class RegressionTest(TestCase):
    """A confound planted into every brain voxel is gone after regression; the result equals an
    independent whole-array least-squares reference, and each voxel keeps its mean."""

    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        data, self.affine = sample_excerpt(NUM_FRAMES)
        rows = confounds_rows(NUM_FRAMES, seed=3, high_motion=(17,))
        self.confounds = os.path.join(self.dir, "sub-01_task-rest_desc-confounds_timeseries.tsv")
        write_tsv(self.confounds, rows)
        self.csf = np.array([float(r["csf"]) for r in rows])
        self.wm = np.array([float(r["white_matter"]) for r in rows])
        self.mask = data.mean(axis=3) > 0.2 * np.percentile(data.mean(axis=3), 98)
        # planted at a few times each voxel's own temporal std, with a random sign
        weights = np.random.default_rng(0).choice([-3.0, 3.0], data.shape[:3]) * data.std(axis=3)
        self.data = (data + weights[..., None] * self.csf + 0.5 * weights[..., None] * self.wm).astype(np.float32)
        self.path = os.path.join(self.dir, "bold.nii.gz")
        nib.save(nib.Nifti1Image(self.data, self.affine), self.path)
        self.mask_path = os.path.join(self.dir, "mask.nii.gz")
        nib.save(nib.Nifti1Image(self.mask.astype(np.uint8), self.affine), self.mask_path)
        self.config = dict(target_shape=None, normalization="none", dtype="float32", min_frames=8)

    def reference(self, kept, columns):
        """Whole-array lstsq on the kept frames with a centred design (NumPy, no streaming)."""
        design = np.stack(columns, axis=1)[kept]
        design = design - design.mean(axis=0)
        brain = self.data[self.mask][:, kept].astype(np.float64)  # (N, K)
        coef, *_ = np.linalg.lstsq(design, brain.T, rcond=None)
        return brain - (design @ coef).T

    def test_planted_confound_is_removed(self):
        before = self.data[self.mask]
        self.assertGreater(np.median(np.abs([np.corrcoef(v, self.csf)[0, 1] for v in before])), 0.5)
        meta, frames = prepare_run(self.path, PreprocessConfig(confounds="wm_csf", **self.config),
                                   mask_path=self.mask_path, confounds_path=self.confounds)
        cleaned = np.stack(list(frames), axis=-1)[self.mask]  # (N, T)
        self.assertEqual(meta["confounds"]["columns"], ["white_matter", "csf"])
        self.assertEqual(meta["confounds"]["frames_kept"], list(range(NUM_FRAMES)))
        for confound in (self.csf, self.wm):
            correlation = [np.corrcoef(v, confound)[0, 1] for v in cleaned]
            self.assertLess(np.max(np.abs(correlation)), 1e-4)
        self.assertAllClose(cleaned, self.reference(np.arange(NUM_FRAMES), [self.wm, self.csf]),
                            atol=2e-3, rtol=1e-5)
        self.assertAllClose(cleaned.mean(axis=1), before.mean(axis=1), atol=1e-3, rtol=1e-6)  # mean kept

    def test_scrubbed_fit_and_segments(self):
        config = PreprocessConfig(confounds="wm_csf", fd_threshold=0.5, **self.config)
        kept = np.array([t for t in range(NUM_FRAMES) if t != 17])
        reference = self.reference(kept, [self.wm, self.csf])  # fit on the kept frames only
        meta, frames = prepare_run(self.path, config, mask_path=self.mask_path, confounds_path=self.confounds)
        self.assertEqual(meta["num_frames"], NUM_FRAMES - 1)
        self.assertEqual(meta["confounds"]["frames_kept"], kept.tolist())
        self.assertAllClose(np.stack(list(frames), axis=-1)[self.mask], reference, atol=2e-3, rtol=1e-5)
        meta, frames = prepare_run(self.path, config, mask_path=self.mask_path, confounds_path=self.confounds,
                                   segment=(18, 40))
        self.assertEqual(meta["num_frames"], 22)
        self.assertEqual(meta["confounds"]["segment"], [18, 40])
        self.assertAllClose(np.stack(list(frames), axis=-1)[self.mask], reference[:, 17:], atol=2e-3, rtol=1e-5)
        with self.assertRaisesRegex(BadInputError, r"segment \[10, 20\] is not a run of kept frames"):
            prepare_run(self.path, config, confounds_path=self.confounds, segment=(10, 20))

    def test_zscore_after_regression(self):
        meta, frames = prepare_run(self.path, PreprocessConfig(target_shape=None, confounds="wm_csf", min_frames=8,
                                                               dtype="float32"),
                                   mask_path=self.mask_path, confounds_path=self.confounds)
        brain = np.stack(list(frames), axis=-1)[self.mask]
        self.assertAlmostEqual(float(brain.mean()), 0.0, places=4)
        self.assertAlmostEqual(float(brain.std()), 1.0, places=4)

    def test_needs_a_confounds_file(self):
        with self.assertRaisesRegex(BadInputError, r"bold\.nii\.gz: no confounds file .*confounds=wm_csf"):
            prepare_run(self.path, PreprocessConfig(confounds="wm_csf", **self.config))
