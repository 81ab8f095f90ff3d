import os

from tests.test_case import TestCase
from tests.tfrecords_tools.test_reader import _dataset
from tfrecords_tools import load_splits, make_splits, save_splits, windows


class SplitsTest(TestCase):
    def test_make_splits_partitions_subjects(self):
        subjects = [f"s{i}" for i in range(23)]
        splits = make_splits(subjects, seed=5)
        self.assertEqual(sorted(s for v in splits.values() for s in v), sorted(subjects))
        self.assertEqual([len(splits[k]) for k in ("train", "val", "test")], [16, 4, 3])
        self.assertEqual(splits, make_splits(list(reversed(subjects)), seed=5))  # order does not matter
        self.assertNotEqual(splits, make_splits(subjects, seed=6))

    def test_windows_never_leak_subjects(self):
        out = _dataset()
        seen = {}
        for split in ("train", "val", "test"):
            seen[split] = {s.numpy() for _, _, s in windows(out, split=split, window=6)}
            self.assertTrue(seen[split], split)
        self.assertFalse(seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
        self.assertEqual(len(set.union(*seen.values())), 6)

    def test_split_file_formats(self):
        folder = self.get_temp_dir()
        csv_path = os.path.join(folder, "split.csv")
        with open(csv_path, "w") as f:
            f.write("subject,split\nsub-00,train\nsub-01,test\n")
        self.assertEqual(load_splits(csv_path), {"train": ["sub-00"], "test": ["sub-01"]})
        got = [s.numpy() for _, _, s in windows(_dataset(), split="test", splits_file=csv_path, window=6)]
        self.assertEqual(set(got), {b"sub-01"})
        json_path = os.path.join(folder, "split.json")
        save_splits(json_path, {"train": ["a"], "val": ["b"]}, seed=1)
        self.assertEqual(load_splits(json_path), {"train": ["a"], "val": ["b"]})

    def test_subject_in_two_splits_is_refused(self):
        path = os.path.join(self.get_temp_dir(), "bad.csv")
        with open(path, "w") as f:
            f.write("sub-00,train\nsub-00,val\n")
        with self.assertRaisesRegex(ValueError, "'sub-00' is in two splits"):
            load_splits(path)
