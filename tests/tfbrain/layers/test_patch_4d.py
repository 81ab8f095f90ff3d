import numpy as np
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.layers.patch_4d import PatchEmbed4D, PatchMerging4D, PositionEmbedding4D


class PatchEmbed4DTest(TestCase):
    def test_layer_basics(self):
        self.run_layer_test(PatchEmbed4D, dict(hidden_dim=6, patch_size=(2, 2, 2, 1)),
                            np.random.rand(2, 4, 4, 8, 3, 2).astype("float32"), (2, 2, 2, 4, 3, 6))

    def test_equals_per_frame_conv3d(self):
        layer = PatchEmbed4D(5, (2, 3, 2, 1))
        x = np.random.rand(1, 4, 6, 4, 3, 2).astype("float32")
        out = np.asarray(layer(x))
        kernel = np.asarray(layer.fc.kernel).reshape(2, 3, 2, 2, 5)
        frames = np.transpose(x, (0, 4, 1, 2, 3, 5))[0]  # (T, D, H, W, C)
        conv = tf.nn.conv3d(frames, kernel, strides=(1, 2, 3, 2, 1), padding="VALID")
        conv = np.asarray(conv) + np.asarray(layer.fc.bias)
        self.assertAllClose(out[0], np.transpose(conv, (1, 2, 3, 0, 4)), atol=1e-5)

    def test_time_patch_rejected(self):
        with self.assertRaisesRegex(ValueError, "patch_size"):
            PatchEmbed4D(4, (2, 2, 2, 2))


class PositionEmbedding4DTest(TestCase):
    def test_shorter_time_uses_table_start(self):
        layer = PositionEmbedding4D(max_frames=6)
        x = np.zeros((1, 2, 2, 2, 4, 3), "float32")
        out = np.asarray(layer(x))
        expected = (np.asarray(layer.pos_embed)[:, :, :, None, :]
                    + np.asarray(layer.time_embed)[None, None, None, :4, :])
        self.assertAllClose(out[0], expected)

    def test_longer_time_raises(self):
        layer = PositionEmbedding4D(max_frames=4)
        with self.assertRaisesRegex(ValueError, "max_frames=4"):
            layer(np.zeros((1, 2, 2, 2, 5, 3), "float32"))


class PatchMerging4DTest(TestCase):
    def test_layer_basics(self):
        self.run_layer_test(PatchMerging4D, dict(output_dim=8),
                            np.random.rand(2, 4, 2, 4, 3, 4).astype("float32"), (2, 2, 1, 2, 3, 8))

    def test_concatenation_order_k_fastest(self):
        layer = PatchMerging4D(output_dim=8)
        x = np.random.rand(1, 2, 2, 2, 1, 1).astype("float32")
        layer(x)
        layer.norm.gamma.assign(np.ones(8))
        layer.norm.beta.assign(np.zeros(8))
        layer.reduction.kernel.assign(np.eye(8, dtype="float32"))
        out = np.asarray(layer(x))[0, 0, 0, 0, 0]
        order = [x[0, i, j, k, 0, 0] for i in range(2) for j in range(2) for k in range(2)]
        normed = (np.array(order) - np.mean(order)) / np.sqrt(np.var(order) + 1e-5)
        self.assertAllClose(out, normed, atol=1e-5)

    def test_odd_grid_raises(self):
        with self.assertRaisesRegex(ValueError, "even"):
            PatchMerging4D(8)(np.zeros((1, 3, 2, 2, 1, 4), "float32"))
