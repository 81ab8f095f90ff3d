"""Streaming benchmark: windows/s of (96, 96, 96, 20, 1) windows out of `tfrecords_tools.windows`.

Synthetic subjects: (96, 96, 96, T) int16 BOLD-like runs (a sphere of brain, 27% of the
grid, on a zero background), written once as .nii.gz under --out and converted with
`tfrecords_tools.convert` into each storage (dense / brain_only) and compression (GZIP /
none); later calls reuse both. Then, for each variant, windows/s on 1 core (`taskset -c 0`)
and on 2 cores (`taskset -c 0,1`), each figure measured in its own process, the variants
interleaved round by round (the machine's load moves; every figure has its load beside it).

    python benchmarks/pipeline.py                                  # 2 subjects x 240 frames
    python benchmarks/pipeline.py --frames 1200 --seconds 20 --rounds 3
    python benchmarks/pipeline.py --only brain_only/GZIP/float32/20 # one variant

Floors, measured the same way: `inflate` reads (and GZIP-inflates) the brain_only shards and
parses nothing; `assemble` only builds float32 windows on the grid from brain values already
in memory (the gather). Also prints the gather-vs-scatter choice for putting brain values
back on the grid. Nothing here asserts a speed; it prints tables.

`--allocators bfc,default` adds, interleaved, each figure under TensorFlow's default CPU
allocator beside the BFC allocator that importing tfrecords_tools selects.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SIZE = 96
WINDOW = 20
ALLOCATOR_ENV = {"bfc": "true", "default": "false"}  # TF_CPU_ALLOCATOR_USE_BFC per --allocators name

# (name, storage, compression, dtype, stride); compression "" = none
VARIANTS = [
    ("dense/GZIP/float32/20", "dense", "GZIP", "float32", 20),
    ("brain_only/GZIP/float32/20", "brain_only", "GZIP", "float32", 20),
    ("brain_only/none/float32/20", "brain_only", "", "float32", 20),
    ("dense/none/float32/20", "dense", "", "float32", 20),
    ("brain_only/GZIP/float16/20", "brain_only", "GZIP", "float16", 20),
    ("brain_only/none/float16/20", "brain_only", "", "float16", 20),
    ("dense/GZIP/float32/10", "dense", "GZIP", "float32", 10),
    ("brain_only/GZIP/float32/10", "brain_only", "GZIP", "float32", 10),
    ("floor: inflate brain_only/GZIP", "brain_only", "GZIP", "inflate", 20),
    ("floor: assemble float32 windows", "brain_only", "GZIP", "assemble", 20),
]


def brain_sphere(size: int = SIZE) -> np.ndarray:
    grid = np.indices((size,) * 3) - size // 2
    return (grid ** 2).sum(0) < (0.4 * size) ** 2  # 26.8% of the grid


def make_subjects(folder: str, num_subjects: int, num_frames: int, size: int = SIZE) -> list[str]:
    import nibabel as nib

    os.makedirs(folder, exist_ok=True)
    mask = brain_sphere(size)
    paths = []
    for i in range(num_subjects):
        path = os.path.join(folder, f"sub-{i:03d}.nii.gz")
        paths.append(path)
        if os.path.exists(path) and nib.load(path).shape[3] == num_frames:
            continue
        rng = np.random.default_rng(i)
        data = np.zeros((size,) * 3 + (num_frames,), np.int16)
        base = rng.normal(600, 80, mask.sum())
        for t in range(num_frames):
            data[..., t][mask] = (base + rng.normal(0, 20, mask.sum())).astype(np.int16)
        img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
        img.header.set_zooms((2.0, 2.0, 2.0, 0.72))
        nib.save(img, path + ".tmp.nii.gz")
        os.replace(path + ".tmp.nii.gz", path)
    return paths


def dataset_folder(out: str, storage: str, compression: str) -> str:
    return os.path.join(out, f"tfr_{storage}_{compression or 'none'}")


def bytes_per_frame(folder: str) -> float:
    with open(os.path.join(folder, "dataset.json")) as f:
        info = json.load(f)
    masks = sum(r["brain_mask"]["bytes"] for r in info["runs"] if r.get("brain_mask"))
    return (sum(s["bytes"] for s in info["shards"]) + masks) / info["num_frames"]


def time_elements(ds, seconds: float, per_element: float = 1.0) -> float:
    it = iter(ds)
    for _ in range(3):  # warm-up: graph tracing, first shards opened, buffers filled
        next(it)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        count += 1
    return count * per_element / (time.perf_counter() - start)


def measure(folder: str, kind: str, stride: int, seconds: float) -> dict:
    """One figure, in this process (run under taskset by `main`)."""
    import tensorflow as tf

    import tfrecords_tools as tt
    from tfrecords_tools import schema

    load_before = os.getloadavg()[0]
    info = tt.load_dataset_info(folder)
    if kind == "inflate":  # bytes off disk and through zlib only: no parse, no decode
        files = [os.path.join(folder, s["path"]) for s in info["shards"]]
        ds = tf.data.TFRecordDataset(files, compression_type=info["compression"], num_parallel_reads=2,
                                     buffer_size=8 << 20).repeat().batch(WINDOW)
        rate = time_elements(ds, seconds)
    elif kind == "assemble":  # the grid gather alone, from brain values held in memory
        mask = brain_sphere()
        values = tf.constant(np.random.default_rng(0).normal(size=(WINDOW, int(mask.sum()))), tf.float16)
        gather_index = tf.constant(np.where(mask.ravel(), np.cumsum(mask.ravel()) - 1, mask.sum()), tf.int32)
        ds = tf.data.Dataset.from_tensors(values).repeat().map(
            lambda v: schema.brain_to_grid(tf.cast(v, tf.float32), gather_index, tf.constant(-1.0),
                                           (SIZE,) * 3)[..., None],
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).prefetch(2)
        rate = time_elements(ds, seconds)
    else:
        ds = tt.windows(folder, window=WINDOW, stride=stride, repeat=True, seed=None, shuffle_buffer=4,
                        dtype=kind)
        rate = time_elements(ds, seconds)
    return {"rate": rate, "load": (load_before + os.getloadavg()[0]) / 2, "cpus": len(os.sched_getaffinity(0))}


def scatter_vs_gather(repeats: int = 25) -> None:
    """ms per window put on the grid, float32 and float16: a gather from the values padded with
    the background (what the reader does) vs `tf.tensor_scatter_nd_update` into a filled grid."""
    import tensorflow as tf

    from tfrecords_tools import schema

    flat = brain_sphere().ravel()
    values = tf.constant(np.random.default_rng(0).normal(size=(WINDOW, int(flat.sum()))), tf.float16)  # (T, N)
    gather_index = tf.constant(np.where(flat, np.cumsum(flat) - 1, flat.sum()), tf.int32)
    scatter_index = tf.constant(np.flatnonzero(flat)[:, None], tf.int32)  # (N, 1)
    functions = {}
    for dtype in (tf.float32, tf.float16):
        def gather(v, dtype=dtype):
            return schema.brain_to_grid(tf.cast(v, dtype), gather_index, tf.constant(-1.0, dtype), (SIZE,) * 3)

        def scatter(v, dtype=dtype):
            grid = tf.fill((SIZE ** 3, WINDOW), tf.constant(-1.0, dtype))  # (D * H * W, T)
            grid = tf.tensor_scatter_nd_update(grid, scatter_index, tf.transpose(tf.cast(v, dtype)))  # (N, T) in
            return tf.reshape(grid, (SIZE,) * 3 + (WINDOW,))  # (D, H, W, T)

        functions[f"gather {dtype.name}"] = tf.function(gather, jit_compile=False)
        functions[f"scatter {dtype.name}"] = tf.function(scatter, jit_compile=False)
    for dtype in ("float32", "float16"):
        assert np.array_equal(functions[f"gather {dtype}"](values).numpy(), functions[f"scatter {dtype}"](values).numpy())
    times = {name: [] for name in functions}
    for _ in range(repeats):  # interleaved
        for name, function in functions.items():
            start = time.perf_counter()
            function(values)
            times[name].append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    for name, seconds in times.items():
        print(f"  {name:16s} {1e3 * statistics.median(seconds):6.1f} ms per window (median of {repeats}; "
              f"min {1e3 * min(seconds):6.1f}; load {load:.1f})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--out", default="/tmp/tfbrain_pipeline_bench")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per figure")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the table shows the median")
    parser.add_argument("--workers", type=int, default=2, help="conversion processes")
    parser.add_argument("--only", action="append", help="variant name(s) to run (default: all)")
    parser.add_argument("--scatter-only", action="store_true", help="only the gather-vs-scatter comparison")
    parser.add_argument("--allocators", default="bfc",
                        help="CPU allocators to compare, interleaved: 'bfc' (what importing tfrecords_tools "
                             "sets), 'default' (TensorFlow's own), or 'bfc,default'")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one figure, as JSON
    args = parser.parse_args(argv)

    if args.measure:
        folder, kind, stride = json.loads(args.measure)
        print(json.dumps(measure(folder, kind, stride, args.seconds)))
        return

    if args.scatter_only:
        scatter_vs_gather()
        return
    allocators = args.allocators.split(",")
    if set(allocators) - set(ALLOCATOR_ENV):
        parser.error(f"--allocators: choose from {sorted(ALLOCATOR_ENV)}")

    import tfrecords_tools as tt

    paths = make_subjects(os.path.join(args.out, "nii"), args.subjects, args.frames)
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only]
    for storage, compression in sorted({(v[1], v[2]) for v in variants}):
        start = time.time()
        summary = tt.convert(tt.runs_from_files(paths), dataset_folder(args.out, storage, compression),
                             storage=storage, compression=compression, workers=args.workers, progress=False)
        print(f"convert {storage}/{compression or 'none'}: {time.time() - start:.1f} s "
              f"({summary.runs_already_done} runs already done)")
    print(f"cpus {os.cpu_count()}; {args.subjects} subjects x {args.frames} frames of {SIZE}^3; windows of "
          f"{WINDOW} frames ({SIZE ** 3 * WINDOW * 4 / 1e6:.1f} MB float32); {args.seconds:.0f} s per figure, "
          f"{args.rounds} interleaved rounds")
    print("gather vs scatter onto the grid:")
    scatter_vs_gather()

    rows = [(v, allocator) for v in variants for allocator in allocators]
    results = {(v[0], allocator, cores): [] for (v, allocator) in rows for cores in (1, 2)}
    for round_index in range(args.rounds):
        for (name, storage, compression, kind, stride), allocator in rows:
            for cores in (1, 2):
                command = ["taskset", "-c", ",".join(str(c) for c in range(cores)), sys.executable,
                           os.path.abspath(__file__), "--seconds", str(args.seconds), "--measure",
                           json.dumps([dataset_folder(args.out, storage, compression), kind, stride])]
                done = subprocess.run(command, capture_output=True, text=True,
                                      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                           "TF_CPU_ALLOCATOR_USE_BFC": ALLOCATOR_ENV[allocator]})
                if done.returncode:
                    raise RuntimeError(f"{name} on {cores} core(s) failed:\n{done.stderr[-2000:]}")
                figure = json.loads(done.stdout.strip().splitlines()[-1])
                results[(name, allocator, cores)].append(figure)
                print(f"round {round_index + 1}: {name:32s} {allocator:7s} {cores} core(s): "
                      f"{figure['rate']:6.2f} windows/s "
                      f"(load {figure['load']:.1f})", flush=True)

    print()
    print("| variant (storage/compression/dtype/stride) | CPU allocator | on disk / frame "
          "| windows/s, 1 core (load) | windows/s, 2 cores (load) |")
    print("| --- | --- | --- | --- | --- |")
    for (name, storage, compression, kind, stride), allocator in rows:
        cells = []
        for cores in (1, 2):
            figures = results[(name, allocator, cores)]
            rates = " / ".join(f"{f['rate']:.1f}" for f in figures)
            loads = " / ".join(f"{f['load']:.1f}" for f in figures)
            cells.append(f"**{statistics.median(f['rate'] for f in figures):.1f}** ({rates}; load {loads})")
        size = bytes_per_frame(dataset_folder(args.out, storage, compression)) / 1e6
        print(f"| {name} | {allocator} | {size:.3f} MB | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
