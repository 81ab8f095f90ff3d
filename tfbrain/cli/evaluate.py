"""`tfbrain evaluate --model RUN/best [--dataset DIR] [--split test] [--report out.json]`:
the Task's own evaluation (subject-level scores for tasks that score subjects, the loss
for self-supervised tasks) on a split of the dataset it was trained on."""

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a training run folder (its best/, else final/) or a preset folder")
    parser.add_argument("--dataset", help="dataset folder (default: the one it was trained on)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--stride", type=int, help="frames between windows (default: eval_stride)")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=False,
                        help="XLA-compile the forward pass (default off)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (it is drawn on stderr only when that is a terminal)")


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


def resolve_model_arg(args) -> None:
    """`--model RUN` -> RUN/best (or RUN/final, saying why)."""
    from tfbrain.presets import resolve_run_folder

    folder, note = resolve_run_folder(args.model)
    if note:
        print(f"note: {note}", file=sys.stderr)
    args.model = str(folder)


def run(args: argparse.Namespace) -> int:
    from tfbrain.models.loading import load_preset
    from tfbrain.models.registry import family_of_backbone
    from tfbrain.training import metrics
    from tfbrain.training.data import make_datasets
    from tfbrain.training.evaluation import evaluate_model

    resolve_model_arg(args)
    config = model_run_config(args.model, args.dataset)
    if args.stride:
        config.data.eval_stride = args.stride
    model = load_preset(args.model)
    datasets = make_datasets(config, type(model), family_of_backbone(model.backbone).input_kind)
    try:
        report = evaluate_model(model, datasets, args.split, args.jit,
                                progress=not args.quiet)
    except Exception as error:  # a corrupt or misplaced shard: one line naming it
        from tfbrain.training.trainer import _explain_read_error

        explained = _explain_read_error(config.data.dataset_dir, error)
        if explained is None:
            raise
        raise explained from error
    if report is None:
        print(f"tfbrain evaluate: split {args.split!r} of {config.data.dataset_dir} has no "
              "windows to score", file=sys.stderr)
        return 2
    report = {"model": args.model, "dataset": config.data.dataset_dir, "split": args.split, **report}
    print(metrics.format_report(report))
    if args.report:
        metrics.write_report(args.report, report)
        print(f"report: {args.report}")
        rows = report.get("per_subject")
        if rows:
            import csv

            path = args.report.removesuffix(".json") + "_subjects.csv"
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["subject", "label", "predicted", "mean_logits"])
                for row in rows:
                    writer.writerow([row["subject"], row["label"], row["predicted"],
                                     " ".join(f"{v:.6g}" for v in row["mean_logits"])])
            print(f"per-subject table: {path}")
    return 0
