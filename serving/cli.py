"""`tfbrain serve` (also `python -m serving`): run the local PredictionService server.

    tfbrain serve MODEL_BASE/NAME            one model, named NAME, newest version by default
    tfbrain serve MODEL_BASE/NAME/3          the same model with version 3 as the default
    tfbrain serve --model-base MODEL_BASE    every model folder under MODEL_BASE
    tfbrain serve --model a=PATH --model b=PATH
    tfbrain serve MODEL_BASE/NAME --rest-port 8501   gRPC on 8500 and TF-Serving's REST API on 8501
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
    parser.add_argument("--ready-file", help="write the bound gRPC port here once serving, and the REST "
                                             "port on a second line with --rest-port (for scripts)")
    parser.add_argument("--rest-port", type=int, default=None,
                        help="also serve TF-Serving's REST API on this port (TF-Serving uses 8501; "
                             "0 picks a free one; default: no REST)")
    parser.add_argument("--rest-host", default=None,
                        help="address the REST API binds (default: --host, itself 127.0.0.1)")
    parser.add_argument("--rest-max-body-mb", type=float, default=64,
                        help="refuse REST request bodies larger than this, before reading them "
                             "(default 64 MiB; JSON is about 5x the raw floats: full windows go over gRPC)")
    parser.add_argument("--version-label", action="append", default=[], metavar="[NAME:]LABEL=VERSION",
                        help="let requests ask for VERSION as LABEL (/labels/LABEL over REST, "
                             "ModelSpec.version_label over gRPC); NAME may be left out with one model "
                             "(repeatable)")
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


def parse_version_labels(items, models) -> dict[str, dict[str, int]]:
    """{model: {label: version}} from --version-label [NAME:]LABEL=VERSION items."""
    labels: dict[str, dict[str, int]] = {}
    for item in items:
        target, sep, version = item.partition("=")
        name, colon, label = target.rpartition(":")
        if not colon:
            if len(models) != 1:
                raise ValueError(f"--version-label {item!r}: name the model (NAME:LABEL=VERSION) when "
                                 f"serving several: {sorted(models)}")
            name = next(iter(models))
        if not sep or not label or not version.isdigit():
            raise ValueError(f"--version-label expects [NAME:]LABEL=VERSION with an integer VERSION. "
                             f"Received: {item!r}")
        if name not in models:
            raise ValueError(f"--version-label {item!r}: model {name!r} is not served; served: {sorted(models)}")
        labels.setdefault(name, {})[label] = int(version)
    return labels


def auto_jit_warning(tf_xla_flags: str) -> str | None:
    """A warning when TF_XLA_FLAGS turns on XLA auto-clustering, which returned wrong outputs
    for the paper-size SwiFT serving graph (docs/serving.md); None otherwise."""
    flags = dict(flag.partition("=")[::2] for flag in tf_xla_flags.split())
    if flags.get("--tf_xla_auto_jit", "0").strip() in ("0", "-1") and "--tf_xla_cpu_global_jit" not in flags:
        return None
    return (f"TF_XLA_FLAGS={tf_xla_flags!r} turns on XLA auto-clustering: it returned wrong outputs for the "
            "paper-size SwiFT serving graph (docs/serving.md); unset it unless you have checked your model's "
            "outputs under it")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from serving.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warning = auto_jit_warning(os.environ.get("TF_XLA_FLAGS", ""))
    if warning:
        logging.getLogger("serving").warning(warning)
    models, pinned = resolve_models(args.paths, args.model_base, args.model)
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1. Received: {args.max_batch}")
    if args.rest_max_body_mb <= 0:
        raise ValueError(f"--rest-max-body-mb must be > 0. Received: {args.rest_max_body_mb}")
    if args.rest_port is not None and args.rest_port == args.port and args.rest_port != 0:
        raise ValueError(f"--rest-port {args.rest_port} is also the gRPC --port; give them different ports")
    labels = parse_version_labels(args.version_label, models)
    try:
        return serve(models, host=args.host, port=args.port, max_workers=args.max_workers,
                     max_message_bytes=min(args.max_message_mb * 2**20, 2**31 - 1),
                     pinned_versions=pinned, grace_s=args.grace_s, ready_file=args.ready_file,
                     max_batch=args.max_batch, version_labels=labels, rest_port=args.rest_port,
                     rest_host=args.rest_host, rest_max_body_bytes=int(args.rest_max_body_mb * 2**20))
    except OSError as error:  # a port in use: one line, exit 2
        raise ValueError(str(error)) from None
