"""Day two on the real kernel: the volumes come back after a reboot.

The guest cannot boot twice with its disk kept (it shares the host's root read-only
and keeps /etc, /var and /run on tmpfs), so the reboot is simulated in one guest: the
agent is killed hard, its maps, disks and sessions are torn down behind its back,
iscsid and multipathd are restarted and /run/hostagent emptied, then the agent is
started the way systemd would start it (`hostagent serve`, then `hostagent-cli
wait`). What survives a reboot survives here: /etc/iscsi (the node records with
the CHAP settings), /etc/multipath, the state directory, and the array.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.exitcodes import ExitCode
from tests.kernel import rawtools as raw
from tests.kernel.engine import MIB
from tests.kernel.test_daemon import RUN_DIR, Daemon, cli_attach
from tests.kernel.testbed import probe
from tests.kernel.testbed.fcoe import FcArray
from tests.kernel.testbed.guest import Guest, restart_iscsid, restart_multipathd
from tests.kernel.testbed.lio import Chap, IscsiArray
from tests.kernel.testbed.sh import run


@pytest.fixture
def daemon(guest: Guest, tmp_path: Path) -> Iterator[Daemon]:
    RUN_DIR.mkdir(exist_ok=True)
    (tmp_path / "agent").mkdir()
    d = Daemon(tmp_path / "agent")
    d.start()
    yield d
    d.stop()


def write_pattern(device: str) -> bytes:
    pattern = os.urandom(MIB)
    fd = os.open(device, os.O_RDWR | os.O_SYNC)
    try:
        os.pwrite(fd, pattern, MIB)
    finally:
        os.close(fd)
    return pattern


def read_back(device: str) -> bytes:
    run(["blockdev", "--flushbufs", device])
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.pread(fd, MIB, MIB)
    finally:
        os.close(fd)


def power_cut(daemon: Daemon, wwids: list[str], iqns: set[str]) -> None:
    """What a reboot takes: the agent, every map, disk and session, the daemons' state,
    /run. What it keeps: /etc/iscsi, /etc/multipath, the state directory, the array."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(60)
    daemon.proc = None
    for wwid in wwids:
        if wwid in probe.maps():
            raw.remove_map(wwid)
        raw.delete_disks([sd for sd in raw.disks_with_wwid(wwid)])
    for iqn in iqns:
        run(["iscsiadm", "-m", "node", "-T", iqn, "-I", "hostagent", "--logout"],
            ok=(0, 21))
    restart_iscsid()
    restart_multipathd()
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir()


def boot(daemon: Daemon) -> tuple[float, list[dict[str, Any]]]:
    """The agent as systemd starts it; seconds until `hostagent-cli wait` returned."""
    start = time.monotonic()
    daemon.start()
    waited = daemon.cli("wait", "--timeout", "600", "--json")
    elapsed = time.monotonic() - start
    assert waited.returncode == ExitCode.OK, waited.stderr
    attachments: list[dict[str, Any]] = json.loads(waited.stdout)["attachments"]
    return elapsed, attachments


def test_volumes_come_back_after_a_reboot(array: IscsiArray, fc_array: FcArray,
                                          daemon: Daemon, tmp_path: Path) -> None:
    datera = array.export_datera(chap=Chap.make())
    k2a, k2b = array.export_k2(), array.export_k2()
    fc = fc_array.export()
    exports = {"datera": datera, "k2-a": k2a, "k2-b": k2b, "fc": fc}
    before = {name: cli_attach(daemon, tmp_path, e, name)  # type: ignore[arg-type]
              for name, e in exports.items()}
    patterns = {name: write_pattern(att["device"]["stable_path"])
                for name, att in before.items()}
    wwids = [e.wwid for e in exports.values()]
    iqns = {datera.iqn, k2a.iqn}

    power_cut(daemon, wwids, iqns)
    assert not any(raw.disks_with_wwid(w) for w in wwids)
    elapsed, after = boot(daemon)
    listing = daemon.cli("list").stdout
    by_id = {a["id"]: a for a in after}
    for name, att in before.items():
        now = by_id[name]
        assert now["status"] == "attached" and now["phase"] is None, now
        assert now["device"]["wwn"] == att["device"]["wwn"]
        assert now["device"]["stable_path"] == att["device"]["stable_path"]
        assert read_back(now["device"]["stable_path"]) == patterns[name], name
        raw.wait_map(now["device"]["wwn"], 2, timeout=60)
    record = {"restore_seconds_all": round(elapsed, 1), "volumes": len(before),
              "list_after_boot": listing}

    # A LUN the array unmapped while the node was down is failed, and nothing of it
    # is half made; the LUN id, given to another volume, is never attached in its place.
    power_cut(daemon, wwids, iqns)
    array.unexport(k2b)
    imposter = array.export_k2(lun=k2b.lun)
    elapsed2, again = boot(daemon)
    by_id = {a["id"]: a for a in again}
    gone = by_id["k2-b"]
    assert gone["status"] == "failed", gone
    assert gone["last_error"]["code"] == "wwn_mismatch", gone["last_error"]
    assert not raw.disks_with_wwid(imposter.wwid) and imposter.wwid not in probe.maps()
    for name in ("datera", "k2-a", "fc"):
        assert by_id[name]["status"] == "attached", by_id[name]
    record["restore_seconds_all_second_boot"] = round(elapsed2, 1)
    record["list_after_second_boot"] = daemon.cli("list").stdout
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / "restore.json"
    out.write_text(json.dumps(record, indent=2))

    for name in exports:
        result = daemon.cli("detach", name)
        assert result.returncode == ExitCode.OK, result.stderr
    array.unexport(imposter)
