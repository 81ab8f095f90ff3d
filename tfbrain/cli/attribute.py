"""`tfbrain attribute --model RUN/best --subject SUB --out map.nii.gz`: Integrated Gradients
of a subject's windows, written as NIfTI in the run's original space.

Several `--subject`s, or `--split test`, make a group map: the mean of the runs' maps in
their common grid (runs in one space, e.g. fMRIPrep's MNI outputs; refused otherwise).
`--atlas` adds a parcel table (mean |attribution| per label) beside the map."""

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a training run folder (its best/, else final/) or a preset folder")
    parser.add_argument("--dataset", help="dataset folder (default: the one it was trained on)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--subject", action="append",
                       help="run key, or a subject with one run (a run scrubbed into "
                            "<key>_seg-<i> segments by its <key> or subject: one map over all its "
                            "segments); repeat it for a group map")
    which.add_argument("--split",
                       help="a group map of every run of this split (e.g. test) of the dataset")
    parser.add_argument("--out", required=True, help="output NIfTI (.nii.gz), original space")
    parser.add_argument("--steps", type=int, default=32, help="Riemann steps of the path integral")
    parser.add_argument("--target",
                        help="what to attribute: a class name, an output unit index, or 'each' "
                             "(one map per class, stacked as the NIfTI's 4th axis); default: the "
                             "task's choice per window (the logit of a binary classifier, the "
                             "predicted class otherwise, the prediction of a regressor)")
    parser.add_argument("--contrast", metavar="CLASS",
                        help="group map: the mean map of the runs of CLASS minus that of the "
                             "other runs (what tells the classes apart; a one-class mean also "
                             "holds what every brain shares)")
    parser.add_argument("--resolution", choices=("patch", "voxel"), default="patch",
                        help="patch (default): each input patch's mean IG on its brain "
                             "voxels, the finest the model tells apart; voxel: raw IG per voxel "
                             "(inside a patch it carries each voxel's noise)")
    parser.add_argument("--atlas",
                        help="integer label NIfTI in the runs' space (e.g. an MNI parcellation): "
                             "also write OUT_parcels.csv, mean |attribution| per label")
    parser.add_argument("--atlas-labels",
                        help="label names for --atlas: a TSV with 'index' and 'name' columns "
                             "(BIDS dseg.tsv) or headerless label<TAB>name")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar (it is drawn on stderr only when that is a terminal)")


def _runs_of_split(dataset_dir: str, split: str, window: int, stride: int, splits_file: str):
    import tfrecords_tools

    if split not in tfrecords_tools.split_names(dataset_dir, splits_file or None):
        raise ValueError(f"--split {split!r} is not a split of {dataset_dir}; splits: "
                         f"{sorted(tfrecords_tools.split_names(dataset_dir, splits_file or None))}")
    from tfrecords_tools.reader import original_run_key

    index = tfrecords_tools.window_index(dataset_dir, split, window=window, stride=stride,
                                         splits_file=splits_file or None)
    # a scrubbed run's segments are one run (attributed over all its segments)
    original = {r["key"]: original_run_key(r)
                for r in tfrecords_tools.load_dataset_info(dataset_dir)["runs"]}
    return list(dict.fromkeys(original[w["run"]] for w in index))  # run order, once each


def run(args: argparse.Namespace) -> int:
    from tfbrain.cli.evaluate import model_run_config, resolve_model_arg
    from tfbrain.models.loading import load_preset
    from tfbrain.presets import load_preset_metadata
    from tfbrain.training.attribution import write_attribution, write_group_attribution

    if args.atlas_labels and not args.atlas:
        raise ValueError("--atlas-labels names the labels of an --atlas; give the atlas too")
    resolve_model_arg(args)
    config = model_run_config(args.model, args.dataset)
    data = config.data
    runs = (_runs_of_split(data.dataset_dir, args.split, data.window, data.eval_stride,
                           data.splits_file) if args.split else args.subject)
    model = load_preset(args.model)
    class_names = load_preset_metadata(args.model).get("task_labels", {}).get("class_names")
    options = dict(window=data.window, stride=data.eval_stride, steps=args.steps,
                   target=args.target, class_names=class_names, progress=not args.quiet,
                   atlas=args.atlas, atlas_labels=args.atlas_labels,
                   resolution=args.resolution)
    if len(runs) == 1 and not args.split and not args.contrast:
        details = write_attribution(model, data.dataset_dir, runs[0], args.out, **options)
        details.pop("outputs")
    else:
        details = write_group_attribution(model, data.dataset_dir, runs, args.out, **options,
                                          contrast=args.contrast,
                                          label_groups=data.label_groups)
        details.pop("per_run")
    print(json.dumps(details, indent=2))
    return 0
