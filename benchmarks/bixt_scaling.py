"""BiXT's cost against the token count: time and peak memory, beside full attention.

Three parts, each measurement in its own subprocess (so peak memory is per measurement):

  1. `encoder`: BiXT-Ti's encoder (192 wide, 64 latents, 12 layers, 6 heads) on N random
     tokens, and a ViT-Ti-width full-attention encoder of the same depth (192 wide, 3 heads,
     the shared `TransformerBlock`), forward and forward+backward, for each N of `--tokens`.
     Full attention is skipped above `--full-attention-max` tokens (its N^2 scores stop fitting).
  2. the per-token slope (least squares of time and memory on N) and its R^2 for each series;
     BiXT should be linear (R^2 >= 0.99).
  3. `window`: `bixt_fmri_ti` (34,560 tokens) and `bixt_fmri_d96_tubelet` (8,640 tokens, about
     SwiFT's FLOPs) on a whole 96^3 x 20 window beside SwiFT's `swift_paper`, forward+backward
     step time, batch 1.

Peak memory: the accelerator's peak (`tf.config.experimental.get_memory_info`) when one is
visible, else the process' peak RSS (which includes TensorFlow itself, ~0.6 GB). On the project's
2 shared CPU cores the full sweep takes a long time; `--quick` runs a small one
(256..2,048 tokens, 2 layers) that still shows the slopes. No assertions.

    python benchmarks/bixt_scaling.py [--quick] [--tokens 1024,4096,16384,65536]
        [--steps forward,forward+backward] [--parts encoder,window] [--jit]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TI = dict(width=192, num_latents=64, depth=12, bixt_heads=6, vit_heads=3)


def build(model, num_tokens, depth):
    """A Keras model on `(1, N, 192)` tokens: BiXT-Ti's encoder or a full-attention encoder."""
    import keras

    from tfbrain.layers.transformer_block import TransformerBlock
    from tfbrain.models.bixt.bixt_layers import BiXTBlock, BiXTLatents

    width = TI["width"]
    tokens = keras.Input((num_tokens, width), name="tokens")
    if model == "vit":
        x = tokens
        for i in range(depth):
            x = TransformerBlock(width, TI["vit_heads"], layer_norm_epsilon=1e-6,
                                 name=f"block_{i}")(x)
        return keras.Model(tokens, x)
    latents, x = BiXTLatents(TI["num_latents"], width, name="latents")(tokens), tokens
    for i in range(depth):
        block = BiXTBlock(width, width, width, TI["bixt_heads"], TI["bixt_heads"],
                          one_sided=i == depth - 1, name=f"blocks_{i}")
        if i == depth - 1:
            latents = block(latents, x)
        else:
            latents, x = block(latents, x)
    return keras.Model(tokens, latents)


def build_window(model):
    from tfbrain.models.registry import create_backbone

    return create_backbone(model)


def measure(spec: dict) -> dict:
    """One measurement in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    if spec["threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])
    gpus = tf.config.list_physical_devices("GPU")
    if spec["part"] == "window":
        model = build_window(spec["model"])
        shape = (1, *model.volume_shape)
    else:
        model = build(spec["model"], spec["tokens"], spec["depth"])
        shape = (1, spec["tokens"], TI["width"])
    x = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))

    @tf.function(jit_compile=spec["jit"])
    def forward(inputs):
        return model(inputs, training=False)

    @tf.function(jit_compile=spec["jit"])
    def forward_backward(inputs):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(inputs, training=True)))
        return loss, tape.gradient(loss, model.trainable_variables)

    fn = forward if spec["step"] == "forward" else forward_backward
    t0 = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn(x))  # trace, compile, run
    first = time.perf_counter() - t0
    if gpus:
        tf.config.experimental.reset_memory_stats("GPU:0")
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(x))
        times.append(time.perf_counter() - t0)
    if gpus:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {**spec, "first_s": first, "median_s": statistics.median(times),
            "peak_gb": peak, "memory": "accelerator" if gpus else "RSS",
            "load": os.getloadavg()[0]}


def run_child(spec: dict) -> dict | None:
    out = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        tail = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        print(f"  {spec['model']} {spec.get('tokens', '')} {spec['step']}: failed ({tail[0]})",
              flush=True)
        return None
    result = json.loads(lines[-1])
    print(f"  {result['model']:5} N={result.get('tokens', '-')!s:>6} {result['step']:17} "
          f"{result['median_s']:8.3f} s  {result['peak_gb']:6.2f} GB", flush=True)
    return result


def fit_line(xs, ys):
    """Least squares y = a + b x; returns (b, R^2)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    return slope, 1.0 - ss_res / ss_tot if ss_tot else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="1024,4096,16384,65536")
    parser.add_argument("--depth", type=int, default=TI["depth"])
    parser.add_argument("--full-attention-max", type=int, default=4096,
                        help="largest N for full attention (16,384 needs ~40 GB for 12 layers)")
    parser.add_argument("--steps", default="forward,forward+backward")
    parser.add_argument("--parts", default="encoder,window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: TensorFlow's default")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the steps")
    parser.add_argument("--quick", action="store_true",
                        help="256..2,048 tokens, 2 layers, no 96^3 window")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(json.loads(args._child))))
        return
    if args.quick:
        args.tokens, args.depth, args.parts = "256,512,1024,2048", 2, "encoder"
    token_counts = [int(n) for n in args.tokens.split(",")]
    steps = args.steps.split(",")
    common = dict(repeats=args.repeats, threads=args.threads, jit=args.jit)
    rows = []
    if "encoder" in args.parts:
        print(f"encoder: 192 wide, depth {args.depth}, batch 1")
        for step in steps:
            for model in ("bixt", "vit"):
                for num_tokens in token_counts:
                    if model == "vit" and num_tokens > args.full_attention_max:
                        continue
                    result = run_child(dict(part="encoder", model=model, tokens=num_tokens,
                                            depth=args.depth, step=step, **common))
                    if result:
                        rows.append(result)
    windows = []
    if "window" in args.parts:
        print("whole 96^3 x 20 window, batch 1")
        for model in ("bixt_fmri_ti", "bixt_fmri_d96_tubelet", "swift_paper"):
            result = run_child(dict(part="window", model=model, step="forward+backward",
                                    **common))
            if result:
                windows.append(result)

    print(f"\nBiXT scaling ({'XLA' if args.jit else 'graph'} mode, median of {args.repeats})")
    print(f"{'model':6} {'step':17} " + " ".join(f"{n:>10}" for n in token_counts)
          + f" {'ms / 1k tok':>12} {'R^2 time':>9} {'MB / 1k tok':>12} {'R^2 mem':>8}")
    for step in steps:
        for model in ("bixt", "vit"):
            series = [r for r in rows if r["model"] == model and r["step"] == step]
            if not series:
                continue
            by_n = {r["tokens"]: r for r in series}
            cells = " ".join(f"{by_n[n]['median_s']:9.3f}s" if n in by_n else f"{'-':>10}"
                             for n in token_counts)
            xs = [r["tokens"] / 1000 for r in series]
            if len(series) >= 3:
                time_slope, time_r2 = fit_line(xs, [r["median_s"] for r in series])
                mem_slope, mem_r2 = fit_line(xs, [r["peak_gb"] for r in series])
                fit = (f" {1000 * time_slope:12.2f} {time_r2:9.4f} {1000 * mem_slope:12.1f} "
                       f"{mem_r2:8.4f}")
            else:
                fit = "   (fewer than 3 sizes: no fit)"
            print(f"{model:6} {step:17} {cells}{fit}")
    if rows:
        print(f"peak memory: {rows[0]['memory']}; load average during the runs: "
              f"{min(r['load'] for r in rows):.1f}..{max(r['load'] for r in rows):.1f}")
    if windows:
        print("\n96^3 x 20 window, forward+backward, batch 1")
        for r in windows:
            print(f"  {r['model']:24} {r['median_s']:8.3f} s  peak {r['peak_gb']:.2f} GB "
                  f"({r['memory']})")


if __name__ == "__main__":
    main()
