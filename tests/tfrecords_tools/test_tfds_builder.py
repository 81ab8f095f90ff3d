import os
import tempfile

import numpy as np

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import synthetic_runs
from tfrecords_tools import PreprocessConfig, convert, runs_from_files, windows
from tfrecords_tools.tfds_builder import fmri_windows_builder


class TFDSBuilderTest(TestCase):
    def test_prepare_offline_and_read_back_the_same_windows(self):
        folder = tempfile.mkdtemp(prefix="tfbrain_tfds_")
        self.addCleanup(lambda: __import__("shutil").rmtree(folder, ignore_errors=True))
        paths = synthetic_runs(os.path.join(folder, "nii"), num_subjects=4, num_frames=12)
        out = os.path.join(folder, "dataset")
        convert(runs_from_files(paths, labels=["a", "b", "a", "b"]), out,
                config=PreprocessConfig(target_shape=(8, 8, 8), min_frames=4), workers=0,
                progress=False, split_fractions=(0.5, 0.25, 0.25))
        builder = fmri_windows_builder(out, window=4, data_dir=os.path.join(folder, "tfds"))
        builder.download_and_prepare()
        self.assertEqual(set(builder.info.splits), {"train", "val", "test"})
        self.assertEqual(builder.info.features["window"].shape, (8, 8, 8, 4, 1))
        expected = {}
        for volume, label, subject in windows(out, "train", window=4, shuffle=False, seed=0,
                                              dtype="float16"):
            expected.setdefault(subject.numpy().decode(), []).append((volume.numpy(), int(label)))
        got = {}
        for example in builder.as_dataset(split="train").as_numpy_iterator():
            got.setdefault(example["subject"].decode(), []).append((example["window"], int(example["label"])))
        self.assertEqual(sorted(got), sorted(expected))
        for subject in expected:
            self.assertEqual(len(got[subject]), len(expected[subject]))
            # TFDS may reorder examples; compare as sets of (window, label)
            want = sorted((v.tobytes(), l) for v, l in expected[subject])
            have = sorted((v.tobytes(), l) for v, l in got[subject])
            self.assertEqual(want, have)
