"""The Python processes a kernel run starts, accounted: an agent start costs seconds
in the emulated guest, so each one (until its socket answers) and each CLI run is
appended to $HOSTAGENT_RESULTS/kernel-starts.tsv with its test, and
scripts/lib/junit_summary.py sums them at the end of the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from hostagent.cli.main import main; sys.exit(main())"]
AGENT = [sys.executable, "-c", "import sys; from hostagent.agent.daemon import main; "
         "sys.exit(main())"]
LEDGER = "kernel-starts.tsv"


def record(kind: str, seconds: float) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    ledger = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / LEDGER
    with ledger.open("a") as out:
        out.write(f"{kind}\t{seconds:.2f}\t{test}\n")


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """hostagent-cli ARGS in a new process, as an operator runs it."""
    start = time.monotonic()
    try:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                              check=False)
    finally:
        record("cli", time.monotonic() - start)
