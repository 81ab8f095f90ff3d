"""The `tfbrain` command. Each subcommand lives in its own module, which exposes
`add_arguments(parser)` and `run(args) -> int`; heavy imports happen inside `run`."""

import argparse
import importlib
import sys

# name -> (module, one-line help). Add a line here when a subcommand lands.
SUBCOMMANDS = {
    "convert": ("tfbrain.conversion_cli", "convert an upstream PyTorch checkpoint to a preset folder"),
    "export": ("tfbrain.export_cli", "export a preset or checkpoint as a TF-Serving SavedModel version"),
    "serve": ("serving.cli", "serve exported SavedModels over gRPC (local PredictionService)"),
    "predict": ("serving.client_cli", "send windows to a TF-Serving gRPC endpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfbrain", description="4D brain-fMRI foundation models in Keras")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from tfbrain.version import __version__
    return f"tfbrain {__version__}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
