"""Tests for `MambaBlock` / `BiMambaBlock`: shapes, config, init, parity, fit, export."""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tests.test_case import TestCase, load_fixture_npz
from tfbrain.layers import selective_scan as scan_module
from tfbrain.conversion.mamba import load_mamba
from tfbrain.layers.mamba_block import BiMambaBlock, MambaBlock
from tfbrain.layers.selective_scan import selective_scan_jit

TINY = {"hidden_dim": 12, "state_dim": 4, "chunk_size": 4}


def load_block(block_cls, fixture, **kwargs):
    data = load_fixture_npz("mamba", fixture)
    block = block_cls(64, **kwargs)
    block.build(data["input"].shape)
    load_mamba(block, data)
    return block, data


class MambaBlockTest(TestCase):
    def test_layer(self):
        x = np.random.default_rng(0).standard_normal((2, 9, 12)).astype("float32")
        self.run_layer_test(MambaBlock, TINY, x, (2, 9, 12))
        self.run_layer_test(BiMambaBlock, {**TINY, "use_divide_out": False}, x, (2, 9, 12))

    def test_initialisation_as_upstream(self):
        block = MambaBlock(64)
        block.build((None, 37, 64))
        branch = block.forward_branch
        self.assertEqual(block.count_params(), 32640)  # upstream d_model=64 count
        self.assertEqual(branch.dt_proj.kernel.shape, (4, 128))  # dt_rank "auto" = ceil(64/16)
        self.assertAllClose(-np.exp(branch.A_log.numpy()),
                            -np.tile(np.arange(1, 17), (128, 1)), atol=1e-5)
        self.assertAllClose(branch.D.numpy(), np.ones(128))
        dt = keras.ops.softplus(branch.dt_bias).numpy()
        self.assertTrue(np.all(dt >= 1e-3 - 1e-7) and np.all(dt <= 0.1 + 1e-7))
        self.assertLessEqual(np.abs(branch.dt_proj.kernel.numpy()).max(), 0.5)
        self.assertLessEqual(np.abs(block.in_proj.kernel.numpy()).max(), 1 / 8)  # 1/sqrt(64)
        bi = BiMambaBlock(64)
        bi.build((None, 37, 64))
        self.assertAllClose(bi.backward_branch.dt_bias.numpy(), np.zeros(128))
        self.assertEqual(bi.count_params(), 32640 + 128 * (4 + 1 + 36 + 4 + 1 + 16 + 1))

    def test_mamba_block_parity(self):
        block, data = load_block(MambaBlock, "mamba_block_d64.npz")
        out = block(data["input"])
        self.assert_parity(out, data["output_f64_numpy"], rel_tol=1e-5, name="vs f64")
        self.assert_parity(out, data["output"], rel_tol=1e-5, name="vs upstream")

    def test_bimamba_v2_parity(self):
        block, data = load_block(BiMambaBlock, "vim_bimamba_v2_d64.npz")
        self.assert_parity(block(data["input"]), data["output_f64_numpy"], rel_tol=1e-5)
        self.assert_parity(block(data["input"]), data["output"], rel_tol=1e-5)
        block, data = load_block(BiMambaBlock, "vim_bimamba_v2_d64.npz", use_divide_out=False)
        self.assert_parity(block(data["input"]), data["output_if_divide_out_false"],
                           rel_tol=1e-5)

    def test_gradients_flow(self):
        block = BiMambaBlock(**TINY)
        x = tf.random.normal((2, 9, 12))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(block(x)))
        grads = tape.gradient(loss, block.trainable_variables)
        self.assertEqual(len(grads), 2 + 2 * 7)
        for var, grad in zip(block.trainable_variables, grads):
            self.assertIsNotNone(grad, var.path)
            self.assertTrue(np.all(np.isfinite(grad)), var.path)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "dt_rank"):
            MambaBlock(12, dt_rank=0)
        with self.assertRaisesRegex(ValueError, "jit"):
            MambaBlock(12, jit="sometimes")
        with self.assertRaisesRegex(ValueError, "hidden_dim"):
            MambaBlock(12)(tf.zeros((1, 5, 8)))
        block = MambaBlock(12)
        block.build((None, None, 12))
        unknown_length = tf.function(block, input_signature=[tf.TensorSpec((None, None, 12))])
        with self.assertRaisesRegex(ValueError, "sequence length"):
            unknown_length.get_concrete_function()


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((12, 8), name="tokens")
    x = MambaBlock(8, state_dim=4, chunk_size=4, name="mamba")(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(1)(x))


class StepTimer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.times = []


class MambaBlockFitTest(TestCase):
    def fit(self, jit_compile):
        model = tiny_model()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                      jit_compile=jit_compile)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((48, 12, 8)).astype("float32")
        y = rng.standard_normal((48, 1)).astype("float32")
        timer = StepTimer()
        history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
                            callbacks=[timer])
        return history.history["loss"][-1], timer.times

    def test_fit_jit_and_no_jit_agree_without_recompiling(self):
        counts = dict(scan_module.TRACE_COUNTS)
        loss_jit, times = self.fit(jit_compile=True)
        # Under the jit train step the scan is inlined: no nested jit function was traced.
        self.assertEqual(scan_module.TRACE_COUNTS["forward_jit"], counts["forward_jit"])
        self.assertEqual(scan_module.TRACE_COUNTS["backward_jit"], counts["backward_jit"])
        # Step 1 traces and compiles (seconds); later steps must not recompile each time.
        self.assertLess(max(times[2:]), 0.5 * times[0], f"step times {times}")
        loss_graph, _ = self.fit(jit_compile=False)
        self.assertTrue(np.isfinite(loss_jit))
        self.assertAllClose(loss_jit, loss_graph, rtol=1e-4, atol=1e-6)


class MambaBlockSaveTest(TestCase):
    def test_keras_round_trip(self):
        model = tiny_model()
        x = np.random.default_rng(1).standard_normal((3, 12, 8)).astype("float32")
        path = os.path.join(self.get_temp_dir(), "m.keras")
        model.save(path)
        restored = keras.models.load_model(path)
        self.assertAllClose(restored(x), model(x), atol=1e-6)

    def test_saved_model_without_jit(self):
        """Export with the plain-while_loop scan, reload without tfbrain, same outputs."""
        model = tiny_model()
        x = np.random.default_rng(1).standard_normal((3, 12, 8)).astype("float32")
        path = os.path.join(self.get_temp_dir(), "serving")
        with selective_scan_jit(False):
            model.export(path, format="tf_saved_model", verbose=False)
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            self.assertNotIn(b"_XlaMustCompile", f.read())
        reloaded = tf.saved_model.load(path)
        out = reloaded.signatures["serving_default"](tokens=tf.constant(x))
        self.assertAllClose(list(out.values())[0], model(x), atol=1e-5)
        self.assertAllClose(reloaded.serve(tf.constant(x)), model(x), atol=1e-5)

    def test_config_json(self):
        config = BiMambaBlock(**TINY, jit=False).get_config()
        self.assertEqual(BiMambaBlock.from_config(json.loads(json.dumps(config))).get_config(),
                         config)
