"""Selective-scan benchmark: tfbrain XLA loops vs a NumPy time-major loop and tf.scan.

Usage: python benchmarks/selective_scan.py [--sizes 1,1536,1024,16 ...] [--repeats 3]

Inputs are called as in the Mamba block: variable B, C (Bt, N, L), D, z, delta_bias,
delta_softplus=True, A = -[1..N]. "fwd+bwd" is the output plus the gradients of sum(out) with
respect to u, delta, A, B, C (one tf.function). Medians of `--repeats` timed calls after one
warm-up (compile) call; the first-call time is printed too. Prints a table; no assertions.
The exp floor is B*D*L*N exponentials timed with NumPy (chunks of 16M) on this machine.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfbrain.layers.selective_scan import selective_scan  # noqa: E402

DEFAULT_SIZES = ["1,1536,1024,16", "2,384,4096,16", "320,72,256,16", "1,1024,12601,16"]
TF_SCAN_BACKWARD_LIMIT = 30e6  # B*D*L*N above which tf.scan's gradient takes minutes


def make_inputs(batch, channels, steps, state, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return dict(u=normal(batch, channels, steps), delta=normal(batch, channels, steps) - 3.0,
                A=-np.tile(np.arange(1, state + 1, dtype=np.float32), (channels, 1)),
                B=normal(batch, state, steps), C=normal(batch, state, steps),
                D=np.ones(channels, np.float32), z=normal(batch, channels, steps),
                delta_bias=np.zeros(channels, np.float32))


def time_call(fn, repeats):
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first


def numpy_scan(u, delta, A, B, C, D, z, delta_bias):
    """Time-major NumPy loop, exp fused per step (no (B, D, L, N) tensor)."""
    delta = delta + delta_bias[:, None]
    delta = np.where(delta > 20, delta, np.log1p(np.exp(np.minimum(delta, 20))))
    u_t, d_t = np.ascontiguousarray(u.transpose(2, 0, 1)), np.ascontiguousarray(
        delta.transpose(2, 0, 1))  # (L, Bt, D)
    B_t, C_t = np.ascontiguousarray(B.transpose(2, 0, 1)), np.ascontiguousarray(
        C.transpose(2, 0, 1))  # (L, Bt, N)
    h = np.zeros(u.shape[:2] + (A.shape[1],), np.float32)
    ys = np.empty_like(u_t)
    for t in range(u_t.shape[0]):
        h = np.exp(d_t[t][..., None] * A) * h + (d_t[t] * u_t[t])[..., None] * B_t[t][:, None]
        ys[t] = np.einsum("bdn,bn->bd", h, C_t[t])
    y = ys.transpose(1, 2, 0) + D[:, None] * u
    return y * z / (1 + np.exp(-z))


def tf_scan_fn(u, delta, A, B, C, D, z, delta_bias):
    """The same recurrence with tf.scan over time-major slices."""
    delta = tf.nn.softplus(delta + delta_bias[:, None])
    elems = (tf.transpose(u, [2, 0, 1]), tf.transpose(delta, [2, 0, 1]),
             tf.transpose(B, [2, 0, 1]), tf.transpose(C, [2, 0, 1]))

    def step(carry, x):
        h, _ = carry
        u_t, d_t, b_t, c_t = x
        h = tf.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * b_t[:, None]
        return h, tf.einsum("bdn,bn->bd", h, c_t)

    h0 = tf.zeros(tf.concat([tf.shape(u)[:2], tf.shape(A)[1:]], 0))
    _, ys = tf.scan(step, elems, initializer=(h0, tf.zeros(tf.shape(u)[:2])))
    y = tf.transpose(ys, [1, 2, 0]) + D[:, None] * u
    return y * tf.nn.silu(z)


def forward_backward(fn):
    @tf.function
    def run(u, delta, A, B, C, D, z, delta_bias):
        with tf.GradientTape() as tape:
            tape.watch([u, delta, A, B, C])
            loss = tf.reduce_sum(fn(u, delta, A, B, C, D, z, delta_bias))
        return tape.gradient(loss, [u, delta, A, B, C])
    return run


def exp_floor(count):
    x = -np.random.default_rng(0).random(min(count, 16_000_000)).astype(np.float32)
    out = np.empty_like(x)
    start = time.perf_counter()
    done = 0
    while done < count:
        np.exp(x, out=out)
        done += x.size
    return (time.perf_counter() - start) * count / done


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk_size", type=int, default=None)
    args = parser.parse_args()

    ours = lambda u, delta, A, B, C, D, z, bias: selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
        chunk_size=args.chunk_size)
    rows = []
    for size in args.sizes:
        batch, channels, steps, state = map(int, size.split(","))
        inputs = make_inputs(batch, channels, steps, state)
        tensors = [tf.constant(v) for v in inputs.values()]
        count = batch * channels * steps * state
        row = {"size": f"({batch},{channels},{steps},{state})"}
        fwd = tf.function(ours, jit_compile=True)  # the scan's own loops are jit ("auto")
        row["tfbrain fwd"] = time_call(lambda: fwd(*tensors).numpy(), args.repeats)
        fwd_bwd = forward_backward(ours)
        row["tfbrain fwd+bwd"] = time_call(
            lambda: [g.numpy() for g in fwd_bwd(*tensors)], args.repeats)
        row["numpy fwd"] = time_call(lambda: numpy_scan(**inputs), max(1, args.repeats - 1))
        scan_fwd = tf.function(tf_scan_fn, jit_compile=True)
        row["tf.scan jit fwd"] = time_call(lambda: scan_fwd(*tensors).numpy(), args.repeats)
        if count <= TF_SCAN_BACKWARD_LIMIT:
            scan_bwd = forward_backward(tf_scan_fn)
            row["tf.scan fwd+bwd"] = time_call(
                lambda: [g.numpy() for g in scan_bwd(*tensors)], 1)
        row["exp floor"] = (exp_floor(count), None)
        rows.append(row)
        print(f"done {row['size']}", flush=True)

    columns = ["tfbrain fwd", "tfbrain fwd+bwd", "numpy fwd", "tf.scan jit fwd",
               "tf.scan fwd+bwd", "exp floor"]
    print(f"\nselective scan, median ms (first call s); {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}")
    print("| size (B,D,L,N) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        cells = []
        for column in columns:
            if column not in row:
                cells.append("skipped")
                continue
            median, first = row[column]
            cells.append(f"{median * 1e3:.1f}" + (f" ({first:.1f} s)" if first else ""))
        print(f"| {row['size']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
