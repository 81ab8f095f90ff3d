"""Flow encoder throughput: Stage-1 and Stage-2 training steps/s and Euler sampling time per
64-TR window, beside the upstream FLOP counts (research note bixt_cfm.md §2.7, §3.1).

Algonauts-size config by default (5 streams of widths 3072/1280/2048/5120/1408, V = 1000,
4 subjects, embed 192, kernel 45; U-Net [256, 256], 2 heads x 64, latent 128, subject
embedding 64, 25 Euler steps). Each measurement runs in this process after one warm-up call
(trace, and XLA compile with --xla); the 1-minute load average is printed because the
machine may be shared. No assertions.

    python benchmarks/flow_encoder.py [--variant flow_encoder_algonauts] [--batch 4] [--xla]

What bounds it (FLOPs are 2 per multiply-add, elementwise ops not counted):
  * Stage 1 is tiny in FLOPs (~0.45 GFLOP forward per 64-TR window, 90% of it the stream
    Linears) and memory-bound: reading the 12,928 feature values per TR dominates.
  * Stage 2 sampling costs 25 estimator calls per subject-window: 25 x ~0.72 GFLOP (the
    upstream counter, B=1, T=64, without the SDPA matmuls) = ~18 GFLOP per subject, ~72
    GFLOP per 64-TR window for 4 subjects; on CPU it is compute- and op-overhead-bound
    (hundreds of small ops per call: GroupNorm, Mish, attention on 64 or 32 frames).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfbrain.models.flow_encoder import (FLOW_CFM_VARIANTS, FlowCFMTask,  # noqa: E402
                                         FlowStage1Task)
from tfbrain.models.registry import create_backbone  # noqa: E402

UPSTREAM_GFLOP = {  # research note: estimator 0.723 GFLOP/call (in 256, out 128), B=1, T=64
    "stage1_forward_per_window": 0.45,
    "estimator_call_per_subject_window": 0.723,
}


def stage1_gflop(backbone) -> float:
    """Forward GFLOP of Stage 1 for one window (2 per multiply-add)."""
    t, d = backbone.num_frames, backbone.embed_dim
    linear = sum((dim if isinstance(dim, int) else dim[0] * dim[1]) * d
                 for dim in backbone.feature_dims)
    slots = sum(1 if isinstance(dim, int) else dim[0] for dim in backbone.feature_dims)
    conv = slots * backbone.encoder_kernel_size * d
    decoders = (backbone.num_subjects + 1) * d * backbone.target_dim
    return 2 * t * (linear + conv + decoders) / 1e9


def timed(fn, repeats):
    tf.nest.map_structure(lambda x: np.asarray(x), fn())  # warm-up: trace (+ compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda x: np.asarray(x), fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="flow_encoder_algonauts")
    parser.add_argument("--batch", type=int, default=4, help="64-TR windows per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (variant's)")
    parser.add_argument("--xla", action="store_true", help="jit_compile the steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    load_before = os.getloadavg()[0]

    backbone = create_backbone(args.variant)
    rng = np.random.default_rng(0)
    streams = {}
    for name, dim in zip(backbone.stream_names, backbone.feature_dims):
        shape = (args.batch, backbone.num_frames) + ((dim,) if isinstance(dim, int) else dim)
        streams[name] = tf.constant(rng.normal(size=shape).astype("float32"))
    targets = tf.constant(rng.normal(size=(args.batch, backbone.num_subjects,
                                           backbone.num_frames, backbone.target_dim))
                          .astype("float32"))

    stage1 = FlowStage1Task(backbone)
    stage1.compile(optimizer=keras.optimizers.AdamW(3e-4, weight_decay=0.1),
                   loss=stage1.default_loss(), jit_compile=args.xla)
    s1 = timed(lambda: stage1.train_on_batch(streams, targets, return_dict=True), args.repeats)

    cfm_kwargs = dict(FLOW_CFM_VARIANTS[args.variant])
    num_steps = args.steps or cfm_kwargs.pop("num_steps")
    cfm_kwargs.pop("num_steps", None)
    stage2 = FlowCFMTask(backbone, num_steps=num_steps, seed=0, **cfm_kwargs)
    stage2.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=args.xla)
    s2 = timed(lambda: stage2.train_on_batch(streams, targets, return_dict=True), args.repeats)

    mean = stage2.predict_mean(streams)
    seed = tf.constant([1, 2], tf.int32)
    sample_fn = tf.function(lambda m, s: stage2.flow_head.sample(m, num_steps, 1.0, seed=s),
                            jit_compile=args.xla)
    sample = timed(lambda: sample_fn(mean, seed), args.repeats)

    subjects = backbone.num_subjects
    upstream = args.variant == "flow_encoder_algonauts"  # the FLOP counts are for that config
    call_gflop = UPSTREAM_GFLOP["estimator_call_per_subject_window"]
    print(f"flow encoder {args.variant}: batch {args.batch} x {backbone.num_frames} TRs, "
          f"{subjects} subjects, {'XLA' if args.xla else 'graph'}, {args.threads} threads, "
          f"load {load_before:.1f}/{os.getloadavg()[0]:.1f}")
    print(f"  parameters: stage 1 {backbone.count_params():,}, stage 2 head "
          f"{stage2.flow_head.count_params():,}")
    print(f"  stage 1 train step  {s1:8.3f} s  = {1 / s1:7.2f} steps/s   "
          f"(forward {stage1_gflop(backbone) * args.batch:.2f} GFLOP/step)")
    print(f"  stage 2 train step  {s2:8.3f} s  = {1 / s2:7.2f} steps/s   "
          + (f"(estimator forward ~{call_gflop * args.batch * subjects:.1f} GFLOP/step, "
             "upstream count)" if upstream else ""))
    per_window = sample / args.batch
    print(f"  sampling            {per_window:8.3f} s per {backbone.num_frames}-TR window "
          f"({num_steps} Euler steps, {subjects} subjects"
          + (f"; upstream count {call_gflop * num_steps * subjects:.0f} GFLOP)" if upstream
             else ")"))


if __name__ == "__main__":
    main()
