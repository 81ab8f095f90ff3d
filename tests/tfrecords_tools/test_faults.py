"""Bad inputs and faults: a dataset is either right or refused, and every refusal names the
file and the problem (issue 14)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import tensorflow as tf

from tests.test_case import REPO_ROOT, TestCase
from tests.tfrecords_tools.helpers import AFFINE, synthetic_run, synthetic_runs
from tfrecords_tools import BadInputError, PreprocessConfig, cli, convert, runs_from_files, windows
from tfrecords_tools import reader as reader_lib
from tfrecords_tools import writer as writer_lib
from tfrecords_tools.events import frame_labels
from tfrecords_tools.preprocess import prepare_run
from tfrecords_tools.sources import Run

CONFIG = PreprocessConfig(target_shape=(8, 8, 8), min_frames=4)


def _info(out):
    with open(os.path.join(out, "dataset.json")) as f:
        return json.load(f)


def _write_info(out, info):
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(info, f)


def _read_all(ds):
    return [element for element in ds]


class DatasetFaultTest(TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()
        self.paths = synthetic_runs(os.path.join(self.dir, "nii"), num_subjects=2)
        self.runs = runs_from_files(self.paths, labels=["a", "b"])
        self.out = os.path.join(self.dir, "out")

    def convert(self, **kwargs):
        kwargs = {"config": CONFIG, "workers": 0, "shard_size_mb": 0.004, "progress": False, **kwargs}
        return convert(kwargs.pop("runs", self.runs), kwargs.pop("out", self.out), **kwargs)

    def shard(self, run="sub-00", index=0):
        return os.path.join(self.out, "shards", f"{run}.{index:05d}.tfrecord.gz")

    # --- concurrent conversions -------------------------------------------------------
    def test_second_conversion_is_refused_naming_the_holder(self):
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from tfrecords_tools.writer import output_lock\n"
             "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", self.out],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            self.assertEqual(holder.stdout.readline().strip(), "locked")
            with self.assertRaisesRegex(ValueError, rf"being converted by pid {holder.pid} on "):
                self.convert()
            self.assertFalse(os.path.exists(os.path.join(self.out, "conversion.json")))  # nothing touched
        finally:
            holder.kill()
            holder.wait()
        self.assertEqual(self.convert().runs_converted, 2)  # a killed holder leaves no stale lock

    def test_shard_temp_names_are_unique_per_write(self):
        from unittest import mock

        with mock.patch.object(tf.io.gfile, "rename", wraps=tf.io.gfile.rename) as rename:
            self.convert(runs=self.runs[:1], shard_size_mb=1.0)
        temps = [os.path.basename(call.args[0]) for call in rename.call_args_list]
        self.assertGreater(len(temps), 2, temps)  # shards, the mask file, the run and dataset JSONs
        # pid and a random part: two workers with equal pids (Beam retries on other machines) never share one
        self.assertTrue(all(re.search(rf"\.tmp-{os.getpid()}-[0-9a-f]{{12}}$", name) for name in temps), temps)
        self.assertEqual(len({name.rsplit(".tmp-", 1)[1] for name in temps}), len(temps))

    # --- done means verified ----------------------------------------------------------
    def test_corrupt_or_missing_shard_is_converted_again(self):
        self.convert()
        clean = open(self.shard(), "rb").read()
        corrupt = bytearray(clean)
        corrupt[len(corrupt) // 2] ^= 0xFF  # same size, other bytes
        open(self.shard(), "wb").write(bytes(corrupt))
        summary = self.convert()
        self.assertEqual((summary.runs_converted, summary.runs_already_done), (1, 1))
        self.assertEqual(open(self.shard(), "rb").read(), clean)
        os.remove(self.shard("sub-01", 1))
        self.assertEqual(self.convert().runs_converted, 1)

    def test_changed_input_is_converted_again_touched_input_is_not(self):
        self.convert()
        os.utime(self.paths[0])  # same bytes, newer mtime: still done
        self.assertEqual(self.convert().runs_already_done, 2)
        synthetic_run(self.paths[0], seed=7)  # other data
        summary = self.convert()
        self.assertEqual((summary.runs_converted, summary.runs_already_done), (1, 1))
        run = [r for r in _info(self.out)["runs"] if r["key"] == "sub-00"][0]
        self.assertEqual(run["inputs"]["nifti"]["size"], os.path.getsize(self.paths[0]))

    def test_changed_events_file_is_converted_again(self):
        events = os.path.join(self.dir, "events.tsv")
        open(events, "w").write("onset\tduration\ttrial_type\n0\t10\tface\n20\t10\thouse\n")
        runs = [Run(**{**r.__dict__, "events_path": events}) for r in self.runs]
        self.convert(runs=runs, use_events=True, hrf_delay=0.0)
        open(events, "w").write("onset\tduration\ttrial_type\n0\t20\tface\n20\t10\thouse\n")
        self.assertEqual(self.convert(runs=runs, use_events=True, hrf_delay=0.0).runs_converted, 2)

    def test_failed_first_try_does_not_block_a_corrected_retry(self):
        bad = PreprocessConfig(target_shape=(8, 8, 8), min_frames=100)  # every run too short
        with self.assertRaisesRegex(BadInputError, "too few frames"):
            self.convert(config=bad)
        self.assertEqual(os.listdir(os.path.join(self.out, "shards")), [])
        self.assertEqual(self.convert().runs_converted, 2)

    def test_arguments_are_checked_before_any_work(self):
        for kwargs, pattern in [({"split_fractions": (-1, 1, 1)}, "--split"),
                                ({"split_fractions": (0, 0, 0)}, "--split"),
                                ({"min_coverage": 1.5}, "min_coverage"),
                                ({"shard_size_mb": 0}, "shard_size_mb")]:
            with self.assertRaisesRegex(ValueError, pattern):
                self.convert(**kwargs)
        self.assertFalse(os.path.exists(self.out))

    def test_unwritable_output_is_one_line(self):
        os.makedirs(self.out)
        os.chmod(self.out, 0o500)
        try:
            if os.access(self.out, os.W_OK):  # root ignores modes
                self.skipTest("running as root")
            with self.assertRaisesRegex(ValueError, "cannot write the output folder"):
                self.convert()
        finally:
            os.chmod(self.out, 0o700)

    # --- reading checks shards and records --------------------------------------------
    def test_truncated_or_empty_shard_is_refused_naming_it(self):
        self.convert()
        data = open(self.shard("sub-01", 1), "rb").read()
        open(self.shard("sub-01", 1), "wb").write(data[: len(data) // 2])
        with self.assertRaisesRegex(ValueError, r"sub-01\.00001\.tfrecord\.gz: \d+ bytes on disk"):
            windows(self.out, window=4)
        open(self.shard("sub-01", 1), "wb").write(b"")
        with self.assertRaisesRegex(ValueError, r"sub-01\.00001\.tfrecord\.gz"):
            windows(self.out, window=4)

    def test_missing_records_are_counted(self):
        self.convert()
        info = _info(self.out)
        info["shards"] = [s for s in info["shards"] if s["path"] != "shards/sub-00.00002.tfrecord.gz"]
        _write_info(self.out, info)
        with self.assertRaisesRegex(ValueError, r"needs frame|hold \d+ records"):
            windows(self.out, window=4)

    def test_corrupt_shard_of_the_same_size_names_the_shard(self):
        self.convert()
        data = bytearray(open(self.shard("sub-01", 0), "rb").read())
        data[40:60] = bytes(20)
        open(self.shard("sub-01", 0), "wb").write(bytes(data))
        with self.assertRaisesRegex(ValueError, r"sub-01\.00000\.tfrecord\.gz: sha256 differs"):
            windows(self.out, window=4, verify="sha256")
        with self.assertRaises(tf.errors.OpError) as context:
            _read_all(windows(self.out, window=4, shuffle=False))
        explained = reader_lib.explain_read_error(self.out, context.exception)
        self.assertRegex(str(explained), r"sub-01\.00000\.tfrecord\.gz: sha256 differs")

    def test_swapped_shards_are_refused_naming_the_shard(self):
        self.convert()
        a, b = self.shard("sub-00", 0), self.shard("sub-01", 0)
        tmp = a + ".swap"
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)
        info = _info(self.out)  # a careless copy that also "fixed" the sizes
        entries = {s["path"]: s for s in info["shards"]}
        ea, eb = entries["shards/sub-00.00000.tfrecord.gz"], entries["shards/sub-01.00000.tfrecord.gz"]
        ea["bytes"], eb["bytes"] = eb["bytes"], ea["bytes"]
        _write_info(self.out, info)
        with self.assertRaises(tf.errors.InvalidArgumentError) as context:
            _read_all(windows(self.out, window=4, shuffle=False))
        message = str(reader_lib.explain_read_error(self.out, context.exception))
        self.assertRegex(message, r"shard \S+sub-0[01]\.00000\.tfrecord\.gz: record out of place: "
                                  r"expected run sub-0[01] frame 0")

    def test_frames_out_of_order_are_refused(self):
        self.convert()
        a, b = self.shard("sub-00", 0), self.shard("sub-00", 1)
        tmp = a + ".swap"
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)
        info = _info(self.out)
        entries = {s["path"]: s for s in info["shards"]}
        ea, eb = entries["shards/sub-00.00000.tfrecord.gz"], entries["shards/sub-00.00001.tfrecord.gz"]
        ea["bytes"], eb["bytes"] = eb["bytes"], ea["bytes"]
        _write_info(self.out, info)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "record out of place"):
            _read_all(windows(self.out, window=4, shuffle=False, verify="none"))

    def test_permuted_frame_shape_is_refused(self):
        self.convert(config=PreprocessConfig(target_shape=(8, 4, 16), min_frames=4))
        info = _info(self.out)
        info["frame_shape"] = [4, 16, 8]  # same voxel count
        _write_info(self.out, info)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"of shape 4x16x8, found .* of shape 8x4x16"):
            _read_all(windows(self.out, window=4, shuffle=False))

    def test_shard_paths_are_confined_to_the_dataset(self):
        self.convert()
        for path in ("../../etc/hostname", "/etc/hostname", "shards/../../x.tfrecord.gz"):
            info = _info(self.out)
            info["shards"][0]["path"] = path
            _write_info(self.out, info)
            with self.assertRaisesRegex(ValueError, "not inside the dataset folder"):
                windows(self.out, window=4)

    def test_prepare_check(self):
        self.convert()
        self.assertEqual(cli.main(["-o", self.out, "--check"]), 0)
        data = bytearray(open(self.shard(), "rb").read())
        data[-30] ^= 1
        open(self.shard(), "wb").write(bytes(data))
        self.assertEqual(cli.main(["-o", self.out, "--check"]), 2)

    # --- brain_only storage: the mask file is verified like a shard --------------------
    def mask_file(self, run="sub-00"):
        return os.path.join(self.out, "masks", f"{run}.tfrecord.gz")

    def test_corrupt_or_missing_mask_file_is_refused_naming_it_and_converted_again(self):
        self.convert()
        clean = open(self.mask_file(), "rb").read()
        corrupt = bytearray(clean)
        corrupt[len(corrupt) // 2] ^= 0xFF
        open(self.mask_file(), "wb").write(bytes(corrupt))
        self.assertEqual(cli.main(["-o", self.out, "--check"]), 2)
        with self.assertRaisesRegex(ValueError, r"masks/sub-00\.tfrecord\.gz: sha256 differs"):
            windows(self.out, window=4, verify="sha256")
        summary = self.convert()
        self.assertEqual((summary.runs_converted, summary.runs_already_done), (1, 1))
        self.assertEqual(open(self.mask_file(), "rb").read(), clean)
        os.remove(self.mask_file("sub-01"))
        with self.assertRaisesRegex(ValueError, r"masks/sub-01\.tfrecord\.gz: missing"):
            windows(self.out, window=4)
        self.assertEqual(self.convert().runs_converted, 1)

    def test_swapped_mask_files_are_refused_naming_the_file(self):
        self.convert()
        a, b = self.mask_file("sub-00"), self.mask_file("sub-01")
        os.rename(a, a + ".swap")
        os.rename(b, a)
        os.rename(a + ".swap", b)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    r"mask file \S+sub-0[01]\.tfrecord\.gz: not the mask of run sub-0[01]"):
            _read_all(windows(self.out, window=4, shuffle=False, verify="none"))

    def test_brain_only_refuses_a_frame_with_signal_outside_the_mask(self):
        def leaky_prepare_run(*args, **kwargs):
            metadata, frames, mask = prepare_run(*args, **kwargs)

            def leaky():
                for t, frame in enumerate(frames):
                    if t == 3:
                        frame = frame.copy()
                        frame[~mask] = frame[~mask] + np.float16(0.5)  # no longer the constant background
                    yield frame
            return metadata, leaky(), mask

        original = writer_lib.prepare_run
        writer_lib.prepare_run = leaky_prepare_run
        try:
            with self.assertRaisesRegex(BadInputError, r"sub-00\.nii\.gz: frame 3: voxels outside the brain "
                                                       r"mask .*--storage dense"):
                self.convert()
            self.assertEqual(os.listdir(os.path.join(self.out, "shards")), [])  # nothing half-written stays
            self.assertEqual(self.convert(storage="dense").runs_converted, 2)  # dense keeps them
        finally:
            writer_lib.prepare_run = original

    def test_folder_converted_before_brain_only_resumes_as_dense(self):
        self.convert(storage="dense")
        settings = os.path.join(self.out, "conversion.json")
        with open(settings) as f:
            old = json.load(f)
        del old["storage"]  # as the code before brain_only storage wrote it
        with open(settings, "w") as f:
            json.dump(old, f)
        self.assertEqual(self.convert(storage="dense").runs_already_done, 2)
        with self.assertRaisesRegex(ValueError, "other settings .*storage"):
            self.convert()  # the default, brain_only, does not mix into a dense folder

    def test_non_ascii_subjects_do_not_collide(self):
        runs = runs_from_files(self.paths, subjects=["sub-é", "sub-ü"])
        self.assertEqual([r.key for r in runs], ["sub-é", "sub-ü"])
        self.assertEqual(self.convert(runs=runs).subjects, 2)


class ValueRangeTest(TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.get_temp_dir()

    def save(self, data, name="run.nii.gz"):
        path = os.path.join(self.dir, name)
        nib.save(nib.Nifti1Image(data, AFFINE), path)
        return path

    def test_float16_overflow_is_an_error(self):
        data = np.zeros((6, 6, 6, 8), np.float32)
        data[1:5, 1:5, 1:5] = np.random.default_rng(0).normal(1e5, 10, (4, 4, 4, 8))
        path = self.save(data)
        with self.assertRaisesRegex(BadInputError, r"run\.nii\.gz: values up to .* overflow float16"):
            prepare_run(path, PreprocessConfig(target_shape=(6, 6, 6), min_frames=4, normalization="none"))
        meta, frames = prepare_run(path, PreprocessConfig(target_shape=(6, 6, 6), min_frames=4,
                                                          normalization="none", dtype="float32"))
        self.assertGreater(next(frames).max(), 65504)

    def test_complex_data_is_an_error(self):
        data = (np.ones((6, 6, 6, 8)) + 1j * np.ones((6, 6, 6, 8))).astype(np.complex64)
        with self.assertRaisesRegex(BadInputError, r"complex data"):
            prepare_run(self.save(data), PreprocessConfig(target_shape=(6, 6, 6), min_frames=4))

    def test_large_offset_keeps_its_signal(self):
        rng = np.random.default_rng(0)
        data = np.zeros((6, 6, 6, 8), np.float64)
        signal = rng.normal(0, 1, (4, 4, 4, 8))
        data[1:5, 1:5, 1:5] = 1e8 + signal
        path = self.save(data)
        meta, frames = prepare_run(path, PreprocessConfig(target_shape=(6, 6, 6), min_frames=4,
                                                          mask_method="nonzero", center_on="array"))
        self.assertAlmostEqual(meta["std"], signal.std(), places=5)
        stored = np.stack(list(frames), -1).astype(np.float64)[1:5, 1:5, 1:5]
        expected = (signal - signal.mean()) / signal.std()
        self.assertLess(np.abs(stored - expected).max(), 0.01)

    def test_nan_voxels_are_named_as_such(self):
        data = np.zeros((6, 6, 6, 8), np.float32)
        data[1:5, 1:5, 1:5] = 1.0
        data[2, 2, 2, 3] = np.nan
        with self.assertRaisesRegex(BadInputError, r"1 NaN/Inf voxels \(first at voxel \(2, 2, 2\), frame 3\)"):
            prepare_run(self.save(data), PreprocessConfig(target_shape=(6, 6, 6), min_frames=4))

    def test_oversize_header_is_refused_before_reading_and_skippable(self):
        path = os.path.join(self.dir, "huge.nii")
        header = nib.Nifti1Header()
        header.set_data_shape((512, 512, 512, 1000))  # 537 GB of float32, 352 bytes on disk
        header.set_data_dtype(np.float32)
        with open(path, "wb") as f:
            f.write(header.binaryblock + b"\0" * 4)
        with self.assertRaisesRegex(BadInputError, r"huge\.nii: header declares shape .* over the memory budget"):
            prepare_run(path, PreprocessConfig())
        good = os.path.join(self.dir, "good.nii.gz")
        synthetic_run(good)
        os.environ["TFBRAIN_MAX_RUN_BYTES"] = "1e12"  # also over budget at 1 TB
        try:
            summary = convert(runs_from_files([path, good]), os.path.join(self.dir, "out"), config=CONFIG,
                              workers=0, skip_bad=True, progress=False)
        finally:
            del os.environ["TFBRAIN_MAX_RUN_BYTES"]
        self.assertEqual((summary.runs_converted, len(summary.skipped)), (1, 1))

    def test_unreadable_file_is_not_called_corrupt(self):
        path = os.path.join(self.dir, "secret.nii.gz")
        synthetic_run(path)
        os.chmod(path, 0)
        try:
            if os.access(path, os.R_OK):
                self.skipTest("running as root")
            with self.assertRaisesRegex(BadInputError, "permission denied"):
                prepare_run(path, CONFIG)
        finally:
            os.chmod(path, 0o600)


class EventFaultTest(TestCase):
    def events(self, text):
        path = os.path.join(self.get_temp_dir(), "events.tsv")
        with open(path, "w") as f:
            f.write("onset\tduration\ttrial_type\n" + text)
        return path

    def test_bad_rows_are_errors(self):
        vocabulary = ["face", "house", "rest"]
        for text, pattern in [("-2\t4\tface\n", "onset must be a finite number >= 0"),
                              ("nan\t4\tface\n", "onset must be a finite number >= 0"),
                              ("2\t-4\tface\n", "duration must be"),
                              ("2\t4\t \n", "trial_type is blank"),
                              ("200\t4\tface\n300\t4\thouse\n", "2 of 2 events start after the run ends"),
                              ("2000\t4000\tface\n", "start after the run ends")]:
            with self.subTest(text=text), self.assertRaisesRegex(BadInputError, r"events\.tsv: .*" + pattern):
                frame_labels(self.events(text), 20, 2.0, vocabulary, hrf_delay=0.0)

    def test_no_frame_covered_is_an_error(self):
        with self.assertRaisesRegex(BadInputError, "every frame would be 'rest'"):
            frame_labels(self.events("2\t0.1\tface\n"), 20, 2.0, ["face", "rest"], hrf_delay=0.0)
        with self.assertRaisesRegex(BadInputError, "min_coverage"):
            frame_labels(self.events("2\t10\tface\n"), 20, 2.0, ["face", "rest"], min_coverage=1.5)


class WorkerTest(TestCase):
    def test_workers_die_with_their_parent(self):
        """kill -9 of `prepare` must not leave its pool workers converting."""
        script = (
            "import concurrent.futures, multiprocessing, os, sys, time\n"
            "from tfrecords_tools.writer import _worker_init\n"
            "if __name__ == '__main__':\n"
            "    init = _worker_init if sys.argv[1] == '1' else None\n"
            "    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),"
            " initializer=init)\n"
            "    print(pool.submit(os.getpid).result(), flush=True)\n"
            "    pool.submit(time.sleep, 60)\n"
            "    time.sleep(60)\n")
        path = os.path.join(self.get_temp_dir(), "parent.py")
        with open(path, "w") as f:
            f.write(script)
        self.assertFalse(_worker_survives(path, with_init=True), "the worker outlived its killed parent")


def _worker_survives(script: str, with_init: bool) -> bool:
    parent = subprocess.Popen([sys.executable, script, "1" if with_init else "0"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    worker = None
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, 9)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _alive(worker):
            time.sleep(0.1)
        return _alive(worker)
    finally:
        parent.kill()
        if worker and _alive(worker):
            os.kill(worker, 9)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


class MovedInputTest(TestCase):
    def test_moved_inputs_with_the_same_bytes_stay_done(self):
        folder = self.get_temp_dir()
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=2)
        out = os.path.join(folder, "out")
        kwargs = {"config": CONFIG, "workers": 0, "progress": False}
        convert(runs_from_files(paths), out, **kwargs)
        shutil.move(os.path.join(folder, "nii"), os.path.join(folder, "moved"))
        moved = [p.replace(os.sep + "nii" + os.sep, os.sep + "moved" + os.sep) for p in paths]
        self.assertEqual(convert(runs_from_files(moved), out, **kwargs).runs_already_done, 2)


class TruncatedHeaderTest(TestCase):
    def test_file_too_small_for_its_header_is_refused_before_allocating(self):
        folder = self.get_temp_dir()
        header = nib.Nifti1Header()
        header.set_data_shape((256, 256, 256, 100))  # 6.7 GB of float32, within a RAM budget
        header.set_data_dtype(np.float32)
        os.environ["TFBRAIN_MAX_RUN_BYTES"] = "1e12"  # within budget on any machine
        self.addCleanup(os.environ.pop, "TFBRAIN_MAX_RUN_BYTES", None)
        for name in ("six_gb.nii", "six_gb.nii.gz"):
            path = os.path.join(folder, name)
            payload = header.binaryblock + b"\0" * 4 + b"\1" * 100_000
            if name.endswith(".gz"):
                import gzip

                payload = gzip.compress(payload)
            with open(path, "wb") as f:
                f.write(payload)
            with self.subTest(name=name), self.assertRaisesRegex(
                    BadInputError, r"corrupt or truncated file \(the header declares .* cannot hold\)"):
                prepare_run(path, CONFIG)


class CliTest(TestCase):
    def test_prepare_bad_arguments_and_held_lock_are_one_line(self):
        import contextlib
        import io

        from tfbrain.cli import main

        folder = self.get_temp_dir()
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=1)
        out = os.path.join(folder, "out")
        args = ["prepare", *paths, "-o", out, "--workers", "0", "--no-progress", "--target-shape", "8", "8", "8"]
        for extra, pattern in [(["--min-coverage", "1.5"], "min_coverage"), (["--split", "-1", "1", "1"], "--split")]:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                self.assertEqual(main(args + extra), 2)
            lines = err.getvalue().strip().splitlines()
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], r"^tfbrain prepare: error: .*" + pattern)
        with writer_lib.output_lock(out):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                self.assertEqual(main(args), 2)
        self.assertRegex(err.getvalue().strip(), rf"^tfbrain prepare: error: {out} is being converted by pid {os.getpid()}")
