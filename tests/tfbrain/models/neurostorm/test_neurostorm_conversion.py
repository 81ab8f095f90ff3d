import json

import keras
import numpy as np

from tests.test_case import TestCase, fixture_path, load_fixture_json, load_fixture_npz
from tfbrain import load_preset
from tfbrain.cli import main as cli_main
from tfbrain.models.neurostorm.neurostorm_conversion import convert_neurostorm

FIXTURE = ("mamba", "neurostorm_small.npz")
FIXTURE_ONLY = ("input", "output", "inter/", "meta_json")


def to_channels_last(a):
    """(B, C, D, H, W, T) -> (B, D, H, W, T, C)."""
    return a.transpose(0, 2, 3, 4, 5, 1)


class NeuroSTORMParityTest(TestCase):
    """`neurostorm_small`: upstream NeuroSTORM + ClsHead v1, fp16-exact weights and input."""

    @classmethod
    def setUpClass(cls):
        cls.data = load_fixture_npz(*FIXTURE)
        cls.kwargs = load_fixture_json("mamba", "neurostorm_small.json")["constructor_kwargs"]
        cls.state_dict = {k: v.astype("float32") for k, v in cls.data.items()
                          if not k.startswith(FIXTURE_ONLY)}
        cls.fmri = to_channels_last(cls.data["input"].astype("float32"))
        cls.model = convert_neurostorm(cls.state_dict, cls.kwargs)

    def test_intermediates_and_logits(self):
        backbone = self.model.backbone
        expected = {
            "patch_embed": to_channels_last(self.data["inter/patch_embed_out"]),
            "stage_0_block_0": self.data["inter/stage0_block0_out_BDHWTC"],
            "stage_0_block_1": self.data["inter/stage0_block1_out_BDHWTC"],  # shifted block
        }
        for i, name in enumerate(backbone.stage_output_names()):
            expected[name] = to_channels_last(self.data[f"inter/stage{i}_out"])
        probe = keras.Model(backbone.input, [backbone.get_layer(n).output for n in expected])
        for name, actual in zip(expected, probe(self.fmri)):
            self.assert_parity(actual, expected[name], name=name)
        self.assert_parity(backbone(self.fmri), to_channels_last(self.data["output_backbone"]),
                           name="output_backbone")
        logits = self.model(self.fmri)["logits"]
        self.assertAllClose(logits, self.data["output_logits"], atol=1e-6, rtol=0)

    def test_cli_npz_to_preset(self):
        tmp = self.get_temp_dir()
        np.savez(tmp + "/neurostorm_small_state_dict.npz", **self.state_dict)
        out = tmp + "/preset"
        code = cli_main(["convert", "neurostorm", "--state-dict",
                         tmp + "/neurostorm_small_state_dict.npz", "--upstream-kwargs",
                         str(fixture_path("mamba", "neurostorm_small.json")), "--out", out])
        self.assertEqual(code, 0)
        model = load_preset(out)
        self.assertEqual(type(model).__name__, "FMRIClassifier")
        self.assertAllClose(model(self.fmri)["logits"], self.data["output_logits"], atol=1e-6,
                            rtol=0)
        metadata = json.load(open(out + "/metadata.json"))
        self.assertEqual(metadata["source"]["upstream_repo"], "CUHK-AIM-Group/NeuroSTORM")
        self.assertEqual(metadata["task"]["num_classes"], 1)
        self.assertEqual(metadata["inputs"]["fmri"]["shape"], [None, 48, 48, 48, 8, 1])

    def test_lightning_and_mae_layouts(self):
        # a Lightning MAE checkpoint: backbone under model., decoder/mask tokens skipped
        lightning = {f"model.{k}": v for k, v in self.state_dict.items()
                     if not k.startswith("head.")}
        lightning["model.mask_token"] = np.zeros(24, "float32")
        lightning["model.decoder_pred.weight"] = np.zeros((216, 24), "float32")
        backbone = convert_neurostorm(lightning, self.kwargs)
        self.assertEqual(type(backbone).__name__, "NeuroSTORMBackbone")
        self.assert_parity(backbone(self.fmri), to_channels_last(self.data["output_backbone"]))
        # a Lightning regression checkpoint: RegHead v1 has ClsHead v1's keys
        lightning = {f"model.{k}": v for k, v in self.state_dict.items()
                     if not k.startswith("head.")}
        lightning["output_head.head.head.weight"] = self.state_dict["head.head.head.weight"]
        lightning["output_head.head.head.bias"] = self.state_dict["head.head.head.bias"]
        model = convert_neurostorm(lightning, self.kwargs, task="regression")
        self.assertAllClose(model(self.fmri)["prediction"], self.data["output_logits"],
                            atol=1e-6, rtol=0)

    def test_unexpected_missing_and_misshaped_keys(self):
        with self.assertRaisesRegex(ValueError, "no place"):
            convert_neurostorm({**self.state_dict, "layers.9.extra": np.zeros(3)}, self.kwargs)
        missing = dict(self.state_dict)
        del missing["layers.1.blocks.0.mamba.A_log"]
        with self.assertRaisesRegex(KeyError, "layers.1.blocks.0.mamba.A_log"):
            convert_neurostorm(missing, self.kwargs)
        with self.assertRaisesRegex(ValueError, "do not match"):
            convert_neurostorm(self.state_dict, {**self.kwargs, "embed_dim": 12})
        with self.assertRaisesRegex(ValueError, "no head keys"):
            backbone_only = {k: v for k, v in self.state_dict.items() if not k.startswith("head.")}
            convert_neurostorm(backbone_only, self.kwargs, task="classification")
