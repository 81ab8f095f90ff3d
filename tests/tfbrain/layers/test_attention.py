import numpy as np
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.layers.attention import attention_core


def numpy_attention(q, k, v, mask):
    """float64 reference: softmax(q kᵀ / sqrt(d) + mask) v."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    scores = q @ np.swapaxes(k, -1, -2) * q.shape[-1] ** -0.5 + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


class AttentionCoreTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.q, self.k, self.v = (tf.constant(3 * rng.normal(size=(2, 3, 16, 8)), tf.float32)
                                  for _ in range(3))
        labels = rng.integers(0, 3, size=(2, 1, 16))
        self.mask = np.where(labels[..., :, None] != labels[..., None, :], -100.0, 0.0)

    def attend_with_grads(self, **kwargs):
        with tf.GradientTape() as tape:
            tape.watch([self.q, self.k, self.v])
            out = attention_core(self.q, self.k, self.v, additive_mask=self.mask, **kwargs)
            loss = tf.reduce_sum(out * tf.cos(out))
        return [out] + tape.gradient(loss, [self.q, self.k, self.v])

    def assert_close_to_scale(self, actual, expected, tol, name):
        """max |actual - expected| <= tol * max |expected| (float32 sums in another order)."""
        err = np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)))
        self.assertLessEqual(err, tol * np.max(np.abs(expected)), name)

    def test_normalize_after_values_matches_reference_and_softmax_path(self):
        late = self.attend_with_grads(normalize_after_values=True)
        self.assert_close_to_scale(late[0], numpy_attention(self.q, self.k, self.v, self.mask),
                                   1e-6, "output vs float64")
        for name, got, expected in zip(("out", "dq", "dk", "dv"), late, self.attend_with_grads()):
            self.assert_close_to_scale(got, expected, 1e-5, name)

    def test_normalize_after_values_under_bfloat16(self):
        # unit-scale inputs, as after a LayerNorm and a qkv projection
        q, k, v = (tf.cast(t / 3, tf.bfloat16) for t in (self.q, self.k, self.v))
        out = attention_core(q, k, v, additive_mask=self.mask, normalize_after_values=True)
        self.assertEqual(out.dtype, tf.bfloat16)
        expected = numpy_attention(*(t.numpy().astype("float32") for t in (q, k, v)), self.mask)
        # bf16 rounds q kᵀ and the output to 8 mantissa bits (2^-9 relative each): a few
        # 2^-9 of the output's range; 1% of it leaves a factor of ~2 of headroom
        self.assert_close_to_scale(tf.cast(out, tf.float32), expected, 1e-2, "bf16 output")

    def test_normalize_after_values_drops_normalised_weights(self):
        # a fixed keep-mask standing in for Dropout: the denominator is the undropped sum
        keep = np.random.default_rng(1).random((2, 3, 16, 16)) > 0.3
        dropout = lambda w, training: w * tf.cast(keep, w.dtype) / 0.7  # noqa: E731
        late = attention_core(self.q, self.k, self.v, self.mask, dropout=dropout,
                              normalize_after_values=True)
        self.assert_close_to_scale(late, attention_core(self.q, self.k, self.v, self.mask,
                                                        dropout=dropout), 1e-6, "dropout")

    def test_weights_cannot_come_back_unnormalised(self):
        with self.assertRaisesRegex(ValueError, "return_weights"):
            attention_core(self.q, self.k, self.v, return_weights=True,
                           normalize_after_values=True)
