import os

import nibabel as nib
import numpy as np

from tests.test_case import TestCase
from tests.tfrecords_tools.helpers import AFFINE, synthetic_run
from tfrecords_tools import BadInputError, runs_from_bids, runs_from_table
from tfrecords_tools.sources import check_runs


class TableTest(TestCase):
    def test_csv_and_tsv(self):
        folder = self.get_temp_dir()
        for name, sep in (("t.csv", ","), ("t.tsv", "\t")):
            path = os.path.join(folder, name)
            with open(path, "w") as f:
                f.write(sep.join(["subject", "path", "sex", "run"]) + "\n")
                f.write(sep.join(["s1", "a.nii.gz", "M", "1"]) + "\n")
                f.write(sep.join(["s1", "b.nii.gz", "M", "2"]) + "\n")
            runs = runs_from_table(path, label_column="sex")
            self.assertEqual([r.key for r in runs], ["s1_run-1", "s1_run-2"])
            self.assertEqual(runs[0].path, os.path.join(folder, "a.nii.gz"))
            self.assertEqual(runs[0].label, "M")
            self.assertEqual(check_runs(runs, require_labels=True)[1], [])

    def test_missing_column(self):
        path = os.path.join(self.get_temp_dir(), "t.csv")
        with open(path, "w") as f:
            f.write("subject,path\ns1,a.nii.gz\n")
        with self.assertRaisesRegex(BadInputError, r"t\.csv: no column 'age'"):
            runs_from_table(path, label_column="age")


class BIDSTest(TestCase):
    def test_fmriprep_layout(self):
        root = self.get_temp_dir()
        with open(os.path.join(root, "participants.tsv"), "w") as f:
            f.write("participant_id\tage\nsub-01\t30\nsub-02\t41\n")
        for sub, ses in (("01", None), ("02", "1")):
            folder = os.path.join(root, f"sub-{sub}", *( [f"ses-{ses}"] if ses else []), "func")
            os.makedirs(folder)
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_task-rest"
            for space in ("MNI152NLin2009cAsym", "T1w"):
                synthetic_run(os.path.join(folder, f"{stem}_space-{space}_desc-preproc_bold.nii.gz"), num_frames=2)
            nib.save(nib.Nifti1Image(np.ones((10, 12, 8), np.uint8), AFFINE),
                     os.path.join(folder, f"{stem}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"))
            synthetic_run(os.path.join(folder, f"{stem.replace('rest', 'motor')}_space-T1w_desc-preproc_bold.nii.gz"),
                          num_frames=2)
            with open(os.path.join(folder, f"{stem}_events.tsv"), "w") as f:
                f.write("onset\tduration\ttrial_type\n0\t1\ta\n")
        runs = runs_from_bids(root, task="rest", space="MNI152NLin2009cAsym", label_column="age")
        self.assertEqual([r.subject for r in runs], ["sub-01", "sub-02"])
        self.assertEqual([r.label for r in runs], ["30", "41"])
        self.assertTrue(all(r.mask_path and r.mask_path.endswith("_desc-brain_mask.nii.gz") for r in runs))
        self.assertTrue(all(r.events_path and r.events_path.endswith("_task-rest_events.tsv") for r in runs))
        self.assertEqual(runs[1].key, "sub-02_ses-1_task-rest_space-MNI152NLin2009cAsym")
        self.assertEqual(len(runs_from_bids(root)), 6)
        t1w = runs_from_bids(root, space="T1w", task="rest")
        self.assertTrue(all(r.mask_path is None for r in t1w))
        with self.assertRaisesRegex(BadInputError, "no \\*_bold"):
            runs_from_bids(root, task="nback")
