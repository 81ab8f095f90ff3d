"""The `tfbrain` command: one module per verb in this package, each exposing
`add_arguments(parser)` and `run(args) -> int`. Modules import nothing heavy at import
time, so `tfbrain --help` (and every `tfbrain VERB --help`) starts without TensorFlow.

Bad input (a ValueError, an OSError such as a missing or unwritable file, a KeyError, or a
tfrecords_tools BadInputError) is reported
as one line on stderr with exit code 2; `--debug` shows the traceback instead.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "prepare": ("tfrecords_tools.cli", "convert 4D NIfTI runs into a sharded TFRecord dataset"),
    "convert": ("tfbrain.cli.convert", "convert an upstream PyTorch checkpoint to a preset folder"),
    "train": ("tfbrain.cli.train", "train or fine-tune a model from a TOML config (resumable)"),
    "evaluate": ("tfbrain.cli.evaluate", "evaluate a trained model on a split of its dataset"),
    "attribute": ("tfbrain.cli.attribute", "Integrated-Gradients map of a subject, as NIfTI"),
    "export": ("tfbrain.cli.export", "export a preset or checkpoint as a TF-Serving SavedModel version"),
    "serve": ("serving.cli", "serve exported SavedModels over gRPC and REST (local PredictionService)"),
    "predict": ("serving.client_cli", "send windows to a TF-Serving endpoint (gRPC, or REST with --rest)"),
    "presets": ("tfbrain.cli.presets", "list model families, variants, task types and named presets"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfbrain",
                                     description="4D brain-fMRI foundation models in Keras")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
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


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its native start-up lines (CUDA probing on a machine without a
    GPU, CPU feature notes) kept off the terminal: they are written to file descriptor 2
    before TF_CPP_MIN_LOG_LEVEL applies. Python errors still surface, after the import."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except Exception:  # re-raised below with stderr back in place
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return int(args._run(args) or 0)
    _import_tensorflow_quietly()
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError, KeyError) as err:  # OSError: unreadable/unwritable files, ports
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"tfbrain {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
