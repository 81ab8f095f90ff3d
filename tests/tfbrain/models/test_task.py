import json

import keras
import numpy as np

from tests.test_case import TestCase, load_fixture_npz
from tfbrain.losses import NTXentLoss
from tfbrain.models.swift import SwiFTBackbone
from tfbrain.conversion.heads import port_head
from tfbrain.conversion.porter import StateDictPorter
from tfbrain.models.task import FMRIClassifier, FMRIContrastive, FMRIRegressor

TINY = dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1), hidden_dim=12, depths=(1, 1),
            num_heads=(2, 4), first_window_size=(2, 2, 2, 2), window_size=(2, 2, 2, 2))


def identity_backbone(shape):
    """Identity 'backbone' over fixed features, to test heads on upstream feature maps."""
    features = keras.Input(shape=shape, name="fmri")
    return keras.Model(features, keras.layers.Identity()(features))


def load_head(model, head_state):
    porter = StateDictPorter(head_state, "head")
    port_head(porter, model)
    porter.finish()


class HeadsParityTest(TestCase):
    def setUp(self):
        super().setUp()
        self.fixture = load_fixture_npz("swift", "heads_and_loss.npz")
        # upstream (B, C, D, H, W, T) -> (B, D, H, W, T, C)
        self.features = self.fixture["features"].transpose(0, 2, 3, 4, 5, 1)

    def head_state(self, prefix):
        return {k[len(prefix) + 1:]: v for k, v in self.fixture.items() if k.startswith(prefix + ".")}

    def test_classifier_heads(self):
        for version in ("v1", "v2"):
            model = FMRIClassifier(identity_backbone(self.features.shape[1:]), head=version)
            load_head(model, {k: v for k, v in self.head_state(f"clf_{version}").items()
                              if not k.endswith("logit")})
            self.assert_parity(model(self.features)["logits"], self.fixture[f"clf_{version}.logit"],
                               rel_tol=1e-5, name=version)

    def test_contrastive_head(self):
        model = FMRIContrastive(identity_backbone(self.features.shape[1:]))
        state = {k: v for k, v in self.head_state("emb").items() if not k.startswith("out")}
        load_head(model, state)
        self.assert_parity(model(self.features)["embedding"], self.fixture["emb.out_g"],
                           rel_tol=1e-5, name="emb")

    def test_nt_xent_values(self):
        zis, zjs = self.fixture["ntxent.zis"], self.fixture["ntxent.zjs"]
        for batch, temperature, key in ((4, 0.1, "ntxent.loss_b4_t0.1"), (2, 0.1, "ntxent.loss_b2_t0.1"),
                                        (4, 0.5, "ntxent.loss_b4_t0.5")):
            views = np.stack([zis[:batch], zjs[:batch]], axis=1)  # (B, 2, E)
            loss = NTXentLoss(temperature)(np.zeros(batch), views)
            self.assertAlmostEqual(float(loss), float(self.fixture[key]), places=5, msg=key)


class TaskModelTest(TestCase):
    def test_outputs_and_config_round_trip(self):
        fmri = np.random.rand(2, 8, 8, 8, 4, 1).astype("float32")
        for cls, kwargs, key, width in ((FMRIClassifier, dict(num_classes=3, head="v2"), "logits", 3),
                                        (FMRIRegressor, dict(), "prediction", 1),
                                        (FMRIContrastive, dict(embedding_dim=16), "embedding", 16)):
            model = cls(SwiFTBackbone(**TINY), **kwargs)
            out = model(fmri)
            self.assertEqual(tuple(out[key].shape), (2, width))
            self.assertEqual(tuple(model.embed(fmri).shape), (2, 24))
            config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
            restored = keras.saving.deserialize_keras_object(config)
            restored.set_weights(model.get_weights())
            self.assertAllClose(restored(fmri)[key], out[key], atol=1e-6)

    def test_task_preset_round_trip_has_task_metadata(self):
        import tfbrain
        model = FMRIClassifier(SwiFTBackbone(**TINY), num_classes=1)
        folder = self.get_temp_dir() + "/clf"
        model.save_to_preset(folder)
        restored = tfbrain.load_preset(folder)
        fmri = np.random.rand(1, 8, 8, 8, 4, 1).astype("float32")
        self.assertAllClose(restored(fmri)["logits"], model(fmri)["logits"], atol=1e-6)
        metadata = json.load(open(folder + "/metadata.json"))
        self.assertEqual(metadata["task"], {"type": "classification", "num_classes": 1,
                                            "activation": "sigmoid", "output_key": "logits",
                                            "pooling": "token_mean"})

    def test_bad_head_name(self):
        with self.assertRaisesRegex(ValueError, "head"):
            FMRIClassifier(SwiFTBackbone(**TINY), head="v3")

    def test_contrastive_fit_with_nt_xent(self):
        model = FMRIContrastive(SwiFTBackbone(**TINY), embedding_dim=8)
        views = keras.Input((2, 8, 8, 8, 4, 1))
        first = model(keras.layers.Lambda(lambda v: v[:, 0])(views))["embedding"]
        second = model(keras.layers.Lambda(lambda v: v[:, 1])(views))["embedding"]
        pair = keras.layers.Lambda(lambda e: keras.ops.stack(e, axis=1))([first, second])
        trainer = keras.Model(views, pair)
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3), loss=NTXentLoss(0.1),
                        jit_compile=False)
        data = np.random.rand(4, 2, 8, 8, 8, 4, 1).astype("float32")
        data[:, 1] = data[:, 0] + 0.05 * np.random.rand(4, 8, 8, 8, 4, 1)  # two views per item
        history = trainer.fit(data, np.zeros(4), batch_size=4, epochs=5, verbose=0)
        self.assertEqual(len(trainer.trainable_variables), len(model.trainable_variables))
        self.assertLess(history.history["loss"][-1], history.history["loss"][0])
