import os

import numpy as np
import tensorflow as tf

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import synthetic_runs
from tfrecords_tools import (PreprocessConfig, convert, load_dataset_info, num_windows, read_frames,
                             runs_from_files, windows)

_CACHE = {}


def _dataset(num_subjects=6, num_frames=24):
    """One converted folder shared by the tests of this module (conversion is the slow part)."""
    key = (num_subjects, num_frames)
    if key not in _CACHE:
        import tempfile
        folder = tempfile.mkdtemp(prefix="tfbrain_reader_")
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=num_subjects, num_frames=num_frames)
        convert(runs_from_files(paths, labels=[i % 2 for i in range(num_subjects)]), os.path.join(folder, "out"),
                config=PreprocessConfig(target_shape=(8, 8, 8), min_frames=4), workers=0, progress=False,
                shard_size_mb=0.005, split_fractions=(0.5, 0.25, 0.25))
        _CACHE[key] = os.path.join(folder, "out")
    return _CACHE[key]


class WindowsTest(TestCase):
    def test_counts_for_strides(self):
        out = _dataset()
        for stride, expected in [(None, 6 * 4), (3, 6 * 7), (8, 6 * 3)]:
            got = sum(1 for _ in windows(out, window=6, stride=stride))
            self.assertEqual(got, expected, f"stride={stride}")
            self.assertEqual(num_windows(out, window=6, stride=stride), expected)

    def test_overlapping_windows_hold_consecutive_frames(self):
        out = _dataset()
        frames = np.stack([f["volume"].numpy() for f in read_frames(out, run="sub-02")])  # (T, D, H, W)
        got = [w.numpy()[..., 0] for w, _, _ in windows(out, window=6, stride=3, shuffle=False, subjects=["sub-02"])]
        for k, window in enumerate(got):
            self.assertAllClose(window, np.transpose(frames[3 * k:3 * k + 6], (1, 2, 3, 0)))

    def test_static_shapes_and_dtypes_when_batched(self):
        ds = windows(_dataset(), window=6, batch_size=4)
        window_spec, label_spec, subject_spec = ds.element_spec
        self.assertEqual(tuple(window_spec.shape), (4, 8, 8, 8, 6, 1))
        self.assertEqual(window_spec.dtype, tf.float32)
        self.assertEqual(label_spec.dtype, tf.int32)
        self.assertEqual(subject_spec.dtype, tf.string)

    def test_deterministic_with_seed(self):
        def order(seed):
            return [s.numpy() for _, _, s in windows(_dataset(), window=6, seed=seed)]
        self.assertEqual(order(3), order(3))
        self.assertNotEqual(order(3), order(4))

    def test_labels_follow_subjects(self):
        for _, label, subject in windows(_dataset(), window=6):
            self.assertEqual(int(label), int(subject.numpy().decode()[-2:]) % 2)

    def test_pairs_are_two_non_overlapping_windows_of_one_subject(self):
        out = _dataset()
        frames = {f"sub-{i:02d}": np.stack([f["volume"].numpy() for f in read_frames(out, run=f"sub-{i:02d}")])
                  for i in range(6)}
        count = 0
        for pair, _, subject in windows(out, window=6, stride=2, pairs=True, seed=1):
            self.assertEqual(pair.shape, (2, 8, 8, 8, 6, 1))
            run = frames[subject.numpy().decode()]
            starts = []
            for view in pair.numpy()[..., 0]:
                first = np.transpose(view, (3, 0, 1, 2))[0]
                starts.append(next(t for t in range(len(run)) if np.array_equal(run[t], first)))
            self.assertGreaterEqual(abs(starts[0] - starts[1]), 6)
            count += 1
        self.assertEqual(count, 6 * 2)  # 4 non-overlapping windows of 6 frames per run -> 2 pairs

    def test_repeat_and_cache(self):
        ds = windows(_dataset(), window=6, repeat=True, cache=True)
        self.assertEqual(sum(1 for _ in ds.take(60)), 60)

    def test_frames_span(self):
        out = _dataset()
        self.assertEqual(sum(1 for _ in windows(out, window=6, frames=(0.0, 0.5))), 6 * 2)

    def test_unknown_split_names_choices(self):
        with self.assertRaisesRegex(ValueError, "`split` must be one of"):
            windows(_dataset(), split="holdout")


V1_DENSE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "tfrecords_v1_dense")


def _storage_pair():
    """The same runs converted brain_only (the default) and dense, for bitwise comparisons."""
    if "storage" not in _CACHE:
        import tempfile
        folder = tempfile.mkdtemp(prefix="tfbrain_storage_")
        # the helper's runs: a brain block on a zero background, 10x12x8 padded into 8x10x9
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=3, num_frames=24)
        out = {}
        for storage in ("brain_only", "dense"):
            out[storage] = os.path.join(folder, storage)
            convert(runs_from_files(paths, labels=[0, 1, 0]), out[storage], storage=storage,
                    config=PreprocessConfig(target_shape=(8, 10, 9), min_frames=4), workers=0,
                    progress=False, shard_size_mb=0.004, split_fractions=(0.34, 0.33, 0.33))
        _CACHE["storage"] = out
    return _CACHE["storage"]


def _all_windows(ds):
    return [(w.numpy(), np.asarray(label).tolist(), np.asarray(subject).tolist()) for w, label, subject in ds]


class StorageTest(TestCase):
    def assertSameWindows(self, got, expected):
        self.assertEqual(len(got), len(expected))
        for (w, label, subject), (w_ref, label_ref, subject_ref) in zip(got, expected):
            self.assertEqual((w.shape, w.dtype, label, subject), (w_ref.shape, w_ref.dtype, label_ref, subject_ref))
            self.assertEqual(w.tobytes(), w_ref.tobytes())  # bit-identical, not just close

    def test_brain_only_stores_fewer_bytes(self):
        out = _storage_pair()
        sizes = {}
        for storage, folder in out.items():
            info = load_dataset_info(folder)
            self.assertEqual(info["storage"], storage)
            sizes[storage] = sum(s["bytes"] for s in info["shards"])
        self.assertLess(sizes["brain_only"], sizes["dense"])

    def test_brain_only_and_dense_windows_are_bit_identical(self):
        out = _storage_pair()
        for kwargs in [dict(window=6), dict(window=6, stride=3), dict(window=6, stride=8), dict(window=5, stride=2),
                       dict(window=6, dtype="float16"), dict(window=4, stride=1, dtype="float16"),
                       dict(window=6, stride=2, pairs=True, seed=1), dict(window=6, frames=(0.25, 1.0)),
                       dict(window=6, split="train", batch_size=2, seed=5)]:
            with self.subTest(**kwargs):
                kwargs = {"shuffle": False, **kwargs}
                self.assertSameWindows(_all_windows(windows(out["brain_only"], **kwargs)),
                                       _all_windows(windows(out["dense"], **kwargs)))

    def test_shuffled_order_does_not_depend_on_storage(self):
        out = _storage_pair()
        self.assertSameWindows(_all_windows(windows(out["brain_only"], window=6, stride=3, seed=7)),
                               _all_windows(windows(out["dense"], window=6, stride=3, seed=7)))

    def test_windows_from_the_frame_stream_are_the_frames(self):
        """stride < window: windows assembled from a stream of frames, each read once, equal
        slices of the run's frames, bit for bit, in both storages and both dtypes."""
        out = _storage_pair()
        frames = np.stack([f["volume"].numpy() for f in read_frames(out["dense"], run="sub-01")])  # (T, D, H, W)
        for storage in ("brain_only", "dense"):
            for dtype in ("float32", "float16"):
                got = [w.numpy()[..., 0] for w, _, _ in windows(out[storage], window=7, stride=3, shuffle=False,
                                                                subjects=["sub-01"], dtype=dtype)]
                self.assertEqual(len(got), (24 - 7) // 3 + 1)
                for k, window in enumerate(got):
                    expected = np.transpose(frames[3 * k:3 * k + 7], (1, 2, 3, 0)).astype(dtype)  # (D, H, W, T)
                    self.assertEqual(window.tobytes(), expected.tobytes(), f"{storage} {dtype} window {k}")

    def test_read_frames_puts_the_background_back(self):
        out = _storage_pair()
        brain_only = np.stack([f["volume"].numpy() for f in read_frames(out["brain_only"])])
        dense = np.stack([f["volume"].numpy() for f in read_frames(out["dense"])])
        self.assertEqual(brain_only.tobytes(), dense.tobytes())
        run = load_dataset_info(out["brain_only"])["runs"][0]
        background = np.float16(np.float32(run["background"]))
        self.assertEqual((brain_only[0] == background).sum(), 8 * 10 * 9 - run["stored_brain_voxels"])

    def test_dataset_written_the_old_way_still_reads(self):
        """The schema_version 1 fixture (written by the code before brain_only storage, no
        `storage` key) reads as dense, and its windows equal a brain_only conversion of the
        same runs by today's code, bit for bit."""
        info = load_dataset_info(V1_DENSE)
        self.assertEqual((info["schema_version"], info["storage"]), (1, "dense"))
        import tempfile
        folder = tempfile.mkdtemp(prefix="tfbrain_v1_")
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=2, num_frames=24)
        convert(runs_from_files(paths, labels=["a", "b"]), os.path.join(folder, "out"),
                config=PreprocessConfig(target_shape=(8, 8, 8), min_frames=4), workers=0, progress=False)
        for kwargs in [dict(window=6), dict(window=6, stride=2, dtype="float16")]:
            self.assertSameWindows(_all_windows(windows(os.path.join(folder, "out"), shuffle=False, **kwargs)),
                                   _all_windows(windows(V1_DENSE, shuffle=False, verify="sha256", **kwargs)))

    def test_window_dtype_is_checked(self):
        with self.assertRaisesRegex(ValueError, "`dtype` must be one of .* Received: 'int8'"):
            windows(_storage_pair()["brain_only"], window=6, dtype="int8")

    def test_float16_windows(self):
        out = _storage_pair()
        window, _, _ = next(iter(windows(out["brain_only"], window=6, dtype="float16", batch_size=2)))
        self.assertEqual((window.dtype, tuple(window.shape)), (tf.float16, (2, 8, 10, 9, 6, 1)))
