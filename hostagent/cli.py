"""Entry point of `hostagent-cli` (its commands land with the daemon issue)."""

import argparse
import sys

from hostagent import __version__

EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the command is not there yet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostagent-cli", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hostagent-cli {__version__}")
    parser.parse_args(argv)
    print("hostagent-cli: no commands yet (see the daemon issue)", file=sys.stderr)
    return EXIT_UNAVAILABLE
