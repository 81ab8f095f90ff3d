"""Progress bars: time left on a terminal's stderr, nothing on a pipe or with --quiet."""

import io
import sys

import numpy as np

from tfbrain.training.progress import RunStepBar, _SilentBar, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_no_bar_off_a_terminal_or_when_quiet(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe, a log file, pytest's capture
    assert isinstance(progress_bar(10, "attribute", "window"), _SilentBar)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert isinstance(progress_bar(10, "attribute", "window", enabled=False), _SilentBar)
    assert terminal.getvalue() == ""


def test_bar_on_a_terminal_shows_the_count_and_time_left(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(4, "attribute", "window")
    bar.update(1)
    bar.update(1)
    line = str(bar)  # what the terminal shows now (tqdm redraws at most every 0.1 s)
    bar.close()
    assert terminal.getvalue().startswith("\r")  # drawn on stderr
    assert line.startswith("attribute") and "2/4" in line
    assert "<" in line  # tqdm's [elapsed<remaining]: the time left


def test_training_bar_counts_the_whole_run_across_fit_calls(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = RunStepBar(total_steps=6, steps_per_epoch=3, start_step=2)  # resumed at step 2
    lines = []
    for epoch, batches in ((0, [2]), (1, [0, 1, 2])):  # epoch 0's last batch, then epoch 1
        for batch in batches:
            bar.on_train_batch_end(batch, {"loss": 0.5})
            lines.append(str(bar.bar))
        bar.on_epoch_end(epoch)
    bar.close()
    assert terminal.getvalue()
    assert "3/6" in lines[0] and "epoch 1, loss 0.5" in lines[0]
    assert "6/6" in lines[-1] and "epoch 2, loss 0.5" in lines[-1]


def test_training_bar_takes_one_loss_per_replica(monkeypatch):
    # under MirroredStrategy Keras may pass the batch loss as one value per replica
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = RunStepBar(total_steps=2, steps_per_epoch=2)
    bar.on_train_batch_end(0, {"loss": np.array([0.5, 0.7], "float32")})
    assert "loss 0.6" in str(bar.bar)
    bar.on_train_batch_end(1, {"loss": "not a number"})  # never worth a crash: shown without
    line = str(bar.bar)
    assert "epoch 1" in line and "loss" not in line
    bar.close()


def test_evaluation_bar_knows_how_many_batches_come(tmp_path):
    from tests.tfbrain.training.cohort import convert_cohort, planted_cohort
    from tests.tfbrain.training.test_trainer import make_config
    from tfbrain.models.registry import get_family, get_task_class
    from tfbrain.training.data import make_datasets
    from tfbrain.training.evaluation import _DatasetsWithProgress

    paths, labels = planted_cohort(str(tmp_path / "nii"), num_subjects=6)
    convert_cohort(paths, labels, str(tmp_path / "dataset"))
    config = make_config(str(tmp_path / "dataset"), str(tmp_path / "run"),
                         data={"eval_batch_size": 3, "eval_stride": 4})
    datasets = _DatasetsWithProgress(make_datasets(config, get_task_class("classification"),
                                                   get_family("swift").input_kind))
    batches = datasets.evaluation("train")
    assert batches.batches == sum(1 for _ in batches)  # counted from dataset.json alone
