"""`tfbrain prepare` / `python -m tfrecords_tools`: convert 4D NIfTI runs into a dataset folder.

Examples:
    tfbrain prepare --bids /data/ds000030/derivatives/fmriprep --task rest \
        --space MNI152NLin2009cAsym --label-column diagnosis -o /data/ds30_tfr
    tfbrain prepare --bids /data/ds/derivatives/fmriprep --participant-label 01 02 --task rest \
        --space MNI152NLin2009cAsym --confounds motion24+wm_csf+cosine --fd-threshold 0.5 \
        --orientation ras -o /data/ds_clean_tfr
    tfbrain prepare --table subjects.csv --label-column sex -o /data/cohort_tfr --workers 4
    tfbrain prepare run1.nii.gz run2.nii.gz -o /tmp/tfr --target-shape 96 96 96
"""

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("inputs (one of)")
    source.add_argument("files", nargs="*", help="4D NIfTI files (subject id = file name)")
    source.add_argument("--table", help="CSV/TSV[.gz] with columns path, subject[, run, mask, events, confounds, <label>]")
    source.add_argument("--bids", help="BIDS raw or fMRIPrep derivatives folder")
    bids = parser.add_argument_group("BIDS filters (with --bids; each takes one or more labels)")
    bids.add_argument("--participant-label", nargs="+", metavar="LABEL",
                      help="participants to keep, e.g. 01 02 (or sub-01 sub-02)")
    bids.add_argument("--session", nargs="+", metavar="LABEL", help="ses- labels to keep")
    bids.add_argument("--task", nargs="+", metavar="LABEL", help="task- labels to keep")
    bids.add_argument("--acq", nargs="+", metavar="LABEL", help="acq- labels to keep")
    bids.add_argument("--run", nargs="+", metavar="INDEX", help="run- indices to keep (1 and 01 are one run)")
    bids.add_argument("--space", nargs="+", metavar="LABEL", help="space- labels to keep (fMRIPrep)")
    bids.add_argument("--desc", nargs="+", metavar="LABEL", help="desc- labels to keep (fMRIPrep: preproc)")
    source.add_argument("--participants",
                        help="participants.tsv[.gz] (default: <bids>/participants.tsv or .tsv.gz)")
    source.add_argument("--path-column", default="path")
    source.add_argument("--subject-column", default="subject")
    parser.add_argument("-o", "--output", required=True, help="dataset folder (resumes if it exists)")
    labels = parser.add_argument_group("labels")
    labels.add_argument("--label-column", help="table / participants.tsv column with a scalar label per subject")
    labels.add_argument("--label-type", default="auto", choices=("auto", "categorical", "numeric", "none"))
    labels.add_argument("--events", action="store_true",
                        help="label frames from each run's events.tsv (window label = majority, or rest)")
    labels.add_argument("--events-file", help="events.tsv for all given files (with positional files)")
    labels.add_argument("--hrf-delay", type=float, default=5.0, help="seconds events are shifted by (default 5)")
    labels.add_argument("--min-coverage", type=float, default=0.5,
                        help="fraction of a frame that events must cover to label it (default 0.5)")
    pre = parser.add_argument_group("preprocessing")
    pre.add_argument("--target-shape", type=int, nargs=3, default=(96, 96, 96), metavar=("D", "H", "W"))
    pre.add_argument("--keep-shape", action="store_true", help="no crop/pad (all runs must share a grid)")
    pre.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), help="resample (mm)")
    pre.add_argument("--mask-method", default="auto", choices=("auto", "nonzero", "mean", "none"))
    pre.add_argument("--mask-threshold", type=float, default=0.2)
    pre.add_argument("--normalization", default="zscore", choices=("zscore", "voxelwise", "none"))
    pre.add_argument("--detrend-order", type=int, default=0,
                     help="with --normalization voxelwise: remove each voxel's polynomial trend")
    pre.add_argument("--background", default="min", choices=("min", "zero"))
    pre.add_argument("--center-on", default="brain", choices=("brain", "array"))
    pre.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    pre.add_argument("--min-frames", type=int, default=20, help="runs shorter than this are bad input")
    pre.add_argument("--orientation", default="stored", choices=("stored", "ras"),
                     help="ras: permute/flip voxel axes to the closest RAS+ first (exact; recorded, undone by "
                          "to_original_space), so runs stored in other orientations give the same windows")
    pre.add_argument("--confounds", metavar="STRATEGY",
                     help="regress fMRIPrep confounds out of every brain voxel: components joined by '+' "
                          "among motion6, motion12, motion24, wm_csf, global_signal, cosine (or 'simple' = "
                          "motion24+wm_csf+cosine); needs each run's *_desc-confounds_timeseries.tsv[.gz]")
    pre.add_argument("--fd-threshold", type=float, metavar="MM",
                     help="scrub frames with framewise_displacement above MM (e.g. 0.5); each remaining "
                          "contiguous piece of >= --min-frames frames is stored as its own run <key>_seg-<i>")
    out = parser.add_argument_group("output")
    out.add_argument("--compression", default="GZIP", choices=("GZIP", "none"))
    out.add_argument("--shard-size-mb", type=float, default=128.0)
    out.add_argument("--workers", type=int, default=2, help="parallel processes (0: in-process)")
    out.add_argument("--skip-bad", action="store_true", help="log and skip bad inputs instead of stopping")
    out.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    out.add_argument("--split-seed", type=int, default=0)
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--check", action="store_true",
                     help="only verify the dataset folder -o against its dataset.json (paths, record "
                          "counts, sizes and sha256 of every shard); no inputs needed")


def run(args: argparse.Namespace) -> int:
    import tfrecords_tools as tt
    from tfrecords_tools import sources

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.check:
        from tfrecords_tools.reader import verify_dataset

        info = tt.load_dataset_info(args.output)
        verify_dataset(args.output, sha256=True, info=info)  # ValueError names every bad shard
        print(f"{args.output}: {len(info['shards'])} shards of {info['num_runs']} runs match dataset.json "
              "(paths, record counts, sizes, sha256)")
        return 0
    chosen = [bool(args.files), bool(args.table), bool(args.bids)]
    if sum(chosen) != 1:
        print("error: give exactly one of: NIfTI files, --table, --bids", file=sys.stderr)
        return 2
    bids_filters = {"participant_label": args.participant_label, "session": args.session, "task": args.task,
                    "acq": args.acq, "run": args.run, "space": args.space, "desc": args.desc}
    given = [f"--{name.replace('_', '-')}" for name, value in bids_filters.items() if value]
    if given and not args.bids:
        print(f"error: {', '.join(given)} filter BIDS entities and need --bids", file=sys.stderr)
        return 2
    try:
        if args.bids:
            runs = tt.runs_from_bids(args.bids, label_column=args.label_column, participants=args.participants,
                                     use_events=args.events, **bids_filters)
        elif args.table:
            runs = tt.runs_from_table(args.table, path_column=args.path_column, subject_column=args.subject_column,
                                      label_column=args.label_column)
        else:
            runs = tt.runs_from_files(args.files)
            if args.events_file:
                runs = [sources.Run(**{**r.__dict__, "events_path": args.events_file}) for r in runs]
        config = tt.PreprocessConfig(
            target_shape=None if args.keep_shape else tuple(args.target_shape), voxel_size=args.voxel_size,
            mask_method=args.mask_method, mask_threshold=args.mask_threshold, normalization=args.normalization,
            background=args.background, center_on=args.center_on, dtype=args.dtype, min_frames=args.min_frames,
            detrend_order=args.detrend_order, confounds=args.confounds or (), fd_threshold=args.fd_threshold,
            orientation=args.orientation)
        summary = tt.convert(
            runs, args.output, config=config, compression="" if args.compression == "none" else "GZIP",
            shard_size_mb=args.shard_size_mb, workers=args.workers, skip_bad=args.skip_bad,
            label_type=args.label_type, use_events=args.events or bool(args.events_file),
            hrf_delay=args.hrf_delay, min_coverage=args.min_coverage, split_fractions=tuple(args.split),
            split_seed=args.split_seed, progress=not args.no_progress)
    except tt.BadInputError as error:  # one line naming the file, exit 2 as every bad input
        print(f"error: {error} (--skip-bad skips bad inputs)", file=sys.stderr)
        return 2
    print(summary)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfrecords_tools",
                                     description="convert 4D NIfTI runs into a sharded TFRecord dataset")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as error:  # one line, as `tfbrain prepare` does
        print(f"error: {error}", file=sys.stderr)
        return 2
