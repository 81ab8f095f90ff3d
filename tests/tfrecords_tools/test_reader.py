import os

import numpy as np
import tensorflow as tf

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import synthetic_runs
from tfrecords_tools import PreprocessConfig, convert, num_windows, read_frames, runs_from_files, windows

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
