import itertools

import numpy as np

from tests.test_case import TestCase
from tfbrain.training.metrics import (auroc, logit_metrics, format_report, group_by_subject,
                                      prediction_metrics, subject_level_report)


def brute_force_auroc(scores, positives):
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


class MetricsTest(TestCase):
    def test_auroc_matches_pair_counting_with_ties(self):
        rng = np.random.default_rng(0)
        scores = rng.integers(0, 5, 40).astype(float)
        positives = rng.random(40) < 0.4
        self.assertAlmostEqual(auroc(scores, positives), brute_force_auroc(scores, positives))

    def test_subject_prediction_is_mean_logit(self):
        subjects = [b"a", b"a", b"b", b"b", b"c"]
        logits = np.array([[2.0], [-1.0], [-3.0], [1.0], [0.5]])
        labels = np.array([1, 1, 0, 0, 1])
        order, means, subject_labels = group_by_subject(subjects, logits, labels)
        self.assertEqual(order, ["a", "b", "c"])
        self.assertAllClose(means[:, 0], [0.5, -1.0, 0.5])
        report = subject_level_report(logit_metrics, subjects, logits, labels)
        self.assertEqual(report["subject"]["accuracy"], 1.0)
        self.assertEqual(report["window"]["accuracy"], 0.6)
        self.assertEqual(report["subject"]["count"], 3)
        self.assertIn("balanced_accuracy", format_report(report))

    def test_balanced_accuracy_and_multiclass(self):
        logits = np.array([[3, 0, 0], [0, 3, 0], [0, 3, 0], [0, 0, 3]], float)
        result = logit_metrics(logits, np.array([0, 1, 2, 2]))
        self.assertAlmostEqual(result["accuracy"], 0.75)
        self.assertAlmostEqual(result["balanced_accuracy"], (1 + 1 + 0.5) / 3)

    def test_regression_in_standardised_and_original_units(self):
        targets = np.array([10.0, 20.0, 30.0])
        predictions = (targets - 20.0) / 10.0 + np.array([0.1, -0.1, 0.0])
        result = prediction_metrics(predictions, targets, target_mean=20.0, target_std=10.0)
        self.assertAlmostEqual(result["mae"], 0.2 / 3)
        self.assertAlmostEqual(result["mae_original_units"], 2.0 / 3)
        self.assertGreater(result["pearson_r"], 0.99)
