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

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.restore import Restorer
from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI, parse
from hostagent.errors import OperationInProgress
from hostagent.exitcodes import ExitCode
from hostagent.models import RESTORING, Attachment, Status
from tests.kernel import rawtools as raw
from tests.kernel.engine import MIB
from tests.kernel.test_daemon import RUN_DIR, Daemon, cli_attach
from tests.kernel.test_health import Writer
from tests.kernel.test_iscsi_connector import native_host
from tests.kernel.testbed import probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FcArray
from tests.kernel.testbed.guest import Guest, restart_iscsid, restart_multipathd
from tests.kernel.testbed.lio import Chap, Export, IscsiArray
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
    host_reboots(wwids, iqns)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir()


def host_reboots(wwids: list[str], iqns: set[str]) -> None:
    """The host's side of a reboot: every map, disk and session gone, iscsid and
    multipathd started anew. Records, the wwids file and the array stay."""
    for wwid in wwids:
        if wwid in probe.maps():
            raw.remove_map(wwid)
        raw.delete_disks([sd for sd in raw.disks_with_wwid(wwid)])
    for iqn in iqns:
        run(["iscsiadm", "-m", "node", "-T", iqn, "-I", "hostagent", "--logout"],
            ok=(0, 21))
    restart_iscsid()
    restart_multipathd()


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


def request(att_id: str, info: dict[str, Any]) -> AttachRequest:
    return AttachRequest(att_id, info, parse(info), None, True, 300)


def service_attach(service: Service, att_id: str, info: dict[str, Any]) -> Attachment:
    att, _ = asyncio.run(service.attach(request(att_id, info)))
    return att


def only(export: Export, portals: list[str]) -> dict[str, Any]:
    """The export's connection_info limited to `portals`."""
    data = {**export.connection_info["data"], "target_portal": portals[0],
            "target_portals": portals, "target_iqns": [export.iqn] * len(portals),
            "target_luns": [export.lun] * len(portals)}
    return {**export.connection_info, "data": data}


def kernel_names(att: Attachment) -> set[str]:
    """Every kernel name an answer about `att` carries: dm-N, sdX, H:C:T:L."""
    assert att.device is not None
    return {n.removeprefix("/dev/") for n in (
        att.device.path, *(p.device for p in att.device.paths),
        *(p.hctl for p in att.device.paths)) if n}


@pytest.mark.parametrize("array", [3], indirect=True)
def test_a_volume_still_restoring_never_answers_or_flushes_the_names_another_took(
        array: IscsiArray, faults: Faults, tmp_path: Path) -> None:
    """A on the third portal, B on the other two; after the reboot A's portal is still
    down, B comes back first and the kernel gives it A's dm-N, sdX and H:C:T:L. A's
    retried attach, its answer and its detach must name and touch nothing of B's."""
    a, b = array.export_datera(), array.export_datera()
    infos = {"a": only(a, array.portals[2:]), "b": only(b, array.portals[:2])}
    state = tmp_path / "state"
    before = Service(Store(state), {ISCSI: native_host().connector})
    old = {name: service_attach(before, name, info) for name, info in infos.items()}
    host_reboots([a.wwid, b.wwid], {a.iqn, b.iqn})
    faults.block_portal(array.portals[2])
    service = Service(Store(state), {ISCSI: native_host().connector})

    async def after_boot() -> tuple[Attachment, Attachment, list[str]]:
        counts = await service.reconcile()
        assert counts["restoring"] == 2, counts
        restoring = asyncio.ensure_future(Restorer(service).run())
        while service.get("b").phase == RESTORING:
            await asyncio.sleep(0.5)
        b_now = service.get("b")
        assert b_now.phase is None and b_now.device is not None, b_now
        with Writer(b_now.device.stable_path or "") as io:
            with pytest.raises(OperationInProgress):  # the controller posts A again
                await service.attach(request("a", infos["a"]))
            a_now = service.get("a")
            gone = await service.detach("a")  # waits for the try under way
            await asyncio.sleep(3)
        await asyncio.wait_for(restoring, 120)
        assert io.rounds > 0
        assert gone.status == Status.DETACHED, gone
        return a_now, b_now, io.errors

    a_now, b_now, errors = asyncio.run(after_boot())
    # The kernel did hand B what had been A's (else this test proves nothing).
    assert kernel_names(old["a"]) <= kernel_names(b_now), (old["a"].device, b_now.device)
    assert a_now.phase == RESTORING and a_now.device is not None
    assert a_now.device.path is None and not kernel_names(a_now) & kernel_names(b_now)
    assert errors == []
    raw.assert_map(b_now.device, b.wwid, 2)  # type: ignore[arg-type]
    assert not [r for r in probe.node_records() if a.iqn in r]
    asyncio.run(service.detach("b"))
