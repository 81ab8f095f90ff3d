"""What confound regression, scrubbing and RAS reorientation add to `prepare_run`.

One synthetic fMRIPrep-like run: a (X, Y, Z, T) float32 LAS NIfTI with a sphere of brain
(~27% of the grid) and a confounds table with 24 motion regressors, WM/CSF, cosines and FD
(a few high-motion frames). Each variant preprocesses the whole run to (X, Y, Z) float16 frames;
the variants run interleaved, `--repeats` rounds, and the table gives the median seconds per
run, per frame, and the machine load (1-min os.getloadavg) measured beside each figure.

    python benchmarks/confounds.py                          # 64 x 64 x 48 x 300 frames
    python benchmarks/confounds.py --size 96 96 96 --frames 600 --repeats 3
"""

import argparse
import os
import tempfile
import time

import numpy as np

VARIANTS = {
    "plain (stored orientation)": dict(),
    "orientation ras": dict(orientation="ras"),
    "motion24+wm_csf+cosine": dict(confounds="motion24+wm_csf+cosine"),
    "  + fd-threshold 0.5": dict(confounds="motion24+wm_csf+cosine", fd_threshold=0.5),
    "  + ras": dict(confounds="motion24+wm_csf+cosine", fd_threshold=0.5, orientation="ras"),
}


def make_run(folder: str, size, num_frames: int) -> tuple[str, str]:
    import nibabel as nib

    from tfrecords_tools.confounds import COMPONENTS

    rng = np.random.default_rng(0)
    grid = np.indices(size) - np.array(size)[:, None, None, None] // 2
    mask = ((grid / (0.4 * np.array(size)[:, None, None, None])) ** 2).sum(0) < 1
    data = np.zeros(tuple(size) + (num_frames,), np.float32)
    base = rng.normal(600, 80, mask.sum()).astype(np.float32)
    for t in range(num_frames):
        data[..., t][mask] = base + rng.normal(0, 20, mask.sum()).astype(np.float32)
    path = os.path.join(folder, "sub-01_task-rest_space-MNI_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(data, np.diag([-3.0, 3.0, 3.0, 1.0])), path)
    columns = {name: rng.normal(0, 0.1, num_frames) for name in COMPONENTS["motion24"] + COMPONENTS["wm_csf"]}
    for k in range(4):
        columns[f"cosine{k:02d}"] = np.cos(np.pi * (np.arange(num_frames) + 0.5) * (k + 1) / num_frames)
    fd = np.abs(rng.normal(0.15, 0.05, num_frames))
    fd[rng.choice(num_frames, num_frames // 50, replace=False)] = 1.0  # 2% high-motion frames
    columns["framewise_displacement"] = fd
    confounds = os.path.join(folder, "sub-01_task-rest_desc-confounds_timeseries.tsv")
    with open(confounds, "w") as f:
        f.write("\t".join(columns) + "\n")
        for t in range(num_frames):
            f.write("\t".join("n/a" if t == 0 and "derivative" in n else f"{v[t]:.6g}"
                              for n, v in columns.items()) + "\n")
    return path, confounds


def time_variant(path: str, confounds: str, settings: dict, min_frames: int) -> tuple[float, int]:
    from tfrecords_tools import PreprocessConfig, prepare_run

    config = PreprocessConfig(target_shape=None, mask_method="nonzero", min_frames=min_frames, **settings)
    start = time.perf_counter()
    _, frames = prepare_run(path, config, confounds_path=confounds)
    count = sum(1 for _ in frames)
    return time.perf_counter() - start, count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(64, 64, 48))
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tfbrain_confounds_") as folder:
        path, confounds = make_run(folder, tuple(args.size), args.frames)
        times = {name: [] for name in VARIANTS}
        loads = {name: [] for name in VARIANTS}
        frames = {}
        time_variant(path, confounds, {}, 10)  # warm the page cache and imports
        for _ in range(args.repeats):
            for name, settings in VARIANTS.items():  # interleaved, so load drifts hit every variant
                seconds, frames[name] = time_variant(path, confounds, settings, 10)
                times[name].append(seconds)
                loads[name].append(os.getloadavg()[0])
        print(f"run {tuple(args.size)} x {args.frames} frames float32 (.nii.gz), cpus {os.cpu_count()}, "
              f"{args.repeats} interleaved rounds")
        print(f"{'variant':28s} {'s/run':>7s} {'ms/frame':>9s} {'frames':>7s} {'load':>6s}")
        for name in VARIANTS:
            seconds = float(np.median(times[name]))
            print(f"{name:28s} {seconds:7.2f} {1e3 * seconds / frames[name]:9.2f} {frames[name]:7d} "
                  f"{np.mean(loads[name]):6.1f}")


if __name__ == "__main__":
    main()
