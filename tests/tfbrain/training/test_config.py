import numpy as np

from tests.test_case import TestCase
from tfbrain.training.config import TrainConfig
from tfbrain.training.schedule import WarmupCosineRestarts

MINIMAL = {"data": {"dataset_dir": "/data/x"}, "optim": {"jit_compile": False}}


class TrainConfigTest(TestCase):
    def test_defaults_and_monitor(self):
        config = TrainConfig.from_dict(MINIMAL)
        self.assertEqual(config.data.window, 20)
        self.assertEqual(config.monitor(), ("val_subject_auroc", "max"))
        config.task.type = "regression"
        self.assertEqual(config.monitor(), ("val_subject_mse", "min"))

    def test_unknown_fields_are_errors(self):
        with self.assertRaisesRegex(ValueError, r"unknown field\(s\) \['windw'\] in \[data\]"):
            TrainConfig.from_dict({**MINIMAL, "data": {"dataset_dir": "x", "windw": 3}})
        with self.assertRaisesRegex(ValueError, "unknown section"):
            TrainConfig.from_dict({**MINIMAL, "optimiser": {}})

    def test_jit_compile_must_be_explicit(self):
        with self.assertRaisesRegex(ValueError, "jit_compile must be set explicitly"):
            TrainConfig.from_dict({"data": {"dataset_dir": "x"}})

    def test_bad_values(self):
        with self.assertRaisesRegex(ValueError, "mixed_precision"):
            TrainConfig.from_dict({**MINIMAL, "optim": {"jit_compile": True, "mixed_precision": "fp8"}})
        with self.assertRaisesRegex(ValueError, r"\[task\] type"):
            TrainConfig.from_dict({**MINIMAL, "task": {"type": "segmentation"}})
        with self.assertRaisesRegex(ValueError, r"\[data\] dtype must be float32 or float16; got 'int8'"):
            TrainConfig.from_dict({**MINIMAL, "data": {"dataset_dir": "x", "dtype": "int8"}})

    def test_toml_file(self):
        path = self.get_temp_dir() + "/run.toml"
        with open(path, "w") as f:
            f.write('[data]\ndataset_dir = "/d"\nwindow = 8\n[optim]\njit_compile = true\n')
        config = TrainConfig.from_toml(path)
        self.assertEqual(config.data.window, 8)
        self.assertTrue(config.optim.jit_compile)


class ScheduleTest(TestCase):
    def test_warmup_cosine_and_restarts(self):
        schedule = WarmupCosineRestarts(1.0, total_steps=110, warmup_steps=10, cycle_steps=50,
                                        gamma=0.5, min_learning_rate=0.0)
        lr = lambda s: float(schedule(s))
        self.assertAlmostEqual(lr(0), 0.0)
        self.assertAlmostEqual(lr(5), 0.5, places=6)
        self.assertAlmostEqual(lr(10), 1.0, places=6)
        self.assertAlmostEqual(lr(35), 0.5, places=6)   # half way through the first cycle
        self.assertAlmostEqual(lr(60), 0.5, places=6)   # restart at gamma * peak
        self.assertAlmostEqual(lr(110), 0.0, places=6)  # the end, not another restart
        self.assertAlmostEqual(lr(500), 0.0, places=6)
        self.assertEqual(WarmupCosineRestarts.from_config(schedule.get_config()).get_config(),
                         schedule.get_config())

    def test_single_cycle_default(self):
        schedule = WarmupCosineRestarts(2.0, total_steps=100, warmup_steps=0)
        values = np.array([float(schedule(s)) for s in range(101)])
        self.assertTrue(np.all(np.diff(values) <= 1e-7))
        self.assertAlmostEqual(values[50], 1.0, places=5)
