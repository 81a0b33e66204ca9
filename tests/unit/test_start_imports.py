"""What a start imports: each module is seconds under emulation and tens of
milliseconds on a host, for every `hostagent serve` and every hostagent-cli run.
Checked in a fresh interpreter, as the daemon and the CLI start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Needed only by an operation (oslo.concurrency, at the first file lock: the daemon
# warms it in a thread once it serves) or by engine = os-brick.
NOT_AT_DAEMON_START = ("oslo_concurrency", "oslo_config", "os_brick")
# The CLI speaks HTTP/1.1 over the socket itself: none of the server's machinery.
NOT_AT_CLI_START = ("aiohttp", "asyncio", "oslo_concurrency", "os_brick", "pyudev",
                    "prometheus_client")


def loaded_after(module: str, candidates: tuple[str, ...]) -> list[str]:
    code = (f"import json, sys, {module}; "
            f"print(json.dumps([m for m in {list(candidates)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    found: list[str] = json.loads(out)
    return found


@pytest.mark.parametrize(("module", "unwanted"), [
    ("hostagent.agent.daemon", NOT_AT_DAEMON_START),
    ("hostagent.cli.main", NOT_AT_CLI_START),
])
def test_a_start_imports_nothing_it_does_not_need(module: str, unwanted: tuple[str, ...]
                                                   ) -> None:
    assert loaded_after(module, unwanted) == []


def test_the_file_lock_module_is_loaded_on_first_use() -> None:
    code = ("import sys; from hostagent.connectors.locks import preload; "
            "assert 'oslo_concurrency.lockutils' not in sys.modules; "
            "print(preload().__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "oslo_concurrency.lockutils"
