"""NeuroSTORM step time and peak memory on CPU: forward and forward+backward.

Full released config (`neurostorm_paper`: 1 x 96^3 x 20, embed 36, depths 2-2-6-2, 5.17M
parameters), batch 1, 2 intra-op threads by default. Modes: `graph` is a
`tf.function(jit_compile=False)` step (the selective scans then run in their own XLA
loops, jit "auto"); `xla` compiles the whole step (`jit_compile=True`). Prints a table
beside the upstream PyTorch reference (research/mamba.md section 4: reference scan,
1 thread, forward only). No assertions.

    python benchmarks/neurostorm_step.py [--variant neurostorm_paper] [--repeats 3]
                                         [--threads 2] [--modes graph,xla]

Each (mode, step) runs in its own subprocess so that peak RSS is per mode. The machine
may be shared: the 1-minute load average before and after each run is printed too.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

UPSTREAM = {"forward": "9.7 s (1 thread), 1.84 GB", "forward+backward": "not measured"}


def measure(mode: str, step: str, variant: str, repeats: int, threads: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tfbrain.models.neurostorm import NeuroSTORM

    load_before = os.getloadavg()[0]
    backbone = NeuroSTORM.backbone(variant)
    fmri = tf.constant(np.random.default_rng(0).normal(
        size=(1, *backbone.volume_shape)).astype("float32"))
    jit = mode == "xla"

    @tf.function(jit_compile=jit)
    def forward(x):
        return backbone(x, training=False)

    @tf.function(jit_compile=jit)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(backbone(x, training=True)))
        return loss, tape.gradient(loss, backbone.trainable_variables)

    fn = forward if step == "forward" else forward_backward
    t0 = time.perf_counter()
    result = tf.nest.map_structure(lambda t: t.numpy(), fn(fmri))  # trace + compile + run
    first = time.perf_counter() - t0
    finite = all(np.all(np.isfinite(a)) for a in tf.nest.flatten(result))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(fmri))
        times.append(time.perf_counter() - t0)
    return {"mode": mode, "step": step, "first_s": first, "median_s": statistics.median(times),
            "min_s": min(times), "finite": bool(finite),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="neurostorm_paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--steps", default="forward,forward+backward")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        mode, step = args._child.split(":")
        print(json.dumps(measure(mode, step, args.variant, args.repeats, args.threads)))
        return
    rows = []
    for mode in args.modes.split(","):
        for step in args.steps.split(","):
            out = subprocess.run([sys.executable, __file__, "--variant", args.variant, "--repeats",
                                  str(args.repeats), "--threads", str(args.threads),
                                  "--_child", f"{mode}:{step}"], capture_output=True, text=True)
            lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode or not lines:
                print(f"{mode} {step} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1]))
            print(lines[-1], flush=True)
    print(f"\nNeuroSTORM {args.variant}, batch 1, {args.threads} threads, "
          f"median of {args.repeats} after warm-up")
    print(f"{'mode':6} {'step':17} {'first call':>10} {'median':>9} {'min':>9} {'peak RSS':>9} "
          f"{'load 1m':>11}   upstream PyTorch")
    for r in rows:
        print(f"{r['mode']:6} {r['step']:17} {r['first_s']:9.2f}s {r['median_s']:8.2f}s "
              f"{r['min_s']:8.2f}s {r['peak_rss_gb']:7.2f}GB {r['load_before']:5.1f}/"
              f"{r['load_after']:<5.1f}  {UPSTREAM[r['step']]}")


if __name__ == "__main__":
    main()
