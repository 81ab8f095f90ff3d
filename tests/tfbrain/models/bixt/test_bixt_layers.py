import json

import keras
import numpy as np

from tests.test_case import TestCase, load_fixture_npz
from tfbrain.models.bixt.bixt_layers import (BiXTBlock, BiXTConvPatchEmbed, BiXTCrossAttentionBlock,
                                             BiXTFourierEncoding, BiXTLatents, BiXTPatchEmbed2D,
                                             BiXTPatchEmbed4D, fourier_coordinate_table,
                                             fourier_position_table)

RNG = np.random.default_rng(0)


class FourierTableTest(TestCase):
    def test_equals_upstream_buffer_to_one_ulp(self):
        # torch's vectorised sin/cos are not correctly rounded, numpy's are: at most 1 ulp apart
        pos = load_fixture_npz("bixt_cfm", "bixt_small.npz")["sd/fourier_pos_encode.pos"]
        table = fourier_position_table(pos.shape[1:])
        self.assertAllClose(table, np.moveaxis(pos, 0, -1), atol=1.2e-7, rtol=0)

    def test_construction(self):
        table = fourier_position_table((3, 4, 2, 5), num_features=6)
        self.assertEqual(table.shape, (3, 4, 2, 5, 24))
        # block a depends on axis a only; feature 0 is sin(2π g / G), feature 1 cos of the same
        time_block = table[..., 18:]
        self.assertAllClose(time_block, np.broadcast_to(time_block[:1, :1, :1], time_block.shape))
        angle = np.arange(1, 6) / (5 + 1e-6) * 2 * np.pi
        self.assertAllClose(time_block[0, 0, 0, :, 0], np.sin(angle), atol=1e-6)
        self.assertAllClose(time_block[0, 0, 0, :, 1], np.cos(angle), atol=1e-6)
        self.assertAllClose(time_block[0, 0, 0, :, 2], np.sin(angle / 10000 ** (2 / 6)), atol=1e-6)
        # a 2D table is the first two blocks of the 4D one at the matching grid
        self.assertAllClose(fourier_position_table((3, 4), 6), table[:, :, 0, 0, :12])


class TokenizerTest(TestCase):
    def test_patch_embed_4d_matches_patch_sum(self):
        fmri = RNG.normal(size=(2, 4, 4, 8, 6, 2)).astype("float32")
        layer = self.run_layer_test(BiXTPatchEmbed4D, dict(hidden_dim=5, patch_size=(2, 2, 4, 3),
                                                           patch_stride=(2, 2, 4, 3)),
                                    fmri, (2, 2 * 2 * 2 * 2, 5))
        kernel, bias = layer.proj.kernel.numpy(), layer.proj.bias.numpy()  # (2, 2, 4, 3*2, 5)
        tokens = np.asarray(layer(fmri)).reshape(2, 2, 2, 2, 2, 5)  # (B, D', H', W', T', C)
        # token (b, i, j, k, t) sees voxels [2i:2i+2, 2j:2j+2, 4k:4k+4] of frames 3t..3t+2;
        # the frames of a tubelet are folded into the channels frame-major
        i, j, k, t = 1, 0, 1, 1
        patch = fmri[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 4 * k:4 * k + 4, 3 * t:3 * t + 3]
        patch = patch.reshape(2, 2, 4, 6)
        expected = np.einsum("xyzc,xyzco->o", patch, kernel) + bias
        self.assertAllClose(tokens[0, i, j, k, t], expected, atol=1e-5, rtol=1e-5)

    def test_patch_embed_4d_half_stride_and_errors(self):
        fmri = np.zeros((1, 8, 8, 8, 2, 1), "float32")
        self.run_layer_test(BiXTPatchEmbed4D, dict(hidden_dim=4, patch_size=(4, 4, 4, 1),
                                                   patch_stride=(2, 2, 2, 1)), fmri, (1, 128, 4))
        # overlapping kernels (computed as shifted cell sums) equal a padded Conv3D
        fmri = RNG.normal(size=(2, 8, 12, 8, 2, 2)).astype("float32")
        for patch, stride in (((4, 4, 2, 1), (2, 2, 2, 1)), ((8, 4, 6, 1), (2, 4, 2, 1)),
                              ((6, 6, 6, 1), (4, 4, 4, 1))):  # the last one runs the conv
            layer = BiXTPatchEmbed4D(3, patch, stride)
            tokens = np.asarray(layer(fmri))
            padding = [(p - s) // 2 for p, s in zip(patch[:3], stride[:3])]
            frames = np.moveaxis(fmri, 4, 1).reshape(4, 8, 12, 8, 2)  # (B*T, D, H, W, C)
            frames = np.pad(frames, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
            conv = np.asarray(layer.proj(frames))  # (B*T, D', H', W', 3)
            expected = np.moveaxis(conv.reshape((2, 2) + conv.shape[1:]), 1, 4).reshape(2, -1, 3)
            self.assertAllClose(tokens, expected, atol=1e-5, rtol=1e-5)
        with self.assertRaisesRegex(ValueError, "patch_stride"):
            BiXTPatchEmbed4D(4, (4, 4, 4, 2), (2, 2, 2, 1))
        with self.assertRaisesRegex(ValueError, "patch_stride"):
            BiXTPatchEmbed4D(4, (4, 4, 4, 1), (3, 3, 3, 1))

    def test_image_tokenizers(self):
        image = RNG.normal(size=(2, 16, 24, 3)).astype("float32")
        self.run_layer_test(BiXTPatchEmbed2D, dict(hidden_dim=6, patch_size=(8, 8),
                                                   patch_stride=(8, 8)), image, (2, 6, 6))
        self.run_layer_test(BiXTPatchEmbed2D, dict(hidden_dim=6, patch_size=(8, 8),
                                                   patch_stride=(4, 4)), image, (2, 24, 6))
        self.run_layer_test(BiXTConvPatchEmbed, dict(hidden_dim=8, patch_size=4), image,
                            (2, 24, 8))
        layer = BiXTConvPatchEmbed(16, 16)
        layer(np.zeros((1, 32, 32, 3), "float32"))
        self.assertEqual([c.filters for c in layer.convs], [2, 4, 8, 16])
        self.assertEqual([n.name for n in layer.norms],
                         ["proj_0_bn", "proj_2_bn", "proj_4_bn", "proj_6_bn"])
        with self.assertRaisesRegex(ValueError, r"in \(4, 8, 16\).*Received: patch_size=2"):
            BiXTConvPatchEmbed(8, 2)


class LatentsAndEncodingTest(TestCase):
    def test_latents_tile_to_batch(self):
        tokens = np.zeros((3, 7, 5), "float32")
        layer = self.run_layer_test(BiXTLatents, dict(num_latents=4, hidden_dim=6), tokens,
                                    (3, 4, 6))
        out = np.asarray(layer(tokens))
        self.assertAllClose(out[0], out[2])
        self.assertAllClose(out[1], layer.latents.numpy()[0])

    def test_fourier_encoding_adds_projected_table(self):
        tokens = RNG.normal(size=(2, 12, 5)).astype("float32")
        layer = self.run_layer_test(BiXTFourierEncoding, dict(grid_shape=(3, 4), hidden_dim=5,
                                                              num_features=4), tokens, (2, 12, 5))
        self.assertFalse(layer.pos.trainable)
        table = fourier_position_table((3, 4), 4).reshape(12, 8)
        expected = tokens + table @ layer.token_projection.kernel.numpy() + \
            layer.token_projection.bias.numpy()
        self.assertAllClose(layer(tokens), expected, atol=1e-5)
        with self.assertRaisesRegex(ValueError, "has 12 cells"):
            BiXTFourierEncoding((3, 4), 5)(np.zeros((1, 10, 5), "float32"))

    def test_coordinate_encoding(self):
        points = [[-10.0, 0.0, 4.0], [10.0, 20.0, 4.0], [0.0, 5.0, 8.0]]
        layer = self.run_layer_test(BiXTFourierEncoding, dict(hidden_dim=5, num_features=4,
                                                              coordinates=points),
                                    np.zeros((2, 3, 5), "float32"), (2, 3, 5))
        table = layer.pos.numpy()  # (3 points, 3 axes x 4 features)
        self.assertAllClose(table, fourier_coordinate_table(points, 4))
        # axis 0 spans [-10, 10] -> [0.05, 0.95] * 2π; sin of the first frequency
        self.assertAllClose(table[:, 0], np.sin(np.array([0.05, 0.95, 0.5]) * 2 * np.pi),
                            atol=1e-6)
        with self.assertRaisesRegex(ValueError, "exactly one of `grid_shape` and `coordinates`"):
            BiXTFourierEncoding((3,), 5, coordinates=points)


class BlockTest(TestCase):
    def test_cross_attention_block_names_and_shapes(self):
        latents, tokens = np.zeros((2, 3, 8), "float32"), np.zeros((2, 10, 6), "float32")
        block = BiXTCrossAttentionBlock(8, 6, 12, 3, layer_scale_init=0.1)
        out_latents, out_tokens = block(latents, tokens)
        self.assertEqual((out_latents.shape, out_tokens.shape), ((2, 3, 8), (2, 10, 6)))
        names = {w.path.split("/", 1)[1] for w in block.weights}
        for name in ("norm1_lat/gamma", "norm1_pat/gamma", "mlp_pat/linear1/kernel",
                     "ls2_pat/gamma", "attn/proj_pat/kernel"):
            self.assertIn(name, names)
        one_sided = BiXTCrossAttentionBlock(8, 6, 12, 3, one_sided=True)
        self.assertEqual(tuple(one_sided(latents, tokens).shape), (2, 3, 8))
        names = {w.path.split("/", 1)[1] for w in one_sided.weights}
        self.assertIn("norm1_pat/gamma", names)
        self.assertFalse(any("mlp_pat" in n or "proj_pat" in n for n in names))

    def test_block_config_round_trip_and_symbolic(self):
        block = BiXTBlock(8, 6, 12, 2, 3, ca_token_mlp_ratio=2.0, sa_drop_path_rate=0.1)
        latents, tokens = block(keras.KerasTensor((None, 3, 8)), keras.KerasTensor((None, 9, 6)))
        self.assertEqual((latents.shape, tokens.shape), ((None, 3, 8), (None, 9, 6)))
        config = block.get_config()
        restored = BiXTBlock.from_config(json.loads(json.dumps(config)))
        self.assertEqual(restored.get_config(), config)
