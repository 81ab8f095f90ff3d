"""Selective-scan state-space model (the Mamba "S6" scan) as XLA-compiled TF loops.

Semantics follow upstream `mamba_ssm.ops.selective_scan_interface.selective_scan_ref`
(state-spaces/mamba@e9594ce1): for batch b, channel d and state n, with h starting at 0,

    delta <- softplus(delta + delta_bias)          (each step optional; softplus threshold 20)
    h_t   = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t   = sum_n C_t[n] * h_t[n]                    (2 * Re(...) when A is complex)
    out   = (y + D[d] * u) * silu(z)                 (D skip first, then the gate)

All arithmetic is float32 (complex64 for complex A); the output is cast back to `u`'s dtype.

How it differs from upstream: the scan is not a CUDA kernel but a time-major `tf.while_loop`
over chunks of `chunk_size` steps, each chunk unrolled in Python, with a hand-written
reverse-time gradient (`tf.custom_gradient`). XLA fuses exp, multiply-add and the C
contraction of each step; nothing of size (B, D, L, N) is materialised. Why loops and not
`tf.scan` or autodiff: research/tf_platform.md section 2 measured autodiff through an XLA
`while_loop` failing in 2 of 3 contexts and `tf.scan` being slow; the hand-written reverse
loop works eagerly, in graphs, under XLA and in an exported SavedModel.

Letters: Bt batch, D channels, L steps, N state size, G groups of B/C, Dg = D // G,
T chunk length, K = ceil(L / T) chunks.

The jit switch (see `selective_scan_jit`): "auto" (default) compiles the two loops in their own
`tf.function(jit_compile=True)` when called eagerly or from a non-XLA graph, and inlines them
when the caller is already being compiled by XLA (a jit-compiled Keras train step), because a
nested jit function with a custom gradient makes XLA recompile the outer step every call.
`False` always inlines a plain `tf.while_loop` (runs on CPU without XLA: use it to export a
serving graph); `True` always wraps.
"""

import contextlib
import threading

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

DEFAULT_CHUNK_SIZE = 16
_SOFTPLUS_THRESHOLD = 20.0
_JIT_MODES = ("auto", True, False)

# Trace-time counters (how often each loop was traced, per path); tests read them.
TRACE_COUNTS = {"forward_jit": 0, "forward_inline": 0, "backward_jit": 0, "backward_inline": 0}

_state = threading.local()


def _default_jit():
    return getattr(_state, "jit", "auto")


@contextlib.contextmanager
def selective_scan_jit(mode):
    """Context manager setting the jit mode of every scan traced inside it.

    Args:
        mode: "auto", True or False (see the module docstring). Layers whose `jit`
            argument is None follow this; the default outside any context is "auto".

    Example: `with selective_scan_jit(False): model.export(path)` writes a serving graph
    whose scan is a plain `tf.while_loop` (no `_XlaMustCompile` function inside).
    """
    if mode not in _JIT_MODES:
        raise ValueError(f"`mode` must be one of {_JIT_MODES}. Received: mode={mode!r}")
    previous = _default_jit()
    _state.jit = mode
    try:
        yield
    finally:
        _state.jit = previous


def in_xla_context() -> bool:
    """True while tracing inside a function that XLA will compile (e.g. a jit train step)."""
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def _resolve_jit(jit):
    mode = _default_jit() if jit is None else jit
    if mode not in _JIT_MODES:
        raise ValueError(f"`jit` must be one of {_JIT_MODES} or None. Received: jit={jit!r}")
    if mode == "auto":
        return not in_xla_context()
    return bool(mode)


def _softplus(x):
    """softplus with upstream's threshold: log1p(exp(x)) for x <= 20, x above.

    Under XLA the log1p is `_softplus_fused`'s cheaper form; outside XLA every op is its own
    full-size pass, where that form's extra ops cost more than it saves (measured on
    (1, 1024, 1536): 18.5 vs 11.0 ms CPU), so the plain form stays.
    """
    if in_xla_context():
        return _softplus_fused(x)
    safe = tf.minimum(x, _SOFTPLUS_THRESHOLD)
    return tf.where(x > _SOFTPLUS_THRESHOLD, x, tf.math.log1p(tf.exp(safe)))


@tf.custom_gradient
def _softplus_fused(x):
    """`_softplus` for XLA: log1p(y), y = exp(x), as log(1 + y) * y / ((1 + y) - 1).

    Why: XLA CPU's log1p costs about twice its log; this is one log and one division in the
    same fusion, and as accurate (2M float32 points over softplus's range: at most 2.95 ulp,
    mean 0.30, vs 2.79 / 0.27 for log1p). The ratio y / ((1 + y) - 1) undoes the rounding of
    1 + y; where 1 + y rounds to 1, log1p(y) rounds to y. The gradient is written out,
    sigmoid(x) = y / (1 + y) (1 above the threshold), so that autodiff never differentiates
    the division, 0/0 where 1 + y rounds to 1, and reuses y instead of a second exp.
    """
    above = x > _SOFTPLUS_THRESHOLD
    y = tf.exp(tf.minimum(x, _SOFTPLUS_THRESHOLD))
    one_plus = 1.0 + y
    log1p = tf.where(one_plus == 1.0, y, tf.math.log(one_plus) * (y / (one_plus - 1.0)))

    def grad(upstream):
        return upstream * tf.where(above, tf.ones_like(x), y / one_plus)

    return tf.where(above, x, log1p), grad


def _conj(x):
    return tf.math.conj(x) if x.dtype.is_complex else x


def _real(x):
    return tf.math.real(x) if x.dtype.is_complex else x


def _sum_to(x, is_variable):
    """Reduce a per-step (N, *lanes) product towards the shape of a B/C operand slice:
    (N, [Bt,] [G,] 1) for variable B/C; time-invariant ones stay full size (summed over the
    batch at the end)."""
    return tf.reduce_sum(x, axis=-1, keepdims=True) if is_variable else x


# --- the two loops --------------------------------------------------------------------------
# Both take the time-major chunked layout, with the state axis N leading so that the
# channel axis Dg is the contiguous (vectorised) one:
#   u, delta: (K, T, *lanes) float32, lanes = ([Bt,] [G,] Dg)
#   A:        (N, [1,] [G,] Dg) float32 or complex64
#   B, C:     variable (K, T, N, [Bt,] [G,] 1), or time-invariant (N, [1,] [G,] Dg)
# The state h is (N, *lanes). The batch and group axes are left out when they are statically
# 1 (`has_batch_axis`, `has_group_axis` in `_scan_time_major`): XLA CPU does not simplify
# size-1 axes away in the step's fusions, and the forward measured 5-6% cheaper at Bt = G = 1
# without them (paired runs, docs/selective_scan.md). The channel axis Dg is always last, and a variable
# B/C always has 1 there. An outer while_loop walks the K chunks and saves the state entering
# each; an inner while_loop walks the T steps of a chunk. Measured on 2 CPU cores
# (1, 1536, 1024, 16): N-major 22 ms vs 79 ms with N minor; Python-unrolling the T steps
# instead of an inner loop made XLA re-fuse the chain and ran 3-7x slower.


def _step_inputs(d_t, u_t, dtype):
    """(*lanes) delta and u of one step -> delta and delta*u broadcastable to the state."""
    d_t = d_t[None]  # (1, *lanes)
    du_t = d_t * u_t[None]
    return tf.cast(d_t, dtype), tf.cast(du_t, dtype)


def _contract_state(h, c_t, c_is_variable):
    """sum_n C[n] * h[n]: (N, *lanes) state and C slice -> (*lanes).

    With a variable C and lanes = (Dg,) (Bt = G = 1) this is a (1, N) @ (N, Dg) product: XLA
    CPU emits a dot, cheaper than the reduce over the leading axis (at (1, 1536, 1024, 16):
    0.3-0.6 ms of the ~20 ms loop in the second attempt, 0.9 of 33.7 ms in one paired run).
    """
    if c_is_variable and h.shape.rank == 2:
        return tf.matmul(c_t, h, transpose_a=True)[0]  # (N, 1)^T @ (N, Dg) -> (Dg,)
    return tf.reduce_sum(h * c_t, axis=0)


def _scan_forward_loop(u, delta, A, B, C, b_is_variable, c_is_variable):
    """Forward recurrence; returns y (K, T, *lanes), the last state (N, *lanes) and the
    chunk-start states (K, N, *lanes).

    Why save only chunk starts: the reverse loop recomputes the T states of a chunk from its
    start, so the memory kept for the backward pass is N*Bt*D*L/T floats instead of the
    N*Bt*D*L that autodiff (or the reference's materialised exp(delta*A)) keeps. The price is
    recomputing the forward once inside the backward pass.
    """
    num_chunks, chunk = u.shape[0], u.shape[1]
    is_complex = A.dtype.is_complex
    step_shape = u.shape[2:]  # lanes
    h0 = tf.zeros(tf.concat([tf.shape(A)[:1], tf.shape(u)[2:]], 0), A.dtype)
    ys = tf.TensorArray(tf.float32, size=num_chunks, element_shape=u.shape[1:])
    starts = tf.TensorArray(A.dtype, size=num_chunks, element_shape=h0.shape)

    def chunk_body(k, h, ys, starts):
        starts = starts.write(k, h)
        u_k, d_k = u[k], delta[k]  # (T, *lanes)
        b_k = B[k] if b_is_variable else B
        c_k = C[k] if c_is_variable else C
        y_k = tf.TensorArray(tf.float32, size=chunk, element_shape=step_shape)

        def step_body(t, h, y_k):
            d_t, du_t = _step_inputs(d_k[t], u_k[t], A.dtype)
            b_t = b_k[t] if b_is_variable else b_k
            c_t = c_k[t] if c_is_variable else c_k
            h = tf.exp(d_t * A) * h + du_t * b_t
            y_t = _contract_state(h, c_t, c_is_variable)  # lanes
            y_t = 2.0 * tf.math.real(y_t) if is_complex else y_t
            return t + 1, h, y_k.write(t, y_t)

        _, h, y_k = tf.while_loop(lambda t, *_: t < chunk, step_body, (tf.constant(0), h, y_k),
                                  maximum_iterations=chunk)
        return k + 1, h, ys.write(k, y_k.stack()), starts

    _, h_last, ys, starts = tf.while_loop(
        lambda k, *_: k < num_chunks, chunk_body, (tf.constant(0), h0, ys, starts),
        maximum_iterations=num_chunks)
    return ys.stack(), h_last, starts.stack()


def _scan_backward_loop(u, delta, A, B, C, starts, grad_y, grad_h_last,
                        b_is_variable, c_is_variable, has_batch_axis):
    """Reverse-time adjoint of `_scan_forward_loop`.

    Why by hand: autodiff of an XLA while_loop fails in several contexts and grows
    super-linearly in L (research/tf_platform.md section 2). Per chunk, last to first:
    recompute the chunk's T states (and decays) from its saved start, then walk them
    backwards carrying g_h = dL/dh_t. Complex A uses TF's convention for complex gradients
    (g = dL/dRe + i dL/dIm), so the same code serves real A, where conj is the identity.

    Returns gradients for u, delta (like u), A, B and C (like their inputs). `has_batch_axis`:
    whether the lanes hold a Bt axis (axis 1 of the state), over which the gradients of A and
    of time-invariant B/C are summed.
    """
    num_chunks, chunk = u.shape[0], u.shape[1]
    is_complex = A.dtype.is_complex
    scale = 2.0 if is_complex else 1.0
    state_shape = grad_h_last.shape
    step_shape = u.shape[2:]

    def chunk_array(dtype, shape, size=num_chunks):
        # hs is read at t and t + 1: keep entries after a read (eager TensorArrays clear them).
        return tf.TensorArray(dtype, size=size, element_shape=shape, clear_after_read=False)

    g_u, g_d = chunk_array(tf.float32, u.shape[1:]), chunk_array(tf.float32, u.shape[1:])
    g_b = chunk_array(B.dtype, B.shape[1:]) if b_is_variable else tf.zeros_like(grad_h_last)
    g_c = chunk_array(C.dtype, C.shape[1:]) if c_is_variable else tf.zeros_like(grad_h_last)
    g_a = tf.zeros_like(grad_h_last)  # per batch, summed at the end

    def chunk_body(i, g_h, g_a, g_u, g_d, g_b, g_c):
        k = num_chunks - 1 - i
        u_k, d_k, gy_k = u[k], delta[k], grad_y[k]
        b_k = B[k] if b_is_variable else B
        c_k = C[k] if c_is_variable else C

        # Recompute: hs[t] is the state before step t (hs[T] the chunk's end state).
        def recompute_body(t, h, hs, decays):
            d_t, du_t = _step_inputs(d_k[t], u_k[t], A.dtype)
            b_t = b_k[t] if b_is_variable else b_k
            decay = tf.exp(d_t * A)
            hs = hs.write(t, h)
            h = decay * h + du_t * b_t
            return t + 1, h, hs, decays.write(t, decay)

        _, h_end, hs, decays = tf.while_loop(
            lambda t, *_: t < chunk, recompute_body,
            (tf.constant(0), starts[k], chunk_array(A.dtype, state_shape, chunk + 1),
             chunk_array(A.dtype, state_shape, chunk)), maximum_iterations=chunk)
        hs = hs.write(chunk, h_end)

        gu_k, gd_k = chunk_array(tf.float32, step_shape, chunk), chunk_array(tf.float32, step_shape, chunk)
        gb_k = chunk_array(B.dtype, B.shape[2:], chunk) if b_is_variable else g_b
        gc_k = chunk_array(C.dtype, C.shape[2:], chunk) if c_is_variable else g_c

        def reverse_body(j, g_h, g_a, gu_k, gd_k, gb_k, gc_k):
            t = chunk - 1 - j
            d_t, du_t = _step_inputs(d_k[t], u_k[t], A.dtype)
            b_t = b_k[t] if b_is_variable else b_k
            c_t = c_k[t] if c_is_variable else c_k
            decay = decays.read(t)
            gy_t = tf.cast(gy_k[t][None], A.dtype) * scale  # (1, *lanes)
            g_h = g_h + gy_t * _conj(c_t)
            gc_t = _sum_to(gy_t * _conj(hs.read(t + 1)), c_is_variable)
            g_decay = g_h * _conj(hs.read(t))
            g_a = g_a + g_decay * _conj(d_t * decay)
            # d decay / d delta = A * decay; d (du * b) / d du = b.
            g_delta = _real(tf.reduce_sum(g_decay * _conj(A * decay), axis=0))
            g_du = _real(tf.reduce_sum(g_h * _conj(b_t), axis=0))  # lanes
            gb_t = _sum_to(g_h * _conj(du_t), b_is_variable)
            gu_k = gu_k.write(t, g_du * d_k[t])
            gd_k = gd_k.write(t, g_delta + g_du * u_k[t])
            gb_k = gb_k.write(t, gb_t) if b_is_variable else gb_k + gb_t
            gc_k = gc_k.write(t, gc_t) if c_is_variable else gc_k + gc_t
            return j + 1, g_h * _conj(decay), g_a, gu_k, gd_k, gb_k, gc_k

        _, g_h, g_a, gu_k, gd_k, gb_k, gc_k = tf.while_loop(
            lambda j, *_: j < chunk, reverse_body,
            (tf.constant(0), g_h, g_a, gu_k, gd_k, gb_k, gc_k), maximum_iterations=chunk)
        g_u, g_d = g_u.write(k, gu_k.stack()), g_d.write(k, gd_k.stack())
        g_b = g_b.write(k, gb_k.stack()) if b_is_variable else gb_k
        g_c = g_c.write(k, gc_k.stack()) if c_is_variable else gc_k
        return i + 1, g_h, g_a, g_u, g_d, g_b, g_c

    _, _, g_a, g_u, g_d, g_b, g_c = tf.while_loop(
        lambda i, *_: i < num_chunks, chunk_body,
        (tf.constant(0), grad_h_last, g_a, g_u, g_d, g_b, g_c), maximum_iterations=num_chunks)

    def sum_over_batch(x):  # (N, *lanes) -> A's shape (N, [1,] [G,] Dg)
        return tf.reduce_sum(x, axis=1, keepdims=True) if has_batch_axis else x

    g_b = g_b.stack() if b_is_variable else sum_over_batch(g_b)
    g_c = g_c.stack() if c_is_variable else sum_over_batch(g_c)
    return g_u.stack(), g_d.stack(), sum_over_batch(g_a), g_b, g_c


def _forward_inline(*args):
    TRACE_COUNTS["forward_inline"] += 1
    return _scan_forward_loop(*args)


def _backward_inline(*args):
    TRACE_COUNTS["backward_inline"] += 1
    return _scan_backward_loop(*args)


@tf.function(jit_compile=True, autograph=False)
def _forward_jit(u, delta, A, B, C, b_is_variable, c_is_variable):
    TRACE_COUNTS["forward_jit"] += 1
    return _scan_forward_loop(u, delta, A, B, C, b_is_variable, c_is_variable)


@tf.function(jit_compile=True, autograph=False)
def _backward_jit(u, delta, A, B, C, starts, grad_y, grad_h_last, b_is_variable, c_is_variable,
                  has_batch_axis):
    TRACE_COUNTS["backward_jit"] += 1
    return _scan_backward_loop(u, delta, A, B, C, starts, grad_y, grad_h_last,
                               b_is_variable, c_is_variable, has_batch_axis)


def _scan_chunked(u, delta, A, B, C, b_is_variable, c_is_variable, has_batch_axis, use_jit):
    """The differentiable core: chunked time-major inputs in, (y, last state) out."""
    forward = _forward_jit if use_jit else _forward_inline
    backward = _backward_jit if use_jit else _backward_inline

    @tf.custom_gradient
    def scan(u, delta, A, B, C):
        # stop_gradient: under an eager tape TF would otherwise build a forward function that
        # also returns the loop's TensorLists for autodiff, which cannot leave an XLA cluster.
        inputs = [tf.stop_gradient(x) for x in (u, delta, A, B, C)]
        y, h_last, starts = forward(*inputs, b_is_variable, c_is_variable)

        def grad(grad_y, grad_h_last):
            grad_y = tf.zeros_like(y) if grad_y is None else grad_y
            grad_h_last = tf.zeros_like(h_last) if grad_h_last is None else grad_h_last
            return backward(*inputs, starts, grad_y, grad_h_last, b_is_variable,
                            c_is_variable, has_batch_axis)

        return (y, h_last), grad

    return scan(u, delta, A, B, C)


def _to_time_major_bc(x, num_steps, is_complex):
    """Variable B or C as (Bt, L', G, N) -> (L, N, Bt, G, 1); L' = 2L (re, im) for complex A."""
    if is_complex:
        x = tf.reshape(x, tf.concat([tf.shape(x)[:1], [num_steps, 2], tf.shape(x)[2:]], 0))
        x = tf.complex(x[:, :, 0], x[:, :, 1])  # (Bt, L, G, N)
    return tf.transpose(x, [1, 3, 0, 2])[..., None]  # (L, N, Bt, G, 1)


def _lanes(batch, groups, width, has_batch_axis, has_group_axis):
    """The trailing ([Bt,] [G,] width) axes of a kernel operand: Bt and G only where kept."""
    return ([batch] if has_batch_axis else []) + ([groups] if has_group_axis else []) + [width]


def _scan_time_major(u, delta, A, B, C, b_is_variable, c_is_variable, chunk_size, jit):
    """u, delta: (L, Bt, D) float32; A (D, N); B, C (L, N, Bt, G, 1) or (D, N).

    Returns y (L, Bt, D) and the last state (Bt, D, N).
    """
    num_steps = u.shape[0]
    if num_steps is None:
        raise ValueError("The scan needs a sequence length known at trace time (static loop "
                         "length, required for TPU). Received a `u` of shape "
                         f"{u.shape} (time axis unknown).")
    channels, state_dim = A.shape
    groups = 1
    for operand, variable in ((B, b_is_variable), (C, c_is_variable)):
        if variable:
            groups = operand.shape[3]
    if groups is None or channels % groups:
        raise ValueError(f"The number of channels D={channels} must be divisible by the number "
                         f"of B/C groups G={groups}.")
    group_width = channels // groups
    chunk = max(1, min(int(chunk_size), num_steps))
    num_chunks = -(-num_steps // chunk)
    pad = num_chunks * chunk - num_steps
    # Size-1 batch and group axes are dropped from the kernel layout (see "the two loops");
    # a dynamic batch keeps its axis.
    has_batch_axis, has_group_axis = u.shape[1] != 1, groups != 1
    batch = tf.shape(u)[1]

    def lanes(width, batch=batch):
        return _lanes(batch, groups, width, has_batch_axis, has_group_axis)

    def chunked(x, trailing):  # (L, ...) -> (K, T, *trailing); delta padded with 0 keeps h
        if pad:
            x = tf.pad(x, [[0, pad]] + [[0, 0]] * (x.shape.rank - 1))
        return tf.reshape(x, [num_chunks, chunk] + trailing)

    def state_major(x):  # (D, N) -> (N, [1,] [G,] Dg)
        return tf.reshape(tf.transpose(x), [state_dim] + lanes(group_width, batch=1))

    u_c = chunked(u, lanes(group_width))  # (K, T, [Bt,] [G,] Dg)
    delta_c = chunked(delta, lanes(group_width))
    # variable B/C: (L, N, Bt, G, 1) -> (K, T, N, [Bt,] [G,] 1)
    B_c = chunked(B, [state_dim] + lanes(1)) if b_is_variable else state_major(B)
    C_c = chunked(C, [state_dim] + lanes(1)) if c_is_variable else state_major(C)
    y, h_last = _scan_chunked(u_c, delta_c, state_major(A), B_c, C_c, b_is_variable,
                              c_is_variable, has_batch_axis, _resolve_jit(jit))
    y = tf.reshape(y, [num_chunks * chunk, batch, channels])[:num_steps]  # (L, Bt, D)
    h_last = tf.reshape(h_last, [state_dim, batch, channels])  # (N, Bt, D)
    return y, tf.transpose(h_last, [1, 2, 0])  # (Bt, D, N)


def _prepare_bc(x, A, num_steps, layout, name):
    """Classify B or C and bring it to the time-major kernel layout."""
    is_complex = A.dtype.is_complex
    rank = x.shape.rank
    if rank == 2:  # (D, N): time-invariant, in A's dtype (real -> complex is exact)
        return tf.cast(x, A.dtype), False
    if rank not in (3, 4):
        raise ValueError(f"`{name}` must have rank 2 (D, N), 3 or 4. Received: {name}.shape="
                         f"{x.shape}")
    x = tf.cast(x, tf.float32)
    if layout == "BDL":  # (Bt, N, L) or (Bt, G, N, L) -> (Bt, L, G, N)
        x = tf.transpose(x[:, None] if rank == 3 else x, [0, 3, 1, 2])
    else:  # channels last: (Bt, L, N) or (Bt, L, G, N)
        x = x[:, :, None] if rank == 3 else x
    return _to_time_major_bc(x, num_steps, is_complex), True


def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
          chunk_size, jit, layout):
    u = tf.convert_to_tensor(u)
    out_dtype = u.dtype
    u = tf.cast(u, tf.float32)
    delta = tf.cast(delta, tf.float32)
    A = tf.convert_to_tensor(A)
    if not A.dtype.is_complex:
        A = tf.cast(A, tf.float32)
    if u.shape.rank != 3:
        raise ValueError(f"`u` must have rank 3. Received: u.shape={u.shape}")
    if layout == "BDL":
        u_tm, delta_tm = tf.transpose(u, [2, 0, 1]), tf.transpose(delta, [2, 0, 1])  # (L, Bt, D)
    else:
        u_tm, delta_tm = tf.transpose(u, [1, 0, 2]), tf.transpose(delta, [1, 0, 2])
    if delta_bias is not None:
        delta_tm = delta_tm + tf.cast(delta_bias, tf.float32)
    if delta_softplus:
        delta_tm = _softplus(delta_tm)
    num_steps = u_tm.shape[0]
    B_tm, b_is_variable = _prepare_bc(tf.convert_to_tensor(B), A, num_steps, layout, "B")
    C_tm, c_is_variable = _prepare_bc(tf.convert_to_tensor(C), A, num_steps, layout, "C")
    y, last_state = _scan_time_major(u_tm, delta_tm, A, B_tm, C_tm, b_is_variable,
                                     c_is_variable, chunk_size or DEFAULT_CHUNK_SIZE, jit)
    if D is not None:
        y = y + u_tm * tf.cast(D, tf.float32)
    if z is not None:
        z = tf.cast(z, tf.float32)
        z_tm = tf.transpose(z, [2, 0, 1] if layout == "BDL" else [1, 0, 2])
        y = y * z_tm * tf.sigmoid(z_tm)  # gate after the D skip, as upstream
    y = tf.transpose(y, [1, 2, 0] if layout == "BDL" else [1, 0, 2])
    y = tf.cast(y, out_dtype)
    return (y, last_state) if return_last_state else y


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, chunk_size=None, jit=None):
    """Selective scan with upstream `selective_scan_ref` semantics and layout.

    Args:
        u: `(Bt, D, L)` input sequence (float32, float16 or bfloat16; computed in float32).
        delta: `(Bt, D, L)` step sizes before bias/softplus.
        A: `(D, N)` float32, or complex64 (then y = 2 Re(C h)).
        B: `(D, N)` time-invariant, `(Bt, N, L)` variable, or `(Bt, G, N, L)` grouped (channel
            d uses group d // (D / G)). With complex A the variable forms have `2L` on the
            last axis, (re, im) interleaved per step.
        C: same forms as `B` (classified independently).
        D: optional `(D,)` skip weight.
        z: optional `(Bt, D, L)` gate; out *= silu(z), after the skip.
        delta_bias: optional `(D,)`, added to delta before the softplus.
        delta_softplus: bool. softplus (threshold 20) on delta.
        return_last_state: bool. Also return the final state `(Bt, D, N)` (float32 or
            complex64).
        chunk_size: int. Steps unrolled per loop iteration (default 16); the forward pass
            keeps one state per chunk for the backward pass.
        jit: "auto", True, False or None (follow `selective_scan_jit`, default "auto").

    Returns:
        `(Bt, D, L)` in `u`'s dtype, and the last state when `return_last_state`.
    """
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                 chunk_size, jit, "BDL")


def selective_scan_channels_last(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, return_last_state=False,
                                 chunk_size=None, jit=None):
    """`selective_scan` on the layout Keras layers use: u, delta, z `(Bt, L, D)`; variable B, C
    `(Bt, L, N)` or `(Bt, L, G, N)`; output `(Bt, L, D)`. Saves two transposes per call."""
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                 chunk_size, jit, "BLD")
