import json

import keras
import numpy as np
import pytest

from tests.test_case import TestCase
from tfbrain.models.neurostorm import NeuroSTORMBackbone
from tfbrain.models.neurostorm.neurostorm_pretraining import (NeuroSTORMMAE, NeuroSTORMMasking,
                                                               masked_reconstruction_loss)

TINY = dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1), hidden_dim=12, depths=(2, 1),
            first_window_size=(2, 2, 2, 2), window_size=(2, 2, 2, 2))


def numpy_upstream_window_loss(fmri, reconstruction, window_mask, patch_size, window_size):
    """Upstream `forward_loss` for window masking, restated in NumPy on channels-first data.

    fmri, reconstruction: (B, C, D, H, W, T); window_mask: (B, nWindows) in window order.
    Patchify to (B, D', H', W', T, P), cut the patch grid into windows, MSE over P, mean
    over each window, then the mean over the masked windows.
    """
    def patchify(x):
        b, c, d, h, w, t = x.shape
        pd, ph, pw = patch_size[:3]
        x = x.reshape(b, c, d // pd, pd, h // ph, ph, w // pw, pw, t, 1)
        x = x.transpose(0, 2, 4, 6, 8, 3, 5, 7, 9, 1)
        return x.reshape(b, d // pd, h // ph, w // pw, t, -1)

    def windows(x):
        b, d, h, w, t, p = x.shape
        wd, wh, ww, wt = window_size
        x = x.reshape(b, d // wd, wd, h // wh, wh, w // ww, ww, t // wt, wt, p)
        return x.transpose(0, 1, 3, 5, 7, 2, 4, 6, 8, 9).reshape(b, -1, wd * wh * ww * wt, p)

    error = (windows(patchify(fmri)) - windows(patchify(reconstruction))) ** 2
    per_window = error.mean(axis=-1).mean(axis=-1)  # (B, nWindows)
    return (per_window * window_mask).sum() / window_mask.sum()


class NeuroSTORMMaskingTest(TestCase):
    def setUp(self):
        super().setUp()
        self.tokens = np.random.RandomState(0).randn(3, 4, 4, 4, 4, 6).astype("float32")

    def test_window_masking(self):
        layer = NeuroSTORMMasking(0.5, "window", "random", window_size=(2, 2, 2, 2), seed=1)
        layer.build(self.tokens.shape)
        table = np.random.RandomState(1).randn(16, 6).astype("float32")
        layer.window_mask_token.assign(table)
        masked, mask = (np.asarray(t) for t in layer(self.tokens))
        self.assertEqual(mask.shape, (3, 4, 4, 4, 4))
        # (B, window index, position in window): whole windows, exactly 8 of 16 per sample
        windows = mask.reshape(3, 2, 2, 2, 2, 2, 2, 2, 2).transpose(0, 1, 3, 5, 7, 2, 4, 6, 8)
        windows = windows.reshape(3, 16, 16)
        self.assertTrue(np.all(windows == windows[:, :, :1]))
        np.testing.assert_array_equal(windows[:, :, 0].sum(axis=1), [8, 8, 8])
        # masked tokens hold the per-position token; the others are untouched
        position_token = np.broadcast_to(
            table.reshape(1, 2, 1, 2, 1, 2, 1, 2, 6),
            (3, 2, 2, 2, 2, 2, 2, 2, 2, 6)).reshape(3, 4, 4, 4, 4, 6)
        expected = np.where(mask[..., None] > 0, position_token, self.tokens)
        self.assertAllClose(masked, expected, atol=0, rtol=0)

    def test_random_masking_counts_and_seeds(self):
        def draw(seed):
            layer = NeuroSTORMMasking(0.3, "random", "random", seed=seed)
            return np.asarray(layer(self.tokens)[1])

        first, again, other = draw(7), draw(7), draw(8)
        np.testing.assert_array_equal(first, again)  # same seed -> same masks
        self.assertFalse(np.array_equal(first, other))
        np.testing.assert_array_equal(first.reshape(3, -1).sum(axis=1), [76, 76, 76])  # int(256*.3)

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "spatial_mask"):
            NeuroSTORMMasking(0.5, "atlas", "random")
        with self.assertRaisesRegex(ValueError, "mask_ratio"):
            NeuroSTORMMasking(1.0)
        with self.assertRaisesRegex(ValueError, "window_size"):
            NeuroSTORMMasking(0.5, window_size=(3, 3, 3, 3))(self.tokens)


class NeuroSTORMMAETest(TestCase):
    def setUp(self):
        super().setUp()
        self.fmri = np.random.RandomState(0).randn(4, 8, 8, 8, 4, 1).astype("float32")

    def test_shapes_config_and_loss_against_numpy(self):
        backbone = NeuroSTORMBackbone(**TINY)
        mae = NeuroSTORMMAE(backbone, seed=3)
        out = mae(self.fmri)
        self.assertEqual(tuple(out["reconstruction"].shape), (4, 8, 8, 8, 4, 1))
        self.assertEqual(tuple(out["mask"].shape), (4, 4, 4, 4, 4))
        # the encoder is the backbone's layers: no copy of its weights
        decoder_params = mae.count_params() - backbone.count_params()
        self.assertGreater(decoder_params, 0)
        self.assertEqual(mae.count_params() - decoder_params, backbone.count_params())
        restored = NeuroSTORMMAE.from_config(json.loads(json.dumps(mae.get_config())))
        self.assertEqual(restored.get_config(), mae.get_config())

        mask = np.asarray(out["mask"])
        window_mask = mask.reshape(4, 2, 2, 2, 2, 2, 2, 2, 2)[:, :, 0, :, 0, :, 0, :, 0]
        expected = numpy_upstream_window_loss(
            self.fmri.transpose(0, 5, 1, 2, 3, 4).astype("float64"),
            np.asarray(out["reconstruction"]).transpose(0, 5, 1, 2, 3, 4).astype("float64"),
            window_mask.reshape(4, -1), TINY["patch_size"], TINY["window_size"])
        loss = masked_reconstruction_loss(self.fmri, out["reconstruction"], out["mask"],
                                          TINY["patch_size"])
        self.assertAllClose(loss, expected, atol=0, rtol=1e-5)

    def test_fit_loss_decreases(self):
        keras.utils.set_random_seed(0)
        mae = NeuroSTORMMAE(NeuroSTORMBackbone(**TINY), seed=3)
        mae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
        losses = mae.fit(self.fmri, batch_size=4, epochs=5, verbose=0).history["loss"]
        self.assertTrue(np.all(np.isfinite(losses)))
        self.assertLess(losses[-1], 0.8 * losses[0])

    @pytest.mark.large
    def test_fit_under_xla(self):
        keras.utils.set_random_seed(0)
        mae = NeuroSTORMMAE(NeuroSTORMBackbone(**TINY), seed=3)
        mae.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
        losses = mae.fit(self.fmri, batch_size=4, epochs=5, verbose=0).history["loss"]
        self.assertLess(losses[-1], 0.8 * losses[0])

    def test_bad_backbone(self):
        with self.assertRaisesRegex(ValueError, "c_multiplier=2"):
            NeuroSTORMMAE(NeuroSTORMBackbone(**TINY, c_multiplier=3))
        with self.assertRaisesRegex(ValueError, "NeuroSTORM backbone"):
            NeuroSTORMMAE(keras.Sequential([keras.layers.Dense(2)]))
