"""A benchmark on the fake host (no guest), run and printed by `scripts/test unit`:
the agent's own cost at a scale no guest here can hold.

- a health round (HealthMonitor.check, no read probe: the fake has no block device)
  over 500 attachments with 2 paths each (1000 paths): 400 K2 LUNs on one shared IQN
  (2 sessions) and 100 Datera targets (200 sessions); the fake multipathd's `show maps
  json` answer is rendered once (in production it is another process's CPU);
- GET /v1/attachments with those 500 rows and with 1000 rows (aiohttp over a local
  TCP socket, the real app and service);
- the claims a destructive step reads (Service.claims_for(...)()) over 1000 rows;
- one store commit (each phase of an operation makes one, on the event loop);
- the Python memory 500 more attachments leave allocated (tracemalloc).

Goals (issue 17): a health round and a 1000-row GET under 50 ms each, a p99 under
5 ms for the per-step claims read. The figures are printed, not asserted: a timed
assertion on a shared 2-core machine only measures the neighbours.

    python -m tests.unit.bench_scale [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from hostagent.agent.metrics import Metrics
from hostagent.agent.service import Service
from hostagent.agent.state import Store
from hostagent.api.app import make_app
from hostagent.connection_info import ISCSI
from hostagent.health import HealthMonitor, HealthOptions
from hostagent.models import Attachment, Status, device_from_dict
from tests.unit.fakehost import FakeKernel, sd_name
from tests.unit.iscsihost import K2, P1, P2, Agent

DATERA = "iqn.2013-05.com.daterainc:tc:01:sn:{:016x}"


def _wwid(i: int) -> str:
    return f"36001405{i:025x}"


def _info(iqn: str, lun: int) -> dict[str, Any]:
    return {"driver_volume_type": "iscsi", "data": {
        "target_discovered": False, "target_portals": [P1, P2], "target_iqns": [iqn, iqn],
        "target_luns": [lun, lun], "volume_id": f"vol-{iqn[-6:]}-{lun}"}}


def build_host(agent: Agent, k2_luns: int, datera: int) -> int:
    """Sessions, disks and maps on the fake kernel, and the store's rows for them,
    as attaches would have left them. Returns the number of paths."""
    kernel = agent.host.kernel
    # The fake kernel hands out the lowest free sd / dm name by looking at each one
    # (as Linux's ida does), O(N) per disk: for the set-up only, this instance counts.
    sds, dms = iter(range(1 << 20)), iter(range(1 << 20))
    by_wwid: dict[str, str] = {}

    def free_sd() -> tuple[str, int]:
        n = next(sds)
        return sd_name(n), n
    kernel._free_sd = free_sd  # type: ignore[method-assign]
    kernel._free_dm = lambda: f"dm-{next(dms)}"  # type: ignore[method-assign]
    kernel.dm_of = by_wwid.get  # type: ignore[method-assign]
    try:
        return _build(agent, kernel, k2_luns, datera, by_wwid)
    finally:
        for name in ("_free_sd", "_free_dm", "dm_of"):
            delattr(kernel, name)


def _build(agent: Agent, kernel: FakeKernel, k2_luns: int, datera: int,
           by_wwid: dict[str, str]) -> int:
    hosts = {(K2, p): kernel.add_session(K2, p) for p in (P1, P2)}
    volumes: list[tuple[str, int]] = [(K2, lun) for lun in range(1, k2_luns + 1)]
    for d in range(datera):
        iqn = DATERA.format(d)
        hosts.update({(iqn, p): kernel.add_session(iqn, p) for p in (P1, P2)})
        volumes.append((iqn, 0))
    now = time.time()
    paths = 0
    for i, (iqn, lun) in enumerate(volumes):
        wwid = _wwid(i)
        kernel.luns[(iqn, lun)] = wwid
        made = []
        for p in (P1, P2):
            host = hosts[(iqn, p)]
            sd = kernel.add_disk(host, lun, wwid)
            kernel.add_path_to_map(sd)
            by_wwid.setdefault(wwid, f"dm-{i}")
            made.append({"device": sd, "hctl": f"{host}:0:0:{lun}", "portal": p, "target": iqn})
            paths += 1
        dm = by_wwid[wwid]
        device = device_from_dict({
            "path": f"/dev/{dm}", "wwn": wwid, "multipath": True, "size_bytes": 64 << 20,
            "missing": [], "paths": made,
            "iscsi_targets": [{"iqn": iqn, "portal": p, "lun": lun} for p in (P1, P2)]})
        agent.store.put(Attachment(str(uuid.uuid4()), ISCSI, _info(iqn, lun), True,
                                   f"{i:064x}", Status.ATTACHED, now, now,
                                   volume_id=f"vol-{i}", device=device))
    return paths


def add_rows(store: Store, count: int, start: int) -> None:
    """Rows only (no host behind them): for the listing and the claims."""
    now = time.time()
    for i in range(start, start + count):
        iqn = DATERA.format(100000 + i)
        device = device_from_dict({
            "path": "/dev/dm-900", "wwn": _wwid(100000 + i), "multipath": True,
            "size_bytes": 1 << 30, "missing": [],
            "iscsi_targets": [{"iqn": iqn, "portal": p, "lun": 0} for p in (P1, P2)],
            "paths": [{"device": f"sd{c}", "hctl": f"{n}:0:0:0", "portal": p, "target": iqn}
                      for n, c, p in ((3, "a", P1), (4, "b", P2))]})
        store.put(Attachment(str(uuid.uuid4()), ISCSI, _info(iqn, 0), True, f"{i:064x}",
                             Status.ATTACHED, now, now, volume_id=f"vol-x{i}", device=device))


def timings(fn: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


async def atimings(fn: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def line(what: str, values: list[float], goal_ms: float, key: str = "median") -> str:
    ms = [v * 1000 for v in values]
    med, p99 = statistics.median(ms), _p99(ms)
    judged = med if key == "median" else p99
    verdict = "met" if judged < goal_ms else "MISSED"
    return (f"  {what:<46} median {med:8.2f} ms  p99 {p99:8.2f} ms  max {max(ms):8.2f} ms"
            f"  (n={len(ms)}; goal {key} < {goal_ms:g} ms: {verdict})")


async def run(root: Path, rounds: int) -> list[str]:
    agent = Agent(root)
    t0 = time.perf_counter()
    paths = build_host(agent, k2_luns=400, datera=100)
    setup = time.perf_counter() - t0
    # multipathd is another process in production: its answer is rendered once, so the
    # rounds time the agent (asking, decoding the JSON and all), not the fake's Python.
    answer = agent.host.mpd.maps_json()
    agent.host.mpd.maps_json = lambda: answer  # type: ignore[method-assign]
    monitor = HealthMonitor(agent.service, agent.host.fs, agent.host.mpd,
                            metrics=Metrics(), options=HealthOptions(probe=False))
    report = await monitor.check()
    checked = sum(len(h.paths) for h in report.attachments)
    up = sum(p.state == "up" for h in report.attachments for p in h.paths)
    assert checked == paths == 1000 and up == paths, (checked, up, report.verdict)
    out = [f"fake host: {len(report.attachments)} attachments, {paths} paths "
           f"({up} up), built in {setup:.1f} s"]
    health = await atimings(monitor.check, rounds)
    out.append(line(f"health round ({paths} paths)", health, 50))
    app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight,
                   health=monitor, metrics=None)
    async with TestClient(TestServer(app)) as client:
        async def get() -> None:
            resp = await client.get("/v1/attachments")
            assert resp.status == 200
            await resp.read()
        listing = await atimings(get, rounds)
        out.append(line("GET /v1/attachments (500 rows)", listing, 50))
        # The agent's own memory per attachment (the guest's RSS also holds the test
        # array): what 500 more rows leave allocated by Python once they have been
        # listed, health-checked and claimed, traced by tracemalloc.
        await monitor.check()
        await get()
        gc.collect()
        # The rows added have no host behind them: their transitions are not news.
        logging.getLogger("hostagent.health").setLevel(logging.ERROR)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        add_rows(agent.store, 500, 500)
        await monitor.check()
        await get()
        agent.service.claims_for("none")()
        gc.collect()
        grown = tracemalloc.take_snapshot().compare_to(before, "filename")
        tracemalloc.stop()
        kib = sum(d.size_diff for d in grown) / 1024 / 500
        out.append(f"  {'memory per attachment (Python heap, traced)':<46} {kib:8.1f} KiB  "
                   f"(500 rows listed, checked and claimed; goal RSS growth < 50 KiB: "
                   f"{'met' if kib < 50 else 'MISSED'})")
        listing = await atimings(get, rounds)
        out.append(line("GET /v1/attachments (1000 rows)", listing, 50))
    service: Service = agent.service
    ids = [a.id for a in agent.store.list()]
    claims = timings(lambda: service.claims_for(ids[len(ids) // 2])(), rounds * 10)
    out.append(line("claims of 999 others (one destructive step)", claims, 5, "p99"))
    sharer = timings(lambda: service._sharer(ids[0], service_spec(agent, ids[0])),
                     rounds * 10)
    out.append(line("sharer lookup over 1000 rows (each detach)", sharer, 5, "p99"))
    # Each phase of an operation is one commit, made on the event loop (WAL, fsync):
    # the loop stalls this long per phase, whatever the table's size.
    row = agent.store.get(ids[0])
    assert row is not None
    commits = timings(lambda: agent.store.update(row.id, phase="bench"), rounds * 5)
    out.append(line("one store commit among 1000 rows (event loop)", commits, 5, "p99"))
    return out


def service_spec(agent: Agent, att_id: str) -> Any:
    from hostagent.connection_info import parse
    att = agent.store.get(att_id)
    assert att is not None
    return parse(att.connection_info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of the run (tottime, top 25)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostagent-bench-scale-") as tmp:
        if args.profile:
            import cProfile
            import pstats
            profile = cProfile.Profile()
            out = profile.runcall(asyncio.run, run(Path(tmp), args.rounds))
            pstats.Stats(profile).strip_dirs().sort_stats("tottime").print_stats(25)
        else:
            out = asyncio.run(run(Path(tmp), args.rounds))
    print("\n".join(out))
    print(f"  (load average {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
