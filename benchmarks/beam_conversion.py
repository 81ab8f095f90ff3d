"""Conversion benchmark: the local converter against the Beam pipeline on the DirectRunner.

What it measures is the overhead Beam adds on one machine (pipeline start, pickling runs and
manifests, the finishing step) against the local converter in this process and with spawned
worker processes (each of which imports TensorFlow first), not cluster speed-up: on Dataflow, Flink or Spark the runs
spread over many machines, which a single box cannot show. Variants run interleaved, round by
round, with the 1-minute load average beside each figure; every Beam output folder is checked
byte for byte against the local one.

    python benchmarks/beam_conversion.py                    # 4 subjects x 60 frames of 64^3 int16
    python benchmarks/beam_conversion.py --subjects 8 --frames 200 --rounds 3

Needs the beam extra (pip install 'tfbrain[beam]').
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def make_subjects(folder: str, num_subjects: int, num_frames: int, size: int) -> list[str]:
    """BOLD-like int16 runs: a sphere of brain (noise around a baseline) on a zero background."""
    import nibabel as nib

    os.makedirs(folder, exist_ok=True)
    grid = np.indices((size,) * 3) - size // 2
    mask = (grid ** 2).sum(0) < (0.4 * size) ** 2
    paths = []
    for i in range(num_subjects):
        rng = np.random.default_rng(i)
        data = np.zeros((size,) * 3 + (num_frames,), np.int16)  # (D, H, W, T)
        base = rng.normal(600, 80, mask.sum())
        for t in range(num_frames):
            data[..., t][mask] = (base + rng.normal(0, 20, mask.sum())).astype(np.int16)
        path = os.path.join(folder, f"sub-{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
        paths.append(path)
    return paths


def folder_bytes(folder: str) -> dict:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != ".lock":
                with open(os.path.join(root, name), "rb") as f:
                    out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=64, help="grid edge of the synthetic runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="local processes / DirectRunner workers")
    parser.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    import tfrecords_tools as tt
    from tfrecords_tools.beam_pipeline import convert_with_beam

    scratch = args.out or tempfile.mkdtemp(prefix="tfbrain_beam_bench_")
    runs = tt.runs_from_files(make_subjects(os.path.join(scratch, "nii"), args.subjects, args.frames,
                                            args.size))
    config = tt.PreprocessConfig(target_shape=(args.size,) * 3)
    common = dict(config=config, shard_size_mb=16.0)
    variants = {
        "local, in-process (workers 0)": lambda out: tt.convert(
            runs, out, workers=0, progress=False, **common),
        f"local, {args.workers} processes": lambda out: tt.convert(
            runs, out, workers=args.workers, progress=False, **common),
        "beam DirectRunner, in-memory": lambda out: convert_with_beam(
            runs, out, pipeline_args=["--runner=DirectRunner"], **common),
        f"beam DirectRunner, {args.workers} processes": lambda out: convert_with_beam(
            runs, out, pipeline_args=["--runner=DirectRunner", f"--direct_num_workers={args.workers}",
                                      "--direct_running_mode=multi_processing"], **common),
    }
    reference = None
    print(f"{args.subjects} runs x {args.frames} frames of {args.size}^3 int16, GZIP, {os.cpu_count()} CPUs")
    print(f"{'round':>5}  {'variant':<34} {'seconds':>8} {'frames/s':>9}  {'load (1 min)':>12}  same bytes")
    for round_index in range(args.rounds):
        for name, run in variants.items():
            out = os.path.join(scratch, "out")
            shutil.rmtree(out, ignore_errors=True)
            load = os.getloadavg()[0]
            start = time.perf_counter()
            summary = run(out)
            seconds = time.perf_counter() - start
            files = folder_bytes(out)
            reference = reference or files
            print(f"{round_index + 1:>5}  {name:<34} {seconds:8.1f} {summary.frames / seconds:9.1f}  "
                  f"{load:6.2f} -> {os.getloadavg()[0]:4.2f}  {'yes' if files == reference else 'NO'}")
    if not args.out:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
