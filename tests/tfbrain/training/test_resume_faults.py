"""Resume and rerun faults (issue 14): resume is bitwise exact with dropout, also after a
real kill -9; a rerun with another config is refused; history has no duplicate epochs;
leftovers of kills are cleaned; config values are type-checked; a corrupt shard stops
training with a message naming it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_case import REPO_ROOT
from tests.tfbrain.training.cohort import convert_cohort, planted_cohort
from tfbrain.models.loading import load_preset
from tfbrain.training import checkpointing
from tfbrain.training.config import TrainConfig, load_config
from tfbrain.training.trainer import prepare_run_folder, train

TINY_BACKBONE = {"patch_size": [4, 4, 4, 1], "hidden_dim": 8, "depths": [1, 1], "num_heads": [2, 2],
                 "first_window_size": [2, 2, 2, 4], "window_size": [2, 2, 2, 4],
                 "last_layer_full_msa": False, "dropout_rate": 0.3, "drop_path_rate": 0.2}
MINIMAL = {"data": {"dataset_dir": "/data/x"}, "optim": {"jit_compile": False}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    paths, labels = planted_cohort(str(folder / "nii"), num_subjects=12, shape=(12, 12, 12), num_frames=8)
    convert_cohort(paths, labels, str(folder / "dataset"), target_shape=(8, 8, 8), min_frames=8)
    return str(folder / "dataset")


def raw_config(dataset_dir, output_dir, **sections):
    raw = {"data": {"dataset_dir": dataset_dir, "window": 4, "stride": 4, "eval_stride": 4,
                    "batch_size": 2},
           "model": {"backbone": TINY_BACKBONE, "dropout_rate": 0.5},
           "optim": {"learning_rate": 3e-3, "epochs": 3, "steps_per_epoch": 4, "jit_compile": False},
           "run": {"output_dir": output_dir, "seed": 3, "checkpoint_every_steps": 1},
           "tensorboard": {"enabled": False}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def make_config(dataset_dir, output_dir, **sections):
    return TrainConfig.from_dict(raw_config(dataset_dir, output_dir, **sections))


def final_weights(output_dir):
    return load_preset(os.path.join(output_dir, "final")).get_weights()


def assert_bitwise_equal(a_dir, b_dir):
    a, b = final_weights(a_dir), final_weights(b_dir)
    assert len(a) == len(b)
    worst = max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b))
    assert worst == 0.0, f"max |dw| = {worst}"


def test_resume_with_dropout_is_bitwise_exact_after_injected_stop(cohort, tmp_path):
    short = {"optim": {"epochs": 2, "steps_per_epoch": 3}, "data": {"val_split": "", "test_split": ""}}
    straight = train(make_config(cohort, str(tmp_path / "straight"), **short), verbose=0)
    assert not straight["interrupted"]
    killed = make_config(cohort, str(tmp_path / "resumed"), run={"stop_after_steps": 4}, **short)
    assert train(killed, verbose=0)["interrupted"]
    assert os.path.exists(tmp_path / "resumed" / "state" / "rng.npz")
    killed.run.stop_after_steps = 0
    assert not train(killed, verbose=0)["interrupted"]
    assert_bitwise_equal(tmp_path / "straight", tmp_path / "resumed")


@pytest.mark.large  # a training subprocess (TensorFlow import) and two runs: ~90 s on 2 shared cores
def test_resume_with_dropout_is_bitwise_exact_after_kill_9(cohort, tmp_path):
    straight = str(tmp_path / "straight")
    train(make_config(cohort, straight, optim={"epochs": 4}), verbose=0)
    out = tmp_path / "killed"
    config_path = tmp_path / "run.toml"
    raw = raw_config(cohort, str(out), optim={"epochs": 4})
    config_path.write_text(_toml(raw))
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tfbrain.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", "--config", str(config_path), "--quiet"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_json = out / "state" / "state.json"
    deadline = time.time() + 240
    step = 0
    try:
        while time.time() < deadline and child.poll() is None:
            try:
                step = json.loads(state_json.read_text())["global_step"]
            except (OSError, ValueError, KeyError):
                step = 0
            if step >= 6:  # mid-run, in the second epoch
                break
            time.sleep(0.05)
        assert child.poll() is None, f"training ended before the kill: {child.stderr.read()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert not (out / "final").exists()
    summary = train(load_config(config_path), verbose=0)
    assert not summary["interrupted"]
    assert_bitwise_equal(straight, out)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert not list(out.glob(".*.tmp-*"))


def _toml(raw: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    return "\n".join(f"[{section}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in fields.items())
                     for section, fields in raw.items()) + "\n"


def test_kill_at_epoch_boundary_keeps_history_unique(cohort, tmp_path, monkeypatch):
    config = make_config(cohort, str(tmp_path / "run"), run={"checkpoint_every_steps": 3},
                         optim={"epochs": 2}, data={"val_split": "", "test_split": ""})
    original = checkpointing.TrainingState.save

    def save(self, model, extra):  # killed after history.json, before the end-of-epoch state
        if extra.get("epoch") == 1:
            raise checkpointing.SimulatedInterruption("killed at the epoch boundary")
        return original(self, model, extra)

    monkeypatch.setattr(checkpointing.TrainingState, "save", save)
    assert train(config, verbose=0)["interrupted"]
    assert [h["epoch"] for h in json.loads((tmp_path / "run" / "history.json").read_text())] == [1]
    monkeypatch.setattr(checkpointing.TrainingState, "save", original)
    summary = train(config, verbose=0)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]


def test_rerun_rules_of_a_run_folder(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"optim": {"epochs": 1}, "run": {"stop_after_steps": 3}}))
    prepare_run_folder(tmp_path, {"optim": {"epochs": 1}, "run": {"stop_after_steps": 0}})  # same run
    with pytest.raises(ValueError, match=r"another config \(optim.epochs: 1 -> 2\); pass --resume"):
        prepare_run_folder(tmp_path, {"optim": {"epochs": 2}, "run": {}})
    prepare_run_folder(tmp_path, {"optim": {"epochs": 2}, "run": {}}, resume=True)
    assert (tmp_path / "state").exists()
    with pytest.raises(ValueError, match="exclude each other"):
        prepare_run_folder(tmp_path, {}, resume=True, overwrite=True)
    prepare_run_folder(tmp_path, {"optim": {"epochs": 2}}, overwrite=True)
    assert not (tmp_path / "state").exists() and not (tmp_path / "config.json").exists()


@pytest.mark.large  # three short trainings: ~25 s on 2 shared cores
def test_rerun_with_another_config_is_refused(cohort, tmp_path):
    out = str(tmp_path / "run")
    train(make_config(cohort, out, optim={"epochs": 1}), verbose=0)
    written = (tmp_path / "run" / "config.json").read_text()
    changed = make_config(cohort, out, optim={"epochs": 2, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"another config \(optim.epochs: 1 -> 2; optim.learning_rate"):
        train(changed, verbose=0)
    assert (tmp_path / "run" / "config.json").read_text() == written  # a refused run writes nothing
    summary = train(changed, verbose=0, resume=True)
    assert summary["global_step"] == 8 and [h["epoch"] for h in summary["history"]] == [1, 2]
    again = train(make_config(cohort, out, optim={"epochs": 1}), verbose=0, overwrite=True)
    assert [h["epoch"] for h in again["history"]] == [1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["epochs"] == 1


def test_leftover_temp_folders_are_removed(tmp_path):
    for name in (".state.tmp-abc", ".final.tmp-x1", ".best.tmp-y"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.weights.h5").write_bytes(b"partial")
    (tmp_path / ".history.json.tmp-z").write_text("[")
    (tmp_path / "keep").mkdir()
    prepare_run_folder(tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_corrupt_shard_stops_training_naming_it(cohort, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(cohort, dataset)
    info = json.loads((dataset / "dataset.json").read_text())
    shard = dataset / info["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[60:90] = bytes(30)
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(shard.name).replace(".", r"\.") + ": sha256 differs"):
        train(make_config(str(dataset), str(tmp_path / "run"), optim={"epochs": 1}), verbose=0)


class TestConfigTypes:
    @pytest.mark.parametrize("section, field, value, pattern", [
        ("model", "freeze_backbone", "false", r"\[model\] freeze_backbone must be a boolean"),
        ("optim", "jit_compile", "false", r"\[optim\] jit_compile must be a boolean"),
        ("optim", "learning_rate", float("nan"), r"learning_rate must be a finite number >= 0"),
        ("optim", "learning_rate", -1e-3, r"learning_rate must be a finite number >= 0"),
        ("optim", "learning_rate", "1e-3", r"learning_rate must be a number"),
        ("optim", "epochs", 2.5, r"epochs must be an integer"),
        ("optim", "epochs", True, r"epochs must be an integer"),
        ("optim", "weight_decay", float("inf"), r"weight_decay must be a finite number"),
        ("model", "dropout_rate", 1.0, r"dropout_rate must be in \[0, 1\)"),
        ("data", "augment_probability", 2.0, r"augment_probability must be in"),
    ])
    def test_bad_values(self, section, field, value, pattern):
        raw = json.loads(json.dumps(MINIMAL))
        raw.setdefault(section, {})[field] = value
        with pytest.raises(ValueError, match=pattern):
            TrainConfig.from_dict(raw)

    def test_ints_are_numbers_and_set_overrides_are_typed(self, tmp_path):
        config = TrainConfig.from_dict({**MINIMAL, "optim": {"jit_compile": False, "learning_rate": 1}})
        assert config.optim.learning_rate == 1
        path = tmp_path / "run.toml"
        path.write_text('[data]\ndataset_dir = "d"\n[optim]\njit_compile = false\n')
        with pytest.raises(ValueError, match="freeze_backbone must be a boolean"):
            load_config(path, ['model.freeze_backbone="false"'])
        assert load_config(path, ["model.freeze_backbone=false"]).model.freeze_backbone is False

    def test_unknown_backbone_keys(self):
        from tfbrain.models.registry import get_family
        from tfbrain.training.model_factory import check_backbone_keys

        backbone_class = get_family("swift").backbone_class
        check_backbone_keys(backbone_class, {"hidden_dim": 12})
        with pytest.raises(ValueError, match=r"unknown key\(s\) \['hiden_dim'\]"):
            check_backbone_keys(backbone_class, {"hiden_dim": 12})

    def test_backbone_overrides_with_a_preset_are_refused(self):
        with pytest.raises(ValueError, match="apply only when building from family/variant"):
            TrainConfig.from_dict({**MINIMAL, "model": {"preset": "p", "backbone": {"hidden_dim": 8}}})


def test_cli_bad_config_value_is_one_line(tmp_path, capsys):
    from tfbrain.cli import main

    path = tmp_path / "run.toml"
    path.write_text('[data]\ndataset_dir = "d"\n[model]\nfreeze_backbone = "false"\n[optim]\njit_compile = false\n')
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[model] freeze_backbone must be a boolean" in err[0] and str(path) in err[0]


def test_relative_dataset_dir_becomes_absolute(tmp_path, monkeypatch):
    from tfbrain.training.trainer import _absolute_paths

    monkeypatch.chdir(tmp_path)
    config = TrainConfig.from_dict({"data": {"dataset_dir": "data/ds", "splits_file": "s.json"},
                                    "optim": {"jit_compile": False}})
    _absolute_paths(config)
    assert config.data.dataset_dir == str(tmp_path / "data" / "ds")
    assert config.data.splits_file == str(tmp_path / "s.json")
    remote = TrainConfig.from_dict({"data": {"dataset_dir": "gs://b/ds"}, "optim": {"jit_compile": False}})
    _absolute_paths(remote)
    assert remote.data.dataset_dir == "gs://b/ds"
