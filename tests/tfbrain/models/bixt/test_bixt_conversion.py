import json
import pathlib

import keras
import numpy as np

from tests.test_case import REPO_ROOT, TestCase, import_extra, load_fixture_json, load_fixture_npz
from tfbrain.checkpoints import read_state_dict
from tfbrain.models.bixt import BiXTBackbone
from tfbrain.models.bixt.bixt_conversion import bixt_kwargs_from_upstream, convert_bixt

FIXTURES = ("bixt_small", "bixt_small_convtok_ls")
# upstream models with other widths, heads, tokenizers, biases and batch sizes, made once with the
# upstream code (see each .json); small enough to live in the repository
GENERAL = REPO_ROOT / "tests" / "fixtures" / "bixt"


def load_general(name):
    arrays = dict(np.load(GENERAL / f"{name}.npz"))
    meta = json.loads((GENERAL / f"{name}.json").read_text())
    state_dict = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    return state_dict, meta["constructor_kwargs"], arrays


def load_shared(name):
    arrays = load_fixture_npz("bixt_cfm", f"{name}.npz")
    kwargs = load_fixture_json("bixt_cfm", f"{name}.json")["constructor_kwargs"]
    state_dict = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    return state_dict, kwargs, arrays


def probe(model, image):
    """Every fixture intermediate of a converted classifier, by fixture name."""
    backbone = model.backbone
    head = {"out/logits": model.output["logits"],
            "out/pre_logits": model.get_layer("head_norm").output}
    body = {"out/features": backbone.output,
            "aux/tokens_embedded": backbone.get_layer("fourier_pos_encode").output}
    for i in range(backbone.depth):
        block = backbone.get_layer(f"blocks_{i}").output
        if isinstance(block, (list, tuple)):
            body[f"aux/block{i}.latents"], body[f"aux/block{i}.patches"] = block
        else:
            body[f"aux/block{i}.latents"] = block
    return {**keras.Model(model.input, head)(image), **keras.Model(backbone.input, body)(image)}


class BiXTConversionParityTest(TestCase):
    def test_fixtures_every_intermediate(self):
        for name in FIXTURES:
            state_dict, kwargs, arrays = load_shared(name)
            model = convert_bixt(state_dict, kwargs)
            self.assertEqual(type(model).__name__, "FMRIClassifier")
            results = probe(model, arrays["in/x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
            self.assertEqual(len(results), 4 + 2 * model.backbone.depth - 1)
            for key, value in results.items():
                self.assert_parity(value, arrays[key], rel_tol=1e-5, name=f"{name} {key}")

    def test_general_upstream_configurations(self):
        for name, batch in (("bixt_general_half_stride", 3), ("bixt_general_convtok_p4", 2),
                            ("bixt_general_dyn_pos", 2), ("bixt_general_latent_norm", 2)):
            state_dict, kwargs, arrays = load_general(name)
            model = convert_bixt(state_dict, kwargs)
            logits = model(arrays["in/x"].transpose(0, 2, 3, 1))["logits"]
            self.assertEqual(logits.shape[0], batch)
            self.assert_parity(logits, arrays["out/logits"], rel_tol=1e-5, name=name)

    def test_recomputed_position_table(self):
        # the fine-tuned 384 px models carry no `pos` buffer: the table is recomputed (to 1 ulp)
        state_dict, kwargs, arrays = load_shared("bixt_small")
        del state_dict["fourier_pos_encode.pos"]
        model = convert_bixt(state_dict, kwargs)
        self.assert_parity(model(arrays["in/x"].transpose(0, 2, 3, 1))["logits"],
                           arrays["out/logits"], rel_tol=1e-5)

    def test_backbone_and_regression_tasks(self):
        state_dict, kwargs, arrays = load_shared("bixt_small")
        backbone = convert_bixt(state_dict, kwargs, task="backbone")
        self.assertIsInstance(backbone, BiXTBackbone)
        self.assert_parity(backbone(arrays["in/x"].transpose(0, 2, 3, 1)), arrays["out/features"],
                           rel_tol=1e-5)
        headless = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        self.assertIsInstance(convert_bixt(headless, kwargs), BiXTBackbone)
        regressor = convert_bixt(state_dict, kwargs, task="regression")
        self.assertEqual(regressor.task_type, "regression")
        with self.assertRaisesRegex(ValueError, "no head.weight"):
            convert_bixt(headless, kwargs, task="classification")

    def test_timm_checkpoint_file(self):
        torch = import_extra("torch", "torch")
        state_dict, kwargs, arrays = load_shared("bixt_small_convtok_ls")
        # upstream releases `model_best.pth.tar`; read_state_dict knows the .pth suffix
        path = pathlib.Path(self.get_temp_dir()) / "model_best.pth"
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}
        torch.save({"epoch": 3, "arch": "bixt_test", "state_dict": tensors}, path)
        loaded, _ = read_state_dict(path)
        model = convert_bixt(loaded, kwargs)
        self.assert_parity(model(arrays["in/x"].transpose(0, 2, 3, 1))["logits"],
                           arrays["out/logits"], rel_tol=1e-5)


class BiXTConversionErrorsTest(TestCase):
    def setUp(self):
        super().setUp()
        self.state_dict, self.kwargs, _ = load_shared("bixt_small")

    def test_missing_extra_and_misshaped_keys(self):
        with self.assertRaisesRegex(ValueError, "no place.*blocks.9.extra"):
            convert_bixt({**self.state_dict, "blocks.9.extra": np.zeros(3)}, self.kwargs)
        missing = dict(self.state_dict)
        del missing["blocks.1.cross_attention_latents_token.attn.rv_patches.weight"]
        with self.assertRaisesRegex(KeyError, "blocks.1.cross_attention_latents_token.attn.rv_pat"):
            convert_bixt(missing, self.kwargs)
        with self.assertRaisesRegex(ValueError, "latents: upstream tensor converts to shape"):
            convert_bixt(self.state_dict, {**self.kwargs, "num_latents": 8})
        # one layer too many: block 2 is configured bidirectional but is one-sided upstream
        with self.assertRaisesRegex(KeyError, "no tensor 'blocks.2.cross_attention_latents_token"):
            convert_bixt(self.state_dict, {**self.kwargs, "depth": 5})

    def test_upstream_kwargs(self):
        with self.assertWarnsRegex(UserWarning, "ignoring upstream BiXT kwargs.*embed_dim'"):
            bixt_kwargs_from_upstream({**self.kwargs, "embed_dim": 64})
        with self.assertRaisesRegex(ValueError, "posenc_type_pat='learned'"):
            bixt_kwargs_from_upstream({**self.kwargs, "posenc_type_pat": "learned"})
        with self.assertRaisesRegex(ValueError, "global_pool='token'"):
            bixt_kwargs_from_upstream({**self.kwargs, "global_pool": "token"})
        with self.assertRaisesRegex(ValueError, "unknown upstream embed_layer"):
            bixt_kwargs_from_upstream({**self.kwargs, "embed_layer": "PatchEmbed3D"})
        with self.assertRaisesRegex(ValueError, "unknown upstream BiXT model"):
            bixt_kwargs_from_upstream({"model_name": "bixt_fmri_ti"})
        kwargs = bixt_kwargs_from_upstream({"model_name": "bixt_ti_l64_p16s8"})
        self.assertEqual((kwargs["volume_shape"], kwargs["patch_size"], kwargs["patch_stride"]),
                         ((224, 224, 3), (16, 16), 8))
        kwargs = bixt_kwargs_from_upstream({"model_name": "bixt_ti_cnv_l64_p16"})
        self.assertEqual(kwargs["tokenizer"], "conv")
        kwargs = bixt_kwargs_from_upstream({"img_size": 64, "patch_size": 16,
                                            "embed_layer": "PatchEmbedQuarterStride"})
        self.assertEqual((kwargs["volume_shape"], kwargs["patch_stride"]), ((64, 64, 3), (4, 4)))
        for name in ("timm.layers.patch_embed.PatchEmbedHalfStride",
                     "<class 'timm.layers.patch_embed.PatchEmbedHalfStride'>"):
            kwargs = bixt_kwargs_from_upstream({"embed_layer": name})
            self.assertEqual(kwargs["patch_stride"], (8, 8))
        # p16s8 and Ti/16 share weight shapes: the `pos` buffer's grid tells the stride
        pos = {"fourier_pos_encode.pos": np.zeros((64, 28, 28), "float32")}
        self.assertEqual(bixt_kwargs_from_upstream({}, pos)["patch_stride"], (8, 8))
