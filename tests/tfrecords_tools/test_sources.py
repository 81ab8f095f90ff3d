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


class FMRIPrepTreeTest(TestCase):
    """Entity filters, pairing and .tsv.gz tables on a small fMRIPrep tree from the bundled run."""

    @classmethod
    def setUpClass(cls):
        import tempfile

        from tests.tfrecords_tools.helpers import fmriprep_tree

        cls.root = tempfile.mkdtemp(prefix="fmriprep_")
        fmriprep_tree(cls.root)

    @classmethod
    def tearDownClass(cls):
        import shutil

        shutil.rmtree(cls.root, ignore_errors=True)

    def keys(self, **filters):
        return [r.key for r in runs_from_bids(self.root, **filters)]

    def test_parse_bids_name(self):
        from tfrecords_tools.sources import parse_bids_name

        entities, suffix, extension = parse_bids_name(
            "sub-01_ses-1_task-rest_acq-mb4_run-2_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz")
        self.assertEqual(entities, {"sub": "01", "ses": "1", "task": "rest", "acq": "mb4", "run": "2",
                                    "space": "MNI152NLin2009cAsym", "res": "2", "desc": "preproc"})
        self.assertEqual((suffix, extension), ("bold", ".nii.gz"))

    def test_filters(self):
        mni = "MNI152NLin2009cAsym"
        self.assertEqual(len(self.keys()), 7)
        self.assertEqual(self.keys(participant_label=["01", "sub-03"], task="rest", space=mni),
                         ["sub-01_task-rest_space-" + mni, "sub-03_task-rest_space-" + mni])
        self.assertEqual(self.keys(session="2"), ["sub-02_ses-2_task-rest_run-1_space-" + mni])
        self.assertEqual(self.keys(participant_label="02", run="01"),  # run-1 and run-01 are one run
                         [f"sub-02_ses-{s}_task-rest_run-1_space-{mni}" for s in (1, 2)])
        self.assertEqual(self.keys(task="motor"), ["sub-01_task-motor_space-" + mni])
        self.assertEqual(self.keys(space="T1w"), ["sub-01_task-rest_space-T1w"])
        self.assertEqual(len(self.keys(desc="preproc", space=[mni, "T1w"])), 7)
        with self.assertRaisesRegex(BadInputError, r"no run matches participant\(s\) 04 .*participants with "
                                                   r"runs: 01, 02, 03"):
            runs_from_bids(self.root, participant_label=["01", "04"])
        with self.assertRaisesRegex(BadInputError, r"matches ses=3; participants with runs: 01, 02, 03"):
            runs_from_bids(self.root, session="3")

    def test_pairing_and_gz_tables(self):
        runs = runs_from_bids(self.root, participant_label=["01", "02"], task="rest", space="MNI152NLin2009cAsym",
                              label_column="age")  # participants.tsv.gz
        self.assertEqual([r.label for r in runs], ["30", "41", "41", "41"])
        self.assertTrue(all(r.mask_path.endswith("_desc-brain_mask.nii.gz") for r in runs))
        self.assertTrue(runs[0].confounds_path.endswith("sub-01_task-rest_desc-confounds_timeseries.tsv"))
        self.assertTrue(runs[1].confounds_path.endswith(
            "sub-02_ses-1_task-rest_run-1_desc-confounds_timeseries.tsv.gz"))
        t1w = runs_from_bids(self.root, space="T1w")[0]  # no mask of its own, the run's confounds
        self.assertIsNone(t1w.mask_path)
        self.assertEqual(t1w.confounds_path, runs[0].confounds_path)

    def test_gz_table_and_events(self):
        import gzip

        from tfrecords_tools.events import read_events

        path = os.path.join(self.get_temp_dir(), "cohort.tsv.gz")
        with gzip.open(path, "wt") as f:
            f.write("subject\tpath\tage\nsub-01\ta.nii.gz\t30\n")
        runs = runs_from_table(path, label_column="age")
        self.assertEqual((runs[0].subject, runs[0].label), ("sub-01", "30"))
        events = os.path.join(self.get_temp_dir(), "x_events.tsv.gz")
        with gzip.open(events, "wt") as f:
            f.write("onset\tduration\ttrial_type\n0\t2\tface\n")
        self.assertEqual(read_events(events), [(0.0, 2.0, "face")])
