"""4D (D, H, W, T) window helpers and shifted-window self-attention.

Shared by SwiFT and NeuroSTORM (both use the Video-Swin style 4D windowing of
Transconnectome/SwiFT). Letters: B batch, D/H/W space, T frames, C channels,
N tokens per window, nW windows per sample.

Conventions that parity depends on:
  * windows are enumerated D-, H-, W-, T-major and tokens inside a window in
    (D, H, W, T) order, so a (B, D, H, W, T, C) grid becomes (B * nW, N, C);
  * an axis no bigger than the window shrinks the window to the axis and
    drops the shift on it (`effective_window_and_shift`);
  * grids that are not window multiples are zero-padded at the end of each
    axis, and the padded tokens are *not* masked (upstream behaviour);
  * the shifted-window mask is additive, -100 between tokens from different
    regions of the rolled grid, 0 otherwise; it is all zero off the shifted
    boundary, so only the boundary windows get it (`mix_interior_and_boundary`).
"""

import keras
import numpy as np
from keras import ops

from tfbrain.layers.attention import MultiHeadSelfAttention, attention_core
from tfbrain.layers.drop_path import DropPath  # noqa: F401  (re-exported for old imports)

MASK_VALUE = -100.0


def effective_window_and_shift(grid_size, window_size, shift_size):
    """The shrink rule: an axis with size <= window uses the axis size and no shift.

    Args:
        grid_size, window_size, shift_size: 4-tuples of ints (D, H, W, T).

    Returns:
        (window, shift) 4-tuples of ints.
    """
    window, shift = list(window_size), list(shift_size)
    for axis, size in enumerate(grid_size):
        if size <= window_size[axis]:
            window[axis] = size
            shift[axis] = 0
    return tuple(window), tuple(shift)


def padded_grid_size(grid_size, window_size):
    """Each axis rounded up to a multiple of its window."""
    return tuple(-(-g // w) * w for g, w in zip(grid_size, window_size))


def window_partition_4d(x, window_size):
    """Cut a grid into non-overlapping windows.

    Args:
        x: `(B, D, H, W, T, C)` with each grid axis a multiple of its window.
        window_size: 4-tuple (wd, wh, ww, wt).

    Returns:
        `(B * nW, wd * wh * ww * wt, C)`.
    """
    _, d, h, w, t, c = x.shape
    wd, wh, ww, wt = window_size
    # (B, D/wd, wd, H/wh, wh, W/ww, ww, T/wt, wt, C)
    x = ops.reshape(x, (-1, d // wd, wd, h // wh, wh, w // ww, ww, t // wt, wt, c))
    # (B, D/wd, H/wh, W/ww, T/wt, wd, wh, ww, wt, C)
    x = ops.transpose(x, (0, 1, 3, 5, 7, 2, 4, 6, 8, 9))
    return ops.reshape(x, (-1, wd * wh * ww * wt, c))


def window_reverse_4d(windows, window_size, grid_size):
    """Inverse of `window_partition_4d`.

    Args:
        windows: `(B * nW, N, C)`.
        window_size: 4-tuple (wd, wh, ww, wt).
        grid_size: 4-tuple (D, H, W, T) of the (padded) grid.

    Returns:
        `(B, D, H, W, T, C)`.
    """
    d, h, w, t = grid_size
    wd, wh, ww, wt = window_size
    c = windows.shape[-1]
    x = ops.reshape(windows, (-1, d // wd, h // wh, w // ww, t // wt, wd, wh, ww, wt, c))
    # (B, D/wd, wd, H/wh, wh, W/ww, ww, T/wt, wt, C)
    x = ops.transpose(x, (0, 1, 5, 2, 6, 3, 7, 4, 8, 9))
    return ops.reshape(x, (-1, d, h, w, t, c))


def shifted_window_labels(padded_grid, window_size, shift_size):
    """Region label of every token of every window after the cyclic roll.

    Each token of the padded grid is labelled by the band it falls in on every
    axis ([0, n-w), [n-w, n-s), [n-s, n); an unshifted axis has one band), so the
    grid splits into up to 3^4 regions. Tokens with different labels that share a
    window after the roll must not attend to each other. Labels are kept instead of
    the (nW, N, N) mask itself, which for SwiFT's first stage would be 84 MB.

    Returns:
        int32 numpy array `(nW, N)`.
    """
    labels = np.zeros(padded_grid, np.int32)
    for axis, (n, w, s) in enumerate(zip(padded_grid, window_size, shift_size)):
        band = np.zeros(n, np.int32)
        if s > 0:
            band[n - w:n - s] = 1
            band[n - s:] = 2
        shape = [1, 1, 1, 1]
        shape[axis] = n
        labels = labels * 3 + band.reshape(shape)
    # same enumeration as window_partition_4d, in numpy: (nW, N)
    wd, wh, ww, wt = window_size
    d, h, w, t = padded_grid
    labels = labels.reshape(d // wd, wd, h // wh, wh, w // ww, ww, t // wt, wt)
    labels = labels.transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return np.ascontiguousarray(labels.reshape(-1, wd * wh * ww * wt))


def mask_from_labels(labels):
    """`(nW, N)` region labels -> additive `(nW, N, N)` mask of 0 and -100 (float32)."""
    differ = ops.not_equal(labels[:, :, None], labels[:, None, :])
    return ops.where(differ, MASK_VALUE, 0.0)


def masked_window_boxes(window_grid, shift_size):
    """Split the window grid into the interior, which needs no mask, and masked boxes.

    After the cyclic roll, region bands change only inside the *last* window along a
    shifted axis ([n-w, n-s) and [n-s, n) both fall in it); every other window lies in
    band 0 on every axis, so its -100 mask is all zero and skipping the add is exact.
    The masked windows (last along some shifted axis) are cut into disjoint boxes, one
    per shifted axis a_k: last along a_k, not last along the shifted axes cut before it.

    Args:
        window_grid: 4-tuple, windows per axis (padded grid // window).
        shift_size: effective 4-tuple shift; an axis with shift 0 is never masked.

    Returns:
        (interior, cuts): `interior` is a 4-tuple of (start, stop) window ranges;
        `cuts` is a tuple of (axis, box) with `box` a 4-tuple of ranges, in cut order.
    """
    rest = [(0, n) for n in window_grid]
    cuts = []
    for axis, shift in enumerate(shift_size):
        if shift == 0:
            continue
        n = window_grid[axis]
        if n < 2:  # the shrink rule drops the shift of an axis no bigger than its window
            raise ValueError(f"A shifted axis needs at least 2 windows. Received: window grid "
                             f"{tuple(window_grid)}, shift {tuple(shift_size)}")
        box = list(rest)
        box[axis] = (n - 1, n)
        cuts.append((axis, tuple(box)))
        rest[axis] = (0, n - 1)
    return tuple(rest), tuple(cuts)


def _box_shape(box):
    return tuple(stop - start for start, stop in box)


def _box_slice(x, box, first_axis):
    """`x` cut to `box` on the 4 window axes that start at `first_axis`."""
    index = [slice(None)] * first_axis + [slice(start, stop) for start, stop in box]
    return x[tuple(index)]


def mix_interior_and_boundary(windows, mixer, shift_size, region_labels):
    """Mix interior windows without a mask and boundary windows with the -100 mask.

    Equal to `mixer(all windows, mask_from_labels(region_labels))`: the windows off the
    boundary have an all-zero mask (see `masked_window_boxes`). Static slices and
    concatenations only (no gather/scatter), so the gradient is slices and pads too.

    Args:
        windows: `(B, nWd, nWh, nWw, nWt, N, C)`.
        mixer: callable `(B * n, N, C), additive (n, N, N) mask or None -> (B * n, N, C)`.
        shift_size: effective 4-tuple shift.
        region_labels: numpy `(nW, N)` labels of the rolled grid (`shifted_window_labels`).

    Returns:
        `(B, nWd, nWh, nWw, nWt, N, C)`.
    """
    window_grid = tuple(windows.shape[1:5])
    num_tokens, channels = windows.shape[5], windows.shape[6]
    labels = np.asarray(region_labels).reshape(window_grid + (num_tokens,))  # (nWd, .., nWt, N)
    interior, cuts = masked_window_boxes(window_grid, shift_size)

    def flat(t):  # (B, ..window box.., N, C) -> (B * n, N, C)
        return ops.reshape(t, (-1, num_tokens, channels))

    # every masked box goes through the mixer in one batch: (B, n_masked, N, C)
    sizes = [int(np.prod(_box_shape(box))) for _, box in cuts]
    masked = ops.concatenate([ops.reshape(_box_slice(windows, box, 1), (-1, size, num_tokens,
                                                                         channels))
                              for (_, box), size in zip(cuts, sizes)], axis=1)
    masked_labels = np.concatenate([_box_slice(labels, box, 0).reshape(-1, num_tokens)
                                    for _, box in cuts])  # (n_masked, N)
    mask = mask_from_labels(ops.convert_to_tensor(masked_labels))  # (n_masked, N, N)
    masked = ops.reshape(mixer(flat(masked), mask), (-1, sum(sizes), num_tokens, channels))
    rest = ops.reshape(mixer(flat(_box_slice(windows, interior, 1)), None),
                       (-1,) + _box_shape(interior) + (num_tokens, channels))
    # undo the cuts in reverse: the region before cut k = concat(region after it, box k)
    offsets = np.cumsum([0] + sizes)
    for k in reversed(range(len(cuts))):
        axis, box = cuts[k]
        part = ops.reshape(masked[:, offsets[k]:offsets[k + 1]],
                           (-1,) + _box_shape(box) + (num_tokens, channels))
        rest = ops.concatenate([rest, part], axis=1 + axis)
    return rest


def windowed_apply(x, mixer, window_size, shift_size, region_labels=None,
                   mask_every_window=False):
    """Pad, roll, cut into windows, mix tokens inside each window, and undo it all.

    Args:
        x: `(B, D, H, W, T, C)` normalised tokens.
        mixer: callable `(B * n, N, C), mask -> (B * n, N, C)`, where the mask is an
            additive `(n, N, N)` tensor or None.
        window_size, shift_size: effective 4-tuples (after the shrink rule).
        region_labels: numpy `(nW, N)` labels of the rolled grid, for a mixer that masks
            attention across regions (the Swin -100 mask); None: no mask.
        mask_every_window: add the mask to every window (upstream's way) instead of
            only to the boundary windows that need it; the two are exactly equal.

    Returns:
        `(B, D, H, W, T, C)`.
    """
    grid = tuple(x.shape[1:5])
    padded = padded_grid_size(grid, window_size)
    pads = [p - g for p, g in zip(padded, grid)]
    if any(pads):
        # pad at the end of each axis with zeros; upstream does, and does not mask them
        x = ops.pad(x, [[0, 0]] + [[0, p] for p in pads] + [[0, 0]])
    shifted = any(s > 0 for s in shift_size)
    if shifted:
        x = ops.roll(x, shift=[-s for s in shift_size], axis=(1, 2, 3, 4))
    windows = window_partition_4d(x, window_size)  # (B*nW, N, C)
    if not shifted or region_labels is None:
        windows = mixer(windows, None)
    elif mask_every_window:
        windows = mixer(windows, mask_from_labels(ops.convert_to_tensor(region_labels)))
    else:
        window_grid = tuple(p // w for p, w in zip(padded, window_size))
        windows = ops.reshape(windows, (-1,) + window_grid + tuple(windows.shape[1:]))
        windows = mix_interior_and_boundary(windows, mixer, shift_size, region_labels)
    x = window_reverse_4d(windows, window_size, padded)  # (B, D', H', W', T', C)
    if shifted:
        x = ops.roll(x, shift=list(shift_size), axis=(1, 2, 3, 4))
    if any(pads):
        x = x[:, :grid[0], :grid[1], :grid[2], :grid[3]]
    return x


class WindowAttention4D(MultiHeadSelfAttention):
    """Multi-head self-attention inside 4D windows (no relative position bias).

    The fused-qkv attention of `tfbrain.layers.attention`, with the shifted-window mask:
    one `(nW, N, N)` mask per window position, shared by every sample and head.

    Args:
        hidden_dim: int. Token width C.
        num_heads: int. Must divide `hidden_dim`.
        qkv_bias: bool. Bias in the fused qkv projection.
        attention_dropout_rate: float. Dropout on the attention weights.
        dropout_rate: float. Dropout after the output projection.

    Call arguments:
        tokens: `(B * nW, N, C)`.
        attention_mask: optional additive `(nW, N, N)` mask, broadcast over batch and heads.
    """

    def attend(self, query, key, value, attention_mask, training):
        """`(B * nW, h, N, d)` each; the mask, if any, is `(nW, N, N)`."""
        if attention_mask is None:
            # 256-token windows make the (N, N) scores the bulk of the work: normalise
            # after the product with the values (one exp per score, one pass fewer)
            return attention_core(query, key, value, dropout=self.attention_dropout,
                                  training=training, normalize_after_values=True)
        # windows of one sample are contiguous: view (B*nW) as (B, nW) so the (nW, N, N)
        # mask broadcasts over batch and heads
        num_windows = attention_mask.shape[0]
        split = lambda t: ops.reshape(t, (-1, num_windows) + tuple(t.shape[1:]))  # noqa: E731
        out = attention_core(split(query), split(key), split(value),
                             additive_mask=attention_mask[None, :, None],
                             dropout=self.attention_dropout, training=training,
                             normalize_after_values=True)  # (B, nW, h, N, d)
        return ops.reshape(out, (-1,) + tuple(query.shape[1:]))  # (B*nW, h, N, d)
