import keras
import numpy as np

from tests.test_case import TestCase, load_fixture_json, load_fixture_npz
from tfbrain.layers.pooling import pool_features
from tfbrain.models.brainmt.brainmt_conversion import (brainmt_kwargs_from_upstream,
                                                       convert_brainmt, merge_state_dicts)
from tfbrain.models.task import FMRIClassifier, FMRIRegressor

FIXTURE_ONLY = ("input", "output", "inter/", "meta_json")


def to_tfbrain_layout(upstream_input):
    """Upstream's (B, T, C, Y, X, Z) -> tfbrain's (B, X, Y, Z, T, C)."""
    return upstream_input.transpose(0, 4, 3, 5, 1, 2)


def state_dict_of(data):
    return {k: v.astype("float32") for k, v in data.items() if not k.startswith(FIXTURE_ONLY)}


def tiny_upstream_state_dict(kwargs, seed=0):
    """Random arrays under every upstream key of a small BrainMT (shapes from a converted
    tfbrain model would be circular, so they are written out from upstream's modules)."""
    rng = np.random.RandomState(seed)
    c = kwargs["embed_dim"]
    w = (c // 8, c // 4, c // 2, c)
    e, r, n = 2 * c, -(-c // 16), 16
    shapes = {"cls_token": (1, 1, c), "pos_embed": (1, 1 + kwargs["num_tokens"], c),
              "temporal_pos_embedding": (1, kwargs["num_frames"], c),
              "norm.weight": (c,), "norm.bias": (c,),
              "patch_embed.conv_down.0.weight": (w[0], 1, 3, 3, 3),
              "patch_embed.conv_down.2.weight": (w[1], w[0], 3, 3, 3),
              "downsample0.reduction.0.weight": (w[2], w[1], 3, 3, 3),
              "downsample1.reduction.0.weight": (w[3], w[2], 3, 3, 3),
              "head.weight": (1, c), "head.bias": (1,), "norm_f.weight": (c,),
              "mlp.fc1.weight": (2 * c, c), "mlp.fc1.bias": (2 * c,),
              "mlp.fc2.weight": (c, 2 * c), "mlp.fc2.bias": (c,)}
    for i, width in enumerate(w[1:3]):
        for part in ("conv1", "conv2"):
            shapes[f"conv_block{i}.{part}.weight"] = (width, width, 3, 3, 3)
            shapes[f"conv_block{i}.{part}.bias"] = (width,)
        for part in ("norm1", "norm2"):
            shapes[f"conv_block{i}.{part}.weight"] = (width,)
            shapes[f"conv_block{i}.{part}.bias"] = (width,)
    for i in range(kwargs["depth"][0]):
        p = f"layers.{i}."
        shapes.update({p + "norm.weight": (c,), p + "mixer.A_log": (e, n), p + "mixer.D": (e,),
                       p + "mixer.in_proj.weight": (2 * e, c),
                       p + "mixer.conv1d.weight": (e, 1, 4), p + "mixer.conv1d.bias": (e,),
                       p + "mixer.x_proj.weight": (r + 2 * n, e),
                       p + "mixer.dt_proj.weight": (e, r), p + "mixer.dt_proj.bias": (e,),
                       p + "mixer.out_proj.weight": (c, e)})
    for i in range(kwargs["depth"][1]):
        shapes.update({f"blocks.{i}.qkv.weight": (3 * c, c), f"blocks.{i}.qkv.bias": (3 * c,),
                       f"blocks.{i}.proj.weight": (c, c), f"blocks.{i}.proj.bias": (c,)})
    return {k: (0.1 * rng.randn(*s)).astype("float32") for k, s in shapes.items()}


# 32 x 16 x 16 (MNI X, Y, Z) -> 1 x 2 x 1 tokens (the stem's Y, X, Z order)
TINY_UPSTREAM = dict(img_size=[16, 32, 16], embed_dim=16, depth=[2, 1], num_heads=2,
                     num_frames=3, num_tokens=2)


class BrainMTParityTest(TestCase):
    """`brainmt_small` + `brainmt_small_stem`: upstream BrainMT(embed 512, depth [2, 2],
    4 frames) at the real MNI size 91 x 109 x 91, fp16-exact weights and input."""

    @classmethod
    def setUpClass(cls):
        cls.data = load_fixture_npz("mamba", "brainmt_small.npz")
        stem = load_fixture_npz("mamba", "brainmt_small_stem.npz")
        cls.kwargs = load_fixture_json("mamba", "brainmt_small.json")["constructor_kwargs"]
        cls.state_dict = merge_state_dicts(state_dict_of(cls.data), state_dict_of(stem))
        cls.fmri = to_tfbrain_layout(cls.data["input"].astype("float32"))
        cls.model = convert_brainmt(cls.state_dict, cls.kwargs)

    def test_intermediates_and_logits(self):
        self.assertIsInstance(self.model, FMRIClassifier)
        backbone = self.model.backbone
        self.assertEqual(self.fmri.shape, (1, 91, 109, 91, 4, 1))
        expected = {
            # (B*T, C, D, H, W) -> (B*T, D, H, W, C)
            "stem": self.data["inter/stem_out"].transpose(0, 2, 3, 4, 1),
            "embedding": self.data["inter/seq_in"],
            "norm_f": self.data["inter/mamba_normed_out"],
        }
        probe = keras.Model(backbone.input,
                            [backbone.get_layer(n).output for n in expected] + [backbone.output])
        actual = probe(self.fmri)
        for name, value in zip(expected, actual):
            self.assert_parity(value, expected[name], name=name)
        self.assert_parity(actual[-1], self.data["inter/attn_out"], name="attn_out")
        self.assert_parity(pool_features(actual[-1], backbone.pooling),
                           self.data["inter/cls_feature"], name="cls_feature")
        logits = self.model(self.fmri)["logits"]
        self.assertAllClose(logits, self.data["output"], atol=1e-5, rtol=0)

    def test_kwargs_mapping(self):
        kwargs = brainmt_kwargs_from_upstream(self.kwargs)
        self.assertEqual(kwargs["volume_shape"], (91, 109, 91, 4, 1))
        self.assertEqual(kwargs["depths"], (2, 2))
        self.assertEqual(kwargs["max_frames"], 4)
        self.assertEqual(brainmt_kwargs_from_upstream({})["volume_shape"], (91, 109, 91, 200, 1))


class BrainMTConversionErrorsTest(TestCase):
    def setUp(self):
        super().setUp()
        self.state_dict = tiny_upstream_state_dict(TINY_UPSTREAM)
        self.fmri = np.random.RandomState(1).randn(2, 16, 32, 16, 3, 1).astype("float32")

    def test_tiny_conversion_and_tasks(self):
        model = convert_brainmt(self.state_dict, TINY_UPSTREAM)
        self.assertIsInstance(model, FMRIClassifier)
        self.assertEqual(tuple(model(self.fmri)["logits"].shape), (2, 1))
        head = self.state_dict["head.weight"]
        expected = model.embed(self.fmri) @ head.T + self.state_dict["head.bias"]
        self.assertAllClose(model(self.fmri)["logits"], expected, atol=1e-5)
        regressor = convert_brainmt(self.state_dict, TINY_UPSTREAM, task="regression")
        self.assertIsInstance(regressor, FMRIRegressor)
        self.assertAllClose(regressor(self.fmri)["prediction"], expected, atol=1e-5)
        backbone_only = {k: v for k, v in self.state_dict.items() if not k.startswith("head.")}
        backbone = convert_brainmt(backbone_only, TINY_UPSTREAM)
        self.assertEqual(type(backbone).__name__, "BrainMTBackbone")
        ddp = {f"module.{k}": v for k, v in self.state_dict.items()}  # DistributedDataParallel
        self.assertAllClose(convert_brainmt(ddp, TINY_UPSTREAM)(self.fmri)["logits"],
                            model(self.fmri)["logits"], atol=1e-6)
        dropout = convert_brainmt(self.state_dict, {**TINY_UPSTREAM, "fc_drop_rate": 0.5})
        self.assertEqual(dropout.dropout_rate, 0.5)
        self.assertAllClose(dropout(self.fmri)["logits"], model(self.fmri)["logits"], atol=1e-6)

    def test_stage_depths_zero(self):
        # upstream builds the shared norm and mlp even without attention blocks, and with no
        # Mamba block norm_f normalises the embedding directly
        for depth in ([1, 0], [0, 1]):
            kwargs = {**TINY_UPSTREAM, "depth": depth}
            model = convert_brainmt(tiny_upstream_state_dict(kwargs), kwargs)
            self.assertEqual(tuple(model(self.fmri)["logits"].shape), (2, 1), f"depth={depth}")

    def test_missing_extra_and_misshaped_keys(self):
        missing = dict(self.state_dict)
        del missing["layers.1.mixer.dt_proj.bias"]
        with self.assertRaisesRegex(KeyError, "layers.1.mixer.dt_proj.bias"):
            convert_brainmt(missing, TINY_UPSTREAM)
        extra = {**self.state_dict, "layers.2.norm.weight": np.ones(16, "float32")}
        with self.assertRaisesRegex(ValueError, r"no place.*layers\.2\.norm\.weight"):
            convert_brainmt(extra, TINY_UPSTREAM)
        # a pos_embed for another grid (upstream hard-codes 1 + 252 rows)
        wrong = {**self.state_dict, "pos_embed": np.zeros((1, 253, 16), "float32")}
        with self.assertRaisesRegex(ValueError, r"pos_embed: .*\(253, 16\).*\(3, 16\)"):
            convert_brainmt(wrong, TINY_UPSTREAM)
        with self.assertRaisesRegex(ValueError, "stem_part"):
            merge_state_dicts({"stem_part": 1}, {"stem_part": 2})
        with self.assertRaisesRegex(ValueError, "no head keys"):
            convert_brainmt({k: v for k, v in self.state_dict.items()
                             if not k.startswith("head.")}, TINY_UPSTREAM, task="regression")

    def test_unsupported_upstream_kwargs(self):
        with self.assertRaisesRegex(ValueError, "rms_norm"):
            brainmt_kwargs_from_upstream({**TINY_UPSTREAM, "rms_norm": False})
        with self.assertRaisesRegex(ValueError, "attn_drop_rate"):
            brainmt_kwargs_from_upstream({**TINY_UPSTREAM, "attn_drop_rate": 0.1})
        with self.assertRaisesRegex(ValueError, "ssm_cfg"):
            brainmt_kwargs_from_upstream({**TINY_UPSTREAM, "ssm_cfg": {"dt_rank": 8}})
        kwargs = brainmt_kwargs_from_upstream({**TINY_UPSTREAM, "ssm_cfg": {"d_state": 8}})
        self.assertEqual(kwargs["state_dim"], 8)
