"""`tfbrain train` drives the flow-matching encoder's Stage 1 through the registry: the
"feature_streams" input kind, an encoding dataset split by run, best/ by validation
Pearson r, and the encoding evaluator's report."""

import json
import os

import numpy as np
import pytest

from tfbrain.models.loading import load_preset
from tfbrain.training.config import TrainConfig
from tfbrain.training.trainer import train
from tfrecords_tools.encoding import EncodingRun, write_encoding_dataset
from tfrecords_tools.encoding_synthetic import make_encoding_cohort


@pytest.fixture(scope="module")
def encoding_dataset(tmp_path_factory):
    cohort = make_encoding_cohort(num_subjects=2, num_runs=5, run_length=64, num_targets=6,
                                  feature_dims=(6, (2, 4)), noise_std=0.5, seed=3)
    runs = [EncodingRun(run, {"text": cohort.features[run][0], "video": cohort.features[run][1]},
                        {f"sub-{s + 1:02d}": cohort.responses[run][s] for s in range(2)})
            for run in cohort.features]
    folder = str(tmp_path_factory.mktemp("encoding") / "dataset")
    write_encoding_dataset(folder, runs, splits={"train": ["run-01", "run-02", "run-03"],
                                                 "val": ["run-04"], "test": ["run-05"]}, tr=2.0)
    return folder


def test_stage1_trains_and_is_selected_by_pearson_r(encoding_dataset, tmp_path):
    config = TrainConfig.from_dict({
        "data": {"dataset_dir": encoding_dataset, "window": 16, "stride": 8, "eval_stride": 16,
                 "batch_size": 4, "eval_batch_size": 4},
        "model": {"family": "flow_encoder", "variant": "flow_encoder_tiny"},
        "task": {"type": "flow_stage1"},
        "optim": {"learning_rate": 1e-2, "epochs": 10, "jit_compile": False},
        "run": {"output_dir": str(tmp_path / "run"), "seed": 1},
        "tensorboard": {"enabled": False}})
    summary = train(config, verbose=0)
    assert summary["monitor"] == "val_pearson_r"
    history = summary["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    best = json.load(open(os.path.join(summary["best"], "metadata.json")))
    assert best["best"]["monitor"] == "val_pearson_r"
    test = summary["report"]["test"]
    assert set(test["pearson_r_per_subject"]) == {"sub-01", "sub-02"}
    assert np.isfinite(test["pearson_r"]) and test["pearson_r"] > 0.1  # it learned something
    model = load_preset(summary["best"])
    assert model.task_type == "flow_stage1"
    assert model.backbone.stream_names == ("text", "video")  # taken from the dataset


def test_stage2_trains_on_the_frozen_stage1_anchor(encoding_dataset, tmp_path):
    from tfbrain.models.flow_encoder import FLOW_CFM_VARIANTS

    common = {"data": {"dataset_dir": encoding_dataset, "window": 16, "stride": 8,
                       "eval_stride": 16, "batch_size": 4, "eval_batch_size": 4},
              "tensorboard": {"enabled": False}}
    stage1 = train(TrainConfig.from_dict({
        **common, "model": {"family": "flow_encoder", "variant": "flow_encoder_tiny"},
        "task": {"type": "flow_stage1"},
        "optim": {"learning_rate": 1e-2, "epochs": 4, "jit_compile": False},
        "run": {"output_dir": str(tmp_path / "stage1"), "seed": 1}}), verbose=0)
    anchor = load_preset(stage1["best"]).backbone.get_weights()
    stage2 = train(TrainConfig.from_dict({
        **common, "model": {"preset": stage1["best"]},
        "task": {"type": "flow_cfm", "options": {**FLOW_CFM_VARIANTS["flow_encoder_tiny"],
                                                 "seed": 1}},
        "optim": {"learning_rate": 3e-3, "epochs": 2, "jit_compile": False},
        "run": {"output_dir": str(tmp_path / "stage2"), "seed": 1}}), verbose=0)
    model = load_preset(stage2["best"])
    assert model.task_type == "flow_cfm"
    for a, b in zip(anchor, model.backbone.get_weights()):  # Stage 1 stays frozen
        np.testing.assert_array_equal(a, b)
    test = stage2["report"]["test"]
    for key in ("pearson_r", "pearson_r_mean_anchor", "pearson_r_one_sample",
                "pearson_r_mean_of_samples"):
        assert np.isfinite(test[key]), key
