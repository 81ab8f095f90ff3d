"""Parity against the upstream fixtures (shared/fixtures/bixt_cfm/): MedARC Stage 1, the
Matcha decoder (transformer and conformer blocks) and the CFM (Euler solve and loss)."""

import numpy as np

from tests.test_case import TestCase, load_fixture_json, load_fixture_npz
from tfbrain.metrics.encoding import encoding_pearson
from tfbrain.models.flow_encoder import (CONVERTERS, convert_cfm, convert_matcha_decoder,
                                         convert_medarc_stage1)
from tfbrain.models.registry import get_family

FIXTURES = "bixt_cfm"


def _load(name):
    data = load_fixture_npz(FIXTURES, f"{name}.npz")
    meta = load_fixture_json(FIXTURES, f"{name}.json")
    state_dict = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    return data, meta, state_dict


def _channels_last(array):
    return np.transpose(np.asarray(array), (0, 2, 1))  # (B, C, T) -> (B, T, C)


class MedARCStage1ParityTest(TestCase):
    def _check(self, name):
        data, meta, state_dict = _load(name)
        backbone = convert_medarc_stage1(state_dict, meta["constructor_kwargs"])
        streams = [data[f"in/feat{i}"] for i in range(len(backbone.feature_dims))]
        y = np.asarray(backbone(streams))
        self.assert_parity(y, data["out/y"], rel_tol=1e-5, name=f"{name} y")
        for i, embedding in enumerate(backbone.stream_embeddings(streams)):
            self.assert_parity(embedding, data[f"aux/stream{i}.embed"], rel_tol=1e-5,
                               name=f"{name} stream{i}.embed")
        mse = np.mean((y.astype(np.float64) - data["aux/target"]) ** 2)
        self.assertAllClose(mse, data["out/mse"], atol=0, rtol=1e-5)
        accmap, acc = encoding_pearson(data["aux/target"], y)
        self.assertAllClose(accmap, data["out/accmap"], atol=1e-5, rtol=0)
        self.assertAllClose(acc, data["out/acc"], atol=1e-6, rtol=0)
        # the metric alone, on upstream's own predictions
        accmap_ref, acc_ref = encoding_pearson(data["aux/target"], data["out/y"])
        self.assertAllClose(accmap_ref, data["out/accmap"], atol=1e-6, rtol=0)
        self.assertAllClose(acc_ref, data["out/acc"], atol=1e-7, rtol=0)
        # dict input in stream_names order gives the same numbers
        y_dict = backbone(dict(zip(backbone.stream_names, streams)))
        self.assertAllClose(y_dict, y, atol=0, rtol=0)

    def test_avg_pool(self):
        self._check("medarc_stage1_avg")

    def test_linear_pool_causal_positive_blockwise(self):
        self._check("medarc_stage1_linearpool_causal")

    def test_task_conversion_and_registry(self):
        data, meta, state_dict = _load("medarc_stage1_avg")
        task = convert_medarc_stage1(state_dict, meta["constructor_kwargs"], task="flow_stage1")
        streams = [data[f"in/feat{i}"] for i in range(3)]
        self.assert_parity(task(streams)["prediction"], data["out/y"], rel_tol=1e-5)
        self.assertIs(get_family("flow_encoder").converter, convert_medarc_stage1)
        self.assertEqual(set(CONVERTERS), {"medarc_stage1", "matcha_decoder", "cfm"})

    def test_mismatched_kwargs_fail_clearly(self):
        _, meta, state_dict = _load("medarc_stage1_avg")
        with self.assertRaisesRegex(ValueError, "attn_mask"):
            convert_medarc_stage1(state_dict, {**meta["constructor_kwargs"],
                                               "encoder_causal": True})
        with self.assertRaisesRegex(ValueError, "decoder_kernel_size"):
            convert_medarc_stage1(state_dict, {**meta["constructor_kwargs"],
                                               "decoder_kernel_size": 3})


class MatchaDecoderParityTest(TestCase):
    def _check(self, name):
        data, meta, state_dict = _load(name)
        decoder = convert_matcha_decoder(state_dict, meta["constructor_kwargs"])
        inputs = {"x": _channels_last(data["in/x"]), "mu": _channels_last(data["in/mu"]),
                  "mask": data["in/mask"][:, 0], "t": data["in/t"]}
        y, inter = decoder(inputs, return_intermediates=True)
        self.assert_parity(y, _channels_last(data["out/y"]), rel_tol=1e-4, name="y")
        self.assert_parity(inter["time_sinusoidal"], data["aux/time_sinusoidal"], rel_tol=1e-4,
                           name="time_sinusoidal")
        self.assert_parity(inter["time_mlp"], data["aux/time_mlp"], rel_tol=1e-4,
                           name="time_mlp")
        checked = 0
        for key in data:
            if not key.startswith("aux/") or key[4:].startswith("time_"):
                continue
            module = key[4:]
            expected = data[key]
            if module.count(".") != 3:  # ResnetBlock1D / samplers are (B, C, T)
                expected = _channels_last(expected)
            self.assert_parity(inter[module], expected, rel_tol=1e-4, name=module)
            checked += 1
        self.assertGreaterEqual(checked, 10)
        full = dict(inputs, mask=np.ones_like(inputs["mask"]))
        self.assert_parity(decoder(full), _channels_last(data["out/y_fullmask"]), rel_tol=1e-4,
                           name="y_fullmask")
        scalar_t = dict(inputs, t=np.float32(0.5))
        self.assert_parity(decoder(scalar_t), _channels_last(data["out/y_scalar_t"]),
                           rel_tol=1e-4, name="y_scalar_t")

    def test_transformer_blocks(self):
        self._check("matcha_decoder_transformer")

    def test_conformer_blocks(self):
        self._check("matcha_decoder_conformer")

    def test_additive_mask_quirk_matters(self):
        """Padded keys are down-weighted (+0 vs +1), not excluded: a padded frame's value
        still changes valid outputs, as upstream."""
        data, meta, state_dict = _load("matcha_decoder_transformer")
        decoder = convert_matcha_decoder(state_dict, meta["constructor_kwargs"])
        block = decoder.down_blocks[0]
        x = np.random.default_rng(0).normal(size=(1, 16, 32)).astype("float32")
        mask = np.ones((1, 16), "float32")
        mask[:, 10:] = 0
        changed = x.copy()
        changed[:, 12] = np.random.default_rng(1).normal(size=32) * 3  # LayerNorm ignores shifts
        a, b = np.asarray(block(x, mask)), np.asarray(block(changed, mask))
        self.assertGreater(np.abs(a[:, :10] - b[:, :10]).max(), 1e-3)


class CFMParityTest(TestCase):
    def setUp(self):
        super().setUp()
        self.data, meta, state_dict = _load("matcha_cfm_euler")
        self.cfm = convert_cfm(state_dict, meta["constructor_kwargs"])
        d = self.data
        self.mu, self.mask = _channels_last(d["in/mu"]), d["in/mask"][:, 0]
        self.z, self.spks = _channels_last(d["in/z"]), d["in/spks"]

    def test_euler_solve(self):
        d = self.data
        y, trajectory = self.cfm.sample(self.mu, self.mask, 5, 1.0, self.spks, noise=self.z,
                                        return_trajectory=True)
        self.assert_parity(y, _channels_last(d["out/sample_t1"]), rel_tol=1e-4, name="t=1")
        for step in range(5):
            self.assert_parity(trajectory["x"][step], _channels_last(d["aux/euler_x"][step]),
                               rel_tol=1e-4, name=f"x step {step}")
            self.assert_parity(trajectory["v"][step], _channels_last(d["aux/euler_v"][step]),
                               rel_tol=1e-4, name=f"v step {step}")
        self.assertAllClose(np.array(trajectory["t"]), d["aux/euler_t"], atol=1e-7, rtol=0)
        y = self.cfm.sample(self.mu, self.mask, 5, 0.667, self.spks, noise=self.z)
        self.assert_parity(y, _channels_last(d["out/sample_t0667"]), rel_tol=1e-4, name="t=.667")

    def test_loss_with_recorded_t_and_noise(self):
        d = self.data
        loss, details = self.cfm.loss(_channels_last(d["in/x1"]), self.mask, self.mu, self.spks,
                                      t=d["aux/loss_t"], noise=_channels_last(d["aux/loss_z"]),
                                      return_details=True)
        self.assertAllClose(loss, d["out/loss"], atol=0, rtol=1e-4)
        self.assert_parity(details["y"], _channels_last(d["aux/loss_y"]), rel_tol=1e-6)
        self.assert_parity(details["u"], _channels_last(d["aux/loss_u"]), rel_tol=1e-6)
        self.assert_parity(details["estimate"], _channels_last(d["aux/loss_est"]), rel_tol=1e-4)

    def test_cfm_rejects_foreign_keys(self):
        _, meta, state_dict = _load("matcha_cfm_euler")
        with self.assertRaisesRegex(ValueError, "estimator"):
            convert_cfm({**state_dict, "spk_embedding.weight": np.zeros((4, 8))},
                        meta["constructor_kwargs"])
