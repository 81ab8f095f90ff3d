"""Stage 1 of the two-stage flow-matching fMRI encoder: MedARC's multi-subject encoder.

Upstream: MedARC-AI/algonauts2025 @ 77840e14, `src/models.py`
(`MultiSubjectConvLinearEncoder`); Algonauts 2025, MedARC (arXiv 2507.19956).

Stimulus feature streams (one per feature model, `(B, T, D_i)` or `(B, T, L_i, D_i)`) ->
per-stream Linear then depthwise temporal conv -> pooled over streams -> shared +
per-subject linear decoders -> `(B, S, T, V)`: a prediction of every subject's parcel
responses from the same embedding, the deterministic "mean anchor" of Stage 2.

How this port differs from upstream:
  * channels-last as upstream, but inputs are a dict of named streams (a list works too,
    in `stream_names` order) and the window length T is fixed by `num_frames` (None: any);
  * `hidden_model` (null in every released config) is not ported; `global_pool="attn"` and
    `decoder_kernel_size > 1` raise upstream and are rejected here.

Letters: B batch, L layers of a stream, T frames (TRs), D stream width, d embedding width,
S subjects, V parcels (targets).
"""

import keras
import numpy as np
from keras import ops

from tfbrain.models.backbone import Backbone
from tfbrain.models.flow_encoder.flow_encoder_layers import (MedARCStreamEmbedding,
                                                             MedARCStreamPool,
                                                             MedARCSubjectDecoders)


def normalize_feature_dims(feature_dims) -> tuple:
    """Each entry an int D (a `(B, T, D)` stream) or a pair (L, D) (`(B, T, L, D)`)."""
    dims = []
    for i, dim in enumerate(feature_dims):
        if isinstance(dim, (int, np.integer)):
            dims.append(int(dim))
        elif len(dim) == 2:
            dims.append((int(dim[0]), int(dim[1])))
        else:
            raise ValueError(f"feature_dims[{i}] must be D or (L, D). Received: {dim!r}")
    if not dims:
        raise ValueError("`feature_dims` needs at least one stream.")
    return tuple(dims)


@keras.saving.register_keras_serializable(package="tfbrain")
class FlowEncoderBackbone(Backbone):
    """MedARC Stage-1 encoder: feature streams -> `(B, S, T, V)` parcel predictions.

    Args:
        feature_dims: tuple. Per stream, D (input `(B, T, D)`) or (L, D) (input
            `(B, T, L, D)`).
        num_subjects: int. S.
        target_dim: int. V (parcels).
        embed_dim: int. d (192 in MedARC's default config).
        num_frames: int or None. Window length T (64 in training; None accepts any).
        stream_names: tuple of str or None. Input names (default `stream_0`, ...).
        global_pool: "avg" (Σ over streams of layer means) or "linear".
        encoder_kernel_size: int. Temporal kernel (45 default; <= 1: no conv).
        encoder_causal, encoder_positive, encoder_blockwise: bool. `DepthConv1d` options.
        with_shared_decoder, with_subject_decoders: bool.
        dtype: dtype policy.

    Call arguments:
        streams: dict {name: stream} (or a list in `stream_names` order).
        Returns `(B, S, T, V)`.
    """

    def __init__(self, feature_dims=(2048,), num_subjects=4, target_dim=1000, embed_dim=192,
                 num_frames=64, stream_names=None, global_pool="avg", encoder_kernel_size=45,
                 encoder_causal=False, encoder_positive=False, encoder_blockwise=False,
                 with_shared_decoder=True, with_subject_decoders=True, dtype=None, **kwargs):
        feature_dims = normalize_feature_dims(feature_dims)
        if stream_names is None:
            stream_names = tuple(f"stream_{i}" for i in range(len(feature_dims)))
        stream_names = tuple(str(n) for n in stream_names)
        if len(stream_names) != len(feature_dims) or len(set(stream_names)) != len(stream_names):
            raise ValueError("`stream_names` needs one unique name per entry of `feature_dims`. "
                             f"Received: stream_names={stream_names}, feature_dims={feature_dims}")
        if num_subjects < 1 or target_dim < 1:
            raise ValueError("`num_subjects` and `target_dim` must be >= 1. Received: "
                             f"num_subjects={num_subjects}, target_dim={target_dim}")
        num_slots = sum(1 if isinstance(d, int) else d[0] for d in feature_dims)

        # === Functional Model ===
        inputs = {}
        embeddings = []
        for i, (name, dim) in enumerate(zip(stream_names, feature_dims)):
            if isinstance(dim, int):
                stream = keras.Input(shape=(num_frames, dim), name=name)  # (B, T, D)
                layered = ops.expand_dims(stream, 1)  # (B, 1, T, D)
            else:
                stream = keras.Input(shape=(num_frames, dim[0], dim[1]), name=name)
                layered = ops.transpose(stream, (0, 2, 1, 3))  # (B, L, T, D)
            inputs[name] = stream
            embeddings.append(MedARCStreamEmbedding(
                embed_dim, encoder_kernel_size, encoder_causal, encoder_positive,
                encoder_blockwise, dtype=dtype, name=f"stream_embed_{i}")(layered))
        pooled = MedARCStreamPool(global_pool, num_slots, dtype=dtype,
                                  name="stream_pool")(embeddings)  # (B, T, d)
        outputs = MedARCSubjectDecoders(num_subjects, target_dim, with_shared_decoder,
                                        with_subject_decoders, dtype=dtype,
                                        name="decoders")(pooled)  # (B, S, T, V)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.feature_dims = feature_dims
        self.num_subjects = num_subjects
        self.target_dim = target_dim
        self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.stream_names = stream_names
        self.global_pool = global_pool
        self.encoder_kernel_size = encoder_kernel_size
        self.encoder_causal = encoder_causal
        self.encoder_positive = encoder_positive
        self.encoder_blockwise = encoder_blockwise
        self.with_shared_decoder = with_shared_decoder
        self.with_subject_decoders = with_subject_decoders

    # === Inputs ===

    def as_stream_dict(self, streams) -> dict:
        """A list/tuple (in `stream_names` order) or dict of streams -> checked dict.

        Errors name the stream and what was expected: a missing or unknown stream, a wrong
        rank or width, streams of different T, a T other than `num_frames`, NaN values.
        """
        if isinstance(streams, (list, tuple)):
            if len(streams) != len(self.stream_names):
                raise ValueError(f"FlowEncoderBackbone expects {len(self.stream_names)} streams "
                                 f"{list(self.stream_names)}. Received: {len(streams)} streams")
            streams = dict(zip(self.stream_names, streams))
        if not isinstance(streams, dict):
            raise ValueError("FlowEncoderBackbone expects a dict {stream name: features} or a "
                             f"list of streams. Received: {type(streams).__name__}")
        missing = [n for n in self.stream_names if n not in streams]
        unknown = [n for n in streams if n not in self.stream_names]
        if missing or unknown:
            raise ValueError(f"FlowEncoderBackbone streams do not match: missing {missing}, "
                             f"unknown {unknown}; expected {list(self.stream_names)}")
        lengths = {}
        for name, dim in zip(self.stream_names, self.feature_dims):
            shape = tuple(getattr(streams[name], "shape", np.shape(streams[name])))
            expected = (("B", "T", dim) if isinstance(dim, int) else ("B", "T", *dim))
            if len(shape) != len(expected) or tuple(shape[2:]) != tuple(expected[2:]):
                raise ValueError(f"stream {name!r} must have shape {expected} (channels-last). "
                                 f"Received: {shape}")
            lengths[name] = shape[1]
        known = {n: t for n, t in lengths.items() if t is not None}
        if len(set(known.values())) > 1:
            raise ValueError(f"every stream needs the same number of frames T. Received: "
                             f"{known}; trim or pad the features to the fMRI length first.")
        if self.num_frames is not None and known and next(iter(known.values())) != self.num_frames:
            raise ValueError(f"FlowEncoderBackbone was built for T={self.num_frames} frames. "
                             f"Received: T={next(iter(known.values()))} ({known}); rebuild with "
                             "num_frames=None or that T and load the same weights.")
        for name in self.stream_names:
            value = streams[name]
            if not isinstance(value, keras.KerasTensor) and _has_concrete_nan(value):
                raise ValueError(f"stream {name!r} contains NaN or inf values; clean the "
                                 "features (e.g. edge-pad missing TRs) before encoding.")
        return streams

    def __call__(self, streams, *args, **kwargs):
        return super().__call__(self.as_stream_dict(streams), *args, **kwargs)

    # === Parts ===

    def stream_embeddings(self, streams) -> list:
        """Per-stream `(B, L_i, T, d)` embeddings (Linear then temporal conv)."""
        streams = self.as_stream_dict(streams)
        out = []
        for i, (name, dim) in enumerate(zip(self.stream_names, self.feature_dims)):
            x = ops.convert_to_tensor(streams[name], self.compute_dtype)
            x = x[:, None] if isinstance(dim, int) else ops.transpose(x, (0, 2, 1, 3))
            out.append(self.get_layer(f"stream_embed_{i}")(x))  # (B, L, T, d)
        return out

    def pooled_embedding(self, streams):
        """The pooled `(B, T, d)` stimulus embedding the decoders read."""
        return self.get_layer("stream_pool")(self.stream_embeddings(streams))

    def get_config(self):
        return {**super().get_config(),
                "feature_dims": [d if isinstance(d, int) else list(d) for d in self.feature_dims],
                "num_subjects": self.num_subjects, "target_dim": self.target_dim,
                "embed_dim": self.embed_dim, "num_frames": self.num_frames,
                "stream_names": list(self.stream_names), "global_pool": self.global_pool,
                "encoder_kernel_size": self.encoder_kernel_size,
                "encoder_causal": self.encoder_causal,
                "encoder_positive": self.encoder_positive,
                "encoder_blockwise": self.encoder_blockwise,
                "with_shared_decoder": self.with_shared_decoder,
                "with_subject_decoders": self.with_subject_decoders}


def _has_concrete_nan(value) -> bool:
    """True if an eager tensor / array holds NaN or inf (symbolic tensors: False)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, NotImplementedError):
        return False
    return array.dtype.kind == "f" and not np.all(np.isfinite(array))
