"""The `tfbrain` command. Each subcommand lives in a module exposing
`add_arguments(parser)` and `run(args) -> int` (or other names given as a third and
fourth entry); heavy imports happen inside the run function."""

import argparse
import importlib
import sys

# name -> (module, one-line help[, add-arguments function, run function]).
SUBCOMMANDS = {
    "prepare": ("tfrecords_tools.cli", "convert 4D NIfTI runs into a sharded TFRecord dataset"),
    "convert": ("tfbrain.conversion_cli", "convert an upstream PyTorch checkpoint to a preset folder"),
    "train": ("tfbrain.train_cli", "train or fine-tune a model from a TOML config (resumable)"),
    "evaluate": ("tfbrain.train_cli", "subject-level evaluation of a trained model",
                 "add_evaluate_arguments", "run_evaluate"),
    "attribute": ("tfbrain.train_cli", "Integrated-Gradients map of a subject, as NIfTI",
                  "add_attribute_arguments", "run_attribute"),
    "export": ("tfbrain.export_cli", "export a preset or checkpoint as a TF-Serving SavedModel version"),
    "serve": ("serving.cli", "serve exported SavedModels over gRPC (local PredictionService)"),
    "predict": ("serving.client_cli", "send windows to a TF-Serving gRPC endpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfbrain", description="4D brain-fMRI foundation models in Keras")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text, *functions) in SUBCOMMANDS.items():
        add_name, run_name = functions or ("add_arguments", "run")
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        getattr(module, add_name)(sub_parser)
        sub_parser.set_defaults(_run=getattr(module, run_name))
    return parser


def _version() -> str:
    from tfbrain.version import __version__
    return f"tfbrain {__version__}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
