"""`python -m serving ...` runs the local server, as `tfbrain serve ...` does."""

import argparse
import sys

from serving import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m serving", description=cli.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(parser)
    try:
        sys.exit(cli.run(parser.parse_args()))
    except (ValueError, FileNotFoundError) as error:  # one line, as `tfbrain serve` does
        print(f"python -m serving: error: {error}", file=sys.stderr)
        sys.exit(2)
