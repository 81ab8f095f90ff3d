"""FlowEncoderBackbone (MedARC Stage 1): shapes, config, gradients, variants, bad inputs."""

import numpy as np

from tests.test_case import TestCase
from tfbrain.models.flow_encoder import FlowEncoderBackbone
from tfbrain.models.registry import create_backbone, get_family


def tiny_streams(batch=2, frames=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"stream_0": rng.normal(size=(batch, frames, 6)).astype("float32"),
            "stream_1": rng.normal(size=(batch, frames, 2, 4)).astype("float32")}


class FlowEncoderBackboneTest(TestCase):
    def setUp(self):
        super().setUp()
        self.init_kwargs = dict(feature_dims=(6, (2, 4)), num_subjects=2, target_dim=12,
                                embed_dim=8, num_frames=16, encoder_kernel_size=5)

    def test_backbone_basics(self):
        self.run_backbone_test(FlowEncoderBackbone, self.init_kwargs, tiny_streams(),
                               expected_output_shape=(2, 2, 16, 12))

    def test_linear_pool_causal_and_no_conv(self):
        for extra in (dict(global_pool="linear", encoder_causal=True, encoder_positive=True,
                           encoder_blockwise=True),
                      dict(encoder_kernel_size=1, with_shared_decoder=False)):
            backbone = FlowEncoderBackbone(**{**self.init_kwargs, **extra})
            self.assertEqual(tuple(backbone(tiny_streams()).shape), (2, 2, 16, 12))

    def test_list_dict_and_any_length(self):
        backbone = FlowEncoderBackbone(**{**self.init_kwargs, "num_frames": None})
        streams = tiny_streams(frames=10)
        by_dict = np.asarray(backbone(streams))
        by_list = np.asarray(backbone([streams["stream_0"], streams["stream_1"]]))
        self.assertEqual(by_dict.shape, (2, 2, 10, 12))
        self.assertAllClose(by_dict, by_list, atol=0, rtol=0)

    def test_causal_conv_ignores_the_future(self):
        backbone = FlowEncoderBackbone(**self.init_kwargs, encoder_causal=True)
        streams = tiny_streams()
        changed = {k: v.copy() for k, v in streams.items()}
        changed["stream_0"][:, 10:] += 1.0
        a, b = np.asarray(backbone(streams)), np.asarray(backbone(changed))
        self.assertAllClose(a[:, :, :10], b[:, :, :10], atol=1e-6, rtol=0)
        self.assertGreater(np.abs(a[:, :, 10:] - b[:, :, 10:]).max(), 1e-4)

    def test_variants(self):
        spec = get_family("flow_encoder")
        self.assertEqual(spec.input_kind, "feature_streams")
        self.assertEqual(spec.default_task, "flow_stage1")
        tiny = create_backbone("flow_encoder_tiny")
        self.assertEqual(tuple(tiny(tiny_streams()).shape), (2, 2, 16, 12))
        # MedARC default config with the assumed stream widths: 3,492,296 parameters
        # (research note §3.1, counted on the upstream model)
        self.assertEqual(create_backbone("flow_encoder_algonauts").count_params(), 3_492_296)

    def test_bad_inputs(self):
        backbone = FlowEncoderBackbone(**self.init_kwargs)
        streams = tiny_streams()
        with self.assertRaisesRegex(ValueError, r"missing \['stream_1'\]"):
            backbone({"stream_0": streams["stream_0"]})
        with self.assertRaisesRegex(ValueError, r"unknown \['audio'\]"):
            backbone({**streams, "audio": streams["stream_0"]})
        with self.assertRaisesRegex(ValueError, "same number of frames"):
            backbone({**streams, "stream_0": streams["stream_0"][:, :12]})
        with self.assertRaisesRegex(ValueError, "built for T=16"):
            backbone(tiny_streams(frames=8))
        with self.assertRaisesRegex(ValueError, r"stream 'stream_1' must have shape"):
            backbone({**streams, "stream_1": streams["stream_1"][..., :3]})
        nan = streams["stream_0"].copy()
        nan[0, 3, 1] = np.nan
        with self.assertRaisesRegex(ValueError, "stream 'stream_0' contains NaN"):
            backbone({**streams, "stream_0": nan})
        with self.assertRaisesRegex(ValueError, "expects 2 streams"):
            backbone([streams["stream_0"]])
        with self.assertRaisesRegex(ValueError, "global_pool|mode"):
            FlowEncoderBackbone(**self.init_kwargs, global_pool="attn")
        with self.assertRaisesRegex(ValueError, "stream_names"):
            FlowEncoderBackbone(**self.init_kwargs, stream_names=("a",))
        with self.assertRaisesRegex(ValueError, "kernel_size"):
            FlowEncoderBackbone(**{**self.init_kwargs, "encoder_kernel_size": 4},
                                encoder_causal=True)
