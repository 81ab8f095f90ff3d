"""A tiny SwiFT classifier through preset -> export -> local server -> stub."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from serving.client import PredictionClient
from serving.server import ModelServer
from tests.test_case import TestCase
from tfbrain import export
from tfbrain.models.backbone import save_preset

TINY = dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1), hidden_dim=12, depths=(1, 2),
            num_heads=(2, 4), first_window_size=(2, 2, 2, 2), window_size=(2, 2, 2, 2))


@pytest.mark.large
class SwiFTServingTest(TestCase):
    def test_swift_classifier_round_trip(self):
        task = pytest.importorskip("tfbrain.models.task")
        from tfbrain.models.swift import SwiFTBackbone

        model = task.FMRIClassifier(SwiFTBackbone(**TINY), num_classes=2)
        tmp = pathlib.Path(self.get_temp_dir())
        save_preset(model, tmp / "swift-tiny", extra_metadata={"task": model.task_metadata()})
        path = export.export_preset(tmp / "swift-tiny", tmp / "base", "swift_tiny")
        self.assertEqual(export.find_must_compile_functions(path), [])
        x = np.random.default_rng(0).standard_normal((2, 8, 8, 8, 4, 1)).astype("float32")
        expected = model(x)["logits"].numpy()
        with ModelServer({"swift_tiny": tmp / "base" / "swift_tiny"}, port=0) as server:
            with PredictionClient(server.target, "swift_tiny") as client:
                outputs = client.predict(x)
                embedding = client.embed(x)
            with PredictionClient(server.target, "swift_tiny", use_fp16=True) as client:
                outputs16 = client.predict(x)
        self.assertLessEqual(float(np.max(np.abs(outputs["logits"] - expected))), 1e-5)
        self.assertAllClose(outputs["probabilities"], tf.nn.softmax(expected), atol=1e-5)
        self.assertAllClose(embedding, model.embed(x), atol=1e-5)
        rounded = x.astype("float16").astype("float32")
        self.assertAllClose(outputs16["logits"], model(rounded)["logits"], atol=1e-5)
