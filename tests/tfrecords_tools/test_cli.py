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


class FMRIPrepPrepareTest(TestCase):
    """`tfbrain prepare --bids ... --participant-label 01 02 --confounds ...` on an fMRIPrep-style
    tree built from the bundled run."""

    @classmethod
    def setUpClass(cls):
        import tempfile

        from tests.tfrecords_tools.helpers import confounds_rows, fmriprep_tree, write_tsv

        cls.root = tempfile.mkdtemp(prefix="fmriprep_cli_")
        fmriprep_tree(cls.root)
        # sub-03's confounds lack the CSF column
        write_tsv(os.path.join(cls.root, "sub-03", "func", "sub-03_task-rest_desc-confounds_timeseries.tsv"),
                  confounds_rows(40, drop=("csf",)))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def prepare(self, *args):
        import contextlib
        import io

        from tfbrain.cli import main

        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["prepare", *args])
        return code, out.getvalue(), err.getvalue()

    def test_participants_confounds_scrubbing_ras(self):
        out = os.path.join(self.get_temp_dir(), "ds")
        args = ["--bids", self.root, "--participant-label", "01", "02", "--task", "rest", "--space",
                "MNI152NLin2009cAsym", "--confounds", "motion24+wm_csf+cosine", "--fd-threshold", "0.5",
                "--orientation", "ras", "--label-column", "age", "--target-shape", "16", "16", "8",
                "--min-frames", "8", "--workers", "0", "--no-progress", "-o", out]
        code, stdout, stderr = self.prepare(*args)
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(out, "dataset.json")) as f:
            info = json.load(f)
        self.assertEqual(info["preprocessing"]["confounds"], ["motion24", "wm_csf", "cosine"])
        self.assertEqual(info["preprocessing"]["fd_threshold"], 0.5)
        self.assertEqual(info["preprocessing"]["orientation"], "ras")
        self.assertEqual(info["subjects"], ["sub-01", "sub-02"])
        runs = {r["key"]: r for r in info["runs"]}
        # sub-01 moved at frames 12 and 25: three contiguous segments, each its own run
        sub01 = "sub-01_task-rest_space-MNI152NLin2009cAsym"
        self.assertEqual(sorted(k for k in runs if k.startswith("sub-01")), [f"{sub01}_seg-{i}" for i in (1, 2, 3)])
        self.assertEqual([runs[f"{sub01}_seg-{i}"]["confounds"]["segment"] for i in (1, 2, 3)],
                         [[0, 12], [13, 25], [26, 40]])
        self.assertEqual([runs[f"{sub01}_seg-{i}"]["num_frames"] for i in (1, 2, 3)], [12, 12, 14])
        record = runs[f"{sub01}_seg-2"]["confounds"]
        self.assertEqual(len(record["columns"]), 28)
        self.assertEqual(record["strategy"], "motion24+wm_csf+cosine")
        self.assertEqual(record["frames_kept"], [t for t in range(40) if t not in (12, 25)])
        self.assertTrue(record["file"].endswith("sub-01_task-rest_desc-confounds_timeseries.tsv"))
        self.assertIn("sha256", runs[f"{sub01}_seg-2"]["inputs"]["confounds"])  # an edit redoes the run
        sub02 = [k for k in runs if k.startswith("sub-02")]
        self.assertEqual(len(sub02), 3)  # nothing scrubbed: keys unchanged, every frame kept
        self.assertTrue(all(runs[k]["num_frames"] == 40 and runs[k]["confounds"]["segment"] is None for k in sub02))
        self.assertTrue(all(r["reorientation"]["from"] == "LAS" for r in info["runs"]))
        self.assertEqual(info["labels"]["vocabulary"], ["30", "41"])
        # windows come from within one segment: 1 + 1 + 1 from sub-01, 5 from each sub-02 run
        windows_seen = list(windows(out, window=8, shuffle=False))
        self.assertEqual(len(windows_seen), num_windows(out, window=8))
        self.assertEqual(len(windows_seen), 3 + 3 * 5)
        # a map on the stored grid goes back to the LAS file's grid
        stored = np.zeros((16, 16, 8), np.float32)
        self.assertEqual(to_original_space(stored, out, f"{sub01}_seg-1").shape, (16, 16, 8))
        code, stdout, _ = self.prepare(*args)  # a re-run resumes: every run (segment) already done
        self.assertEqual(code, 0)
        self.assertIn("already done: 6", stdout)

    def test_bad_input_is_one_line_exit_2(self):
        out = os.path.join(self.get_temp_dir(), "bad")
        cases = [
            (["--bids", self.root, "--participant-label", "03", "--space", "MNI152NLin2009cAsym",
              "--confounds", "wm_csf"], r"sub-03_task-rest_desc-confounds_timeseries\.tsv: no column 'csf'"),
            (["--bids", self.root, "--participant-label", "01", "04"], r"no run matches participant\(s\) 04"),
            (["--bids", self.root, "--confounds", "motion36"], r"'motion36'"),
            (["--bids", self.root, "--fd-threshold", "-1"], r"`fd_threshold`"),
            ([os.path.join(self.root, "x.nii.gz"), "--participant-label", "01"], r"--participant-label .*need --bids"),
        ]
        for args, pattern in cases:
            code, _, stderr = self.prepare(*args, "--workers", "0", "--no-progress", "--min-frames", "8", "-o", out)
            self.assertEqual(code, 2, stderr)
            self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
            self.assertRegex(stderr, pattern)
            self.assertNotIn("Traceback", stderr)

    def test_without_confounds_the_table_is_no_input(self):
        out = os.path.join(self.get_temp_dir(), "plain")  # sub-03's table lacks csf: unused, no matter
        code, _, stderr = self.prepare("--bids", self.root, "--participant-label", "03", "--target-shape", "16", "16",
                                       "8", "--min-frames", "8", "--workers", "0", "--no-progress", "-o", out)
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(out, "dataset.json")) as f:
            run = json.load(f)["runs"][0]
        self.assertNotIn("confounds", run["inputs"])
        self.assertNotIn("confounds", run)
        self.assertNotIn("reorientation", run)

    def test_events_labels_follow_the_kept_frames(self):
        from tfrecords_tools import events as events_lib

        func = os.path.join(self.root, "sub-01", "func")
        events = os.path.join(func, "sub-01_task-rest_events.tsv")
        with open(events, "w") as f:
            f.write("onset\tduration\ttrial_type\n10\t20\tface\n40\t16\thouse\n")
        try:
            out = os.path.join(self.get_temp_dir(), "ev")
            code, _, stderr = self.prepare(
                "--bids", self.root, "--participant-label", "01", "--task", "rest", "--space", "MNI152NLin2009cAsym",
                "--fd-threshold", "0.5", "--events", "--hrf-delay", "0", "--target-shape", "16", "16", "8",
                "--min-frames", "8", "--workers", "0", "--no-progress", "-o", out)
        finally:
            os.remove(events)
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(out, "dataset.json")) as f:
            info = json.load(f)
        vocabulary = info["labels"]["vocabulary"]
        self.assertEqual(vocabulary, ["face", "house", "rest"])
        full = events_lib.frame_labels(events_path=self.write_events_copy(), num_frames=40, tr=2.0,
                                       vocabulary=vocabulary, hrf_delay=0.0)
        for run in info["runs"]:  # each segment's labels are those of its own source frames
            start, stop = run["confounds"]["segment"]
            self.assertEqual(run["frame_labels"], full[start:stop].tolist())
        self.assertEqual(sum(r["num_frames"] for r in info["runs"]), 38)

    def write_events_copy(self):
        path = os.path.join(self.get_temp_dir(), "events.tsv")
        with open(path, "w") as f:
            f.write("onset\tduration\ttrial_type\n10\t20\tface\n40\t16\thouse\n")
        return path
