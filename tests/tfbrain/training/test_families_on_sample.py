"""`tfbrain train` drives every family and task through the registry, on the bundled
studyforrest sample (tiny variants): SwiFT, NeuroSTORM, BrainMT and BiXT from scratch,
NeuroSTORM MAE pretraining from scratch, then a NeuroSTORM classifier fine-tuned from the
MAE run's backbone. (The flow-matching encoder takes feature streams, not windows:
tests/tfbrain/training/test_encoding_training.py.)"""

import json
import os

import numpy as np
import pytest

import tfrecords_tools
from tfbrain.models.loading import load_preset
from tfbrain.sample_data import studyforrest_localizer
from tfbrain.training.config import TrainConfig, load_config
from tfbrain.training.trainer import train


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory):
    """The sample run on a 16^3 grid, event labels (rest vs the six categories)."""
    sample = studyforrest_localizer()
    folder = str(tmp_path_factory.mktemp("sample") / "dataset")
    config = tfrecords_tools.PreprocessConfig(target_shape=(16, 16, 16), mask_method="mean",
                                              normalization="voxelwise", min_frames=8)
    tfrecords_tools.convert([tfrecords_tools.Run(path=sample["bold"], subject="forrest01",
                                                 events_path=sample["events"])],
                            folder, config=config, workers=0, use_events=True, progress=False)
    return folder


def sample_config(dataset_dir, output_dir, **sections):
    raw = {"data": {"dataset_dir": dataset_dir, "window": 4, "stride": 4, "eval_stride": 4,
                    "batch_size": 4, "eval_batch_size": 8, "time_split": [0.6, 0.2, 0.2],
                    "label_groups": {"rest": ["rest"],
                                     "stimulus": ["body", "face", "house", "object", "scene",
                                                  "scramble"]}},
           "optim": {"learning_rate": 1e-3, "epochs": 2, "steps_per_epoch": 2,
                     "jit_compile": False},
           "run": {"output_dir": output_dir, "seed": 2},
           "tensorboard": {"enabled": False}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return TrainConfig.from_dict(raw)


@pytest.mark.parametrize("family,task", [("swift", "classification"),
                                         ("neurostorm", "classification"),
                                         ("neurostorm", "contrastive"),
                                         ("brainmt", "classification"),
                                         ("bixt", "classification")])
def test_family_trains_from_scratch(sample_dataset, tmp_path, family, task):
    variant = f"{family}_tiny"
    config = sample_config(sample_dataset, str(tmp_path / "run"),
                           model={"family": family, "variant": variant}, task={"type": task})
    summary = train(config, verbose=0)
    assert not summary["interrupted"] and np.isfinite(summary["history"][-1]["loss"])
    model = load_preset(summary["best"])
    assert model.task_type == task
    metadata = json.load(open(os.path.join(summary["best"], "metadata.json")))
    assert metadata["train_config"]["model"]["family"] == family
    assert summary["report"]["test"]  # the Task's evaluation of the held-out block
    if model.attributable:  # an Integrated-Gradients NIfTI in the run's original space
        from tfbrain.training.attribution import write_attribution

        details = write_attribution(model, sample_dataset, "forrest01", str(tmp_path / "ig.nii.gz"),
                                    window=4, stride=40, steps=2)
        assert details["shape"] == [40, 40, 17] and details["mass_in_brain"] == pytest.approx(1.0)


def test_mae_pretraining_then_fine_tuning_from_its_backbone(sample_dataset, tmp_path):
    mae = sample_config(sample_dataset, str(tmp_path / "mae"),
                        model={"family": "neurostorm", "variant": "neurostorm_tiny"},
                        task={"type": "mae", "options": {"mask_ratio": 0.5, "seed": 1}},
                        tensorboard={"enabled": True, "embeddings": False,
                                     "gradient_histograms": False, "weight_histograms": False})
    summary = train(mae, verbose=0)
    best = json.load(open(os.path.join(summary["best"], "metadata.json")))
    assert best["best"]["monitor"] == "val_loss"  # chosen by validation reconstruction loss
    assert np.isfinite(best["best"]["value"]) and summary["report"]["val"]["loss"] > 0
    from tests.tfbrain.training.test_trainer import read_events

    images = read_events(os.path.join(summary["tensorboard"], "validation"))
    panels = images["mae_input_mask_reconstruction"]
    assert len(panels) == 2  # one per epoch

    # fine-tune: learning rate 0, so the classifier's backbone must be the MAE encoder as is
    tune = sample_config(sample_dataset, str(tmp_path / "tune"),
                         model={"preset": summary["best"]}, task={"type": "classification"},
                         optim={"learning_rate": 0.0, "min_learning_rate": 0.0, "epochs": 1,
                                "steps_per_epoch": 1, "jit_compile": False})
    tuned = train(tune, verbose=0)
    encoder = load_preset(summary["best"]).backbone
    classifier = load_preset(tuned["final"])
    assert classifier.task_type == "classification"
    for a, b in zip(encoder.get_weights(), classifier.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cli_with_family_overrides_and_bad_names(sample_dataset, tmp_path):
    from tfbrain.cli import main

    path = tmp_path / "run.toml"
    path.write_text(f"""
[data]
dataset_dir = "{sample_dataset}"
window = 4
stride = 4
time_split = [0.6, 0.2, 0.2]
label_groups = {{rest = ["rest"], stimulus = ["body", "face", "house", "object", "scene", "scramble"]}}
[optim]
epochs = 1
steps_per_epoch = 1
jit_compile = false
[run]
output_dir = "{tmp_path / 'cli_run'}"
[tensorboard]
enabled = false
""")
    assert main(["train", "--config", str(path), "--quiet",
                 "--set", "model.family=neurostorm", "--set", "model.variant=neurostorm_tiny"]) == 0
    config = load_config(path, ["model.family=neurostorm", "model.backbone.hidden_dim=24"])
    assert config.model.backbone == {"hidden_dim": 24}
    with pytest.raises(ValueError, match="known families"):
        load_config(path, ["model.family=nope"])
    with pytest.raises(ValueError, match="known:"):
        load_config(path, ["task.type=segmentation"])
    assert main(["train", "--config", str(path), "--set", "model.variant=swift_huge"]) == 2


def test_mistyped_split_is_an_error(sample_dataset, tmp_path):
    config = sample_config(sample_dataset, str(tmp_path / "run"))
    config.data.time_split = []
    config.data.val_split = "validation"
    with pytest.raises((ValueError, FileNotFoundError), match="validation|splits"):
        train(config, verbose=0)
