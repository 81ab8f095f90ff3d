"""The encoding demo on the bundled studyforrest run: held-out r map written, visual
parcels predicted."""

import os

import numpy as np

from tests.test_case import TestCase
from tfbrain.encoding_demo import category_features, run_demo
from tfbrain.sample_data import studyforrest_localizer


class EncodingDemoTest(TestCase):
    def test_category_features(self):
        features, categories = category_features(studyforrest_localizer()["events"], 156, 1.79355)
        self.assertEqual(categories, ["body", "face", "house", "object", "scene", "scramble"])
        self.assertEqual(features.shape, (156, 6))
        self.assertTrue(np.all(features.sum(1) <= 1.0 + 1e-6))
        self.assertGreater(features.sum(), 80)  # 192 images of ~0.9 s at TR 1.79 s

    def test_demo(self):
        report = run_demo(self.get_temp_dir(), num_parcels=100, epochs=60)
        self.assertTrue(os.path.exists(report["r_map"]))
        self.assertEqual(report["parcels"], 100)
        self.assertGreater(np.mean(list(report["best_parcels"].values())), 0.4)
