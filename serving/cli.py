"""`tfbrain serve` (also `python -m serving`): run the local PredictionService server.

    tfbrain serve MODEL_BASE/NAME            one model, named NAME, newest version by default
    tfbrain serve MODEL_BASE/NAME/3          the same model with version 3 as the default
    tfbrain serve --model-base MODEL_BASE    every model folder under MODEL_BASE
    tfbrain serve --model a=PATH --model b=PATH
"""

import argparse
import pathlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="model folders (NAME/ holding version folders) or "
                                                 "version folders (NAME/VERSION/)")
    parser.add_argument("--model-base", help="serve every model folder under this folder")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="serve the model folder PATH as NAME (repeatable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one)")
    parser.add_argument("--max-workers", type=int, default=8, help="request threads (default 8)")
    parser.add_argument("--max-message-mb", type=int, default=2047,
                        help="gRPC send/receive limit in MiB (default 2047, about TF-Serving's 2 GB)")
    parser.add_argument("--grace-s", type=float, default=10.0,
                        help="on SIGTERM, seconds to let running requests finish (default 10)")
    parser.add_argument("--ready-file", help="write the bound port here once serving (for scripts)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="refuse requests with a larger batch dimension, before decoding them "
                             "(default: max_batch_size of MODEL_BASE/batching_parameters.txt, else 64)")


def _is_version_dir(path: pathlib.Path) -> bool:
    return path.name.isdigit() and (path / "saved_model.pb").is_file()  # complete or being copied


def _has_versions(path: pathlib.Path) -> bool:
    return path.is_dir() and any(_is_version_dir(p) for p in path.iterdir())


def resolve_models(paths, model_base=None, named=()) -> tuple[dict, dict]:
    """({name: model folder}, {name: pinned version}) from the command line's forms."""
    models, pinned = {}, {}
    for path in map(pathlib.Path, paths):
        if _is_version_dir(path):
            models[path.resolve().parent.name] = path.resolve().parent
            pinned[path.resolve().parent.name] = int(path.name)
        elif _has_versions(path):
            models[path.resolve().name] = path
        else:
            raise SystemExit(f"{path} is neither a model folder (NAME/<version>/saved_model.pb) "
                             "nor a version folder")
    if model_base:
        found = {p.name: p for p in sorted(pathlib.Path(model_base).iterdir()) if _has_versions(p)}
        if not found:
            raise SystemExit(f"no model folders (NAME/<version>/saved_model.pb) under {model_base}")
        models.update(found)
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--model expects NAME=PATH. Received: {item!r}")
        models[name] = pathlib.Path(path)
    if not models:
        raise SystemExit("nothing to serve: give a model folder, --model-base or --model NAME=PATH")
    return models, pinned


def run(args: argparse.Namespace) -> int:
    import logging

    from serving.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    models, pinned = resolve_models(args.paths, args.model_base, args.model)
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1. Received: {args.max_batch}")
    try:
        return serve(models, host=args.host, port=args.port, max_workers=args.max_workers,
                     max_message_bytes=min(args.max_message_mb * 2**20, 2**31 - 1),
                     pinned_versions=pinned, grace_s=args.grace_s, ready_file=args.ready_file,
                     max_batch=args.max_batch)
    except OSError as error:  # a port in use: one line, exit 2
        raise ValueError(str(error)) from None
