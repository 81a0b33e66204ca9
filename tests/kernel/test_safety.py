"""Never touch what is not ours, on the real kernel (issue 14): two attachments of
one volume under live I/O, a detach refused by an open map, a forced detach of it.

The service runs in-process over the native engine (no agent to start: the
kernel is what matters here); the plugin's leak check runs after the test.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI, parse
from hostagent.errors import AuthenticationFailed, DeviceBusy
from hostagent.models import Attachment, Status
from tests.kernel import rawtools as raw
from tests.kernel.test_health import Writer
from tests.kernel.test_iscsi_connector import assert_nothing_of, native_host
from tests.kernel.testbed import probe
from tests.kernel.testbed.lio import Chap, IscsiArray
from tests.kernel.testbed.sh import run, wait_until

# Holds a device open and reads it when told: the consumer of a volume.
HOLDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
for line in sys.stdin:
    try:
        os.pread(fd, 4096, 0)
        print("read ok", flush=True)
    except OSError as err:
        print(f"read failed: {err.strerror}", flush=True)
"""


def attach(service: Service, att_id: str, info: dict[str, Any]) -> Attachment:
    att, _ = asyncio.run(service.attach(AttachRequest(att_id, info, parse(info), None,
                                                      True, 300)))
    return att


def features(wwid: str) -> str:
    return run(["dmsetup", "table", wwid]).stdout


def test_two_attachments_of_one_volume_an_open_map_and_a_forced_detach(
        array: IscsiArray, tmp_path: Path) -> None:
    export = array.export_datera(chap=Chap.make())
    service = Service(Store(tmp_path / "state"), {ISCSI: native_host().connector})
    good = export.connection_info
    data = good["data"]
    bad = {**good, "data": {**data, "auth_password": "wrong" + data["auth_password"]}}
    with pytest.raises(AuthenticationFailed):
        attach(service, "first", bad)  # a failed attachment of the volume
    live = attach(service, "second", good)  # and a live one, in use
    assert live.device is not None
    raw.assert_map(live.device, export.wwid, 2)

    # 1. Ending the failed one under the live one's I/O touches nothing of it.
    with Writer(live.device.path) as io:
        time.sleep(2)
        gone = asyncio.run(service.detach("first"))
        time.sleep(3)
    assert io.errors == [] and io.rounds > 0
    assert gone.status == Status.DETACHED
    raw.assert_map(live.device, export.wwid, 2)

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, live.device.path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "open"
        # 2. A plain detach of the open map is refused and leaves it as it was.
        with pytest.raises(DeviceBusy, match=f"held by processes {holder.pid}"):
            asyncio.run(service.detach("second"))
        after = service.get("second")
        assert after.status == Status.ATTACHED and after.last_error is not None
        assert "queue_if_no_path" in features(export.wwid)
        raw.assert_map(live.device, export.wwid, 2)

        # 13. A forced one completes at once: the holder's I/O fails, nothing else stays.
        start = time.monotonic()
        done = asyncio.run(service.detach("second", force=True))
        elapsed = time.monotonic() - start
        assert done.status == Status.DETACHED and done.last_error is not None
        assert f"held by processes {holder.pid}" in done.last_error["message"]
        assert "data may be lost" in done.last_error["message"]
        assert elapsed < 20, f"the forced detach took {elapsed:.1f} s"
        assert not raw.disks_with_wwid(export.wwid)
        assert not [s for s in probe.sessions() if s[1] == export.iqn]
        holder.stdin.write("read\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "read failed: Input/output error"
    finally:
        holder.kill()
        holder.wait(30)
    dm = live.device.path.removeprefix("/dev/")
    wait_until(lambda: not Path(f"/sys/block/{dm}").exists() or None, timeout=30,
               what=f"{dm} to go with its last close")
    assert export.wwid not in probe.maps()
    assert_nothing_of(export)


class FullDisk(Store):
    """A store that can no longer record an attach's success (a full disk)."""

    def update(self, attachment_id: str, **changes: Any) -> Attachment:
        if changes.get("status") == Status.ATTACHED:
            raise sqlite3.OperationalError("database or disk is full")
        return super().update(attachment_id, **changes)


def test_an_undone_attach_whose_map_was_opened_meanwhile_leaves_it_and_says_so(
        array: IscsiArray, tmp_path: Path) -> None:
    """The attach cannot be recorded, and a consumer (LVM, udev, a mount) opened the new
    map first: the undo is no forced detach, so the map stays, queueing, readable."""
    export = array.export_datera()
    holders: list[subprocess.Popen[str]] = []

    def open_the_map(phase: str) -> None:
        if phase == "recording":
            holders.append(subprocess.Popen(
                [sys.executable, "-c", HOLDER, f"/dev/disk/by-id/dm-uuid-mpath-{export.wwid}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            assert holders[0].stdout is not None
            assert holders[0].stdout.readline().strip() == "open"

    service = Service(FullDisk(tmp_path / "state"), {ISCSI: native_host().connector},
                      on_phase=open_the_map)
    try:
        with pytest.raises(sqlite3.OperationalError):
            attach(service, "a", export.connection_info)
        holder = holders[0]
        att = service.get("a")
        assert att.status == Status.FAILED and att.last_error is not None, att
        left = " ".join(att.last_error["details"]["left_on_host"])
        assert f"held by processes {holder.pid}" in left, att.last_error
        assert "queue_if_no_path" in features(export.wwid)
        raw.wait_map(export.wwid, 2)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("read\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "read ok"
    finally:
        for h in holders:
            h.kill()
            h.wait(30)
    # Closed: ending the failed attachment takes everything of it away.
    assert asyncio.run(service.detach("a")).status == Status.DETACHED
    assert_nothing_of(export)
