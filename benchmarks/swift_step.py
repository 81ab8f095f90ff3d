"""SwiFT step time on CPU: forward and forward+backward, float32 and mixed bfloat16.

Three things can be timed; in each, every variant is compiled first and then the variants
run interleaved (A B C ... A B C ...), so that load from other jobs on a shared machine
falls on all of them alike; the median, the fastest run, the median CPU time of the
process per call ("CPU s", all threads summed) and the range of the 1-minute load average
(os.getloadavg) over those runs are printed per variant. On a shared machine wall time
swings with the load and CPU time much less: with N threads on an idle machine, wall
time is at best CPU s / N. No assertions.

    model   the full paper config (1 x 96^3 x 20, batch 1): forward and forward+backward
            under the float32 and mixed_bfloat16 policies, jit_compile=True (XLA) by
            default (`--jit false,true` adds graph mode). Beside each figure: the dense
            floor, 22.8 GFLOP per forward (x3 with the backward) at the rate of an XLA
            float32 2048^2 matmul measured in the same run, in wall and in CPU seconds,
            and how many times the floor the step's CPU time is.
    block   the attention half of one shifted stage-0 block (16^3 x 20 tokens, C 36, 3
            heads, 4^4 windows, shift 2): the -100 mask on every window vs on the boundary
            windows only, softmax vs normalising after the product with the values.
    matmul  2048^2 matmul, float32 vs bfloat16, XLA vs graph mode: does this CPU run
            bfloat16 dots faster? (ONEDNN_VERBOSE=1 shows the graph-mode oneDNN kernels.)

    python benchmarks/swift_step.py [model|block|matmul] [--repeats 5] [--threads 2]
        [--allocator bfc|default]

Upstream PyTorch reference (research/swift.md section 8): forward ~1.2 s uncontended, 1.24 GB;
forward+backward ~2.7 s uncontended, 2.44 GB. The SwiFT paper config is a few GB per
variant under XLA: run one model benchmark at a time.
"""

import argparse
import os
import resource
import statistics
import sys
import time

FORWARD_GFLOP = 22.8  # matmul FLOPs of one forward (torch FlopCounterMode, research/swift.md)


def _setup(threads: int, allocator: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # set before TensorFlow's first op: "bfc" is what importing tfbrain sets by default
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true" if allocator == "bfc" else "false"
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def _run(fn, args):
    import tensorflow as tf
    return tf.nest.map_structure(lambda t: t.numpy(), fn(*args))


def interleaved(variants: dict, repeats: int) -> dict:
    """{name: (fn, args)} -> {name: {"median_s", "min_s", "load", "first_s"}}; every
    variant runs once (compile) and then `repeats` rounds, one call of each per round."""
    results = {}
    for name, (fn, args) in variants.items():
        t0 = time.perf_counter()
        _run(fn, args)
        results[name] = {"first_s": time.perf_counter() - t0, "times": [], "loads": []}
        print(f"  compiled {name}: {results[name]['first_s']:.1f} s", file=sys.stderr, flush=True)
        results[name]["cpu"] = []
    for _ in range(repeats):
        for name, (fn, args) in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            _run(fn, args)
            results[name]["times"].append(time.perf_counter() - t0)
            results[name]["cpu"].append(time.process_time() - c0)
            results[name]["loads"].append(os.getloadavg()[0])
    for name, r in results.items():
        print(f"  {name}: wall {[round(t, 3) for t in r['times']]}, CPU "
              f"{[round(t, 3) for t in r['cpu']]}", file=sys.stderr)
        r["median_s"] = statistics.median(r["times"])
        r["cpu_s"] = statistics.median(r["cpu"])
        r["min_s"] = min(r["times"])
        r["load"] = (min(r["loads"]), max(r["loads"]))
    return results


def matmul_variants(tf, size=2048):
    import numpy as np
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    variants = {}
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(tf.constant(a), dtype)
        for jit in (True, False):
            fn = tf.function(lambda m: tf.matmul(m, m), jit_compile=jit, autograph=False)
            variants[f"{dtype} {'xla' if jit else 'graph'}"] = (fn, (x,))
    return variants


def matmul_rate(tf, repeats=3, size=2048) -> tuple[float, float]:
    """An XLA float32 size^2 matmul, now, as the dense-work reference: (GFLOP per wall
    second, GFLOP per CPU second of the process), best of `repeats`."""
    a = tf.constant(1.0, shape=(size, size))
    fn = tf.function(lambda m: tf.matmul(m, m), jit_compile=True, autograph=False)
    _run(fn, (a,))
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _run(fn, (a,))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    flop = 2 * size ** 3 / 1e9
    return flop / min(walls), flop / min(cpus)


def block_variants(tf):
    """The attention half of a shifted stage-0 block of the paper config, four ways."""
    import keras
    import numpy as np

    from tfbrain.layers.attention import attention_core
    from tfbrain.layers.window_4d import (WindowAttention4D, padded_grid_size,
                                          shifted_window_labels, windowed_apply)

    grid, window, shift, width, heads = (16, 16, 16, 20), (4, 4, 4, 4), (2, 2, 2, 2), 36, 3
    labels = shifted_window_labels(padded_grid_size(grid, window), window, shift)
    x = tf.constant(np.random.default_rng(0).normal(size=(1, *grid, width)), tf.float32)
    variants = {}
    for every in (True, False):
        for late in (False, True):
            layer = WindowAttention4D(width, heads)
            layer.build((None, None, width))

            def attend(q, k, v, mask, training, layer=layer, late=late):
                if mask is None:
                    return attention_core(q, k, v, normalize_after_values=late)
                n = mask.shape[0]
                split = lambda t: tf.reshape(t, (-1, n) + tuple(t.shape[1:]))  # noqa: E731
                out = attention_core(split(q), split(k), split(v), additive_mask=mask[None, :, None],
                                     normalize_after_values=late)
                return tf.reshape(out, (-1,) + tuple(q.shape[1:]))

            layer.attend = attend

            def forward(t, layer=layer, every=every):
                return windowed_apply(t, lambda w, m: layer(w, attention_mask=m), window, shift,
                                      labels, mask_every_window=every)

            def forward_backward(t, layer=layer, forward=forward):
                with tf.GradientTape() as tape:
                    tape.watch(t)
                    loss = tf.reduce_sum(tf.square(forward(t)))
                return tape.gradient(loss, [t] + layer.trainable_variables)

            name = (f"mask {'every window' if every else 'boundary only'}, "
                    f"{'normalise after values' if late else 'softmax'}")
            variants[f"{name} | forward"] = (tf.function(forward, jit_compile=True), (x,))
            variants[f"{name} | fwd+bwd"] = (tf.function(forward_backward, jit_compile=True), (x,))
    keras.mixed_precision.set_global_policy("float32")
    return variants


def model_variants(tf, variant: str, policies, jits):
    import keras
    import numpy as np

    from tfbrain.models.swift import SwiFT

    variants = {}
    for policy in policies:
        keras.mixed_precision.set_global_policy(policy)
        backbone = SwiFT.backbone(variant)
        keras.mixed_precision.set_global_policy("float32")
        fmri = tf.constant(np.random.default_rng(0).normal(
            size=(1, *backbone.volume_shape)).astype("float32"))
        for jit in jits:
            def forward(x, backbone=backbone):
                return tf.cast(backbone(x, training=False), tf.float32)

            def forward_backward(x, backbone=backbone):
                with tf.GradientTape() as tape:
                    out = tf.cast(backbone(x, training=True), tf.float32)
                    loss = tf.reduce_mean(tf.square(out))  # the loss in float32
                return loss, tape.gradient(loss, backbone.trainable_variables)

            mode = "xla" if jit else "graph"
            variants[f"{policy} {mode} | forward"] = (
                tf.function(forward, jit_compile=jit), (fmri,))
            variants[f"{policy} {mode} | fwd+bwd"] = (
                tf.function(forward_backward, jit_compile=jit), (fmri,))
    return variants


def print_table(title: str, results: dict, floor=None) -> None:
    """`floor`: (wall s, CPU s) of one forward's matmul FLOPs at the reference matmul rate;
    a backward costs about twice the forward."""
    print(f"\n{title}")
    head = (f"{'variant':54} {'step':8} {'median':>9} {'fastest':>9} {'CPU s':>8} {'first':>8} "
            f"{'load 1m':>10}")
    print(head + ("   floor wall/CPU s, x floor (CPU)" if floor else ""))
    for name, r in results.items():
        variant, step = name.split(" | ")
        line = (f"{variant:54} {step:8} {r['median_s']:8.3f}s {r['min_s']:8.3f}s "
                f"{r['cpu_s']:7.3f}s {r['first_s']:7.1f}s {r['load'][0]:4.1f}-{r['load'][1]:<4.1f}")
        if floor:
            factor = 3 if step == "fwd+bwd" else 1
            wall, cpu = floor[0] * factor, floor[1] * factor
            line += f"   {wall:5.3f}/{cpu:5.3f}s, {r['cpu_s'] / cpu:4.1f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="model", choices=("model", "block", "matmul"))
    parser.add_argument("--variant", default="swift_paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--policies", default="float32,mixed_bfloat16")
    parser.add_argument("--jit", default="true", help="comma list of true/false (false: graph mode)")
    parser.add_argument("--allocator", default="bfc", choices=("bfc", "default"),
                        help="TF's CPU allocator: bfc (keeps buffers; tfbrain's default) or "
                             "TF's default (returns large buffers to the OS)")
    args = parser.parse_args()
    tf = _setup(args.threads, args.allocator)
    print(f"allocator {args.allocator}, load 1m before: {os.getloadavg()[0]:.1f}, {args.threads} threads, "
          f"median of {args.repeats}, variants interleaved", flush=True)
    if args.what == "matmul":
        results = interleaved({f"{k} | 2048^2": v for k, v in matmul_variants(tf).items()},
                              args.repeats)
        print_table("2048^2 matmul (2*2048^3 FLOP)", results)
        for name, r in results.items():
            print(f"  {name.split(' | ')[0]:16} {2 * 2048 ** 3 / r['median_s'] / 1e9:6.1f} GFLOP/s")
        return
    if args.what == "block":
        results = interleaved(block_variants(tf), args.repeats)
        print_table("SwiFT stage-0 shifted block, attention half (XLA, float32)", results)
        return
    jits = [j.strip().lower() == "true" for j in args.jit.split(",")]
    variants = model_variants(tf, args.variant, args.policies.split(","), jits)
    rates = matmul_rate(tf)
    results = interleaved(variants, args.repeats)
    rates = tuple(max(a, b) for a, b in zip(rates, matmul_rate(tf)))
    floor = ((FORWARD_GFLOP / rates[0], FORWARD_GFLOP / rates[1])
             if args.variant == "swift_paper" else None)
    print_table(f"SwiFT step: {args.variant}, batch 1; peak RSS of the process "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB; XLA float32 "
                f"2048^2 matmul now: {rates[0]:.0f} GFLOP/s wall, {rates[1]:.0f} GFLOP per CPU s",
                results, floor)
    print("upstream PyTorch (research/swift.md): forward ~1.2 s uncontended, forward+backward "
          "~2.7 s uncontended")


if __name__ == "__main__":
    main()
