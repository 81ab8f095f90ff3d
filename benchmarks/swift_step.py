"""SwiFT step time on CPU: forward and forward+backward, graph mode vs XLA.

Full paper config (1 x 96^3 x 20, batch 1), 2 intra-op threads by default. Prints a
table beside the upstream PyTorch reference measured on the same kind of machine
(research/swift.md section 8). No assertions: targets are <=0.25 s forward and
<=0.7 s forward+backward.

    python benchmarks/swift_step.py [--variant swift_paper] [--repeats 5] [--threads 2]

Each mode runs in its own subprocess so that peak RSS is per mode.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

UPSTREAM = {"forward": "~1.2 s uncontended (median ~4 s), 1.24 GB",
            "forward+backward": "~2.7 s uncontended (median 4-9 s), 2.44 GB"}


def measure(mode: str, step: str, variant: str, repeats: int, threads: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tfbrain.models.swift import SwiFT

    backbone = SwiFT.backbone(variant)
    fmri = tf.constant(np.random.default_rng(0).normal(
        size=(1, *backbone.volume_shape)).astype("float32"))
    jit = mode == "xla"

    @tf.function(jit_compile=jit)
    def forward(x):
        return backbone(x, training=False)

    @tf.function(jit_compile=jit)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(backbone(x, training=True))
        return tape.gradient(loss, backbone.trainable_variables)

    fn = forward if step == "forward" else forward_backward
    t0 = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn(fmri))  # trace + compile + first run
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(fmri))
        times.append(time.perf_counter() - t0)
    return {"mode": mode, "step": step, "first_s": first, "median_s": statistics.median(times),
            "min_s": min(times), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="swift_paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        mode, step = args._child.split(":")
        print(json.dumps(measure(mode, step, args.variant, args.repeats, args.threads)))
        return
    rows = []
    for mode in args.modes.split(","):
        for step in ("forward", "forward+backward"):
            out = subprocess.run([sys.executable, __file__, "--variant", args.variant, "--repeats",
                                  str(args.repeats), "--threads", str(args.threads),
                                  "--_child", f"{mode}:{step}"], capture_output=True, text=True)
            lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode or not lines:
                print(f"{mode} {step} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1]))
    print(f"\nSwiFT {args.variant}, batch 1, {args.threads} threads, median of {args.repeats} after warm-up")
    print(f"{'mode':6} {'step':17} {'first call':>10} {'median':>9} {'min':>9} {'peak RSS':>9}   upstream PyTorch")
    for r in rows:
        print(f"{r['mode']:6} {r['step']:17} {r['first_s']:9.2f}s {r['median_s']:8.3f}s "
              f"{r['min_s']:8.3f}s {r['peak_rss_gb']:7.2f}GB   {UPSTREAM[r['step']]}")


if __name__ == "__main__":
    main()
