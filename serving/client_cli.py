"""`tfbrain predict`: send windows to a TF-Serving-compatible endpoint (gRPC, or REST with
`--rest`) and print/save outputs."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="converted dataset folder (tfbrain prepare), .nii/.nii.gz run, "
                                      "or .npy/.npz windows (N, D, H, W, T, C)")
    parser.add_argument("--split", help="converted dataset: train/val/test (default: all runs)")
    parser.add_argument("--target", default=None,
                        help="host:port of the endpoint (default 127.0.0.1:8500, with --rest 127.0.0.1:8501)")
    parser.add_argument("--rest", action="store_true",
                        help="use TF-Serving's REST API (JSON over HTTP) instead of gRPC; small windows only")
    parser.add_argument("--model", required=True, help="model name on the server")
    parser.add_argument("--version", type=int, help="model version (default: the server's default)")
    parser.add_argument("--version-label", help="model version by label (tfbrain serve --version-label, "
                                                "TF-Serving's version_labels) instead of --version")
    parser.add_argument("--signature", default="serving_default", help="serving_default (default) or embed")
    parser.add_argument("--fp16", action="store_true", help="send float16 windows to <signature>_fp16")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per request (default 1)")
    parser.add_argument("--max-windows", type=int, help="send at most this many windows")
    parser.add_argument("--preprocessing",
                        help="NIfTI input: the training preprocessing, from the training dataset's "
                             "dataset.json or the export's assets.extra/tfbrain_export.json "
                             "(default: tfbrain prepare's defaults)")
    parser.add_argument("--confounds",
                        help="NIfTI input: the run's fMRIPrep *_desc-confounds_timeseries.tsv[.gz], needed when "
                             "the training data was prepared with --confounds/--fd-threshold (their strategy "
                             "and threshold come from --preprocessing; scrubbed runs give windows per kept segment)")
    parser.add_argument("--mask", help="NIfTI input: the run's brain mask (fMRIPrep *_desc-brain_mask.nii.gz), when "
                                       "the training runs were prepared with theirs")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="deadline per request (default 60)")
    parser.add_argument("--retries", type=int, default=2, help="retries on UNAVAILABLE/DEADLINE_EXCEEDED")
    parser.add_argument("--output", help="save the outputs to this .npz")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (it is drawn on stderr only when that is a terminal)")


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    from tqdm import tqdm

    from serving.windows import load_windows, preprocessing_from_file

    if args.rest:
        if args.fp16:
            raise ValueError("--fp16 has no REST form: JSON carries no float16 (TF-Serving refuses it "
                             "too); drop --fp16 or use gRPC")
        from serving.rest_client import RestPredictionClient
        client = RestPredictionClient(args.target or "127.0.0.1:8501", args.model, version=args.version,
                                      version_label=args.version_label, timeout_s=args.timeout_s,
                                      retries=args.retries)
    else:
        from serving.client import PredictionClient
        client = PredictionClient(args.target or "127.0.0.1:8500", args.model, version=args.version,
                                  version_label=args.version_label, use_fp16=args.fp16,
                                  timeout_s=args.timeout_s, retries=args.retries)
    with client:
        window_shape = client.window_shape(args.signature)
        preprocessing = preprocessing_from_file(args.preprocessing) if args.preprocessing else None
        windows, provenance = load_windows(args.input, window_shape, preprocessing=preprocessing,
                                           max_windows=args.max_windows, split=args.split,
                                           confounds=args.confounds, mask=args.mask, return_frames=True)
        batches = []
        # time left on stderr; tqdm draws nothing when stderr is not a terminal (disable=None)
        with tqdm(total=len(windows), desc="predict", unit="window", file=sys.stderr,
                  leave=False, disable=True if args.quiet else None) as bar:
            for i in range(0, len(windows), args.batch_size):
                batches.append(client.predict(windows[i:i + args.batch_size], args.signature))
                bar.update(len(windows[i:i + args.batch_size]))
    outputs = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    np.set_printoptions(precision=4, suppress=True)
    for index in range(len(windows)):
        fields = ", ".join(f"{k}={outputs[k][index]}" for k in sorted(outputs))
        origin = "" if provenance is None else _window_origin(provenance, index)
        print(f"window {index}{origin}: {fields}")
    if provenance is not None:  # which source frames and kept segment each window came from
        outputs = {**outputs, "window_frames": provenance.frames, "window_segment": provenance.segment}
    if args.output:
        np.savez(args.output, **outputs)
        print(f"saved {', '.join(sorted(outputs))} to {args.output}")
    return 0


def _window_origin(provenance, index: int) -> str:
    """` (frames 13-20, segment 2/3)`: source frames [start, stop) shown inclusive."""
    start, stop = (int(f) for f in provenance.frames[index])
    return f" (frames {start}-{stop - 1}, segment {int(provenance.segment[index])}/{len(provenance.segments)})"
