import itertools

import numpy as np
import tensorflow as tf

from tests.test_case import TestCase, load_fixture_npz
from tfbrain.layers.window_4d import (WindowAttention4D, effective_window_and_shift,
                                      mask_from_labels, masked_window_boxes, padded_grid_size,
                                      shifted_window_labels, window_partition_4d,
                                      window_reverse_4d, windowed_apply)

# (grid, configured window): SwiFT paper stage 0 shape class, the edge fixture's stages
# (asymmetric, mixed shifts, time padding), a time-only shift
SHIFTED_CASES = [((8, 8, 8, 8), (4, 4, 4, 4)), ((8, 16, 8, 10), (2, 2, 2, 2)),
                 ((4, 8, 4, 10), (4, 4, 4, 4)), ((2, 4, 2, 10), (4, 4, 4, 4)),
                 ((4, 4, 4, 20), (4, 4, 4, 4)), ((6, 4, 2, 6), (2, 2, 2, 4))]


def effective_case(grid, configured):
    window, shift = effective_window_and_shift(grid, configured, tuple(w // 2 for w in configured))
    return window, shift, padded_grid_size(grid, window)


class WindowHelpersTest(TestCase):
    def test_partition_orders_windows_and_tokens_dhwt(self):
        grid = (4, 2, 2, 4)
        x = np.arange(np.prod(grid), dtype="float32").reshape((1, *grid, 1))
        windows = np.asarray(window_partition_4d(x, (2, 2, 2, 2)))
        self.assertEqual(windows.shape, (4, 16, 1))
        # first window = x[0, :2, :2, :2, :2] flattened in (D, H, W, T) order
        self.assertAllClose(windows[0, :, 0], x[0, :2, :2, :2, :2, 0].reshape(-1))
        # second window steps along T (the fastest window axis)
        self.assertAllClose(windows[1, :, 0], x[0, :2, :2, :2, 2:4, 0].reshape(-1))

    def test_partition_reverse_round_trip(self):
        x = np.random.rand(2, 4, 6, 2, 8, 3).astype("float32")
        windows = window_partition_4d(x, (2, 3, 2, 4))
        self.assertAllClose(window_reverse_4d(windows, (2, 3, 2, 4), (4, 6, 2, 8)), x)

    def test_shrink_rule(self):
        window, shift = effective_window_and_shift((4, 8, 4, 10), (4, 4, 4, 4), (2, 2, 2, 2))
        self.assertEqual(window, (4, 4, 4, 4))
        self.assertEqual(shift, (0, 2, 0, 2))
        self.assertEqual(padded_grid_size((4, 8, 4, 10), window), (4, 8, 4, 12))

    def test_masks_equal_upstream(self):
        # edge fixture stores the additive mask of each stage's shifted blocks
        masks = load_fixture_npz("swift", "edge_intermediates.npz")
        stages = {  # grid, configured window (the edge config) -> mask key
            "mask.layers.0": ((8, 16, 8, 10), (2, 2, 2, 2)),
            "mask.layers.1": ((4, 8, 4, 10), (4, 4, 4, 4)),
            "mask.layers.2": ((2, 4, 2, 10), (4, 4, 4, 4)),
        }
        for key, (grid, configured) in stages.items():
            window, shift = effective_window_and_shift(grid, configured,
                                                       tuple(w // 2 for w in configured))
            labels = shifted_window_labels(padded_grid_size(grid, window), window, shift)
            self.assertAllClose(mask_from_labels(labels), masks[key], msg=key)

    def test_boxes_cover_each_window_once_and_mask_exactly_the_mixed_ones(self):
        for grid, configured in SHIFTED_CASES:
            window, shift, padded = effective_case(grid, configured)
            window_grid = tuple(p // w for p, w in zip(padded, window))
            labels = shifted_window_labels(padded, window, shift).reshape(window_grid + (-1,))
            interior, cuts = masked_window_boxes(window_grid, shift)
            count = np.zeros(window_grid, int)
            masked = np.zeros(window_grid, bool)
            for box, is_masked in [(interior, False)] + [(box, True) for _, box in cuts]:
                index = tuple(slice(a, b) for a, b in box)
                count[index] += 1
                masked[index] = is_masked
            self.assertTrue(np.all(count == 1), f"{grid}: {count}")
            # a window needs the mask iff its tokens carry more than one region label
            mixed = np.array([len(np.unique(labels[i])) > 1
                              for i in itertools.product(*map(range, window_grid))])
            self.assertTrue(np.array_equal(masked.reshape(-1), mixed), f"grid {grid}")
            self.assertGreater(count[tuple(slice(a, b) for a, b in interior)].size, 0)

    def test_boundary_only_mask_equals_mask_on_every_window(self):
        # values and gradients of a real attention mixer, both mask placements
        for grid, configured in SHIFTED_CASES[1:3] + SHIFTED_CASES[-1:]:
            window, shift, padded = effective_case(grid, configured)
            labels = shifted_window_labels(padded, window, shift)
            layer = WindowAttention4D(8, 2)
            x = tf.constant(np.random.default_rng(0).normal(size=(2, *grid, 8)), tf.float32)
            results = []
            for every in (True, False):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    out = windowed_apply(x, lambda w, m: layer(w, attention_mask=m), window,
                                         shift, labels, mask_every_window=every)
                    loss = tf.reduce_sum(out * tf.sin(out))
                results.append((out, *tape.gradient(loss, [x] + layer.trainable_variables)))
            # outputs and input gradients: per-window numbers, equal to float32 rounding
            for full, partial in zip(results[0][:2], results[1][:2]):
                self.assertAllClose(partial, full, atol=1e-6, rtol=1e-6, msg=str(grid))
            # weight gradients sum over ~20k tokens, grouped differently on the two paths
            for full, partial in zip(results[0][2:], results[1][2:]):
                full, partial = np.asarray(full), np.asarray(partial)
                self.assertLessEqual(np.max(np.abs(partial - full)), 5e-5 * np.max(np.abs(full)),
                                     str(grid))

    def test_windowed_apply_identity_mixer_is_identity(self):
        x = np.random.rand(1, 3, 4, 4, 6, 2).astype("float32")  # needs padding on D and T
        out = windowed_apply(x, lambda w, m: w, (2, 2, 2, 4), (1, 1, 1, 2))
        self.assertAllClose(out, x)


class WindowAttention4DTest(TestCase):
    def test_layer_basics(self):
        self.run_layer_test(WindowAttention4D, dict(hidden_dim=12, num_heads=3),
                            np.random.rand(4, 16, 12).astype("float32"), (4, 16, 12))

    def test_mask_blocks_attention(self):
        layer = WindowAttention4D(4, 1)
        tokens = np.random.rand(1, 2, 4).astype("float32")
        mask = np.array([[[0, -100], [-100, 0]]], "float32")  # each token sees only itself
        out = layer(tokens, attention_mask=mask)
        alone = np.concatenate([layer(tokens[:, :1]), layer(tokens[:, 1:])], axis=1)
        self.assertAllClose(out, alone, atol=1e-5)

    def test_heads_must_divide_width(self):
        with self.assertRaisesRegex(ValueError, "hidden_dim"):
            WindowAttention4D(10, 3)
