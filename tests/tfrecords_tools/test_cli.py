import json
import os
import shutil

import numpy as np

from tests.test_case import TestCase, shared_data_path
from tfbrain import sample_data
from tfrecords_tools import cli, num_windows, to_original_space, windows


class SampleDataTest(TestCase):
    """The shipped real studyforrest excerpt converts and streams, with events labels."""

    def test_prepare_sample_with_events(self):
        paths = sample_data.studyforrest_localizer()
        self.assertLess(os.path.getsize(paths["bold"]), 5e6)
        self.assertTrue(os.path.exists(paths["license"]))
        out = os.path.join(self.get_temp_dir(), "sf")
        code = cli.main([paths["bold"], "--events-file", paths["events"], "-o", out, "--target-shape", "40", "40",
                         "20", "--workers", "0", "--no-progress", "--hrf-delay", "5"])
        self.assertEqual(code, 0)
        with open(os.path.join(out, "dataset.json")) as f:
            info = json.load(f)
        self.assertEqual(info["labels"]["vocabulary"], ["body", "face", "house", "object", "scene", "scramble", "rest"])
        run = info["runs"][0]
        self.assertEqual(run["num_frames"], 156)
        self.assertAlmostEqual(run["tr"], 1.79355, places=4)
        self.assertEqual(run["frame_labels"][:12], [6] * 10 + [1] * 2)  # face block at 12 s, seen 5 s later
        labels = [int(l) for _, l, _ in windows(out, window=8, stride=8, shuffle=False)]
        self.assertEqual(len(labels), num_windows(out, window=8))
        self.assertEqual(set(labels), set(range(7)))  # every category and rest
        stored = np.zeros((40, 40, 20), np.float32)
        self.assertEqual(to_original_space(stored, out, "studyforrest_localizer_bold").shape, (40, 40, 17))

    def test_bad_input_exit_code(self):
        folder = self.get_temp_dir()
        path = os.path.join(folder, "bad.nii.gz")
        shutil.copy(sample_data.studyforrest_localizer()["bold"], path)
        with open(path, "r+b") as f:
            f.truncate(100_000)
        self.assertEqual(cli.main([path, "-o", os.path.join(folder, "out"), "--workers", "0", "--no-progress"]), 2)

    def test_registered_as_tfbrain_prepare(self):
        from tfbrain.cli import SUBCOMMANDS
        self.assertEqual(SUBCOMMANDS["prepare"][0], "tfrecords_tools.cli")

    def test_full_studyforrest_run(self):
        folder = shared_data_path("studyforrest-localizer")
        out = os.path.join(self.get_temp_dir(), "full")
        code = cli.main([str(folder / "bold.nii.gz"), "--events-file", str(folder / "events.tsv"), "-o", out,
                         "--workers", "0", "--no-progress"])
        self.assertEqual(code, 0)
        window, label, subject = next(iter(windows(out, window=20)))
        self.assertEqual(window.shape, (96, 96, 96, 20, 1))
        self.assertEqual(subject.numpy(), b"bold")
