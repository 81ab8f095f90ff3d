"""BrainMT peak memory and time of an XLA forward+backward step against the number of frames.

The paper claims memory linear in frames (35.8 % less than SwiFT). For each T (default 4, 8,
16, 32) and each attention path (blockwise = `tfbrain.layers.blockwise_attention`, plain =
materialised scores), one subprocess builds `BrainMTBackbone` at full MNI size
(91 x 109 x 91, batch 1), compiles `loss + gradients` with `jit_compile=True`, runs it, and
reports the peak memory: the GPU allocator's peak (`tf.config.experimental.get_memory_info`)
on a GPU, peak RSS on CPU (which includes the TF runtime's fixed few hundred MB). Then it fits
peak memory = a + b * T per path (R^2), extrapolates to T = 200 and prints the blockwise /
plain time ratio where both ran. `--scan` also times the selective scan alone at BrainMT's
layer size (B, D, L, N) = (1, 1024, 12,601, 16) (T = 50) and reports ms per step.

    python benchmarks/brainmt_memory.py                      # the paper widths (GPU sized)
    python benchmarks/brainmt_memory.py --hidden-dim 64 --depths 1,1 --frames 2,4,8  # CPU demo
    python benchmarks/brainmt_memory.py --dtype mixed_bfloat16 --frames 8,16,32,64 --scan

No assertions; a run that fails (out of memory) is reported as such.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def measure_step(args, frames: int, attention: str) -> dict:
    """One (T, attention path) in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from tfbrain.models.brainmt import BrainMTBackbone

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    gpus = tf.config.list_physical_devices("GPU")
    if args.dtype != "float32":
        keras.mixed_precision.set_global_policy(args.dtype)
    spatial = tuple(int(s) for s in args.spatial.split(","))
    backbone = BrainMTBackbone(volume_shape=(*spatial, frames, 1), hidden_dim=args.hidden_dim,
                               depths=tuple(int(d) for d in args.depths.split(",")),
                               attention_implementation=attention, drop_path_rate=0.0)
    fmri = tf.constant(np.random.default_rng(0).normal(size=(1, *spatial, frames, 1)),
                       tf.float32)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(backbone(x, training=True), tf.float32)))
        return loss, tape.gradient(loss, backbone.trainable_variables)

    if gpus:
        tf.config.experimental.reset_memory_stats("GPU:0")
    t0 = time.perf_counter()
    loss, _ = step(fmri)
    float(loss)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        float(step(fmri)[0])
        times.append(time.perf_counter() - t0)
    if gpus:
        peak_gb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"frames": frames, "attention": attention, "tokens": backbone.sequence_length,
            "first_s": first, "median_s": statistics.median(times), "peak_gb": peak_gb,
            "device": "GPU" if gpus else "CPU", "loss_finite": bool(np.isfinite(float(loss)))}


def measure_scan(args) -> dict:
    """The selective scan alone at BrainMT's layer size, forward and forward+backward (XLA)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from tfbrain.layers.selective_scan import selective_scan_channels_last

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    batch, channels, length, state = (int(v) for v in args.scan_size.split(","))
    rng = np.random.default_rng(0)
    u, delta, z = (tf.constant(rng.normal(size=(batch, length, channels)), tf.float32)
                   for _ in range(3))
    b, c = (tf.constant(rng.normal(size=(batch, length, state)), tf.float32) for _ in range(2))
    a = -tf.tile(tf.range(1, state + 1, dtype=tf.float32)[None], (channels, 1))
    d, bias = tf.ones((channels,)), tf.zeros((channels,))

    def scan(u):
        return selective_scan_channels_last(u, delta, a, b, c, D=d, z=z, delta_bias=bias,
                                            delta_softplus=True)

    @tf.function(jit_compile=True)
    def forward(u):
        return tf.reduce_sum(scan(u))

    @tf.function(jit_compile=True)
    def forward_backward(u):
        with tf.GradientTape() as tape:
            tape.watch(u)
            loss = tf.reduce_sum(scan(u))
        return tape.gradient(loss, u)

    out = {"size": [batch, channels, length, state]}
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        fn(u)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            np.asarray(fn(u))
            times.append(time.perf_counter() - t0)
        out[name + "_ms_per_step"] = statistics.median(times) / length * 1e3
        out[name + "_s"] = statistics.median(times)
    return out


def linear_fit(xs, ys):
    """Least squares y = a + b x; returns (a, b, R^2)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return intercept, slope, (1.0 - ss_res / ss_tot) if ss_tot else 1.0


def child(args, task: str) -> dict | None:
    """Run one measurement in a fresh process (peak memory per run); None when it fails."""
    command = [sys.executable, sys.argv[0], "--_child", task] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("_child", "scan") and v is not None]
    out = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        tail = out.stderr.strip().splitlines()[-1:] or ["(no output)"]
        print(f"{task}: failed ({tail[0][:200]})", file=sys.stderr, flush=True)
        return None
    print(lines[-1], flush=True)
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="4,8,16,32")
    parser.add_argument("--attention", default="blockwise,plain")
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--depths", default="12,8")
    parser.add_argument("--spatial", default="91,109,91", help="X,Y,Z")
    parser.add_argument("--dtype", default="float32", help="float32 or mixed_bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scan", action="store_true", help="also time the scan alone")
    parser.add_argument("--scan-size", default="1,1024,12601,16", help="B,D,L,N")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        if args._child == "scan":
            print(json.dumps(measure_scan(args)))
        else:
            attention, frames = args._child.split(":")
            print(json.dumps(measure_step(args, int(frames), attention)))
        return

    frames = [int(t) for t in args.frames.split(",")]
    rows = [r for attention in args.attention.split(",") for t in frames
            if (r := child(args, f"{attention}:{t}")) is not None]
    device = rows[0]["device"] if rows else "?"
    memory = "GPU allocator peak" if device == "GPU" else "peak RSS"
    print(f"\nBrainMT XLA forward+backward, batch 1, {args.spatial} voxels, hidden "
          f"{args.hidden_dim}, depths {args.depths}, {args.dtype}, {device}, median of "
          f"{args.repeats} after the compiling call; memory = {memory}")
    print(f"{'attention':10} {'T':>4} {'tokens':>7} {'first call':>10} {'step':>9} "
          f"{'peak':>9} {'ratio to plain':>15}")
    plain = {r["frames"]: r for r in rows if r["attention"] == "plain"}
    for r in rows:
        ratio = (f"{r['median_s'] / plain[r['frames']]['median_s']:.2f}x"
                 if r["attention"] != "plain" and r["frames"] in plain else "")
        print(f"{r['attention']:10} {r['frames']:4d} {r['tokens']:7d} {r['first_s']:9.1f}s "
              f"{r['median_s']:8.2f}s {r['peak_gb']:7.2f}GB {ratio:>15}")
    print(f"\n{'attention':10} {'GB/frame':>9} {'intercept':>10} {'R^2':>7} "
          f"{'T=200 (extrap.)':>16}")
    for attention in args.attention.split(","):
        points = [(r["frames"], r["peak_gb"]) for r in rows if r["attention"] == attention]
        if len(points) < 2:
            print(f"{attention:10} (fewer than two successful runs)")
            continue
        intercept, slope, r2 = linear_fit(*zip(*points))
        print(f"{attention:10} {slope:9.3f} {intercept:9.2f}G {r2:7.4f} "
              f"{intercept + 200 * slope:14.1f}GB")
    if args.scan:
        scan = child(args, "scan")
        if scan:
            print(f"\nselective scan (B, D, L, N) = {tuple(scan['size'])}, XLA: forward "
                  f"{scan['forward_s']:.2f}s ({scan['forward_ms_per_step']:.3f} ms/step), "
                  f"forward+backward {scan['forward+backward_s']:.2f}s "
                  f"({scan['forward+backward_ms_per_step']:.3f} ms/step)")


if __name__ == "__main__":
    main()
