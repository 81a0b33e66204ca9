"""hostagent-cli as an unprivileged user, for the tests of the socket's access control."""

from __future__ import annotations

import os
import sys

from hostagent.cli import main as cli

NOBODY = 65534


def cli_as_nobody(socket: str, *args: str) -> tuple[int, str, str]:
    """hostagent-cli run by uid/gid 65534 in a forked child: exit status, stdout, stderr.
    (Forked rather than exec'd: the venv's interpreter may sit where nobody cannot read.)"""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run the CLI, never return into pytest
        status = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sys.stdout = os.fdopen(1, "w")
            sys.stderr = os.fdopen(2, "w")
            status = cli.main(["--socket", socket, *args])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), stdout, stderr
