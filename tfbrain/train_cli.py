"""`tfbrain train`, `tfbrain evaluate` and `tfbrain attribute`.

train:     tfbrain train --config run.toml [--set optim.epochs=3 ...]
evaluate:  tfbrain evaluate --model RUN/best --dataset DIR [--split test] [--report out.json]
attribute: tfbrain attribute --model RUN/best --dataset DIR --subject SUB --out map.nii.gz
"""

import argparse
import json
import sys


def _parse_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path, overrides=()):
    """A TrainConfig from a TOML file plus `section.field=value` overrides (TOML values)."""
    import pathlib
    import tomllib

    from tfbrain.training.config import TrainConfig

    try:
        raw = tomllib.loads(pathlib.Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: cannot read the TOML config ({err})") from err
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set expects section.field=value; got {item!r}")
        section, field = key.split(".", 1)
        raw.setdefault(section, {})[field] = _parse_value(value)
    return TrainConfig.from_dict(raw, source=str(path))


# ------------------------------------------------------------------ train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML config (see docs/training.md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field (repeatable), e.g. --set optim.epochs=2")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")


def run(args: argparse.Namespace) -> int:
    from tfbrain.training.metrics import format_report
    from tfbrain.training.trainer import train

    config = load_config(args.config, args.set)
    summary = train(config, verbose=0 if args.quiet else 2)
    if summary.get("interrupted"):
        print(f"interrupted at step {summary['global_step']}: {summary['reason']}; run the same "
              "command again to resume")
        return 3
    print(f"\nrun folder:      {summary['output_dir']}")
    print(f"best model:      {summary['best']}")
    print(f"tensorboard:     tensorboard --logdir {summary['tensorboard']} --host 127.0.0.1")
    for split, report in (summary.get("report") or {}).items():
        if isinstance(report, dict):
            print(f"\n[{split}]\n{format_report(report)}")
    return 0


# ------------------------------------------------------------------ evaluate


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="preset folder written by training")
    parser.add_argument("--dataset", help="dataset folder (default: the one it was trained on)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--stride", type=int, help="frames between windows (default: eval_stride)")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA-compile the forward pass (default off)")


def model_run_config(model_dir: str, dataset: str | None = None):
    """The TrainConfig a preset was trained with, pointed at `dataset` if given."""
    from tfbrain.presets import load_preset_metadata
    from tfbrain.training.config import TrainConfig

    metadata = load_preset_metadata(model_dir)
    if "train_config" not in metadata:
        raise ValueError(f"{model_dir}: metadata.json has no train_config; evaluate and attribute "
                         "need a model written by `tfbrain train`")
    raw = metadata["train_config"]
    if dataset:
        raw["data"]["dataset_dir"] = dataset
    return TrainConfig.from_dict(raw, source=f"{model_dir}/metadata.json")


def run_evaluate(args: argparse.Namespace) -> int:
    import tfrecords_tools
    from tfbrain.models.loading import load_preset
    from tfbrain.training import metrics
    from tfbrain.training.trainer import Datasets, LabelSpec, evaluate_model

    config = model_run_config(args.model, args.dataset)
    if args.stride:
        config.data.eval_stride = args.stride
    info = tfrecords_tools.load_dataset_info(config.data.dataset_dir)
    labels = LabelSpec(config, info, config.data.dataset_dir)
    model = load_preset(args.model)
    report = evaluate_model(model, Datasets(config, labels), labels, args.split, args.jit)
    if report is None:
        print(f"split {args.split!r} of {config.data.dataset_dir} has no windows to score",
              file=sys.stderr)
        return 2
    report = {"model": args.model, "dataset": config.data.dataset_dir, "split": args.split, **report}
    print(metrics.format_report(report))
    if args.report:
        metrics.write_report(args.report, report)
        print(f"report: {args.report}")
    return 0


# ------------------------------------------------------------------ attribute


def add_attribute_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="preset folder written by training")
    parser.add_argument("--dataset", help="dataset folder (default: the one it was trained on)")
    parser.add_argument("--subject", required=True, help="run key, or a subject with one run")
    parser.add_argument("--out", required=True, help="output NIfTI (.nii.gz), original space")
    parser.add_argument("--steps", type=int, default=32, help="Riemann steps of the path integral")
    parser.add_argument("--target", type=int, help="output unit (default: binary logit or argmax)")


def run_attribute(args: argparse.Namespace) -> int:
    from tfbrain.models.loading import load_preset
    from tfbrain.training.attribution import write_attribution

    config = model_run_config(args.model, args.dataset)
    model = load_preset(args.model)
    details = write_attribution(model, config.data.dataset_dir, args.subject, args.out,
                                window=config.data.window, stride=config.data.eval_stride,
                                steps=args.steps, target=args.target)
    print(json.dumps({k: v for k, v in details.items() if k != "outputs"}, indent=2))
    return 0
