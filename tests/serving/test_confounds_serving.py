"""Serving a model trained on confound-regressed, scrubbed data: a raw NIfTI plus its fMRIPrep
confounds table (and brain mask) gives the windows (and so the predictions) of the prepared TFRecords, cut per
kept segment, with the source frames of each window; mismatched tables are one-line errors."""

import contextlib
import io
import os
import pathlib

import nibabel as nib
import numpy as np

import tfrecords_tools
from serving.server import ModelServer
from serving.windows import nifti_windows, preprocessing_from_file
from tests.serving.toy_task import make_toy_task
from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import confounds_rows, sample_excerpt, write_tsv
from tfbrain import export

VOLUME = (8, 8, 4, 3, 1)  # (D, H, W, T, C) of the toy model's window
NUM_FRAMES = 40
# FD above threshold at 12, 25, 30: segments [0, 12), [13, 25), [26, 30), [31, 40); the
# 4-frame one is shorter than the recorded min_frames (8), so training dropped it
HIGH_MOTION = (12, 25, 30)
KEPT_SEGMENTS = [(0, 12), (13, 25), (31, 40)]


class ConfoundsServingTest(TestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile

        cls.base = pathlib.Path(tempfile.mkdtemp(prefix="servconf_"))
        data, affine = sample_excerpt(NUM_FRAMES)
        cls.bold = str(cls.base / "sub-01_task-rest_bold.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), cls.bold)
        cls.table = str(cls.base / "sub-01_task-rest_desc-confounds_timeseries.tsv.gz")
        write_tsv(cls.table, confounds_rows(NUM_FRAMES, seed=3, high_motion=HIGH_MOTION))
        # fMRIPrep's brain mask, a little smaller than the derived one, so that using it shows
        cls.mask = str(cls.base / "sub-01_task-rest_desc-brain_mask.nii.gz")
        mean = data.mean(axis=3)
        nib.save(nib.Nifti1Image((mean > 0.4 * np.percentile(mean, 98)).astype(np.uint8), affine), cls.mask)
        cls.dataset = str(cls.base / "dataset")
        config = tfrecords_tools.PreprocessConfig(target_shape=VOLUME[:3], mask_method="mean",
                                                  confounds="motion24+wm_csf+cosine", fd_threshold=0.5,
                                                  min_frames=8)
        tfrecords_tools.convert([tfrecords_tools.Run(path=cls.bold, subject="sub-01", key="sub-01_task-rest",
                                                     mask_path=cls.mask, confounds_path=cls.table)],
                                cls.dataset, config=config, workers=0, progress=False)
        cls.preprocessing = preprocessing_from_file(os.path.join(cls.dataset, "dataset.json"))

    @classmethod
    def tearDownClass(cls):
        import shutil

        shutil.rmtree(cls.base, ignore_errors=True)

    def prepared_windows(self) -> np.ndarray:
        """The dataset's windows segment by segment, each in frame order."""
        keys = [f"sub-01_task-rest_seg-{i}" for i in range(1, len(KEPT_SEGMENTS) + 1)]
        self.assertEqual(sorted(r["key"] for r in tfrecords_tools.load_dataset_info(self.dataset)["runs"]), keys)
        windows = []
        for key in keys:
            stream = tfrecords_tools.windows(self.dataset, None, window=VOLUME[3], shuffle=False, seed=0,
                                             dtype="float32", subjects=[key])
            windows += [w for w, _, _ in stream.as_numpy_iterator()]
        return np.stack(windows)

    def test_nifti_and_confounds_give_the_prepared_windows(self):
        served = nifti_windows(self.bold, VOLUME, self.preprocessing, confounds=self.table, mask=self.mask)
        prepared = self.prepared_windows()
        self.assertEqual(served.windows.shape, prepared.shape)  # 4 + 4 + 3 windows of 3 frames
        np.testing.assert_array_equal(served.windows, prepared)
        self.assertEqual(served.segments, KEPT_SEGMENTS)
        expected = [(a + k, a + k + 3) for a, b in KEPT_SEGMENTS for k in range(0, (b - a) // 3 * 3, 3)]
        self.assertEqual([tuple(f) for f in served.frames.tolist()], expected)
        self.assertEqual(served.segment.tolist(), [1] * 4 + [2] * 4 + [3] * 3)
        derived = nifti_windows(self.bold, VOLUME, self.preprocessing, confounds=self.table)
        self.assertFalse(np.array_equal(derived.windows, prepared))  # the mask file matters

    def test_bad_tables_are_one_line_errors(self):
        other = str(self.base / "other_desc-confounds_timeseries.tsv")
        write_tsv(other, confounds_rows(NUM_FRAMES - 1, seed=3))
        no_csf = str(self.base / "nocsf_desc-confounds_timeseries.tsv")
        write_tsv(no_csf, confounds_rows(NUM_FRAMES, seed=3, drop=("csf",)))
        cases = [(None, r"tfbrain predict --confounds FILE"), (other, r"39 rows, but the run has 40 frames"),
                 (no_csf, r"nocsf_desc-confounds_timeseries\.tsv: no column 'csf'")]
        for table, message in cases:
            with self.subTest(table=table), self.assertRaisesRegex(ValueError, message):
                nifti_windows(self.bold, VOLUME, self.preprocessing, confounds=table, mask=self.mask)
        with self.assertRaisesRegex(ValueError, "regresses no confounds and scrubs nothing"):
            nifti_windows(self.bold, VOLUME, {"mask_method": "mean"}, confounds=self.table)

    def test_predict_cli_equals_the_model_on_prepared_windows(self):
        from tfbrain import cli

        model = make_toy_task(num_classes=2, volume_shape=VOLUME)
        export.export_model(model, self.base / "models", "toy", warmup=False)
        out = self.base / "nifti.npz"
        common = ["--model", "toy", "--preprocessing", os.path.join(self.dataset, "dataset.json")]
        with ModelServer({"toy": self.base / "models" / "toy"}, port=0) as server:
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                code = cli.main(["predict", self.bold, "--target", server.target, *common,
                                 "--confounds", self.table, "--mask", self.mask, "--batch-size", "4",
                                 "--output", str(out)])
            self.assertEqual(code, 0)
            self.assertIn("window 4 (frames 13-15, segment 2/3): ", stdout.getvalue())
            # the dataset used confounds and none is given: one line, exit 2
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                code = cli.main(["predict", self.bold, "--target", server.target, *common])
            self.assertEqual(code, 2)
            self.assertEqual(len(stderr.getvalue().strip().splitlines()), 1)
            self.assertIn("--confounds", stderr.getvalue())
        expected = np.asarray(model(self.prepared_windows())["logits"])
        with np.load(out) as result:
            np.testing.assert_allclose(result["logits"], expected, rtol=1e-6, atol=1e-6)
            self.assertEqual(result["window_frames"][4].tolist(), [13, 16])
            self.assertEqual(result["window_segment"].tolist(), [1] * 4 + [2] * 4 + [3] * 3)
