"""`tfbrain attribute --model RUN/best --subject SUB --out map.nii.gz`: Integrated Gradients
of a subject's windows, written as NIfTI in the run's original space."""

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a training run folder (its best/, else final/) or a preset folder")
    parser.add_argument("--dataset", help="dataset folder (default: the one it was trained on)")
    parser.add_argument("--subject", required=True, help="run key, or a subject with one run; a run scrubbed into "
                                                       "<key>_seg-<i> segments by its <key> (or subject): "
                                                       "one map over all its segments")
    parser.add_argument("--out", required=True, help="output NIfTI (.nii.gz), original space")
    parser.add_argument("--steps", type=int, default=32, help="Riemann steps of the path integral")
    parser.add_argument("--target",
                        help="what to attribute: a class name, an output unit index, or 'each' "
                             "(one map per class, stacked as the NIfTI's 4th axis); default: the "
                             "task's choice per window (the logit of a binary classifier, the "
                             "predicted class otherwise, the prediction of a regressor)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tfbrain.cli.evaluate import model_run_config, resolve_model_arg
    from tfbrain.models.loading import load_preset
    from tfbrain.training.attribution import write_attribution

    from tfbrain.presets import load_preset_metadata

    resolve_model_arg(args)
    config = model_run_config(args.model, args.dataset)
    model = load_preset(args.model)
    class_names = load_preset_metadata(args.model).get("task_labels", {}).get("class_names")
    details = write_attribution(model, config.data.dataset_dir, args.subject, args.out,
                                window=config.data.window, stride=config.data.eval_stride,
                                steps=args.steps, target=args.target, class_names=class_names,
                                progress=not args.no_progress)
    print(json.dumps({k: v for k, v in details.items() if k != "outputs"}, indent=2))
    return 0
