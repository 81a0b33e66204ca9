"""What one agent start costs on this machine, split: the interpreter, the imports
and the agent's own start until its socket answers; the CLI likewise. Run by
scripts/startup on the host and in the guest (the kernel tier starts the agent
and the CLI dozens of times: tests/kernel/pystarts.py counts them). The baseline
in the same run is the bare interpreter (`python -S -c pass`).

Usage: python scripts/lib/startup.py [--reps N] [--label TEXT]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PY = sys.executable
DAEMON = "import sys; from hostagent.agent.daemon import main; sys.exit(main())"
CLI = "import sys; from hostagent.cli.main import main; sys.exit(main())"
POLL = 0.01  # s between two tries of the socket: small against any start measured here
TOP_IMPORTS = 8


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def answers(path: str) -> bool:
    """One GET /v1/attachments over the socket: True on an HTTP 200."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            s.sendall(b"GET /v1/attachments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False


def serve_then_cli(root: Path) -> tuple[float, float]:
    """`hostagent serve` until its socket answers, then `hostagent-cli list` against it."""
    sock = str(root / "s.sock")
    conf = root / "hostagent.conf"
    conf.write_text(f"[DEFAULT]\nsocket = {sock}\nstate_dir = {root / 'state'}\n"
                    f"lock_path = {root / 'locks'}\nsocket_group = 0\n")
    start = time.monotonic()
    proc = subprocess.Popen([PY, "-c", DAEMON, "serve", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not answers(sock):
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited with status {proc.returncode} at start")
            time.sleep(POLL)
        serve = time.monotonic() - start
        return serve, timed([PY, "-c", CLI, "--socket", sock, "list"])
    finally:
        proc.terminate()
        proc.wait(60)


def top_imports() -> list[tuple[float, str]]:
    """The daemon's import, by module: cumulative seconds of the costliest top-level ones."""
    err = subprocess.run([PY, "-X", "importtime", "-c", "import hostagent.agent.daemon"],
                         capture_output=True, text=True, check=True).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[2]) <= 3:  # the daemon itself and what it imports directly
            rows.append((int(m[1]) / 1e6, m[3]))
    return sorted(rows, reverse=True)[:TOP_IMPORTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--label", default=os.uname().nodename)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: `hostagent serve` refuses anyone else")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory(prefix="hostagent-startup-") as tmp:
        root = Path(tmp)
        rows: list[tuple[str, Callable[[], float]]] = [
            ("python -S -c pass (baseline)", lambda: timed([PY, "-S", "-c", "pass"])),
            ("python -c pass (site, the venv)", lambda: timed([PY, "-c", "pass"])),
            ("import hostagent.cli.main", lambda: timed([PY, "-c", "import hostagent.cli.main"])),
            ("import hostagent.agent.daemon",
             lambda: timed([PY, "-c", "import hostagent.agent.daemon"])),
        ]
        serve, cli = "hostagent serve until GET answers", "hostagent-cli list (start + GET)"
        figures: dict[str, list[float]] = {name: [] for name, _ in rows}
        figures[serve], figures[cli] = [], []
        for _ in range(args.reps):  # interleaved: a burst of load touches every row alike
            for name, measure in rows:
                figures[name].append(measure())
            for name, seconds in zip((serve, cli), serve_then_cli(root), strict=True):
                figures[name].append(seconds)
        print(f"agent start-up on {args.label} ({args.reps} reps, {sys.version.split()[0]}):")
        print(f"| {'what':<36} | median s | min s | max s |")
        print(f"|{'-' * 38}|----------|-------|-------|")
        for name, values in figures.items():
            print(f"| {name:<36} | {statistics.median(values):8.2f} | {min(values):5.2f} "
                  f"| {max(values):5.2f} |")
        print("the daemon's import, costliest modules (cumulative s, one run):")
        for seconds, module in top_imports():
            print(f"  {seconds:6.2f}  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
