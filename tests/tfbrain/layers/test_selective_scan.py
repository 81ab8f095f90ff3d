"""Tests for `tfbrain.layers.selective_scan`: fixture parity, gradients, jit switch, errors."""

import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase, load_fixture_npz
from tfbrain.layers import selective_scan as scan_module
from tfbrain.layers.selective_scan import (_softplus, selective_scan,
                                           selective_scan_channels_last, selective_scan_jit)

SCAN_CASES = [
    "selective_scan_case1_plain_timeinvariant_BC",
    "selective_scan_case2_varBC",
    "selective_scan_case3_varBC_D_z",
    "selective_scan_case4_varBC_deltabias_softplus",
    "selective_scan_case5_full_return_last_state",
    "selective_scan_case6_grouped_BC_G3",
    "selective_scan_case7_complex_A_varBC",
]
OPTIONAL_ARGS = ("D", "z", "delta_bias")


def load_scan_case(name):
    data = load_fixture_npz("mamba", f"{name}.npz")
    if "A_real" in data:
        data["A"] = (data["A_real"] + 1j * data["A_imag"]).astype(np.complex64)
        data["last_state"] = data["last_state_real"] + 1j * data["last_state_imag"]
    return data


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Float64 autodiff reference: a step-by-step Python loop written from the equations."""
    batch, channels, num_steps = u.shape
    is_complex = A.dtype.is_complex
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = tf.where(delta > 20, delta, tf.math.log1p(tf.exp(tf.minimum(delta, 20.0))))

    def step_operand(x, t):  # -> broadcastable to (Bt, D, N)
        if x.shape.rank == 2:
            return x[None]
        if x.shape.rank == 3:
            x = x[:, None]
        x = tf.repeat(x, channels // x.shape[1], axis=1)  # groups: consecutive channels
        if is_complex:
            return tf.complex(x[..., 2 * t], x[..., 2 * t + 1])
        return x[..., t]

    h = tf.zeros([batch, channels, A.shape[1]], A.dtype)
    ys = []
    for t in range(num_steps):
        d_t = tf.cast(delta[:, :, t, None], A.dtype)
        du_t = tf.cast((delta * u)[:, :, t, None], A.dtype)
        h = tf.exp(d_t * A) * h + du_t * tf.cast(step_operand(B, t), A.dtype)
        y_t = tf.reduce_sum(h * tf.cast(step_operand(C, t), A.dtype), axis=-1)
        ys.append(2 * tf.math.real(y_t) if is_complex else y_t)
    y = tf.stack(ys, axis=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * z * tf.sigmoid(z)
    return y, h


class SelectiveScanParityTest(TestCase):
    def check_case(self, name, jit):
        data = load_scan_case(name)
        kwargs = {k: data[k] for k in OPTIONAL_ARGS if k in data}
        result = selective_scan(data["u"], data["delta"], data["A"], data["B"], data["C"],
                                delta_softplus=bool(data["delta_softplus"]),
                                return_last_state=bool(data["return_last_state"]),
                                jit=jit, **kwargs)
        out = result[0] if bool(data["return_last_state"]) else result
        # Upstream fp32 deviates from the float64 recomputation by up to ~1e-6 * std.
        self.assert_parity(out, data["out_f64_numpy"], rel_tol=1e-5, name=f"{name} vs f64")
        self.assert_parity(out, data["out"], rel_tol=1e-5, name=f"{name} vs upstream")
        if bool(data["return_last_state"]):
            expected = data["last_state"]
            self.assertEqual(result[1].dtype, tf.complex64 if np.iscomplexobj(expected)
                             else tf.float32)
            err = np.max(np.abs(result[1].numpy() - expected))
            self.assertLessEqual(err, 1e-5 * np.std(expected), f"{name}: last state")

    def test_fixture_parity_jit(self):
        for name in SCAN_CASES:
            with self.subTest(name=name):
                self.check_case(name, "auto")

    def test_fixture_parity_plain_while_loop(self):
        for name in SCAN_CASES:
            with self.subTest(name=name):
                self.check_case(name, False)

    def test_channels_last_matches(self):
        data = load_scan_case(SCAN_CASES[5])
        kwargs = {k: data[k] for k in OPTIONAL_ARGS if k in data}
        expected = selective_scan(data["u"], data["delta"], data["A"], data["B"], data["C"],
                                  delta_softplus=True, **kwargs)
        kwargs["z"] = np.transpose(kwargs["z"], [0, 2, 1])
        actual = selective_scan_channels_last(
            np.transpose(data["u"], [0, 2, 1]), np.transpose(data["delta"], [0, 2, 1]),
            data["A"], np.transpose(data["B"], [0, 3, 1, 2]),
            np.transpose(data["C"], [0, 3, 1, 2]), delta_softplus=True, **kwargs)
        self.assertAllClose(np.transpose(actual, [0, 2, 1]), expected, atol=1e-6)


def random_inputs(bc_form, is_complex=False, seed=0, batch=2):
    """Small inputs: Bt=2 (or `batch`), D=6, L=11, N=4 (chunk 4 below: 3 chunks, one padded)."""
    rng = np.random.default_rng(seed)
    channels, steps, state = 6, 11, 4
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    if is_complex:
        A = (-0.5 - rng.random((channels, state)) + 1j * rng.standard_normal((channels, state)))
        A = A.astype(np.complex64)
    else:
        A = (-np.exp(normal(channels, state) * 0.5)).astype(np.float32)
    bc_steps = 2 * steps if is_complex else steps
    shapes = {"invariant": (channels, state), "variable": (batch, state, bc_steps),
              "grouped": (batch, 3, state, bc_steps)}
    if bc_form == "invariant" and is_complex:
        B = (normal(channels, state) + 1j * normal(channels, state)).astype(np.complex64)
        C = (normal(channels, state) + 1j * normal(channels, state)).astype(np.complex64)
    else:
        B, C = normal(*shapes[bc_form]), normal(*shapes[bc_form])
    return dict(u=normal(batch, channels, steps), delta=normal(batch, channels, steps) * 0.5,
                A=A, B=B, C=C, D=normal(channels), z=normal(batch, channels, steps),
                delta_bias=normal(channels) * 0.3 - 1.0)


def scan_gradients(fn, inputs, dtype, weights):
    """Gradients of a weighted sum of (out, last_state) with respect to every input."""
    complex_dtype = np.complex128 if dtype == np.float64 else np.complex64
    tensors = {k: tf.constant(v.astype(complex_dtype if np.iscomplexobj(v) else dtype))
               for k, v in inputs.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(tensors.values()))
        out, last = fn(**tensors)
        loss = (tf.reduce_sum(tf.cast(out, tf.float64) * weights[0])
                + tf.reduce_sum(tf.math.real(tf.cast(last, weights[1].dtype) * weights[1])))
    grads = tape.gradient(loss, tensors)
    return {k: g.numpy() for k, g in grads.items()}


class SelectiveScanGradientTest(TestCase):
    def check_gradients(self, bc_form, is_complex=False, jit="auto", batch=2, outer_jit=False):
        inputs = random_inputs(bc_form, is_complex, batch=batch)
        rng = np.random.default_rng(1)
        out_weight = rng.standard_normal(inputs["u"].shape)
        last_weight = rng.standard_normal((batch, 6, 4))
        if is_complex:
            last_weight = last_weight + 1j * rng.standard_normal((batch, 6, 4))

        def ours(**t):
            return selective_scan(**t, delta_softplus=True, return_last_state=True,
                                  chunk_size=4, jit=jit)

        if outer_jit:  # the caller compiled by XLA: loops inlined, XLA's softplus form
            ours = tf.function(ours, jit_compile=True)

        def reference(**t):
            return reference_scan(**t, delta_softplus=True)

        actual = scan_gradients(ours, inputs, np.float32, (out_weight, last_weight))
        expected = scan_gradients(reference, inputs, np.float64, (out_weight, last_weight))
        errors = {}
        for name in inputs:
            scale = np.max(np.abs(expected[name]))
            errors[name] = np.max(np.abs(actual[name] - expected[name])) / scale
            self.assertLess(errors[name], 2e-5, f"d/d{name}: relative error {errors[name]:.2e}")
        return errors

    def test_gradients_variable_bc(self):
        self.check_gradients("variable")

    def test_gradients_time_invariant_bc(self):
        self.check_gradients("invariant")

    def test_gradients_grouped_bc(self):
        self.check_gradients("grouped")

    def test_gradients_complex_a(self):
        self.check_gradients("variable", is_complex=True)

    def test_gradients_complex_a_time_invariant(self):
        self.check_gradients("invariant", is_complex=True)

    def test_gradients_plain_while_loop(self):
        self.check_gradients("grouped", jit=False)

    def test_gradients_batch_one(self):
        """Bt = 1 runs the kernel without its batch axis (and without the group axis for
        one group): the gradients of A and time-invariant B/C are then not summed over Bt."""
        for bc_form, is_complex in (("variable", False), ("invariant", False),
                                    ("grouped", False), ("variable", True),
                                    ("invariant", True)):
            with self.subTest(bc_form=bc_form, is_complex=is_complex):
                self.check_gradients(bc_form, is_complex, batch=1)

    def test_gradients_under_outer_jit(self):
        for batch in (1, 2):
            with self.subTest(batch=batch):
                self.check_gradients("variable", batch=batch, outer_jit=True)

    def test_softplus_forms_agree(self):
        """XLA's softplus (log1p as log(1 + y) * y / ((1 + y) - 1), gradient by hand) against
        float64, values and gradients, across the threshold and where 1 + e^x rounds to 1."""
        x = np.concatenate([[-100.0, -30.0, -17.0, -1e-3, 0.0, 1e-3, 19.9, 20.0, 20.5, 40.0],
                            np.linspace(-25.0, 25.0, 2001)]).astype(np.float32)
        exact = np.where(x > 20, x, np.log1p(np.exp(np.minimum(x.astype(np.float64), 20))))
        exact_grad = np.where(x > 20, 1.0, 1.0 / (1.0 + np.exp(-x.astype(np.float64))))

        @tf.function(jit_compile=True)
        def value_and_grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = _softplus(x)
            return value, tape.gradient(value, x)

        value, grad = value_and_grad(tf.constant(x))
        self.assertAllClose(value, exact, rtol=1e-6, atol=1e-30)
        self.assertAllClose(grad, exact_grad, rtol=1e-6, atol=1e-30)
        self.assertTrue(np.all(np.isfinite(grad)))

    def test_gradients_batch_one_plain_while_loop(self):
        self.check_gradients("variable", jit=False, batch=1)

    def test_dynamic_batch(self):
        """An unknown batch keeps the kernel's batch axis; one trace serves Bt = 1 and 2."""
        spec = lambda shape: tf.TensorSpec((None,) + shape[1:], tf.float32)
        for bc_form in ("variable", "invariant"):
            inputs = random_inputs(bc_form)
            names = ("u", "delta", "z") + (("B", "C") if bc_form == "variable" else ())
            signature = [spec(inputs[name].shape) for name in names]

            @tf.function(input_signature=signature)
            def forward_backward(*batched):
                tensors = {**{k: tf.constant(v) for k, v in inputs.items()},
                           **dict(zip(names, batched))}
                with tf.GradientTape() as tape:
                    tape.watch(tensors["A"])
                    out = selective_scan(**tensors, delta_softplus=True, chunk_size=4)
                    loss = tf.reduce_sum(out)
                return out, tape.gradient(loss, tensors["A"])

            for batch in (1, 2):
                with self.subTest(bc_form=bc_form, batch=batch):
                    batched = [inputs[name][:batch] for name in names]
                    out, grad_a = forward_backward(*batched)
                    # eagerly, the batch is static: the kernel runs without the axis for Bt = 1
                    expected_out, expected_grad_a = forward_backward.python_function(
                        *[tf.constant(x) for x in batched])
                    self.assertAllClose(out, expected_out, atol=1e-6)
                    self.assertAllClose(grad_a, expected_grad_a, atol=1e-5)

    def test_finite_differences_delta_bias(self):
        """Central differences in float64 on the reference and our float32 gradient agree."""
        inputs = random_inputs("variable")
        bias = inputs.pop("delta_bias")
        b = tf.constant(bias)
        with tf.GradientTape() as tape:
            tape.watch(b)
            loss = tf.reduce_sum(selective_scan(**inputs, delta_bias=b, delta_softplus=True,
                                                chunk_size=4))
        grad = tape.gradient(loss, b).numpy()
        ref = lambda bb: float(tf.reduce_sum(reference_scan(
            **{k: tf.constant(v, tf.float64) for k, v in inputs.items()},
            delta_bias=tf.constant(bb, tf.float64), delta_softplus=True)[0]))
        eps = 1e-5
        for i in range(3):
            step = np.zeros_like(bias, np.float64)
            step[i] = eps
            fd = (ref(bias + step) - ref(bias - step)) / (2 * eps)
            self.assertAllClose(grad[i], fd, atol=1e-3 * max(1.0, abs(fd)), rtol=0)


class SelectiveScanJitSwitchTest(TestCase):
    def scan(self, **kwargs):
        inputs = random_inputs("variable")
        return inputs, lambda **t: selective_scan(**{**inputs, **t}, delta_softplus=True,
                                                  chunk_size=4, **kwargs)

    def test_same_result_in_every_context(self):
        inputs, run = self.scan()
        eager = run().numpy()
        graph = tf.function(lambda: run())().numpy()
        xla = tf.function(lambda: run(), jit_compile=True)().numpy()
        plain = run(jit=False).numpy()
        for other in (graph, xla, plain):
            self.assertAllClose(other, eager, atol=2e-6)

    def test_auto_inlines_under_outer_jit(self):
        inputs, run = self.scan()
        counts = dict(scan_module.TRACE_COUNTS)

        @tf.function(jit_compile=True)
        def step(u):
            with tf.GradientTape() as tape:
                tape.watch(u)
                loss = tf.reduce_sum(run(u=u))
            return tape.gradient(loss, u)

        step(tf.constant(inputs["u"]))
        delta = {k: scan_module.TRACE_COUNTS[k] - counts[k] for k in counts}
        self.assertEqual(delta["forward_jit"], 0)
        self.assertEqual(delta["backward_jit"], 0)
        self.assertGreater(delta["forward_inline"], 0)
        self.assertGreater(delta["backward_inline"], 0)

    def test_auto_wraps_outside_jit(self):
        self.assertFalse(scan_module.in_xla_context())
        self.assertTrue(tf.function(lambda: tf.constant(scan_module.in_xla_context()),
                                    jit_compile=True)().numpy())
        self.assertFalse(tf.function(lambda: tf.constant(scan_module.in_xla_context()))()
                         .numpy())

    def test_context_manager_forces_plain_loop(self):
        inputs, run = self.scan()
        counts = dict(scan_module.TRACE_COUNTS)
        with selective_scan_jit(False):
            tf.function(lambda: run())()
        self.assertEqual(scan_module.TRACE_COUNTS["forward_jit"], counts["forward_jit"])
        self.assertEqual(scan_module._default_jit(), "auto")

    def test_low_precision_io(self):
        inputs, _ = self.scan()
        out = selective_scan(tf.cast(inputs["u"], tf.bfloat16), inputs["delta"], inputs["A"],
                             inputs["B"], inputs["C"], D=inputs["D"], chunk_size=4)
        self.assertEqual(out.dtype, tf.bfloat16)
        ref = selective_scan(tf.cast(tf.cast(inputs["u"], tf.bfloat16), tf.float32),
                             inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                             D=inputs["D"], chunk_size=4)
        self.assertAllClose(tf.cast(out, tf.float32), tf.cast(tf.cast(ref, tf.bfloat16),
                                                              tf.float32), atol=1e-2)

    def test_bad_arguments(self):
        inputs = random_inputs("grouped")
        with self.assertRaisesRegex(ValueError, "groups"):
            selective_scan(inputs["u"][:, :5], inputs["delta"][:, :5], inputs["A"][:5],
                           inputs["B"], inputs["C"])
        with self.assertRaisesRegex(ValueError, "jit"):
            selective_scan(**{k: inputs[k] for k in ("u", "delta", "A", "B", "C")}, jit="yes")
        with self.assertRaisesRegex(ValueError, "`B`"):
            selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"][..., None],
                           inputs["C"])


@pytest.mark.large
class SelectiveScanLongSequenceTest(TestCase):
    def test_long_sequence_matches_reference(self):
        rng = np.random.default_rng(3)
        u = rng.standard_normal((1, 32, 1000)).astype(np.float32)
        delta = rng.standard_normal((1, 32, 1000)).astype(np.float32)
        A = -np.tile(np.arange(1, 17, dtype=np.float32), (32, 1))
        B = rng.standard_normal((1, 16, 1000)).astype(np.float32)
        C = rng.standard_normal((1, 16, 1000)).astype(np.float32)
        out = selective_scan(u, delta, A, B, C, delta_softplus=True)
        ref, _ = reference_scan(*(tf.constant(x, tf.float64) for x in (u, delta, A, B, C)),
                                delta_softplus=True)
        self.assert_parity(out, ref, rel_tol=1e-5)
