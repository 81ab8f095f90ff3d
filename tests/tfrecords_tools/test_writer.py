import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import reference_preprocess, synthetic_run, synthetic_runs
from tfrecords_tools import BadInputError, PreprocessConfig, convert, runs_from_files, windows
from tfrecords_tools import writer as writer_lib

CONFIG = PreprocessConfig(target_shape=(8, 8, 8), min_frames=4)


def _records(dataset_dir):
    """Every record's bytes, per shard, in dataset.json order."""
    with open(os.path.join(dataset_dir, "dataset.json")) as f:
        info = json.load(f)
    return {s["path"]: [r.numpy() for r in tf.data.TFRecordDataset(
        os.path.join(dataset_dir, s["path"]), compression_type=info["compression"])] for s in info["shards"]}


class ConvertTest(TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        self.paths = synthetic_runs(os.path.join(self.dir, "nii"), num_subjects=4)
        self.runs = runs_from_files(self.paths, labels=["a", "b", "a", "b"])

    def convert(self, out="out", **kwargs):
        kwargs = {"config": CONFIG, "workers": 0, "shard_size_mb": 0.004, "progress": False, **kwargs}
        return convert(kwargs.pop("runs", self.runs), os.path.join(self.dir, out), **kwargs)

    def test_round_trip_window_equals_preprocessed_array(self):
        summary = self.convert()
        self.assertEqual((summary.runs_converted, summary.subjects, summary.frames), (4, 4, 96))
        out = os.path.join(self.dir, "out")
        with open(os.path.join(out, "dataset.json")) as f:
            info = json.load(f)
        run = info["runs"][0]
        data = np.asarray(__import__("nibabel").load(self.paths[0]).dataobj)
        expected = reference_preprocess(data, run["offsets"], (8, 8, 8)).astype(np.float32)  # (T, D, H, W)
        got = [w.numpy() for w, label, subject in windows(out, window=6, shuffle=False, subjects=["sub-00"])]
        self.assertEqual(len(got), 4)
        for k, window in enumerate(got):
            self.assertEqual(window.shape, (8, 8, 8, 6, 1))
            self.assertAllClose(window[..., 0], np.transpose(expected[6 * k:6 * k + 6], (1, 2, 3, 0)),
                                atol=2e-3, rtol=1e-3)

    def test_dataset_json_schema(self):
        self.convert()
        out = os.path.join(self.dir, "out")
        with open(os.path.join(out, "dataset.json")) as f:
            info = json.load(f)
        self.assertEqual((info["schema_version"], info["storage"]), (2, "brain_only"))  # the default
        self.assertEqual(info["frame_shape"], [8, 8, 8])
        self.assertEqual(info["dtype"], "float16")
        self.assertEqual(info["labels"], {"kind": "categorical", "vocabulary": ["a", "b"]})
        self.assertEqual(info["subjects"], ["sub-00", "sub-01", "sub-02", "sub-03"])
        self.assertGreater(len(info["shards"]), 4)  # the tiny shard size forces several per run
        for shard in info["shards"]:
            path = os.path.join(out, shard["path"])
            self.assertEqual(os.path.getsize(path), shard["bytes"])
            self.assertEqual(writer_lib._sha256(path), shard["sha256"])
        self.assertEqual(sum(s["num_records"] for s in info["shards"]), 96)
        for run in info["runs"]:  # one mask file per run, recorded like a shard
            mask_file = run["brain_mask"]
            self.assertEqual(mask_file["path"], f"masks/{run['key']}.tfrecord.gz")
            self.assertEqual(os.path.getsize(os.path.join(out, mask_file["path"])), mask_file["bytes"])
            self.assertEqual(writer_lib._sha256(os.path.join(out, mask_file["path"])), mask_file["sha256"])
            self.assertEqual(mask_file["num_voxels"], run["stored_brain_voxels"])
        self.assertEqual([r["label"] for r in info["runs"]], [0, 1, 0, 1])
        self.assertFalse([p for p in os.listdir(os.path.join(out, "shards")) if p.endswith(".tmp")])

    def test_schema_readable_with_plain_tf_data(self):
        self.convert(storage="dense")
        out = os.path.join(self.dir, "out")
        files = sorted(tf.io.gfile.glob(os.path.join(out, "shards", "sub-01.*")))
        spec = {"volume": tf.io.FixedLenFeature([], tf.string), "shape": tf.io.FixedLenFeature([3], tf.int64),
                "dtype": tf.io.FixedLenFeature([], tf.string), "subject": tf.io.FixedLenFeature([], tf.string),
                "frame": tf.io.FixedLenFeature([], tf.int64), "label": tf.io.FixedLenFeature([], tf.float32)}
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
            lambda r: tf.io.parse_single_example(r, spec))
        frames = list(ds)
        self.assertEqual([int(f["frame"]) for f in frames], list(range(24)))
        first = frames[0]
        self.assertEqual(first["dtype"].numpy(), b"float16")
        self.assertEqual(first["subject"].numpy(), b"sub-01")
        self.assertEqual(float(first["label"]), 1.0)
        volume = tf.reshape(tf.io.decode_raw(first["volume"], tf.float16), first["shape"])
        self.assertEqual(volume.shape, (8, 8, 8))

    def test_brain_only_schema_readable_with_plain_tf_data(self):
        self.convert()
        out = os.path.join(self.dir, "out")
        mask_spec = {"mask": tf.io.FixedLenFeature([], tf.string), "shape": tf.io.FixedLenFeature([3], tf.int64),
                     "background": tf.io.FixedLenFeature([], tf.string)}
        mask_record = next(iter(tf.data.TFRecordDataset(os.path.join(out, "masks", "sub-01.tfrecord.gz"),
                                                        compression_type="GZIP")))
        mask_record = tf.io.parse_single_example(mask_record, mask_spec)
        mask = tf.reshape(tf.io.decode_raw(mask_record["mask"], tf.uint8), mask_record["shape"]).numpy() > 0
        background = tf.io.decode_raw(mask_record["background"], tf.float16).numpy()[0]
        files = sorted(tf.io.gfile.glob(os.path.join(out, "shards", "sub-01.*")))
        spec = {"brain": tf.io.FixedLenFeature([], tf.string), "frame": tf.io.FixedLenFeature([], tf.int64)}
        frames = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        self.assertEqual([int(f["frame"]) for f in frames], list(range(24)))
        volume = np.full(mask.shape, background, np.float16)  # the documented recipe: scatter into the mask
        volume[mask] = tf.io.decode_raw(frames[5]["brain"], tf.float16).numpy()
        window = next(iter(windows(out, window=6, shuffle=False, subjects=["sub-01"], dtype="float16")))[0]
        self.assertEqual(volume.tobytes(), window.numpy()[..., 5, 0].tobytes())

    def test_resume_after_crash_gives_the_same_records(self):
        self.convert("clean")
        calls = []

        def crash(path):
            calls.append(path)
            if len(calls) == 5:  # in the middle of the second run
                raise KeyboardInterrupt("simulated kill")

        original = writer_lib._on_shard_written
        writer_lib._on_shard_written = crash
        try:
            with self.assertRaises(KeyboardInterrupt):
                self.convert("crashed")
        finally:
            writer_lib._on_shard_written = original
        crashed = os.path.join(self.dir, "crashed")
        self.assertFalse(os.path.exists(os.path.join(crashed, "dataset.json")))
        # what a real kill also leaves: a half-written .tmp shard of a run that never finished
        with open(os.path.join(crashed, "shards", "sub-03.00000.tfrecord.gz.tmp"), "wb") as f:
            f.write(b"partial")
        summary = self.convert("crashed")
        self.assertEqual(summary.runs_already_done, 1)
        self.assertEqual(summary.runs_converted, 3)
        self.assertEqual(_records(os.path.join(self.dir, "clean")), _records(crashed))
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "clean", "shards"))),
                         sorted(os.listdir(os.path.join(crashed, "shards"))))
        again = self.convert("crashed")  # nothing left to do
        self.assertEqual((again.runs_converted, again.runs_already_done), (0, 4))

    def test_resume_with_other_settings_is_refused(self):
        self.convert()
        with self.assertRaisesRegex(ValueError, "preprocessing"):
            self.convert(config=PreprocessConfig(target_shape=(6, 6, 6), min_frames=4))

    @pytest.mark.large  # two spawned processes each import TensorFlow: ~1 min on 2 shared cores
    def test_parallel_workers_write_the_same_records(self):
        self.convert("serial", runs=self.runs[:2])
        self.convert("parallel", runs=self.runs[:2], workers=2)
        self.assertEqual(_records(os.path.join(self.dir, "serial")), _records(os.path.join(self.dir, "parallel")))

    def test_uncompressed_float32(self):
        self.convert(compression="", config=PreprocessConfig(target_shape=(8, 8, 8), dtype="float32", min_frames=4))
        out = os.path.join(self.dir, "out")
        self.assertTrue(all(p.endswith(".tfrecord") for p in os.listdir(os.path.join(out, "shards"))))
        window, _, _ = next(iter(windows(out, window=4)))
        self.assertEqual(window.shape, (8, 8, 8, 4, 1))

    def test_numeric_labels(self):
        runs = runs_from_files(self.paths, labels=[1.5, 2.0, 3.25, 4.0])
        self.convert(runs=runs)
        _, label, _ = next(iter(windows(os.path.join(self.dir, "out"), window=4)))
        self.assertEqual(label.dtype, tf.float32)


class ConvertBadInputTest(TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        self.paths = synthetic_runs(os.path.join(self.dir, "nii"), num_subjects=3)
        self.short = os.path.join(self.dir, "nii", "sub-short.nii.gz")
        synthetic_run(self.short, num_frames=3)

    def test_bad_run_raises_by_default(self):
        runs = runs_from_files(self.paths + [self.short])
        with self.assertRaisesRegex(BadInputError, r"sub-short\.nii\.gz: too few frames"):
            convert(runs, os.path.join(self.dir, "out"), config=CONFIG, workers=0, progress=False)

    def test_skip_bad_logs_and_continues(self):
        runs = runs_from_files(self.paths + [self.short, self.paths[0]], labels=[0, 1, None, 1, 0])
        summary = convert(runs, os.path.join(self.dir, "out"), config=CONFIG, workers=0, progress=False,
                          skip_bad=True)
        reasons = sorted(reason.split(" ")[0] for _, reason in summary.skipped)
        # duplicate sub-00, no label for sub-02, 3 frames in sub-short
        self.assertEqual(reasons, ["duplicate", "missing", "too"])
        self.assertEqual(summary.subjects, 2)
        with open(os.path.join(self.dir, "out", "dataset.json")) as f:
            self.assertEqual(len(json.load(f)["skipped"]), 3)

    def test_missing_label_raises(self):
        runs = runs_from_files(self.paths, labels=[0, None, 1])
        with self.assertRaisesRegex(BadInputError, r"sub-01\.nii\.gz: missing label for subject 'sub-01'"):
            convert(runs, os.path.join(self.dir, "out"), config=CONFIG, workers=0, progress=False)

    def test_duplicate_subject_raises(self):
        runs = runs_from_files(self.paths + [self.paths[1]])
        with self.assertRaisesRegex(BadInputError, r"sub-01\.nii\.gz: duplicate subject 'sub-01'"):
            convert(runs, os.path.join(self.dir, "out"), config=CONFIG, workers=0, progress=False)
