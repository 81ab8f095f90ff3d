import os

import numpy as np

from tests.test_case import TestCase
from tfrecords_tools import BadInputError
from tfrecords_tools.events import event_vocabulary, frame_labels, window_label


class EventsTest(TestCase):
    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.get_temp_dir(), "events.tsv")
        with open(self.path, "w") as f:
            f.write("onset\tduration\ttrial_type\n4\t4\tface\n12\t2\thouse\n13.5\t0.2\tface\n")

    def test_vocabulary_has_rest_last(self):
        self.assertEqual(event_vocabulary([self.path]), ["face", "house", "rest"])

    def test_frame_labels_with_and_without_delay(self):
        vocab = ["face", "house", "rest"]
        no_delay = frame_labels(self.path, 10, 2.0, vocab, hrf_delay=0.0)
        self.assertEqual(no_delay.tolist(), [2, 2, 0, 0, 2, 2, 1, 2, 2, 2])
        delayed = frame_labels(self.path, 10, 2.0, vocab, hrf_delay=4.0)
        self.assertEqual(delayed.tolist(), [2, 2, 2, 2, 0, 0, 2, 2, 1, 2])
        self.assertEqual(window_label(np.array([0, 0, 2, 2, 1]), 3), 0)  # tie -> the stimulus

    def test_unknown_columns(self):
        with open(self.path, "w") as f:
            f.write("onset\tkind\n1\tx\n")
        with self.assertRaisesRegex(BadInputError, r"events\.tsv: events\.tsv needs columns"):
            frame_labels(self.path, 4, 2.0, ["x", "rest"])
