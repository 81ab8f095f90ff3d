"""The Matcha 1D U-Net decoder and the OT-CFM layer: shapes, config, bad inputs."""

import json

import numpy as np

from tests.test_case import TestCase
from tfbrain.layers.flow_matching import FlowMatching, euler_time_grid
from tfbrain.layers.unet_1d import MatchaDecoder
from tfbrain.layers.unet_1d_blocks import ConformerBlock, MatchaTransformerBlock

TINY = dict(in_channels=12, out_channels=4, channels=(8, 16), head_dim=4, num_heads=2,
            num_mid_blocks=1, dropout_rate=0.0)


def decoder_inputs(batch=2, frames=8, spk_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(size=(batch, frames, 4)).astype("float32"),
              "mu": rng.normal(size=(batch, frames, 6)).astype("float32"),
              "mask": np.ones((batch, frames), "float32"),
              "t": rng.uniform(size=(batch,)).astype("float32")}
    if spk_dim:
        inputs["spks"] = rng.normal(size=(batch, spk_dim)).astype("float32")
    return inputs


class MatchaDecoderTest(TestCase):
    def test_shapes_config_and_blocks(self):
        for block_type in ("transformer", "conformer"):
            kwargs = {**TINY, "down_block_type": block_type, "up_block_type": block_type,
                      "activation": "gelu"}
            decoder = MatchaDecoder(**kwargs)
            y = decoder(decoder_inputs())
            self.assertEqual(tuple(y.shape), (2, 8, 4))
            self.assertEqual(tuple(decoder.compute_output_shape(
                {"x": (2, 8, 4), "mu": (2, 8, 6)})), (2, 8, 4))
            config = decoder.get_config()
            restored = MatchaDecoder.from_config(json.loads(json.dumps(config)))
            self.assertEqual(restored.get_config(), config)
        # channel widths that change between levels, three levels, scalar t, padded mask
        decoder = MatchaDecoder(**{**TINY, "channels": (8, 16, 24)})
        inputs = decoder_inputs(frames=12)
        inputs["t"] = np.float32(0.3)
        inputs["mask"][1, 9:] = 0
        y = np.asarray(decoder(inputs))
        self.assertEqual(y.shape, (2, 12, 4))
        self.assertAllClose(y[1, 9:], 0.0, atol=0, rtol=0)  # output is masked

    def test_blocks_round_trip(self):
        x = np.zeros((2, 8, 16), "float32")
        mask = np.ones((2, 8), "float32")
        for cls, kwargs in ((MatchaTransformerBlock, dict(hidden_dim=16, num_heads=2, head_dim=4,
                                                          activation="geglu")),
                            (ConformerBlock, dict(hidden_dim=16, num_heads=2, head_dim=4))):
            block = cls(**kwargs)
            self.assertEqual(tuple(block(x, mask).shape), (2, 8, 16))
            self.assertEqual(cls.from_config(block.get_config()).get_config(), block.get_config())

    def test_bad_inputs(self):
        decoder = MatchaDecoder(**TINY)
        with self.assertRaisesRegex(ValueError, "T must be divisible by 2"):
            decoder(decoder_inputs(frames=7))
        with self.assertRaisesRegex(ValueError, "in_channels=12"):
            decoder(decoder_inputs(spk_dim=3))
        with self.assertRaisesRegex(ValueError, r"lack \['t'\]"):
            decoder({k: v for k, v in decoder_inputs().items() if k != "t"})
        with self.assertRaisesRegex(ValueError, "divisible by 8"):
            MatchaDecoder(**{**TINY, "channels": (12,)})
        with self.assertRaisesRegex(ValueError, "activation"):
            MatchaDecoder(**{**TINY, "activation": "snake"})
        with self.assertRaisesRegex(ValueError, "down_block_type"):
            MatchaDecoder(**{**TINY, "down_block_type": "mamba"})


class FlowMatchingTest(TestCase):
    def test_loss_sample_and_config(self):
        cfm = FlowMatching({**TINY}, sigma_min=1e-4)
        inputs = decoder_inputs()
        target = inputs["x"]
        loss = cfm.loss(target, None, inputs["mu"], inputs["spks"], seed=1)
        self.assertEqual(tuple(np.shape(loss)), ())
        self.assertAllClose(cfm.loss(target, None, inputs["mu"], inputs["spks"], seed=1), loss,
                            atol=0, rtol=0)
        sample = cfm.sample(inputs["mu"], None, 3, 0.5, inputs["spks"], seed=2)
        self.assertEqual(tuple(sample.shape), (2, 8, 4))
        config = json.loads(json.dumps(cfm.get_config()))
        restored = FlowMatching.from_config(config)
        self.assertEqual(restored.get_config(), cfm.get_config())

    def test_time_grid(self):
        self.assertAllClose(euler_time_grid(4), [0, 0.25, 0.5, 0.75, 1.0], atol=0, rtol=0)
        with self.assertRaisesRegex(ValueError, "num_steps"):
            euler_time_grid(0)
