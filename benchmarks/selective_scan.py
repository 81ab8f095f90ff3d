"""Selective-scan benchmark: tfbrain's XLA loops against candidates, NumPy, tf.scan and floors.

Usage: python benchmarks/selective_scan.py [--sizes 1,1536,1024,16 ...] [--repeats 5]
       [--chunk_size 16] [--skip numpy tf.scan]

Inputs are called as in the Mamba block: variable B, C (Bt, N, L), D, z, delta_bias,
delta_softplus=True, A = -[1..N]. "fwd+bwd" is the output plus the gradients of sum(out) with
respect to u, delta, A, B, C (one tf.function).

The variants of one size are timed in rotation, call by call (`--repeats` rounds after one
warm-up/compile call each), so that load from other processes falls on all of them alike.
Each cell prints the median wall time, the median CPU time of this process (user + system,
all threads: what the call costs, nearly independent of how many other jobs share the
cores) and the median 1-minute load average while it ran. A trailing "first" column is the
first (compiling) call.

"tfbrain fwd" is the upstream layout (Bt, D, L); "tfbrain fwd, channels last" the same call on
(Bt, L, D), the layout the Mamba layers use (`selective_scan_channels_last`).

Candidates and floors, each in the same rotation:
    chunk-exp fwd      exp(delta*A) of a whole chunk as one vectorised (T, N, Bt, D) op before
                       the serial multiply-add loop (the layout change the issue proposed),
                       checked against tfbrain's output before timing
    fused-chunk fwd    channels last; bias + softplus, the D skip and the silu(z) gate done per
                       chunk inside the chunk loop on (T, Bt, D) slices, each output chunk
                       written once (issue 16's proposal), checked against tfbrain's output.
                       It uses the library's softplus and, like the library since issue 16's
                       third attempt, drops the size-1 batch axis and contracts C by a
                       (1, N) @ (N, D) product: what it adds over tfbrain is the fusion alone
    recurrence floor   the fused-chunk loop with softplus, skip and gate left out (delta fed
                       as is): the chunked recurrence alone at full size, i.e. what the
                       fused forward would cost if its per-chunk element-wise work were free
    softplus (1 op)    the library's softplus (upstream's threshold 20; log1p as one log and a
                       division) of a (Bt, L, D) tensor as one XLA op: what the softplus costs
                       wherever it is placed
    exp floor (1 op)   XLA exp of B*D*L*N float32 as one op (writes the whole result)
    exp floor (loop)   the same exps in an XLA while loop over L, one (B*D*N) slice a step,
                       summed into a carried vector: the scan's exp work without the rest
    loop floor         tfbrain's scan at the same B, L, N with D = 8 channels: the cost of L
                       XLA while-loop iterations when the work per step is nearly nothing
No assertions; prints a Markdown table.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfbrain.layers.selective_scan import (_softplus, selective_scan,  # noqa: E402
                                           selective_scan_channels_last)

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


def chunk_exp_scan(u, delta, A, B, C, D, z, delta_bias, chunk_size=16):
    """Forward-only candidate with the library's semantics for this call (variable B/C, one
    group): per chunk, exp(delta*A) and delta*u*B for all T steps as two vectorised ops, then
    a serial loop of multiply-adds. Kept here, not in the library, because it measured slower
    (docs/selective_scan.md, "What bounds it")."""
    delta = tf.nn.softplus(delta + delta_bias[:, None])
    batch, channels, steps = u.shape
    state = A.shape[1]
    chunk = min(chunk_size, steps)
    num_chunks = -(-steps // chunk)
    pad = num_chunks * chunk - steps

    def chunked(x):  # (L, ...) -> (K, T, ...); padding delta with 0 leaves h unchanged
        x = tf.pad(x, [[0, pad]] + [[0, 0]] * (x.shape.rank - 1))
        return tf.reshape(x, [num_chunks, chunk] + x.shape[1:].as_list())

    u_c = chunked(tf.transpose(u, [2, 0, 1]))  # (K, T, Bt, D)
    d_c = chunked(tf.transpose(delta, [2, 0, 1]))
    b_c = chunked(tf.transpose(B, [2, 1, 0])[..., None])  # (K, T, N, Bt, 1)
    c_c = chunked(tf.transpose(C, [2, 1, 0])[..., None])
    a_s = tf.transpose(A)[:, None, :]  # (N, 1, D)
    ys = tf.TensorArray(tf.float32, size=num_chunks, element_shape=(chunk, batch, channels))

    def chunk_body(k, h, ys):
        d_k, c_k = d_c[k], c_c[k]
        decay_k = tf.exp(d_k[:, None] * a_s[None])  # (T, N, Bt, D), one op per chunk
        drive_k = (d_k * u_c[k])[:, None] * b_c[k]  # (T, N, Bt, D)
        y_k = tf.TensorArray(tf.float32, size=chunk, element_shape=(batch, channels))

        def step_body(t, h, y_k):
            h = decay_k[t] * h + drive_k[t]
            return t + 1, h, y_k.write(t, tf.reduce_sum(h * c_k[t], axis=0))

        _, h, y_k = tf.while_loop(lambda t, *_: t < chunk, step_body, (0, h, y_k),
                                  maximum_iterations=chunk)
        return k + 1, h, ys.write(k, y_k.stack())

    _, _, ys = tf.while_loop(lambda k, *_: k < num_chunks, chunk_body,
                             (0, tf.zeros((state, batch, channels)), ys),
                             maximum_iterations=num_chunks)
    y = tf.reshape(ys.stack(), (num_chunks * chunk, batch, channels))[:steps]  # (L, Bt, D)
    y = tf.transpose(y, [1, 2, 0]) + D[:, None] * u
    return y * tf.nn.silu(z)


def fused_chunk_scan(u, delta, A, B, C, D, z, delta_bias, chunk_size=16, use_elementwise=True):
    """Forward-only candidate, channels last (u, delta, z (Bt, L, D); B, C (Bt, L, N)), one group:
    the pre- and post-processing moved into the chunk loop, so that no full-size pass runs
    outside it. Kept here, not in the library: it stays above the 20 ms target and would need
    the softplus, skip and gate gradients inside the hand-written backward for about 1 ms
    (docs/selective_scan.md, "third attempt"). With `use_elementwise=False` softplus, skip
    and gate are left out: the recurrence floor.

    For Bt = 1 the batch axis is dropped (state (N, D), not (N, 1, D)) and the C contraction
    is a (1, N) @ (N, D) product, as the library does since issue 16's third attempt."""
    batch, steps, channels = u.shape
    state = A.shape[1]
    chunk = min(chunk_size, steps)
    num_chunks = -(-steps // chunk)
    pad = num_chunks * chunk - steps
    lanes = [channels] if batch == 1 else [batch, channels]  # the state's (Bt, D) part

    def chunked(x, width):  # (Bt, L, width) -> (K, T, Bt, width) or (K, T, width) for Bt = 1
        x = tf.pad(x, [[0, 0], [0, pad], [0, 0]])
        x = tf.transpose(x, [1, 0, 2])  # (L', Bt, width); a bitcast for Bt = 1
        return tf.reshape(x, [num_chunks, chunk] + ([width] if batch == 1 else [batch, width]))

    # padded steps: softplus(0 + bias) > 0 would move the state, but they come after the
    # last real step, so only their (discarded) outputs see it
    u_c, d_c, z_c = (chunked(x, channels) for x in (u, delta, z))  # (K, T, [Bt,] D)
    b_c, c_c = chunked(B, state), chunked(C, state)  # (K, T, [Bt,] N)
    a_s = tf.reshape(tf.transpose(A), [state] + [1] * (len(lanes) - 1) + [channels])  # (N, [1,] D)
    ys = tf.TensorArray(tf.float32, size=num_chunks, element_shape=[chunk] + lanes)

    def chunk_body(k, h, ys):
        u_k, b_k, c_k = u_c[k], b_c[k], c_c[k]
        d_k = d_c[k] + delta_bias
        if use_elementwise:  # the library's softplus, threshold 20, on a (T, [Bt,] D) slice
            d_k = _softplus(d_k)
        y_k = tf.TensorArray(tf.float32, size=chunk, element_shape=lanes)

        def step_body(t, h, y_k):
            d_t = d_k[t][None]  # (1, [Bt,] D)
            if batch == 1:
                b_t = tf.reshape(b_k[t], (state, 1))  # (N, 1)
                h = tf.exp(d_t * a_s) * h + (d_t * u_k[t][None]) * b_t  # (N, D)
                y_t = tf.reshape(tf.matmul(c_k[t][None], h), (channels,))  # (1, N) @ (N, D)
            else:
                b_t = tf.transpose(b_k[t])[..., None]  # (N, Bt, 1)
                h = tf.exp(d_t * a_s) * h + (d_t * u_k[t][None]) * b_t  # (N, Bt, D)
                y_t = tf.reduce_sum(h * tf.transpose(c_k[t])[..., None], axis=0)  # (Bt, D)
            return t + 1, h, y_k.write(t, y_t)

        _, h, y_k = tf.while_loop(lambda t, *_: t < chunk, step_body, (0, h, y_k),
                                  maximum_iterations=chunk)
        out_k = y_k.stack()  # (T, [Bt,] D)
        if use_elementwise:  # D skip, then the gate, as upstream
            out_k = (out_k + D * u_k) * (z_c[k] * tf.sigmoid(z_c[k]))
        return k + 1, h, ys.write(k, out_k)

    _, _, ys = tf.while_loop(lambda k, *_: k < num_chunks, chunk_body,
                             (0, tf.zeros([state] + lanes), ys), maximum_iterations=num_chunks)
    y = tf.reshape(ys.stack(), (num_chunks * chunk, batch, channels))[:steps]  # (L, Bt, D)
    return tf.transpose(y, [1, 0, 2])  # (Bt, L, D)


def softplus_one_op(shape):
    """The library's softplus (upstream's threshold 20) of a `shape` float32 tensor as one op."""
    x = tf.constant(np.random.default_rng(0).standard_normal(shape).astype(np.float32) - 3.0)
    fn = tf.function(_softplus, jit_compile=True)
    return lambda: fn(x).numpy()


def exp_floor_one_op(count):
    """XLA exp of `count` float32 as one op (the whole result written to memory)."""
    x = tf.constant(-np.random.default_rng(0).random(count).astype(np.float32))
    fn = tf.function(tf.exp, jit_compile=True)
    return lambda: fn(x).numpy()


def exp_floor_loop(steps, width):
    """The same number of exps, one `width` slice per while-loop step, summed (cache-resident)."""
    x = tf.constant(-np.random.default_rng(0).random((steps, width)).astype(np.float32))

    @tf.function(jit_compile=True, autograph=False)
    def fn(x):
        body = lambda t, acc: (t + 1, acc + tf.exp(x[t]))
        return tf.while_loop(lambda t, _: t < steps, body, (0, tf.zeros(width)),
                             maximum_iterations=steps)[1]

    return lambda: fn(x).numpy()


def time_rotation(calls, repeats):
    """{label: (wall median, cpu median, load median, first call wall)}; calls in rotation."""
    first = {}
    for label, call in calls.items():
        start = time.perf_counter()
        call()
        first[label] = time.perf_counter() - start
    samples = {label: [] for label in calls}
    for _ in range(repeats):
        for label, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            samples[label].append((time.perf_counter() - wall, time.process_time() - cpu,
                                   os.getloadavg()[0]))
    return {label: tuple(float(np.median(column)) for column in zip(*rows)) + (first[label],)
            for label, rows in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk_size", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["numpy", "tf.scan", "candidate"],
                        help="leave these variants out (NumPy and tf.scan are slow at large sizes; "
                        "candidate: chunk-exp, fused-chunk and the recurrence floor)")
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
        fwd = tf.function(ours, jit_compile=True)  # the scan's own loops are inlined ("auto")
        fwd_bwd = forward_backward(ours)
        # the layout the Mamba layers call: (Bt, L, D); for Bt = 1 its transposes are free
        last = tf.function(lambda u, delta, A, B, C, D, z, bias: selective_scan_channels_last(
            u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
            chunk_size=args.chunk_size), jit_compile=True)
        tensors_last = [tf.constant(np.ascontiguousarray(np.swapaxes(v, 1, 2))) if v.ndim == 3
                        else tf.constant(v) for v in inputs.values()]
        calls = {"tfbrain fwd": lambda: fwd(*tensors).numpy(),
                 "tfbrain fwd, channels last": lambda: last(*tensors_last).numpy(),
                 "tfbrain fwd+bwd": lambda: [g.numpy() for g in fwd_bwd(*tensors)]}
        if "candidate" not in args.skip:
            candidate = tf.function(
                lambda *x: chunk_exp_scan(*x, chunk_size=args.chunk_size or 16), jit_compile=True)
            difference = np.abs(candidate(*tensors).numpy() - fwd(*tensors).numpy()).max()
            print(f"{size}: chunk-exp fwd max |difference| from tfbrain {difference:.1e}")
            calls["chunk-exp fwd"] = lambda: candidate(*tensors).numpy()
            fused = tf.function(lambda *x: fused_chunk_scan(*x, chunk_size=args.chunk_size or 16),
                                jit_compile=True)
            difference = np.abs(fused(*tensors_last).numpy() - last(*tensors_last).numpy()).max()
            print(f"{size}: fused-chunk fwd max |difference| from tfbrain {difference:.1e}")
            calls["fused-chunk fwd"] = lambda: fused(*tensors_last).numpy()
            recurrence = tf.function(lambda *x: fused_chunk_scan(
                *x, chunk_size=args.chunk_size or 16, use_elementwise=False), jit_compile=True)
            calls["recurrence floor"] = lambda: recurrence(*tensors_last).numpy()
        if "numpy" not in args.skip:
            calls["numpy fwd"] = lambda: numpy_scan(**inputs)
        if "tf.scan" not in args.skip:
            scan_fwd = tf.function(tf_scan_fn, jit_compile=True)
            calls["tf.scan jit fwd"] = lambda: scan_fwd(*tensors).numpy()
        calls["softplus (1 op)"] = softplus_one_op((batch, steps, channels))
        calls["exp floor (1 op)"] = exp_floor_one_op(count)
        calls["exp floor (loop)"] = exp_floor_loop(steps, batch * channels * state)
        thin = make_inputs(batch, 8, steps, state)
        thin = [tf.constant(v) for v in thin.values()]
        thin_fwd = tf.function(ours, jit_compile=True)
        calls["loop floor"] = lambda: thin_fwd(*thin).numpy()
        row = {"size": f"({batch},{channels},{steps},{state})",
               **time_rotation(calls, args.repeats)}
        if "tf.scan" not in args.skip and count <= TF_SCAN_BACKWARD_LIMIT:
            scan_bwd = forward_backward(tf_scan_fn)  # one timed call: its gradient is slow
            row.update(time_rotation(
                {"tf.scan fwd+bwd": lambda: [g.numpy() for g in scan_bwd(*tensors)]}, 1))
        rows.append(row)
        print(f"done {row['size']}", flush=True)

    columns = [c for c in ("tfbrain fwd", "tfbrain fwd, channels last", "chunk-exp fwd",
                           "fused-chunk fwd", "recurrence floor", "tfbrain fwd+bwd", "numpy fwd",
                           "tf.scan jit fwd", "tf.scan fwd+bwd", "softplus (1 op)",
                           "exp floor (1 op)", "exp floor (loop)", "loop floor")
               if any(c in row for row in rows)]
    print(f"\nselective scan: median wall ms / CPU ms @ 1-min load, {args.repeats} rounds in "
          f"rotation; {os.cpu_count()} CPUs, TF {tf.__version__}, chunk "
          f"{args.chunk_size or 16}")
    print("| size (B,D,L,N) | variant | wall ms | CPU ms | load | first call s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for column in columns:
            if column not in row:
                print(f"| {row['size']} | {column} | skipped | | | |")
                continue
            wall, cpu, load, first = row[column]
            print(f"| {row['size']} | {column} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | "
                  f"{load:.1f} | {first:.1f} |")


if __name__ == "__main__":
    main()
