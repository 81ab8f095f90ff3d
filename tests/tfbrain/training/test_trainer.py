"""End-to-end training on a synthetic cohort converted with tfrecords_tools."""

import glob
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tfbrain.training.cohort import convert_cohort, planted_cohort
from tfbrain.models.loading import load_preset
from tfbrain.training.config import TrainConfig
from tfbrain.training.trainer import train

TINY_BACKBONE = {"patch_size": [4, 4, 4, 1], "hidden_dim": 12, "depths": [1, 1], "num_heads": [2, 4],
                 "first_window_size": [2, 2, 2, 4], "window_size": [2, 2, 2, 4],
                 "last_layer_full_msa": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    paths, labels = planted_cohort(str(folder / "nii"), num_subjects=48, effect=1.5)
    convert_cohort(paths, labels, str(folder / "dataset"))
    return str(folder / "dataset")


def make_config(dataset_dir, output_dir, **sections):
    raw = {"data": {"dataset_dir": dataset_dir, "window": 8, "stride": 8, "eval_stride": 8,
                    "batch_size": 4},
           "model": {"backbone": TINY_BACKBONE},
           "optim": {"learning_rate": 3e-3, "epochs": 10, "jit_compile": True},
           "run": {"output_dir": output_dir, "seed": 3},
           "tensorboard": {"enabled": False}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return TrainConfig.from_dict(raw)


def test_learns_planted_difference_subject_auroc(cohort, tmp_path):
    summary = train(make_config(cohort, str(tmp_path / "run")), verbose=0)
    val = summary["report"]["val"]["subject"]
    print(f"\nplanted cohort: val subject AUROC {val['auroc']:.3f}, accuracy {val['accuracy']:.3f} "
          f"({val['count']} subjects); test {summary['report']['test']['subject']}")
    assert val["count"] >= 6
    assert val["auroc"] >= 0.95
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    report = json.load(open(tmp_path / "run" / "report.json"))
    assert report["val"]["subject"]["auroc"] == val["auroc"]


def final_weights(output_dir):
    return load_preset(os.path.join(output_dir, "final")).get_weights()


def test_resume_after_kill_gives_the_same_weights(cohort, tmp_path):
    overrides = dict(optim={"epochs": 3, "steps_per_epoch": 4, "jit_compile": False},
                     run={"checkpoint_every_steps": 3})
    straight = train(make_config(cohort, str(tmp_path / "straight"), **overrides), verbose=0)
    assert not straight["interrupted"]
    killed = make_config(cohort, str(tmp_path / "resumed"), **overrides)
    killed.run.stop_after_steps = 7  # "killed" after step 7; last state saved at step 6
    first = train(killed, verbose=0)
    assert first["interrupted"] and first["global_step"] == 7
    state = json.load(open(tmp_path / "resumed" / "state" / "state.json"))
    assert state["global_step"] == 6
    killed.run.stop_after_steps = 0
    resumed = train(killed, verbose=0)
    assert not resumed["interrupted"] and resumed["global_step"] == 12
    for a, b in zip(final_weights(str(tmp_path / "straight")), final_weights(str(tmp_path / "resumed"))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def read_events(folder):
    """{tag: [(step, value or ndarray)]} from every event file below `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        accumulator = EventAccumulator(path, size_guidance={"tensors": 0, "images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            for event in accumulator.Tensors(tag):
                found.setdefault(tag, []).append((event.step, tf.make_ndarray(event.tensor_proto)))
    return found


def test_tensorboard_logs_what_it_promises(cohort, tmp_path):
    config = make_config(cohort, str(tmp_path / "run"), optim={"epochs": 2, "steps_per_epoch": 3},
                         tensorboard={"enabled": True})
    summary = train(config, verbose=0)
    board = summary["tensorboard"]
    train_tags = read_events(os.path.join(board, "train"))
    val_tags = read_events(os.path.join(board, "validation"))
    assert len(train_tags["epoch_loss"]) == 2
    assert "epoch_learning_rate" in train_tags
    assert "epoch_subject_auroc" in val_tags and "epoch_window_accuracy" in val_tags
    assert any(tag.startswith("gradients/") for tag in train_tags)
    assert any(tag.endswith("histogram") for tag in train_tags)  # weight histograms
    for view in ("axial", "coronal", "sagittal"):
        images = train_tags[f"slices/{view}"]
        assert images and images[0][1].shape[0] == 3  # width, height, one PNG
    # one tag per metric for both runs, so the curves overlay; validation loss included
    for tag in ("epoch_loss", "epoch_accuracy"):
        assert len(train_tags[tag]) == 2 and len(val_tags[tag]) == 2
    test_tags = read_events(os.path.join(board, "test"))
    assert "epoch_subject_auroc" in test_tags and "epoch_loss" in test_tags
    assert any(tag.startswith("attribution/") for tag in val_tags)
    projector = board  # the log root, which the projector plugin scans
    assert os.path.exists(os.path.join(projector, "projector_config.pbtxt"))
    rows = open(os.path.join(projector, "metadata.tsv")).read().splitlines()
    assert rows[0] == "subject\tlabel" and len(rows) > 2


def test_attribution_completeness_and_original_space(cohort, tmp_path):
    from tfbrain.training.attribution import integrated_gradients, write_attribution
    import tfrecords_tools

    config = make_config(cohort, str(tmp_path / "run"), optim={"epochs": 1, "steps_per_epoch": 2})
    model = load_preset(train(config, verbose=0)["final"])
    window = next(iter(tfrecords_tools.windows(cohort, "test", window=8, shuffle=False, seed=0)))[0].numpy()
    ig = integrated_gradients(model, window, target=0, steps=64)
    baseline = np.full_like(window, window.min())
    gap = float(model(window[None])["logits"][0, 0] - model(baseline[None])["logits"][0, 0])
    # completeness: attributions add up to F(x) - F(baseline)
    assert abs(ig.sum() - gap) <= 0.05 * abs(gap) + 1e-3
    subject = json.load(open(os.path.join(cohort, "dataset.json")))["runs"][0]["key"]
    details = write_attribution(model, cohort, subject, str(tmp_path / "ig.nii.gz"), window=8, steps=8)
    import nibabel as nib

    image = nib.load(details["nifti"])
    assert image.shape == (20, 20, 20)  # the original grid of the synthetic runs
    assert np.abs(np.asarray(image.dataobj)).max() > 0


def test_cli_train_evaluate_attribute(cohort, tmp_path):
    from tfbrain.cli import main

    config_path = tmp_path / "run.toml"
    config_path.write_text(f"""
[data]
dataset_dir = "{cohort}"
window = 8
stride = 8
eval_stride = 8
batch_size = 4
[model]
backbone = {{ patch_size = [4, 4, 4, 1], hidden_dim = 12, depths = [1, 1], num_heads = [2, 4], first_window_size = [2, 2, 2, 4], window_size = [2, 2, 2, 4], last_layer_full_msa = false }}
[optim]
epochs = 1
steps_per_epoch = 2
jit_compile = false
[run]
output_dir = "{tmp_path / 'run'}"
[tensorboard]
enabled = false
""")
    assert main(["train", "--config", str(config_path), "--quiet", "--set", "optim.learning_rate=0.001"]) == 0
    report_path = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tmp_path / "run" / "best"), "--split", "test",
                 "--report", str(report_path)]) == 0
    report = json.load(open(report_path))
    assert report["split"] == "test" and report["subject"]["count"] >= 6
    subject = json.load(open(os.path.join(cohort, "dataset.json")))["runs"][0]["key"]
    assert main(["attribute", "--model", str(tmp_path / "run" / "best"), "--subject", subject,
                 "--out", str(tmp_path / "ig.nii.gz"), "--steps", "4"]) == 0
    assert (tmp_path / "ig.nii.gz").exists()


WORKER = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
from tests.tfbrain.training.test_trainer import make_config
from tfbrain.training.trainer import train
config = make_config({dataset!r}, {out!r}, optim={{"epochs": 1, "steps_per_epoch": 3, "jit_compile": False}},
                     run={{"strategy": "multi_worker"}})
summary = train(config, verbose=0)
print("DONE", summary["global_step"])
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.large
def test_two_workers_train_the_same_model(cohort, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = str(tmp_path / "run")
    script = WORKER.format(repo=repo, dataset=cohort, out=out)
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                      "task": {"type": "worker", "index": index}}),
               "CUDA_VISIBLE_DEVICES": ""}
        processes.append(subprocess.Popen([sys.executable, "-c", script], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, text in zip(processes, outputs):
        assert p.returncode == 0 and "DONE 3" in text, text[-3000:]
    chief = load_preset(os.path.join(out, "final")).get_weights()
    worker = load_preset(os.path.join(out, ".worker-1", "final")).get_weights()
    for a, b in zip(chief, worker):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(chief[0], 0)


def test_balanced_class_weights_from_dataset_json(cohort, tmp_path):
    import tfrecords_tools
    from tfbrain.models.task import FMRIClassifier
    from tfbrain.training.data import WindowDatasets

    config = make_config(cohort, str(tmp_path / "run"), task={"balance_classes": True},
                         data={"stride": 4})
    datasets = WindowDatasets(config, FMRIClassifier)
    streamed = np.zeros(2, np.int64)
    for _, label, _ in tfrecords_tools.windows(cohort, "train", window=8, stride=4, shuffle=False):
        streamed[int(label)] += 1
    np.testing.assert_array_equal(datasets.targets.class_counts(datasets.train_index), streamed)
    expected = streamed.sum() / (2 * streamed)
    np.testing.assert_allclose(datasets.targets.class_weights, expected, rtol=1e-6)
    x, y, weights = next(iter(datasets.train(0)))
    targets = y["logits"].numpy()[:, 0].astype(int)
    np.testing.assert_allclose(weights["logits"].numpy(), expected[targets], rtol=1e-6)


def test_float16_windows_from_the_data_config(cohort, tmp_path):
    from tfbrain.models.task import FMRIClassifier
    from tfbrain.training.data import WindowDatasets

    config = make_config(cohort, str(tmp_path / "run"), data={"dtype": "float16"})
    datasets = WindowDatasets(config, FMRIClassifier)
    x, _ = next(iter(datasets.train(0)))
    assert x.dtype == tf.float16 and tuple(x.shape) == (config.data.batch_size,) + datasets.input_shape
    x, _, _ = next(iter(datasets.evaluation(config.data.val_split)))
    assert x.dtype == tf.float16


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(cohort, tmp_path, policy):
    config = make_config(cohort, str(tmp_path / "run"),
                         optim={"epochs": 1, "steps_per_epoch": 3, "jit_compile": False,
                                "mixed_precision": policy})
    summary = train(config, verbose=0)
    assert np.isfinite(summary["history"][-1]["loss"])
    model = load_preset(summary["final"])
    assert model.backbone.get_layer("stage_0_block_0").compute_dtype == policy.split("_")[1]
    assert all(w.dtype == np.float32 for w in model.get_weights())  # variables stay float32
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the global policy is restored


MIRRORED = r"""
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {repo!r})
from tests.tfbrain.training.test_trainer import make_config
from tfbrain.training.trainer import train
config = make_config({dataset!r}, {out!r}, optim={{"epochs": 1, "steps_per_epoch": 3, "jit_compile": False}},
                     run={{"strategy": "mirrored"}})
summary = train(config, verbose=2)
print("DONE", summary["global_step"])
"""


@pytest.mark.large
def test_mirrored_strategy_on_two_logical_devices(cohort, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    script = MIRRORED.format(repo=repo, dataset=cohort, out=str(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "DONE 3" in output, output[-3000:]
    assert "2 replica(s)" in output
