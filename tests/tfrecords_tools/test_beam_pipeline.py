"""The Beam converter (DirectRunner) writes what the local converter writes, byte for byte."""

import json
import os
import sys
from unittest import mock

from tests.test_case import TestCase, import_extra
from tests.tfrecords_tools.helpers import synthetic_run, synthetic_runs
from tfrecords_tools import BadInputError, PreprocessConfig, cli, convert, runs_from_files

CONFIG = PreprocessConfig(target_shape=(8, 8, 8), min_frames=4)
SHARD_MB = 0.004  # a few frames per shard, so each run is cut into several


def folder_bytes(folder: str) -> dict:
    """{relative path: bytes} of every file of a dataset folder but `.lock` (who held it, when)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    out[os.path.relpath(path, folder)] = f.read()
    return out


class BeamConversionTest(TestCase):
    def setUp(self):
        super().setUp()
        import_extra("apache_beam", "beam")
        from tfrecords_tools.beam_pipeline import convert_with_beam

        self.convert_with_beam = convert_with_beam
        self.dir = self.get_temp_dir()
        paths = synthetic_runs(os.path.join(self.dir, "nii"), num_subjects=3)
        short = os.path.join(self.dir, "nii", "sub-09.nii.gz")
        synthetic_run(short, num_frames=2, seed=9)  # fewer frames than min_frames: a bad run
        self.runs = runs_from_files(paths + [short], labels=["a", "b", "a", "b"])
        self.local = os.path.join(self.dir, "local")
        convert(self.runs, self.local, config=CONFIG, shard_size_mb=SHARD_MB, workers=0,
                skip_bad=True, progress=False)

    def beam(self, out, **kwargs):
        kwargs = {"config": CONFIG, "shard_size_mb": SHARD_MB, "skip_bad": True, **kwargs}
        return self.convert_with_beam(kwargs.pop("runs", self.runs), out, **kwargs)

    def test_same_files_as_the_local_converter(self):
        out = os.path.join(self.dir, "beam")
        summary = self.beam(out)
        self.assertEqual((summary.runs_converted, summary.runs_already_done, summary.subjects,
                          summary.frames), (3, 0, 3, 72))
        local, beam = folder_bytes(self.local), folder_bytes(out)
        self.assertEqual(sorted(beam), sorted(local))
        shards = [p for p in local if p.startswith("shards" + os.sep)]
        self.assertGreaterEqual(len(shards), 6)  # several shards per run: the cutting rule is compared
        for path in sorted(local):  # shards, runs/*.json, conversion.json, dataset.json, splits.json
            self.assertEqual(beam[path], local[path], path)
        info = json.loads(beam["dataset.json"])
        self.assertEqual([r["key"] for r in info["runs"]], ["sub-00", "sub-01", "sub-02"])
        self.assertEqual([s["source"] for s in info["skipped"]], [self.runs[3].path])

    def test_resume_keeps_done_runs_and_redoes_a_damaged_one(self):
        out = os.path.join(self.dir, "beam")
        self.beam(out)
        summary = self.beam(out)
        self.assertEqual((summary.runs_converted, summary.runs_already_done), (0, 3))
        os.remove(os.path.join(out, "shards", "sub-01.00001.tfrecord.gz"))
        summary = self.beam(out)
        self.assertEqual((summary.runs_converted, summary.runs_already_done), (1, 2))
        self.assertEqual(folder_bytes(out), folder_bytes(self.local))

    def test_bad_run_fails_naming_it_and_writes_no_dataset_json(self):
        out = os.path.join(self.dir, "strict")
        with self.assertRaisesRegex(BadInputError, r"sub-09\.nii\.gz: .*too few frames.*no dataset\.json"):
            self.beam(out, skip_bad=False)
        self.assertFalse(os.path.exists(os.path.join(out, "dataset.json")))

    def test_cli_bad_run_is_one_line(self):
        with mock.patch("sys.stderr") as stderr:
            code = cli.main([r.path for r in self.runs] + [
                "-o", os.path.join(self.dir, "cli_bad"), "--target-shape", "8", "8", "8",
                "--min-frames", "4", "--runner", "DirectRunner"])
        err = "".join(call.args[0] for call in stderr.write.call_args_list)
        self.assertEqual(code, 2)
        self.assertRegex(err, r"^error: .*sub-09\.nii\.gz: too few frames.*--skip-bad")
        self.assertEqual(err.count("\n"), 1, err)

    def test_cli_runner(self):
        out = os.path.join(self.dir, "cli")
        code = cli.main([r.path for r in self.runs[:3]] + [
            "-o", out, "--target-shape", "8", "8", "8", "--min-frames", "4", "--shard-size-mb", str(SHARD_MB),
            "--runner", "DirectRunner", "--pipeline-options=--direct_num_workers=1"])
        self.assertEqual(code, 0)
        expected = os.path.join(self.dir, "cli_local")
        code = cli.main([r.path for r in self.runs[:3]] + [
            "-o", expected, "--target-shape", "8", "8", "8", "--min-frames", "4",
            "--shard-size-mb", str(SHARD_MB), "--workers", "0", "--no-progress"])
        self.assertEqual(code, 0)
        self.assertEqual(folder_bytes(out), folder_bytes(expected))


class BeamCliArgumentTest(TestCase):
    """Argument errors are one line with exit code 2, with or without Beam installed."""

    def prepare(self, *args):
        nii = os.path.join(self.get_temp_dir(), "sub-01.nii.gz")
        synthetic_run(nii, num_frames=4)
        with mock.patch("sys.stderr") as stderr:
            code = cli.main([nii, "-o", os.path.join(self.get_temp_dir(), "out"), *args])
        return code, "".join(call.args[0] for call in stderr.write.call_args_list)

    def test_pipeline_options_need_a_runner(self):
        code, err = self.prepare("--pipeline-options=--direct_num_workers=2")
        self.assertEqual(code, 2)
        self.assertIn("--pipeline-options needs --runner", err)

    def test_workers_and_runner_conflict(self):
        code, err = self.prepare("--workers", "2", "--runner", "DirectRunner")
        self.assertEqual(code, 2)
        self.assertIn("--workers sets local processes", err)

    def test_missing_beam_names_the_extra(self):
        with mock.patch.dict(sys.modules, {"apache_beam": None}):  # None: `import apache_beam` fails
            code, err = self.prepare("--runner", "DirectRunner")
        self.assertEqual(code, 2)
        self.assertIn("pip install 'tfbrain[beam]'", err)
        self.assertEqual(err.count("\n"), 1, err)
