import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.layers.attention import MultiHeadSelfAttention, attention_core
from tfbrain.layers.blockwise_attention import BlockwiseSelfAttention, blockwise_attention


def attend_with_grads(fn, q, k, v, weights):
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        out = fn(q, k, v)
        loss = tf.reduce_sum(out * weights)
    return [out] + tape.gradient(loss, [q, k, v])


class BlockwiseAttentionTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.RandomState(0)
        # N != M, odd lengths: the last key block is padded and masked
        self.q = tf.constant(3 * rng.randn(2, 3, 29, 8).astype("float32"))
        self.k = tf.constant(3 * rng.randn(2, 3, 37, 8).astype("float32"))
        self.v = tf.constant(rng.randn(2, 3, 37, 5).astype("float32"))
        self.w = tf.constant(rng.randn(2, 3, 29, 5).astype("float32"))

    def test_equals_plain_attention_with_gradients(self):
        expected = attend_with_grads(attention_core, self.q, self.k, self.v, self.w)
        for block_size in (1, 5, 16, 37, 100):
            actual = attend_with_grads(
                lambda q, k, v: blockwise_attention(q, k, v, block_size=block_size),
                self.q, self.k, self.v, self.w)
            for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected):
                self.assertAllClose(a, e, atol=2e-5, rtol=1e-5, msg=f"{name} S={block_size}")

    def test_under_xla_and_in_a_graph(self):
        expected = attend_with_grads(attention_core, self.q, self.k, self.v, self.w)

        def blockwise(q, k, v):
            return blockwise_attention(q, k, v, block_size=8)

        for jit_compile in (True, False):
            step = tf.function(lambda q, k, v, w: attend_with_grads(blockwise, q, k, v, w),
                               jit_compile=jit_compile)
            actual = step(self.q, self.k, self.v, self.w)
            for a, e in zip(actual, expected):
                self.assertAllClose(a, e, atol=2e-5, rtol=1e-5, msg=f"jit={jit_compile}")

    def test_mixed_precision_inputs(self):
        out = blockwise_attention(tf.cast(self.q, tf.bfloat16), tf.cast(self.k, tf.bfloat16),
                                  tf.cast(self.v, tf.bfloat16), block_size=8)
        self.assertEqual(out.dtype, tf.bfloat16)
        expected = attention_core(self.q, self.k, self.v)
        self.assertAllClose(tf.cast(out, tf.float32), expected, atol=0.1, rtol=0.05)

    def test_layer_matches_plain_layer(self):
        tokens = np.random.RandomState(1).randn(2, 23, 16).astype("float32")
        self.run_layer_test(BlockwiseSelfAttention, dict(hidden_dim=16, num_heads=2,
                                                         implementation="blockwise",
                                                         block_size=6),
                            tokens, expected_output_shape=(2, 23, 16))
        plain = MultiHeadSelfAttention(16, 2)
        blockwise = BlockwiseSelfAttention(16, 2, implementation="blockwise", block_size=6)
        plain(tokens)
        blockwise(tokens)
        blockwise.set_weights(plain.get_weights())
        self.assertAllClose(blockwise(tokens), plain(tokens), atol=1e-5)
        config = json.loads(json.dumps(blockwise.get_config()))
        self.assertEqual(BlockwiseSelfAttention.from_config(config).block_size, 6)

    def test_auto_threshold_and_bad_arguments(self):
        layer = BlockwiseSelfAttention(16, 2)
        self.assertFalse(layer.uses_blockwise(1009))
        self.assertTrue(layer.uses_blockwise(50_401))  # 2 heads x 50,401^2 x 4 B = 20 GB
        with self.assertRaisesRegex(ValueError, "implementation"):
            BlockwiseSelfAttention(16, 2, implementation="flash")
        with self.assertRaisesRegex(ValueError, "attention_dropout_rate"):
            BlockwiseSelfAttention(16, 2, attention_dropout_rate=0.1)
        with self.assertRaisesRegex(ValueError, "block_size"):
            blockwise_attention(self.q, self.k, self.v, block_size=0)

    @pytest.mark.large
    def test_saved_model_export(self):
        tokens = np.random.RandomState(2).randn(1, 19, 16).astype("float32")
        inputs = keras.Input((19, 16))
        model = keras.Model(inputs, BlockwiseSelfAttention(16, 2, implementation="blockwise",
                                                           block_size=4)(inputs))
        path = self.get_temp_dir() + "/saved"
        model.export(path)
        served = tf.saved_model.load(path).signatures["serving_default"]
        out = list(served(tf.constant(tokens)).values())[0]
        self.assertAllClose(out, model(tokens), atol=1e-5)
