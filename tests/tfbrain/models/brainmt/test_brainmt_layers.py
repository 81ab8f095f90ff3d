import numpy as np
import tensorflow as tf

from tests.test_case import TestCase, load_fixture_npz
from tfbrain.conversion.mamba import load_mamba
from tfbrain.layers.mamba_block import BiMambaBlock
from tfbrain.models.brainmt.brainmt_layers import (BrainMTAddRMSNorm, BrainMTConvBlock,
                                                   BrainMTEmbedding, BrainMTMambaLayer,
                                                   BrainMTStem, stem_output_size)


def rms_norm(x, eps=1e-5):
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)


class BrainMTLayersTest(TestCase):
    def test_stem_sizes_follow_torch_padding(self):
        # k3 s2 p1 four times: MNI 109 -> 55 -> 28 -> 14 -> 7 and 91 -> 46 -> 23 -> 12 -> 6
        self.assertEqual(stem_output_size(109), 7)
        self.assertEqual(stem_output_size(91), 6)
        self.assertEqual(stem_output_size(32), 2)
        frames = np.random.RandomState(0).randn(3, 18, 17, 16, 1).astype("float32")
        self.run_layer_test(BrainMTStem, dict(hidden_dim=16), frames,
                            expected_output_shape=(3, 2, 2, 1, 16))
        with self.assertRaisesRegex(ValueError, "hidden_dim"):
            BrainMTStem(12)

    def test_conv_block(self):
        x = np.random.RandomState(1).randn(2, 5, 4, 3, 8).astype("float32")
        self.run_layer_test(BrainMTConvBlock, dict(hidden_dim=8), x,
                            expected_output_shape=(2, 5, 4, 3, 8))
        with self.assertRaisesRegex(ValueError, "hidden_dim=6"):
            BrainMTConvBlock(6)(x)

    def test_embedding_is_temporal_first(self):
        batch, frames, width = 2, 3, 4
        stem_out = np.random.RandomState(2).randn(batch * frames, 2, 1, 2, width).astype("float32")
        layer = self.run_layer_test(BrainMTEmbedding, dict(num_frames=frames, max_frames=5),
                                    stem_out, expected_output_shape=(batch, 1 + 4 * frames, width))
        rng = np.random.RandomState(3)
        for var in layer.weights:
            var.assign(rng.randn(*var.shape).astype("float32"))
        out = np.asarray(layer(stem_out))
        cls, pos, temporal = (np.asarray(v) for v in (layer.cls_token, layer.pos_embed,
                                                     layer.temporal_pos_embed))
        tokens = stem_out.reshape(batch, frames, 4, width)  # (B, T, N, C)
        for b in range(batch):
            self.assertAllClose(out[b, 0], cls + pos[0])
            for n in range(4):
                for t in range(frames):  # position 1 + n*T + t
                    self.assertAllClose(out[b, 1 + n * frames + t],
                                        tokens[b, t, n] + pos[1 + n] + temporal[t], atol=1e-5)
        with self.assertRaisesRegex(ValueError, "num_frames"):
            BrainMTEmbedding(num_frames=6, max_frames=5)

    def test_add_rms_norm(self):
        rng = np.random.RandomState(4)
        hidden, residual = (rng.randn(2, 7, 8).astype("float32") for _ in range(2))
        norm = BrainMTAddRMSNorm()
        normed, new_residual = norm(hidden, residual)
        norm.scale.assign(np.linspace(0.5, 1.5, 8).astype("float32"))
        normed, new_residual = norm(hidden, residual)
        self.assertAllClose(new_residual, hidden + residual)
        self.assertAllClose(normed, rms_norm(hidden + residual) * np.linspace(0.5, 1.5, 8),
                            atol=1e-5)
        first, first_residual = norm(hidden)  # no residual yet: the input is the residual
        self.assertAllClose(first_residual, hidden)
        final = BrainMTAddRMSNorm(return_residual=False)
        self.assertEqual(tuple(final(hidden, residual).shape), (2, 7, 8))

    def test_residual_stream_stays_float32_under_mixed_precision(self):
        x = np.random.RandomState(5).randn(1, 6, 16).astype("float32")
        layer = BrainMTMambaLayer(16, dtype="mixed_bfloat16")
        hidden, residual = layer(x)
        hidden, residual = layer(hidden, residual)
        self.assertEqual(hidden.dtype, tf.bfloat16)
        self.assertEqual(residual.dtype, tf.float32)

    def test_mamba_layer_config_round_trip(self):
        layer = BrainMTMambaLayer(16, drop_path_rate=0.1, bidirectional=True, scan_jit=False)
        restored = BrainMTMambaLayer.from_config(layer.get_config())
        self.assertEqual(restored.get_config(), layer.get_config())
        self.assertIsInstance(restored.mixer, BiMambaBlock)

    def test_bidirectional_layer_is_rms_norm_then_vim_v2(self):
        # the bidirectional option is the Vim v2 block (its own parity: the Vim fixture) after
        # the fused add + RMSNorm
        data = load_fixture_npz("mamba", "vim_bimamba_v2_d64.npz")
        state = {k: v for k, v in data.items() if not k.startswith(("input", "output", "inter/"))}
        layer = BrainMTMambaLayer(64, bidirectional=True)
        x = data["input"]
        layer(x)
        load_mamba(layer.mixer, state)
        self.assert_parity(layer.mixer(x), data["output"], name="vim v2 mixer")
        vim = BiMambaBlock(64)
        vim(x)
        load_mamba(vim, state)
        hidden, residual = layer(x)
        self.assert_parity(hidden, vim(rms_norm(x)), rel_tol=1e-5, name="layer = vim(rmsnorm)")
        self.assertAllClose(residual, x)
