import json
import struct

import numpy as np
from safetensors.numpy import save_file

from tests.test_case import TestCase, fixture_path, import_extra, load_fixture_npz
from tfbrain import load_preset
from tfbrain.checkpoints import read_safetensors, read_state_dict
from tfbrain.cli import main as cli_main
from tfbrain.models.swift.swift_conversion import convert_swift


class SwiFTConversionTest(TestCase):
    def setUp(self):
        super().setUp()
        self.config = json.loads(fixture_path("swift", "edge_config.json").read_text())
        self.state_dict = load_fixture_npz("swift", "edge_state_dict.npz")
        io = load_fixture_npz("swift", "edge_io.npz")
        self.fmri = io["input"].transpose(0, 2, 3, 4, 5, 1)
        self.expected = io["output_f64"].transpose(0, 2, 3, 4, 5, 1)

    def test_cli_npz_to_preset(self):
        out = self.get_temp_dir() + "/edge"
        code = cli_main(["convert", "swift", "--state-dict",
                         str(fixture_path("swift", "edge_state_dict.npz")), "--upstream-kwargs",
                         str(fixture_path("swift", "edge_config.json")), "--out", out])
        self.assertEqual(code, 0)
        model = load_preset(out)
        self.assert_parity(model(self.fmri), self.expected)
        metadata = json.load(open(out + "/metadata.json"))
        self.assertEqual(metadata["source"]["upstream_repo"], "Transconnectome/SwiFT")
        self.assertEqual(len(metadata["source"]["sha256"]), 64)
        self.assertIn("conversion_date", metadata)
        self.assertIn("tfbrain_version", metadata)

    def test_safetensors_lightning_layout_with_head(self):
        heads = load_fixture_npz("swift", "heads_and_loss.npz")
        lightning = {f"model.{k}": v for k, v in self.state_dict.items()}
        width = 32  # edge output channels; a fresh v1 head of matching width
        lightning["output_head.head.weight"] = np.random.rand(1, width).astype("float32")
        lightning["output_head.head.bias"] = heads["clf_v1.head.bias"]
        path = self.get_temp_dir() + "/edge.safetensors"
        save_file({k: np.ascontiguousarray(v, dtype="<f4") for k, v in lightning.items()}, path)
        state_dict, _ = read_state_dict(path)
        model = convert_swift(state_dict, self.config["constructor_kwargs"])
        self.assertEqual(model.task_type, "classification")
        pooled = self.expected.mean(axis=(1, 2, 3, 4))
        logit = pooled @ lightning["output_head.head.weight"].T + lightning["output_head.head.bias"]
        self.assertAllClose(model(self.fmri)["logits"], logit, atol=1e-5)

    def test_torch_lightning_ckpt(self):
        torch = import_extra("torch", "torch")
        path = self.get_temp_dir() + "/edge.ckpt"
        hparams = dict(self.config["constructor_kwargs"])
        torch.save({"state_dict": {f"model.{k}": torch.from_numpy(v) for k, v in self.state_dict.items()},
                    "hyper_parameters": hparams}, path)
        state_dict, found = read_state_dict(path)
        model = convert_swift(state_dict, found)
        self.assert_parity(model(self.fmri), self.expected)

    def test_unexpected_and_missing_keys(self):
        kwargs = self.config["constructor_kwargs"]
        with self.assertRaisesRegex(ValueError, "no place"):
            convert_swift({**self.state_dict, "layers.9.extra": np.zeros(3)}, kwargs)
        missing = dict(self.state_dict)
        del missing["layers.1.blocks.0.attn.qkv.weight"]
        with self.assertRaisesRegex(KeyError, "layers.1.blocks.0.attn.qkv.weight"):
            convert_swift(missing, kwargs)

    def test_wrong_kwargs_shape_mismatch_names_key(self):
        kwargs = {**self.config["constructor_kwargs"], "embed_dim": 16}
        with self.assertRaisesRegex(ValueError, "patch_embed.fc.weight"):
            convert_swift(self.state_dict, kwargs)

    def test_corrupt_files_are_named(self):
        bad = self.get_temp_dir() + "/bad.safetensors"
        with open(bad, "wb") as f:
            f.write(struct.pack("<Q", 10_000) + b"{}")
        with self.assertRaisesRegex(ValueError, "bad.safetensors"):
            read_safetensors(bad)
        with self.assertRaisesRegex(ValueError, "unsupported weights format"):
            read_state_dict(__file__)
