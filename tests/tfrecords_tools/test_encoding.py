"""Encoding datasets: streams + per-subject targets -> TFRecords -> windows, splits by run,
parcel means from a NIfTI + parcellation, and clear errors."""

import os

import nibabel as nib
import numpy as np

from tests.test_case import TestCase
from tfrecords_tools.encoding import (EncodingRun, encoding_windows, make_run_splits,
                                      num_encoding_windows, parcel_means,
                                      write_encoding_dataset)
from tfrecords_tools.encoding_synthetic import make_encoding_cohort
from tfrecords_tools.errors import BadInputError


class EncodingDatasetTest(TestCase):
    def test_round_trip_windows_and_splits(self):
        cohort = make_encoding_cohort(num_subjects=2, num_runs=3, run_length=40,
                                      num_targets=5, seed=1)
        folder = self.get_temp_dir()
        runs = []
        for i, run in enumerate(cohort.features):
            path = os.path.join(folder, f"{run}_s0.npy")
            np.save(path, cohort.features[run][0][:38])  # 2 TRs short: edge-padded
            targets = {f"sub-{s + 1:02d}": cohort.responses[run][s] for s in range(2)}
            if i == 2:
                targets.pop("sub-02")  # a subject without this run
            runs.append(EncodingRun(run, {"text": path, "video": cohort.features[run][1]},
                                    targets))
        splits = {"train": ["run-01", "run-02"], "test": ["run-03"]}
        out = os.path.join(folder, "ds")
        info = write_encoding_dataset(out, runs, splits=splits, tr=2.0)
        self.assertEqual(info["subjects"], ["sub-01", "sub-02"])
        self.assertEqual(info["streams"], [{"name": "text", "shape": [8]},
                                           {"name": "video", "shape": [2, 6]}])
        self.assertEqual(info["runs"][0]["padded_feature_frames"], {"text": 2, "video": 0})
        self.assertEqual(num_encoding_windows(out, "train", window=16, stride=8), 2 * 4)
        windows = list(encoding_windows(out, "train", window=16, stride=8))
        self.assertEqual(len(windows), 8)
        streams, targets, valid = windows[0]
        self.assertEqual(tuple(streams["video"].shape), (16, 2, 6))
        self.assertEqual(tuple(targets.shape), (2, 16, 5))
        first = [w for w in windows if np.allclose(w[0]["video"], cohort.features["run-01"][1][:16])]
        self.assertEqual(len(first), 1)
        self.assertAllClose(first[0][1], cohort.responses["run-01"][:, :16], atol=0, rtol=0)
        test = list(encoding_windows(out, "test", window=16))
        self.assertAllClose(test[0][2], [1.0, 0.0], atol=0, rtol=0)
        batch = next(iter(encoding_windows(out, "train", window=16, batch_size=4, shuffle=True)))
        self.assertEqual(tuple(batch[1].shape), (4, 2, 16, 5))

        auto = make_run_splits([f"movie-{i}" for i in range(10)], (0.8, 0.1, 0.1), seed=0)
        self.assertEqual([len(auto[k]) for k in ("train", "val", "test")], [8, 1, 1])
        with self.assertRaisesRegex(ValueError, "both"):
            write_encoding_dataset(os.path.join(folder, "bad"), runs,
                                   splits={"train": ["run-01"], "test": ["run-01"]})

    def test_parcel_means_and_bad_inputs(self):
        folder = self.get_temp_dir()
        rng = np.random.default_rng(0)
        bold = rng.normal(size=(4, 4, 3, 10)).astype("float32")
        labels = np.zeros((4, 4, 3), "int16")
        labels[:2] = 3
        labels[2:, :2] = 7
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(bold, affine), os.path.join(folder, "bold.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), os.path.join(folder, "parc.nii.gz"))
        series, found = parcel_means(os.path.join(folder, "bold.nii.gz"),
                                     os.path.join(folder, "parc.nii.gz"))
        self.assertEqual(found.tolist(), [3, 7])
        self.assertAllClose(series[:, 0], bold[:2].reshape(-1, 10).mean(0), atol=1e-6, rtol=0)
        nib.save(nib.Nifti1Image(labels[:3], affine), os.path.join(folder, "wrong.nii.gz"))
        with self.assertRaisesRegex(BadInputError, "does not match the grid"):
            parcel_means(os.path.join(folder, "bold.nii.gz"), os.path.join(folder, "wrong.nii.gz"))
        features = {"a": rng.normal(size=(10, 3)).astype("float32")}
        nan = features["a"].copy()
        nan[2, 1] = np.nan
        with self.assertRaisesRegex(BadInputError, "NaN"):
            write_encoding_dataset(os.path.join(folder, "x"), [EncodingRun("r", {"a": nan},
                                                                           {"s": series})])
        info = write_encoding_dataset(os.path.join(folder, "z"), [EncodingRun(
            "r", features, {"s": (os.path.join(folder, "bold.nii.gz"),
                                  os.path.join(folder, "parc.nii.gz"))})])
        self.assertEqual(info["parcellations"]["s"]["labels"], [3, 7])
        self.assertEqual(info["num_targets"], 2)
        with self.assertRaisesRegex(BadInputError, "parcellation|grid"):
            write_encoding_dataset(os.path.join(folder, "y"), [EncodingRun(
                "r", features, {"s": (os.path.join(folder, "bold.nii.gz"),
                                      os.path.join(folder, "wrong.nii.gz"))})])
