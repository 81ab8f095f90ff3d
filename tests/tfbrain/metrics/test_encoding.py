"""Voxel-wise Pearson r: upstream semantics and the streaming Keras metric."""

import numpy as np

from tests.test_case import TestCase
from tfbrain.metrics.encoding import PearsonR, encoding_pearson, pearsonr_score


class PearsonTest(TestCase):
    def test_pearsonr_score_matches_corrcoef(self):
        rng = np.random.default_rng(0)
        a, b = rng.normal(size=(50, 5)), rng.normal(size=(50, 5))
        b[:, 0] = a[:, 0] * 2 + 1
        expected = [np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(5)]
        self.assertAllClose(pearsonr_score(a, b), expected, atol=1e-6, rtol=0)
        with self.assertRaisesRegex(ValueError, r"\(T, V\)"):
            pearsonr_score(a, b[:, :3])

    def test_streaming_metric_equals_batch(self):
        rng = np.random.default_rng(1)
        targets = rng.normal(size=(6, 3, 10, 4)).astype("float32")
        predictions = (targets + rng.normal(size=targets.shape)).astype("float32")
        metric = PearsonR(3, 4)
        for start in range(0, 6, 2):
            metric.update_state(targets[start:start + 2], predictions[start:start + 2])
        rmap, mean = encoding_pearson(targets, predictions)
        self.assertAllClose(np.asarray(metric.pearson_map()), rmap, atol=1e-6, rtol=0)
        self.assertAllClose(float(metric.result()), mean, atol=1e-6, rtol=0)
        metric.reset_state()
        self.assertAllClose(float(metric.result()), 0.0, atol=0, rtol=0)
        with self.assertRaisesRegex(ValueError, r"\(N, S, T, V\)"):
            encoding_pearson(targets[0], predictions[0])
