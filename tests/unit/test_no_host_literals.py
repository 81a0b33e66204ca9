"""Host access goes through HostFS: no /sys, /dev, /etc, /run or /var path is
spelt anywhere in hostagent but host/fs.py, so tests can root them in tmp_path."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "hostagent"
LITERAL = re.compile(r"""["'](/(sys|dev|etc|run|var))(/|["'])""")


def test_only_fs_py_names_host_paths() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "fs.py"
        for n, line in enumerate(path.read_text().splitlines(), 1) if LITERAL.search(line)
    ]
    assert offenders == []


def test_the_check_itself_catches_a_literal() -> None:
    assert LITERAL.search('fs.read("/sys/class/fc_host")')
    assert LITERAL.search("x = '/dev'")
    assert not LITERAL.search('f"{SYS_CLASS}/fc_host"')
