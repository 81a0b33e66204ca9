"""Entry point of the `hostagent` daemon (the API server lands with the daemon issue)."""

import argparse
import sys

from hostagent import __version__

EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the service is not there yet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hostagent {__version__}")
    parser.parse_args(argv)
    print("hostagent: the daemon is not built yet (see the daemon issue)", file=sys.stderr)
    return EXIT_UNAVAILABLE
