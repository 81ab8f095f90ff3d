import json

import keras
import numpy as np

from tests.test_case import TestCase
from tfbrain.layers.cross_attention import BiXTCrossAttention

LATENTS = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
TOKENS = np.random.default_rng(1).normal(size=(2, 5, 6)).astype("float32")


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def reference(layer, latents, tokens):
    """The BiXT equations in numpy: R then V, head-contiguous; one similarity both ways."""
    heads, width = layer.num_heads, layer.attention_dim
    d = width // heads

    def project(dense, x):
        return x @ dense.kernel.numpy() + dense.bias.numpy()

    def heads_of(x):  # (B, L, h*d) -> (B, h, L, d)
        return x.reshape(x.shape[0], x.shape[1], heads, d).transpose(0, 2, 1, 3)

    rv_lat, rv_tok = project(layer.rv_latents, latents), project(layer.rv_patches, tokens)
    r_lat, v_lat = heads_of(rv_lat[..., :width]), heads_of(rv_lat[..., width:])
    r_tok, v_tok = heads_of(rv_tok[..., :width]), heads_of(rv_tok[..., width:])
    scores = r_lat @ r_tok.transpose(0, 1, 3, 2) / np.sqrt(d)  # (B, h, M, N)
    lat = (softmax(scores, -1) @ v_tok).transpose(0, 2, 1, 3).reshape(latents.shape[:2] + (width,))
    tok = (softmax(scores, -2).transpose(0, 1, 3, 2) @ v_lat).transpose(0, 2, 1, 3)
    tok = tok.reshape(tokens.shape[:2] + (width,))
    return project(layer.proj_lat, lat), project(layer.proj_pat, tok)


class BiXTCrossAttentionTest(TestCase):
    def make(self, **kwargs):
        layer = BiXTCrossAttention(**{**dict(latent_dim=8, token_dim=6, attention_dim=12,
                                             num_heads=3), **kwargs})
        layer(LATENTS, TOKENS)
        for weight in layer.weights:  # non-zero biases, so the R/V split is exercised
            weight.assign(np.random.default_rng(2).normal(size=weight.shape) * 0.3)
        return layer

    def test_matches_the_equations(self):
        layer = self.make()
        latents, tokens = layer(LATENTS, TOKENS)
        expected_latents, expected_tokens = reference(layer, LATENTS, TOKENS)
        self.assertAllClose(latents, expected_latents, atol=1e-5, rtol=1e-5)
        self.assertAllClose(tokens, expected_tokens, atol=1e-5, rtol=1e-5)

    def test_one_sided_updates_latents_only(self):
        layer = self.make(one_sided=True)
        self.assertEqual(layer.rv_latents.name, "r_latents")
        self.assertEqual(tuple(layer.rv_latents.kernel.shape), (8, 12))
        self.assertFalse(hasattr(layer, "proj_pat"))
        latents = layer(LATENTS, TOKENS)
        self.assertEqual(tuple(latents.shape), (2, 3, 8))
        # the value half of a two-sided layer with the same R weights gives the same latents
        both = self.make()
        both.rv_latents.kernel.assign(np.concatenate(
            [layer.rv_latents.kernel.numpy(), np.zeros((8, 12), "float32")], axis=1))
        both.rv_latents.bias.assign(np.concatenate([layer.rv_latents.bias.numpy(),
                                                    np.zeros(12, "float32")]))
        for name in ("rv_patches", "proj_lat"):
            for a, b in zip(getattr(both, name).weights, getattr(layer, name).weights):
                a.assign(b)
        self.assertAllClose(both(LATENTS, TOKENS)[0], latents, atol=1e-6)

    def test_shapes_symbolic_and_config(self):
        layer = BiXTCrossAttention(8, 6, 12, 3)
        latents, tokens = layer(keras.KerasTensor((None, 3, 8)), keras.KerasTensor((None, 40, 6)))
        self.assertEqual((tuple(latents.shape), tuple(tokens.shape)), ((None, 3, 8), (None, 40, 6)))
        self.assertEqual(layer.compute_output_shape((None, 3, 8), (None, 40, 6)),
                         ((None, 3, 8), (None, 40, 6)))
        config = layer.get_config()
        restored = BiXTCrossAttention.from_config(json.loads(json.dumps(config)))
        self.assertEqual(restored.get_config(), config)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "attention_dim"):
            BiXTCrossAttention(8, 6, 10, 3)
        with self.assertRaisesRegex(ValueError, "Received: latents_shape"):
            BiXTCrossAttention(8, 6, 12, 3)(TOKENS, TOKENS)
