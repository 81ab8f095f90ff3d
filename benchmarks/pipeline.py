"""Streaming benchmark: windows/s and MB/s out of tfrecords_tools vs reading .nii.gz with nibabel.

Synthetic subjects: (96, 96, 96, T) int16 BOLD-like runs (a sphere of brain, 26% of the
grid, on a zero background), written as .nii.gz, converted with `tfrecords_tools.convert`
(GZIP and uncompressed), then streamed as (96, 96, 96, 20, 1) float32 windows.

    python benchmarks/pipeline.py                      # 2 subjects x 1,200 frames (~8 GB temp)
    python benchmarks/pipeline.py --subjects 2 --frames 200 --out /tmp/tfbrain_bench

Reports bytes on disk per frame, windows/s and MB/s (float32 windows handed out), and the
nibabel path: a window [t, t+20) read from .nii.gz with `img.dataobj[..., t:t+20]`.
"""

import argparse
import os
import time

import numpy as np


def make_subjects(folder: str, num_subjects: int, num_frames: int, size: int = 96) -> list[str]:
    import nibabel as nib

    os.makedirs(folder, exist_ok=True)
    grid = np.indices((size,) * 3) - size // 2
    mask = (grid ** 2).sum(0) < (0.4 * size) ** 2
    paths = []
    for i in range(num_subjects):
        path = os.path.join(folder, f"sub-{i:03d}.nii.gz")
        paths.append(path)
        if os.path.exists(path):
            continue
        rng = np.random.default_rng(i)
        data = np.zeros((size,) * 3 + (num_frames,), np.int16)
        base = rng.normal(600, 80, mask.sum())
        for t in range(num_frames):
            data[..., t][mask] = (base + rng.normal(0, 20, mask.sum())).astype(np.int16)
        img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
        img.header.set_zooms((2.0, 2.0, 2.0, 0.72))
        nib.save(img, path)
    return paths


def time_windows(ds, seconds: float = 30.0, max_windows: int = 10_000):
    it = iter(ds)
    next(it)  # warm-up: graph tracing, first shards opened
    count, start = 0, time.time()
    for _ in it:
        count += 1
        if count >= max_windows or time.time() - start > seconds:
            break
    return count / (time.time() - start)


def nifti_windows_per_s(paths: list[str], window: int, num_windows: int = 6) -> float:
    import nibabel as nib

    start = time.time()
    for k in range(num_windows):
        img = nib.load(paths[k % len(paths)])
        num_frames = img.shape[3]
        t = (k * 37 * window) % (num_frames - window + 1)  # spread over the run, as a shuffled loader would
        np.asarray(img.dataobj[..., t:t + window], np.float32)
    return num_windows / (time.time() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--out", default="/tmp/tfbrain_bench")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import tensorflow as tf

    import tfrecords_tools as tt

    window_mb = 96 ** 3 * args.window * 4 / 1e6
    paths = make_subjects(os.path.join(args.out, "nii"), args.subjects, args.frames)
    nii_bytes = sum(os.path.getsize(p) for p in paths) / (args.subjects * args.frames)
    print(f"threads: {tf.config.threading.get_inter_op_parallelism_threads()} inter-op; cpus {os.cpu_count()}")
    print(f"nii.gz (int16): {nii_bytes / 1e6:.3f} MB/frame on disk")
    rate = nifti_windows_per_s(paths, args.window)
    print(f"nibabel .nii.gz  : {rate:6.2f} windows/s  {rate * window_mb:7.1f} MB/s")
    for compression in ("GZIP", ""):
        name = compression or "none"
        out = os.path.join(args.out, f"tfr_{name}")
        start = time.time()
        summary = tt.convert(tt.runs_from_files(paths), out, compression=compression, workers=args.workers,
                             progress=False)
        print(f"convert {name}: {time.time() - start:.1f} s ({summary.runs_already_done} runs already done), "
              f"{summary.bytes / summary.frames / 1e6:.3f} MB/frame on disk (float16)")
        for stride in (args.window, args.window // 2):
            ds = tt.windows(out, window=args.window, stride=stride, repeat=True, seed=None, shuffle_buffer=4)
            rate = time_windows(ds, args.seconds)
            print(f"tf.data {name:4s} stride {stride:2d}: {rate:6.2f} windows/s  {rate * window_mb:7.1f} MB/s")


if __name__ == "__main__":
    main()
