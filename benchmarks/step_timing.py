"""Shared harness of the backbone step benchmarks (neurostorm_step.py, brainmt_step.py).

Times forward and forward+backward of one backbone on CPU for each mode: `graph` is a
`tf.function(jit_compile=False)` step, `xla` compiles the whole step
(`jit_compile=True`). Each (mode, step) runs in its own subprocess so that peak RSS is
per mode; the 1-minute load average before and after each run is printed, because the
machine may be shared. Prints a table beside the upstream PyTorch reference. No assertions.
"""

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def measure(factory: str, variant: str, mode: str, step: str, repeats: int, threads: int) -> dict:
    """One (mode, step) in this process; `factory` is "module:callable(variant) -> backbone"."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    module_name, attribute = factory.split(":")
    build = importlib.import_module(module_name)
    for part in attribute.split("."):
        build = getattr(build, part)

    load_before = os.getloadavg()[0]
    backbone = build(variant)
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


def main(title: str, factory: str, default_variant: str, upstream: dict, repeats: int = 5) -> None:
    """The command line of a step benchmark script."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--variant", default=default_variant)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--steps", default="forward,forward+backward")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        mode, step = args._child.split(":")
        print(json.dumps(measure(factory, args.variant, mode, step, args.repeats, args.threads)))
        return
    rows = []
    for mode in args.modes.split(","):
        for step in args.steps.split(","):
            out = subprocess.run([sys.executable, sys.argv[0], "--variant", args.variant,
                                  "--repeats", str(args.repeats), "--threads", str(args.threads),
                                  "--_child", f"{mode}:{step}"], capture_output=True, text=True)
            lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode or not lines:
                print(f"{mode} {step} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1]))
            print(lines[-1], flush=True)
    print(f"\n{title}: {args.variant}, batch 1, {args.threads} threads, "
          f"median of {args.repeats} after warm-up")
    print(f"{'mode':6} {'step':17} {'first call':>10} {'median':>9} {'min':>9} {'peak RSS':>9} "
          f"{'load 1m':>11}   upstream PyTorch")
    for r in rows:
        print(f"{r['mode']:6} {r['step']:17} {r['first_s']:9.2f}s {r['median_s']:8.3f}s "
              f"{r['min_s']:8.3f}s {r['peak_rss_gb']:7.2f}GB {r['load_before']:5.1f}/"
              f"{r['load_after']:<5.1f}  {upstream[r['step']]}")
