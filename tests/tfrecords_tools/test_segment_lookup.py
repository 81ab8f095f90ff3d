"""A run that scrubbing split into `<key>_seg-<i>` entries is found by its original key or its
subject: `run_segments` in frame order, one `run_info` on the shared grid, `to_original_space`,
`read_frames` and `windows(subjects=...)` over all segments; ambiguous names list the keys."""

import json
import os
import shutil

import numpy as np

import tfrecords_tools
from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import confounds_rows, synthetic_run, write_tsv

NUM_FRAMES = 24
# FD above threshold at every even frame from 2 to 22: segments [0, 2), [3, 4), [5, 6), ...,
# [23, 24): twelve, so `_seg-10` sorts before `_seg-2` as text
HIGH_MOTION = tuple(range(2, 23, 2))
SEGMENTS = [[0, 2]] + [[t, t + 1] for t in range(3, 24, 2)]


class SegmentLookupTest(TestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile

        cls.base = tempfile.mkdtemp(prefix="segment_lookup_")
        runs = []
        for i, (subject, key, high_motion) in enumerate([("sub-00", "sub-00_task-rest", HIGH_MOTION),
                                                         ("sub-01", "sub-01_run-1", ()),
                                                         ("sub-01", "sub-01_run-2", (5,))]):
            path = os.path.join(cls.base, f"{key}_bold.nii.gz")
            synthetic_run(path, num_frames=NUM_FRAMES, seed=i)
            table = os.path.join(cls.base, f"{key}_desc-confounds_timeseries.tsv")
            write_tsv(table, confounds_rows(NUM_FRAMES, seed=i, high_motion=high_motion))
            runs.append(tfrecords_tools.Run(path=path, subject=subject, key=key, confounds_path=table))
        cls.dataset = os.path.join(cls.base, "dataset")
        config = tfrecords_tools.PreprocessConfig(target_shape=(8, 8, 6), confounds="wm_csf", fd_threshold=0.5,
                                                  min_frames=1)
        tfrecords_tools.convert(runs, cls.dataset, config=config, workers=0, progress=False)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base, ignore_errors=True)

    def test_original_key_and_subject_resolve_to_the_segments_in_frame_order(self):
        keys = [f"sub-00_task-rest_seg-{i}" for i in range(1, 13)]
        for name in ("sub-00_task-rest", "sub-00"):
            entries = tfrecords_tools.run_segments(self.dataset, name)
            self.assertEqual([e["key"] for e in entries], keys)
            self.assertEqual([e["confounds"]["segment"] for e in entries], SEGMENTS)
        self.assertEqual([e["key"] for e in tfrecords_tools.run_segments(self.dataset, keys[9])], [keys[9]])
        self.assertEqual(tfrecords_tools.original_run_key(tfrecords_tools.run_segments(self.dataset, keys[3])[0]),
                         "sub-00_task-rest")
        info = tfrecords_tools.run_info(self.dataset, "sub-00")
        self.assertEqual(info["key"], "sub-00_task-rest")
        self.assertEqual(info["segments"], keys)
        self.assertEqual(info["segment_frames"], SEGMENTS)
        self.assertEqual(info["num_frames"], NUM_FRAMES - len(HIGH_MOTION))
        self.assertIsNone(info["confounds"]["segment"])
        one = tfrecords_tools.run_info(self.dataset, keys[4])
        for name in ("offsets", "stored_affine", "original_affine", "mean", "std", "background"):
            self.assertEqual(info[name], one[name])

    def test_maps_frames_and_windows_of_the_original_run(self):
        grid = np.random.default_rng(0).normal(size=(8, 8, 6)).astype(np.float32)
        whole = tfrecords_tools.to_original_space(grid, self.dataset, "sub-00").get_fdata()
        for key in ("sub-00_task-rest_seg-1", "sub-00_task-rest_seg-12"):
            np.testing.assert_array_equal(
                whole, tfrecords_tools.to_original_space(grid, self.dataset, key).get_fdata())
        frames = [f["volume"].numpy() for f in tfrecords_tools.read_frames(self.dataset, "sub-00_task-rest")]
        by_segment = [f["volume"].numpy() for i in range(1, 13)
                      for f in tfrecords_tools.read_frames(self.dataset, f"sub-00_task-rest_seg-{i}")]
        self.assertEqual(len(frames), NUM_FRAMES - len(HIGH_MOTION))
        np.testing.assert_array_equal(np.stack(frames), np.stack(by_segment))
        stream = tfrecords_tools.windows(self.dataset, None, window=1, shuffle=False, subjects=["sub-00_task-rest"])
        self.assertEqual(len(list(stream)), NUM_FRAMES - len(HIGH_MOTION))

    def test_ambiguous_or_unknown_names_list_the_keys(self):
        # sub-01 has an unsplit run and a run scrubbed into two segments
        with self.assertRaisesRegex(ValueError, r"'sub-01', which matches 2 runs \(sub-01_run-1, "
                                                r"sub-01_run-2_seg-1, sub-01_run-2_seg-2\); name one"):
            tfrecords_tools.run_info(self.dataset, "sub-01")
        self.assertEqual(tfrecords_tools.run_info(self.dataset, "sub-01_run-2")["segments"],
                         ["sub-01_run-2_seg-1", "sub-01_run-2_seg-2"])
        with self.assertRaisesRegex(ValueError, r"'sub-09', which matches 0 runs"):
            tfrecords_tools.run_info(self.dataset, "sub-09")

    def test_segments_on_different_grids_are_refused(self):
        folder = os.path.join(self.base, "edited")
        shutil.copytree(self.dataset, folder, dirs_exist_ok=True)
        path = os.path.join(folder, "dataset.json")
        with open(path) as f:
            info = json.load(f)
        next(r for r in info["runs"] if r["key"] == "sub-00_task-rest_seg-2")["offsets"][0] += 1
        with open(path, "w") as f:
            json.dump(info, f)
        with self.assertRaisesRegex(ValueError, r"differ in \['offsets'\]; name one segment key"):
            tfrecords_tools.run_info(folder, "sub-00_task-rest")
