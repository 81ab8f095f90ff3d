"""`tfbrain train --config run.toml [--set optim.epochs=3 ...]` (docs/training.md)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="TOML config (see docs/training.md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field (repeatable), e.g. --set optim.epochs=2")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (drawn on stderr only when that is a terminal) "
                             "and no per-epoch lines")
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument("--resume", action="store_true",
                       help="continue the run in [run] output_dir although its config differs")
    rerun.add_argument("--overwrite", action="store_true",
                       help="delete the run in [run] output_dir and start afresh")


def print_summary(summary: dict) -> None:
    from tfbrain.training.metrics import format_report

    print(f"\nrun folder:      {summary['output_dir']}")
    print(f"best model:      {summary['best']}  (by {summary.get('monitor', '?')})")
    print(f"tensorboard:     tensorboard --logdir {summary['tensorboard']} --host 127.0.0.1")
    for split, report in (summary.get("report") or {}).items():
        if isinstance(report, dict):
            print(f"\n[{split}]\n{format_report(report)}")


def run(args: argparse.Namespace) -> int:
    from tfbrain.training.config import load_config
    from tfbrain.training.trainer import train

    config = load_config(args.config, args.set)
    summary = train(config, verbose=0 if args.quiet else 2, resume=args.resume, overwrite=args.overwrite)
    if summary.get("interrupted"):
        print(f"interrupted at step {summary['global_step']}: {summary['reason']}; run the same "
              "command again to resume")
        return 3
    print_summary(summary)
    return 0
