"""`tfbrain export`: a preset, training checkpoint folder or .keras file -> MODEL_BASE/NAME/VERSION."""

import argparse
import re


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="preset name or folder (a training checkpoint folder is one), "
                                       "or a .keras file")
    parser.add_argument("--model-base", required=True,
                        help="folder TF-Serving watches; the model goes to MODEL_BASE/NAME/VERSION")
    parser.add_argument("--name", help="model name clients ask for (default: from SOURCE)")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip assets.extra/tf_serving_warmup_requests (one window per signature)")
    parser.add_argument("--no-server-config", action="store_true",
                        help="leave MODEL_BASE/models.config and batching_parameters.txt alone")
    parser.add_argument("--container-base", default="/models",
                        help="MODEL_BASE as the server container sees it, for models.config (default: /models)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (it is drawn on stderr only when that is a terminal)")


def default_name(source: str) -> str:
    stem = re.sub(r"\.keras$", "", str(source).rstrip("/").split("/")[-1])
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or "model"


def run(args: argparse.Namespace) -> int:
    import json

    from tfbrain.export import EXPORT_METADATA_FILE, export_preset

    name = args.name or default_name(args.source)
    path = export_preset(args.source, args.model_base, name, args.version, warmup=not args.no_warmup,
                         write_server_config=not args.no_server_config,
                         container_base=args.container_base, overwrite=args.overwrite,
                         progress=not args.quiet)
    info = json.loads((path / "assets.extra" / EXPORT_METADATA_FILE).read_text())
    print(f"exported {args.source} as model {name!r} version {info['version']} to {path}")
    for signature, spec in info["signatures"].items():
        inputs = ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in spec["inputs"].items())
        outputs = ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in spec["outputs"].items())
        print(f"  {signature}: {inputs} -> {outputs}")
    return 0
