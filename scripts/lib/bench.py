"""The benchmarks, run INSIDE the guest by scripts/lib/guest-bench.

Three ways to do the same work, interleaved (the order rotates every repetition):
  native   hostagent's own engines (connectors/iscsi.py, fc.py), in this process
  os-brick connectors/brick.py over os-brick 7.x, in this process (privsep direct)
  direct   the lower bound: the kernel operations alone, as few processes as the
           tools allow, every wait driven by udev events (no sleep-polling)
Cases: (a) one Datera 2-portal attach and detach from nothing; (b) 8 Datera volumes
attached together, then detached together; (c) 8 K2 LUNs on one IQN attached one
after another, then detached; (d) FC over 2 FCoE links; (e) GET /v1/attachments
with 100 attachments recorded, and the daemon's RSS; (f) growth: volumes attached one
after another up to N (128; --max-n), K2 LUNs on one shared IQN with every 4th volume a
Datera target of its own, through the agent's Service (store, claims, locks) as the daemon
runs it; the N-th attach and (in reverse) the N-th detach measured, and at N = 1, 16, 32,
64, 128 one health round, one /metrics scrape, GET /v1/attachments and the RSS (native and
os-brick; results/bench-f-<time>.png plots the attach time against N).
Per operation: wall time, CPU time of this process and the processes it waited for
(user + system, os.times), the guest's total CPU time (/proc/stat, every process and
kernel thread: iscsid, multipathd, udev, LIO), the commands the engine ran, and
the guest's forks. Prints a table; writes JSON to results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import itertools
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hostagent.agent.metrics import Metrics
from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.cli.client import Client, ClientError
from hostagent.connection_info import FIBRE_CHANNEL, ISCSI, parse
from hostagent.connectors.brick import (
    BrickConnector,
    BrickOptions,
    CommandCounter,
    os_brick_factory,
)
from hostagent.connectors.fc import FcConnector
from hostagent.connectors.iscsi import IscsiConnector, IscsiOptions
from hostagent.host import scsi
from hostagent.host.executor import AsyncExecutor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.udev import PyudevWatcher, block_initialized
from hostagent.models import Attachment, Device, Status, device_from_dict
from hostagent.node.udevrule import UdevRule
from tests.kernel.testbed import guest as guest_mod
from tests.kernel.testbed.fcoe import FcArray, FcExport, FcFabric
from tests.kernel.testbed.lio import Export, IscsiArray
from tests.kernel.testbed.sh import wait_until

RESULTS = Path(os.environ.get("HOSTAGENT_RESULTS", "results"))
ENGINES = ("native", "os-brick", "direct")
TICK = os.sysconf("SC_CLK_TCK")
WAIT = 180.0  # s for a device under emulation (8 attaches at once keep udev busy)
BRICK_FC = ("os-brick's FC connector waits for /dev/disk/by-path links, which FCoE "
            "hosts never get (no PCI parent)")
AnyExport = Export | FcExport
# One event loop for the whole run, as in the agent: a loop per operation would
# open a udev monitor and start worker threads anew each time.
LOOP = asyncio.new_event_loop()


# ---- measurement ------------------------------------------------------------------

@dataclass
class Sample:
    wall: float
    cpu: float  # this process + its waited-for children, user + system
    guest_cpu: float  # every CPU of the guest, non-idle
    commands: int  # processes the engine started
    forks: int  # every fork in the guest (udev helpers, multipathd's, ...)


def _guest_stat() -> tuple[float, int]:
    busy, forks = 0.0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        words = line.split()
        if words[0] == "cpu":
            ticks = [int(v) for v in words[1:]]
            busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / TICK  # all but idle and iowait
        elif words[0] == "processes":
            forks = int(words[1])
    return busy, forks


def _proc_ticks() -> dict[int, tuple[str, int]]:
    """(name, user + system ticks) of every process and kernel thread in the guest, by pid."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        ticks[int(entry)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def _top_cpu(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]],
             count: int = 6) -> list[tuple[str, float]]:
    """Who used the guest's CPU between two readings, by name. Kernel workers go by
    the workqueue their name shows at the second reading ("kworker/1:2-kaluad" ->
    "kworker-kaluad"): the last one each served, so the split is approximate. Matched
    by pid alone: a worker renames itself with each workqueue it serves, and matched
    by name too its whole lifetime's ticks would count."""
    used: dict[str, float] = {}
    for pid, (name, t) in after.items():
        _, base = before.get(pid, (name, 0))
        if base > t:  # the pid was reused during the span
            base = 0
        if name.startswith("kworker"):
            name = "kworker-" + (name.split("-", 1)[1] if "-" in name else "idle")
        used[name] = used.get(name, 0.0) + (t - base) / TICK
    return sorted(((n, round(v, 2)) for n, v in used.items() if v > 0),
                  key=lambda nv: -nv[1])[:count]


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Uevents:
    """The kernel's uevents of one span, read after it: which events the host reacted
    to. The socket only queues them during the span (no reader thread in this process,
    whose CPU is measured)."""

    def __init__(self) -> None:
        import pyudev

        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        self.monitor.set_receive_buffer_size(32 << 20)  # ~3 events per LUN of a target
        self.monitor.start()

    def tally(self, count: int = 8) -> list[tuple[str, int]]:
        """The commonest kinds: subsystem, action, and a SCSI event's SDEV_* variable."""
        kinds: dict[str, int] = {}
        try:
            while (device := self.monitor.poll(timeout=0)) is not None:
                sdev = " ".join(f"{k}={v}" for k, v in device.properties.items()
                                if k.startswith("SDEV_"))
                kind = f"{device.subsystem} {device.action}" + (f" {sdev}" if sdev else "")
                kinds[kind] = kinds.get(kind, 0) + 1
        except OSError as err:  # ENOBUFS: more than the buffer held
            kinds[f"lost ({err.strerror})"] = 1
        finally:
            del self.monitor  # libudev closes the socket with its last reference
        return sorted(kinds.items(), key=lambda kv: -kv[1])[:count]


class Timeline:
    """The engine's steps and the kernel's and udev's events during one operation, on
    one clock: where the time of an operation goes."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.start, 3), what))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        import pyudev

        observers = []
        for source in ("kernel", "udev"):
            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
            for subsystem in ("block", "scsi", "iscsi_session"):
                monitor.filter_by(subsystem)

            def seen(device: Any, source: str = source) -> None:
                self.mark(f"{source:6} {device.action} {device.subsystem} {device.sys_name}")
            observers.append(pyudev.MonitorObserver(monitor, callback=seen))
        for o in observers:
            o.start()
        self.start = time.monotonic()
        try:
            yield
        finally:
            for o in observers:
                o.send_stop()


class Engine(Protocol):
    name: str
    timeline: Timeline | None

    def commands(self) -> int: ...

    async def attach(self, export: AnyExport) -> Any: ...

    async def detach(self, export: AnyExport, handle: Any) -> None: ...


def measure(engine: Engine, work: Callable[[], Coroutine[Any, Any, Any]]
            ) -> tuple[Sample, Any]:
    cmds, cpu, (gcpu, forks) = engine.commands(), _own_cpu(), _guest_stat()
    start = time.monotonic()
    result = LOOP.run_until_complete(work())
    wall = time.monotonic() - start
    gcpu2, forks2 = _guest_stat()
    return Sample(round(wall, 3), round(_own_cpu() - cpu, 3), round(gcpu2 - gcpu, 2),
                  engine.commands() - cmds, forks2 - forks), result


# ---- the engines -------------------------------------------------------------------

class Native:
    name = "native"

    def __init__(self, locks: str) -> None:
        self.timeline: Timeline | None = None
        self.executor = AsyncExecutor()
        udev, mpd, fs = PyudevWatcher(), SocketClient(), HostFS("/")
        self.iscsi = IscsiConnector(self.executor, fs, udev, mpd,
                                    options=IscsiOptions(device_timeout=WAIT))
        self.fc = FcConnector(self.executor, fs, udev, mpd)

    def commands(self) -> int:
        return self.executor.calls

    def _engine(self, export: AnyExport) -> IscsiConnector | FcConnector:
        return self.fc if isinstance(export, FcExport) else self.iscsi

    def _progress(self, phase: str) -> None:
        if self.timeline is not None:
            self.timeline.mark(f"agent  {phase}")

    async def attach(self, export: AnyExport) -> Device:
        return await self._engine(export).attach(parse(export.connection_info), multipath=True,
                                                 progress=self._progress)

    async def detach(self, export: AnyExport, handle: Any) -> None:
        await self._engine(export).detach(parse(export.connection_info), handle,
                                          progress=self._progress)


class Brick:
    name = "os-brick"

    def __init__(self, locks: str) -> None:
        self.timeline: Timeline | None = None
        self.counter = CommandCounter()
        factory = os_brick_factory(BrickOptions(lock_path=locks), self.counter)
        self.iscsi = BrickConnector(ISCSI, HostFS("/"), factory)
        self.fc = BrickConnector(FIBRE_CHANNEL, HostFS("/"), factory)

    def commands(self) -> int:
        return self.counter.calls

    def _engine(self, export: AnyExport) -> BrickConnector:
        return self.fc if isinstance(export, FcExport) else self.iscsi

    async def attach(self, export: AnyExport) -> Device:
        return await self._engine(export).attach(parse(export.connection_info), multipath=True)

    async def detach(self, export: AnyExport, handle: Any) -> None:
        await self._engine(export).detach(parse(export.connection_info), handle)


class Direct:
    """The kernel work alone: records, one login per target (iscsiadm logs in every
    portal of it at once) with the kernel's own LUN scan, multipathd building the
    map by itself (find_multipaths no); the map removed over multipathd's socket,
    the disks deleted in sysfs, one logout per target and its records removed."""

    name = "direct"

    def __init__(self, locks: str) -> None:
        self.timeline: Timeline | None = None
        self.udev, self.mpd, self.fs = PyudevWatcher(), SocketClient(), HostFS("/")
        self.calls = 0

    def commands(self) -> int:
        return self.calls

    async def _run(self, *argv: str) -> None:
        for attempt in range(3):
            self.calls += 1
            if self.timeline is not None:
                self.timeline.mark("agent  " + " ".join(argv[:2] + argv[-1:]))
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            # 6: iscsiadm walked the node database while a concurrent one changed it.
            if proc.returncode != 6 or attempt == 2:
                break
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)}: rc {proc.returncode}: {err.decode()}")

    def _map(self, wwid: str, paths: int) -> str | None:
        for dm in Path("/sys/block").glob("dm-*"):
            uuid_file = dm / "dm" / "uuid"
            if uuid_file.exists() and uuid_file.read_text().strip() == f"mpath-{wwid}":
                ok = len(os.listdir(dm / "slaves")) == paths
                # As the native engine: the map counts once udev has processed it.
                return dm.name if ok and block_initialized(self.fs, dm.name) else None
        return None

    async def _await_map(self, wwid: str, paths: int) -> str:
        return await self.udev.wait(lambda: self._map(wwid, paths), timeout=WAIT,
                                    what=f"map {wwid}")

    def _sessions(self, iqn: str) -> list[scsi.IscsiSession]:
        return [s for s in scsi.iscsi_sessions(self.fs) if s.iqn == iqn]

    async def attach(self, export: AnyExport) -> str:
        if isinstance(export, FcExport):
            return await self._attach_fc(export)
        data = export.connection_info["data"]
        live = self._sessions(export.iqn)
        if live:  # a K2 LUN on live sessions: a targeted scan of it on each
            for s in live:
                scsi.scan_lun(self.fs, s.host, 0, s.target_id, export.lun)
        elif data.get("target_portals"):
            await asyncio.gather(*(self._run("iscsiadm", "-m", "node", "-T", export.iqn,
                                             "-p", p, "-o", "new")
                                   for p in data["target_portals"]))
            await self._run("iscsiadm", "-m", "node", "-T", export.iqn, "--login")
        else:  # K2: SendTargets makes the records of every portal
            await self._run("iscsiadm", "-m", "discovery", "-t", "st", "-p",
                            data["target_portal"])
            await self._run("iscsiadm", "-m", "node", "-T", export.iqn, "--login")
        return await self._await_map(export.wwid, 2)

    async def _attach_fc(self, export: FcExport) -> str:
        from hostagent.host import fc
        for rport in fc.remote_ports(self.fs):
            if rport.port_name in export.connection_info["data"]["target_wwn"] \
                    and rport.target_id is not None:
                scsi.scan_lun(self.fs, rport.host, rport.channel, rport.target_id, export.lun)
        return await self._await_map(export.wwid, 2)

    async def detach(self, export: AnyExport, handle: Any) -> None:
        disks = os.listdir(f"/sys/block/{handle}/slaves")
        hctls = [scsi.hctl_of_disk(self.fs, sd) for sd in disks]
        for attempt in range(3):
            # udev's blkid may still hold a map that was just made: multipathd says
            # "fail" (the native engine retries the same way).
            answer = await self.mpd.command(f"del map {export.wwid}", timeout=60)
            if answer.strip() == "ok":
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            raise RuntimeError(f"multipathd del map {export.wwid}: {answer}")
        for hctl in hctls:
            if hctl:
                scsi.delete_device(self.fs, hctl)
        if isinstance(export, FcExport):
            return
        if not any(scsi.devices_on_host(self.fs, s.host) for s in self._sessions(export.iqn)):
            await self._run("iscsiadm", "-m", "node", "-T", export.iqn, "--logout")
            # What `iscsiadm -o delete` does, without a process (and without walking
            # the database while concurrent detaches change it).
            shutil.rmtree(f"/etc/iscsi/nodes/{export.iqn}", ignore_errors=True)


def reset_host() -> None:
    """After a failed case: the maps, sessions and records it left would skew the
    next cases or break them (a K2 LUN scanned on a leftover session joins the map
    another engine is building)."""
    for argv in (["multipath", "-F"], ["iscsiadm", "-m", "node", "-u"],
                 ["iscsiadm", "-m", "node", "-o", "delete"]):
        subprocess.run(argv, check=False, capture_output=True, timeout=120)


# ---- the cases --------------------------------------------------------------------

Results = dict[str, dict[str, list[Sample]]]  # operation -> engine -> samples


@dataclass
class Bench:
    array: IscsiArray
    engines: dict[str, Engine]
    results: Results = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    timelines: dict[str, list[str]] = field(default_factory=dict)  # case (a) attach, 1st rep
    fc_array: FcArray | None = None
    scale: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # (f) by engine
    max_n: int = 128
    profile_health: bool = False  # (f): one more health round per point, under cProfile
    f_budget: float = 0.0  # (f): seconds an engine's ramp may take before it stops (0: none)

    def record(self, op: str, engine: str, sample: Sample) -> None:
        self.results.setdefault(op, {}).setdefault(engine, []).append(sample)
        print(f"  {op:<34} {engine:<8} {sample.wall:7.2f} s  cpu {sample.cpu:6.2f} s  "
              f"guest cpu {sample.guest_cpu:6.2f} s  commands {sample.commands}", flush=True)

    def run(self, case: str, engine: Engine) -> None:
        """One case on one engine; a failure is noted and the run goes on."""
        try:
            getattr(self, f"case_{case}")(engine)
        except Exception as err:  # a benchmark reports a failed case, it does not stop
            note = f"{type(err).__name__}: {err}"[:300]
            self.notes[f"{case}-{engine.name}-failed-{len(self.notes)}"] = note
            print(f"  case {case} on {engine.name} FAILED: {note}", flush=True)
            reset_host()

    def case_a(self, engine: Engine) -> None:
        export = self.array.export_datera()
        try:
            s, dev = measure(engine, lambda: engine.attach(export))
            self.record("a: 2-portal attach from nothing", engine.name, s)
            s, _ = measure(engine, lambda: engine.detach(export, dev))
            self.record("a: its detach", engine.name, s)
        finally:
            self.array.unexport(export)

    def warm_up(self, engine: Engine) -> None:
        """One attach and detach not counted: a running agent has loaded its code
        (os-brick imports more at its first call) and made its iface."""
        export = self.array.export_datera()
        try:
            _, dev = measure(engine, lambda: engine.attach(export))
            measure(engine, lambda: engine.detach(export, dev))
        finally:
            self.array.unexport(export)

    def timeline_a(self, engine: Engine) -> None:
        """One more case (a) attach, not counted (the watching costs CPU), with the
        engine's steps against the kernel's and udev's events."""
        export = self.array.export_datera()
        timeline = Timeline()
        try:
            with timeline.watching():
                engine.timeline = timeline
                _, dev = measure(engine, lambda: engine.attach(export))
                path = dev.path if isinstance(dev, Device) else dev
                timeline.mark(f"agent  attach returned {path}")
            engine.timeline = None
            self.timelines[engine.name] = [f"{t:7.3f} {e}" for t, e in timeline.events]
            measure(engine, lambda: engine.detach(export, dev))
        finally:
            engine.timeline = None
            self.array.unexport(export)

    def case_b(self, engine: Engine) -> None:
        exports = [self.array.export_datera() for _ in range(8)]
        try:
            async def attach_all() -> list[Any]:
                return list(await asyncio.gather(*(engine.attach(e) for e in exports)))
            s, devs = measure(engine, attach_all)
            self.record("b: 8 attaches together (total)", engine.name, s)

            async def detach_all() -> None:
                await asyncio.gather(*(engine.detach(e, d)
                                       for e, d in zip(exports, devs, strict=True)))
            s, _ = measure(engine, detach_all)
            self.record("b: the 8 detaches together", engine.name, s)
        finally:
            for e in exports:
                self.array.unexport(e)

    def profile_b(self, engine: Engine) -> str:
        """One more case (b) on `engine`, not counted, under cProfile: where the
        engine's own CPU time goes when 8 attaches and detaches run together."""
        counted, self.results = self.results, {}
        profile = cProfile.Profile()
        profile.enable()
        try:
            self.case_b(engine)
        finally:
            profile.disable()
            self.results = counted
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        return out.getvalue()

    def case_c(self, engine: Engine) -> None:
        # Each LUN is exported just before its attach: a login's own scan must not
        # find the later LUNs already there.
        done: list[tuple[Export, Any]] = []
        total = Sample(0, 0, 0, 0, 0)
        try:
            for i in range(8):
                export = self.array.export_k2()
                s, dev = measure(engine, lambda e=export: engine.attach(e))  # type: ignore[misc]
                done.append((export, dev))
                total = _add(total, s)
                if i:
                    self.record("c: a K2 LUN on live sessions", engine.name, s)
            self.record("c: 8 K2 attaches in turn (total)", engine.name, total)
            total = Sample(0, 0, 0, 0, 0)
            for i, (export, dev) in enumerate(done):
                s, _ = measure(engine, lambda e=export, d=dev: engine.detach(e, d))  # type: ignore[misc]
                total = _add(total, s)
                if i < len(done) - 1:
                    self.record("c: K2 detach, sessions kept", engine.name, s)
            self.record("c: the 8 K2 detaches (total)", engine.name, total)
        finally:
            for export, _ in done:
                self.array.unexport(export)

    def case_d(self, engine: Engine) -> None:
        if engine.name == "os-brick":
            self.notes["d"] = f"os-brick: not possible: {BRICK_FC}"
            return
        assert self.fc_array is not None
        export = self.fc_array.export()
        try:
            s, dev = measure(engine, lambda: engine.attach(export))
            self.record("d: FC 2-path attach", engine.name, s)
            s, _ = measure(engine, lambda: engine.detach(export, dev))
            self.record("d: FC detach", engine.name, s)
        finally:
            self.fc_array.unexport(export)

    # ---- (f): growth with the number of volumes ----------------------------------
    def case_f(self, engine: Engine) -> None:
        if engine.name == "direct":
            self.notes["f-direct"] = "direct: not measured (no agent: no service, health or API)"
            return
        LOOP.run_until_complete(self._case_f(engine))

    async def _case_f(self, engine: Engine) -> None:
        from aiohttp.test_utils import TestClient, TestServer

        from hostagent.api.app import make_app
        from hostagent.health import HealthMonitor, HealthOptions

        root = Path(tempfile.mkdtemp(prefix="hostagent-bench-f-"))
        store = Store(root / "state")
        connector = engine.iscsi  # type: ignore[attr-defined]
        marks: list[tuple[float, str]] = []  # the phases of the operation under way
        service = Service(store, {ISCSI: connector},
                          on_phase=lambda phase: marks.append((time.monotonic(), phase)))
        executor = getattr(engine, "executor", None)
        metrics = Metrics(attachments=lambda: {a.status.value: 1 for a in store.list()},
                          commands=(lambda: executor.counts) if executor else dict)
        monitor = HealthMonitor(service, HostFS("/"), SocketClient(), metrics=metrics,
                                options=HealthOptions(probe=True, self_heal=False))
        # The same round without the O_DIRECT reads: the observation's own cost apart
        # from the reads' (whose kernel side here includes the LIO array's).
        bare = HealthMonitor(service, HostFS("/"), SocketClient(),
                             options=HealthOptions(probe=False, self_heal=False))
        app = make_app(service, peer_check=None, preflight=None,  # type: ignore[arg-type]
                       health=monitor, metrics=metrics)
        rows: list[dict[str, Any]] = []
        done: list[tuple[Export, str]] = []
        self.scale[engine.name] = rows
        try:
            async with TestClient(TestServer(app)) as client:
                stop = None
                started = time.monotonic()
                for n in range(1, self.max_n + 1):
                    free = _mem_available_mib()
                    if free < MIN_FREE_MIB:
                        stop = f"stopped before N={n}: MemAvailable {free} MiB < {MIN_FREE_MIB}"
                        break
                    if self.f_budget and time.monotonic() - started > self.f_budget:
                        stop = (f"stopped before N={n}: the ramp took "
                                f"{time.monotonic() - started:.0f} s, over --f-budget "
                                f"{self.f_budget:g} s")
                        if rows and "health" not in rows[-1]:  # the last N measured in full
                            rows[-1].update(await _f_point(client, monitor, bare, engine))
                        break
                    export = (self.array.export_datera(size_mb=16) if n % 4 == 0
                              else self.array.export_k2(size_mb=16))
                    att_id = f"f-{engine.name}-{n}"
                    spec = parse(export.connection_info)
                    req = AttachRequest(att_id, export.connection_info, spec, None, True, WAIT)
                    before, uevents = _proc_ticks(), Uevents()  # outside the measured span
                    s, spans = await _phased(engine, lambda r=req: service.attach(r), marks)  # type: ignore[misc]
                    top, kinds = _top_cpu(before, _proc_ticks()), uevents.tally()
                    done.append((export, att_id))
                    row: dict[str, Any] = {"n": n, "kind": export.personality,
                                           "attach": asdict(s), "mem_available_mib": free,
                                           "guest_top": top, "uevents": kinds,
                                           "attach_spans": spans}
                    rows.append(row)
                    self.record(f"f: attach N={n}", engine.name, s)
                    if n in F_POINTS or n % 8 == 7:
                        print(f"    its phases (s): {spans}", flush=True)
                        print(f"    guest CPU of that attach by process: {top}", flush=True)
                        print(f"    kernel uevents during it: {kinds}", flush=True)
                    if n in F_POINTS or n == self.max_n:
                        row.update(await _f_point(client, monitor, bare, engine))
                        if self.profile_health:  # an uncounted round
                            await _profiled(monitor.check, f"health-{engine.name}-n{n}")
                        print(f"  f {engine.name} N={n}: health {row['health']['wall']:.2f} s "
                              f"(cpu {row['health']['cpu']:.2f} s, {row['health']['paths']} "
                              f"paths; cpu {row['health']['cpu_no_probe']:.2f} s without "
                              f"probes), /metrics {row['metrics_ms']:.1f} ms, GET "
                              f"{row['list_ms']:.1f} ms, RSS {row['rss_kib'] / 1024:.1f} MiB",
                              flush=True)
                    if self.profile_health and n == 1:  # the bottom, against the top's below
                        await self._profile_one_more(service, engine, n + 1)
                if stop:
                    self.notes[f"f-{engine.name}-limit"] = stop
                    print(f"  f {engine.name}: {stop}", flush=True)
                if self.profile_health and done:  # the top, however far the ramp got
                    await self._profile_one_more(service, engine, len(done) + 1)
                while done:
                    export, att_id = done[-1]
                    n = len(done)
                    s, rows[n - 1]["detach_spans"] = await _phased(
                        engine, lambda a=att_id: service.detach(a), marks)  # type: ignore[misc]
                    done.pop()
                    self.array.unexport(export)
                    rows[n - 1]["detach"] = asdict(s)
                    self.record(f"f: detach N={n}", engine.name, s)
        finally:
            for export, att_id in reversed(done):  # after a failure: what is left
                with contextlib.suppress(Exception):
                    await service.detach(att_id, force=True)
                with contextlib.suppress(Exception):
                    self.array.unexport(export)
            store.close()
            shutil.rmtree(root, ignore_errors=True)


    async def _profile_one_more(self, service: Service, engine: Engine, n: int) -> None:
        """One more K2 attach and its detach under cProfile, uncounted, as the n-th, then
        one Datera (a target of its own: a login and a logout): where the time of an
        attach goes at the ramp's bottom and top."""
        att_id = f"f-{engine.name}-profiled"
        for kind in ("k2", "datera"):
            export = (self.array.export_k2(size_mb=16) if kind == "k2"
                      else self.array.export_datera(size_mb=16))
            req = AttachRequest(att_id, export.connection_info, parse(export.connection_info),
                                None, True, WAIT)
            name = f"{engine.name}-n{n}" if kind == "k2" else f"{engine.name}-datera-n{n}"
            try:
                await _profiled(functools.partial(service.attach, req), f"attach-{name}")
                await _profiled(functools.partial(service.detach, att_id), f"detach-{name}")
            finally:
                with contextlib.suppress(Exception):
                    await service.detach(att_id, force=True)
                self.array.unexport(export)

F_POINTS = (1, 16, 32, 64, 128)
MIN_FREE_MIB = 160  # the guest has 2 GiB; below this a ramp stops, said in the notes


async def _phased(engine: Engine, work: Callable[[], Coroutine[Any, Any, Any]],
                  marks: list[tuple[float, str]]) -> tuple[Sample, list[list[Any]]]:
    """_ameasure() of `work`, and its wall time by phase from the `marks` the Service's
    phase hook appends to."""
    marks.clear()
    start = time.monotonic()
    sample = await _ameasure(engine, work)
    return sample, _spans(start, time.monotonic(), marks)


def _spans(start: float, end: float, marks: list[tuple[float, str]]) -> list[list[Any]]:
    """An operation's wall time by phase: [phase, seconds from its mark to the next],
    the span before the first mark as "starting". A phase naming a disk, an hctl or a
    portal goes by its first word (the two portals' phases interleave)."""
    points = [(start, "starting"), *marks, (end, "")]
    return [[_phase_kind(p), round(t2 - t1, 3)]
            for (t1, p), (t2, _) in itertools.pairwise(points)]


def _phase_kind(phase: str) -> str:
    word = phase.split(" ", 1)[0]
    return {"scanning": "scanning", "disk": "disk ready"}.get(word, phase)


def _mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


async def _ameasure(engine: Engine, work: Callable[[], Coroutine[Any, Any, Any]]) -> Sample:
    """measure() from inside the running loop."""
    cmds, cpu, (gcpu, forks) = engine.commands(), _own_cpu(), _guest_stat()
    start = time.monotonic()
    await work()
    wall = time.monotonic() - start
    gcpu2, forks2 = _guest_stat()
    return Sample(round(wall, 3), round(_own_cpu() - cpu, 3), round(gcpu2 - gcpu, 2),
                  engine.commands() - cmds, forks2 - forks)


async def _f_point(client: Any, monitor: Any, bare: Any, engine: Engine) -> dict[str, Any]:
    """One health round (and one without read probes), one /metrics scrape, one GET
    /v1/attachments, the RSS."""
    cpu, t0 = _own_cpu(), time.monotonic()
    report = await monitor.check()
    health = {"wall": round(time.monotonic() - t0, 3), "cpu": round(_own_cpu() - cpu, 3),
              "paths": sum(len(h.paths) for h in report.attachments),
              "up": sum(p.state == "up" for h in report.attachments for p in h.paths),
              "verdict": report.verdict.value}
    cpu, t0 = _own_cpu(), time.monotonic()
    await bare.check()
    health.update(wall_no_probe=round(time.monotonic() - t0, 3),
                  cpu_no_probe=round(_own_cpu() - cpu, 3))
    t0 = time.monotonic()
    resp = await client.get("/metrics")
    assert resp.status == 200, resp.status
    await resp.read()
    metrics_ms = (time.monotonic() - t0) * 1000
    t0 = time.monotonic()
    resp = await client.get("/v1/attachments")
    assert resp.status == 200, resp.status
    await resp.read()
    list_ms = (time.monotonic() - t0) * 1000
    return {"health": health, "metrics_ms": round(metrics_ms, 2), "list_ms": round(list_ms, 2),
            "rss_kib": _rss_kib(os.getpid())}


async def _profiled(work: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
    """`work` under cProfile (uncounted), its stats in results/bench-profile-f-<name>.txt."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        await work()
    finally:
        profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    (RESULTS / f"bench-profile-f-{name}.txt").write_text(out.getvalue())


def table_f(scale: dict[str, list[dict[str, Any]]]) -> str:
    """(f) at the measured points: the N-th attach and detach, health, API, RSS."""
    lines = ["| N | engine | attach wall s | attach CPU s | attach cmds | attach guest CPU s "
             "| detach wall s | detach CPU s | detach cmds | health round wall / CPU s (paths) "
             "| without probes wall / CPU s "
             "| /metrics ms | GET /v1/attachments ms | RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for engine, rows in scale.items():
        for row in rows:
            if "health" not in row:
                continue
            a, d, h = row["attach"], row.get("detach"), row["health"]
            det = (f"{d['wall']:.2f} | {d['cpu']:.2f} | {d['commands']}" if d
                   else "n/a | n/a | n/a")
            lines.append(f"| {row['n']} ({row['kind']}) | {engine} | {a['wall']:.2f} | "
                         f"{a['cpu']:.2f} | {a['commands']} | {a['guest_cpu']:.2f} | {det} | "
                         f"{h['wall']:.2f} / {h['cpu']:.2f} ({h['paths']}) | "
                         f"{h.get('wall_no_probe', 0):.2f} / {h.get('cpu_no_probe', 0):.2f} | "
                         f"{row['metrics_ms']:.1f} | {row['list_ms']:.1f} | "
                         f"{row['rss_kib'] / 1024:.1f} |")
    lines += ["", "Medians over the K2 attaches / detaches of each quarter of the ramp "
              "(Datera ones log in and cost more):", "",
              "| engine | N range | K2 attach wall s | K2 attach CPU s | K2 detach wall s "
              "| K2 detach CPU s |", "|---|---|---|---|---|---|"]
    for engine, rows in scale.items():
        k2 = [r for r in rows if r["kind"] == "k2"]
        if not k2:
            continue
        for lo, hi in _quarters(rows):
            part = [r for r in k2 if lo <= r["n"] < hi]
            if not part:
                continue

            def med(key: str, what: str, part: list[dict[str, Any]] = part) -> str:
                vals = [r[key][what] for r in part if key in r]
                return f"{statistics.median(vals):.2f}" if vals else "n/a"
            lines.append(f"| {engine} | {lo}-{hi - 1} | {med('attach', 'wall')} | "
                         f"{med('attach', 'cpu')} | {med('detach', 'wall')} | "
                         f"{med('detach', 'cpu')} |")
    for op in ("attach", "detach"):
        lines += ["", f"Where a K2 {op}'s wall time goes: median seconds in each phase, "
                  "by quarter of the ramp:", "", *_span_table(scale, f"{op}_spans")]
    return "\n".join(lines)


def _quarters(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    top = max(r["n"] for r in rows)
    return list(itertools.pairwise(sorted({1, *(max(1, top * q // 4) for q in (1, 2, 3)),
                                           top + 1})))


def _span_table(scale: dict[str, list[dict[str, Any]]], key: str) -> list[str]:
    """Median seconds per phase kind (summed within one operation) per quarter."""
    out: list[str] = []
    for engine, rows in scale.items():
        k2 = [r for r in rows if r["kind"] == "k2" and key in r]
        if not k2:
            continue
        kinds = list(dict.fromkeys(k for r in k2 for k, _ in r[key]))
        out += [f"| {engine} | " + " | ".join(kinds) + " |",
                "|---|" + "---|" * len(kinds)]
        for lo, hi in _quarters(rows):
            part = [r for r in k2 if lo <= r["n"] < hi]
            if not part:
                continue
            sums = [{k: sum(v for kk, v in r[key] if kk == k) for k in kinds} for r in part]
            out.append(f"| {lo}-{hi - 1} | " + " | ".join(
                f"{statistics.median(x[k] for x in sums):.3f}" for k in kinds) + " |")
        out.append("")
    return out


def plot_f(scale: dict[str, list[dict[str, Any]]], out: Path) -> str:
    """Per-attach (and per-detach) wall and CPU time against N, both engines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"no plot: {err}"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for engine, rows in scale.items():
        for ax, key in zip(axes, ("attach", "detach"), strict=True):
            pts = [(r["n"], r[key]) for r in rows if key in r]
            for kind, mark in (("k2", "o"), ("datera", "^")):
                sel = [(n, v) for n, v in pts if rows[n - 1]["kind"] == kind]
                if sel:
                    ax.plot([n for n, _ in sel], [v["wall"] for _, v in sel], mark,
                            markersize=3, label=f"{engine} {kind} wall")
            ax.plot([n for n, _ in pts], [v["cpu"] for _, v in pts], "-", linewidth=1,
                    label=f"{engine} CPU (agent+children)")
    for ax, key in zip(axes, ("attach", "detach"), strict=True):
        ax.set_xlabel("N (volumes attached, counting this one)")
        ax.set_ylabel("seconds")
        ax.set_title(f"the N-th {key}")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return str(out)


def _add(a: Sample, b: Sample) -> Sample:
    return Sample(round(a.wall + b.wall, 3), round(a.cpu + b.cpu, 3),
                  round(a.guest_cpu + b.guest_cpu, 2), a.commands + b.commands,
                  a.forks + b.forks)


# ---- (e): the daemon's API ----------------------------------------------------------

def _rows(store: Store, count: int) -> None:
    """`count` attached volumes as the agent records them (their devices do not
    exist here: the agent marks them failed at start-up, and lists them all)."""
    now = time.time()
    device = device_from_dict({
        "path": "/dev/dm-900", "wwn": "36001405" + "0" * 25, "multipath": True,
        "size_bytes": 1 << 30, "missing": [], "iscsi_targets": [],
        "paths": [{"device": f"sd{c}", "hctl": f"{n}:0:0:0", "portal": f"10.0.0.{n}:3260",
                   "target": "iqn.2013-05.com.daterainc:tc:01:sn:x"}
                  for n, c in ((3, "a"), (4, "b"))]})
    for i in range(count):
        info = {"driver_volume_type": "iscsi", "data": {
            "target_iqn": f"iqn.2013-05.com.daterainc:tc:01:sn:{i:016x}",
            "target_portal": "10.0.0.3:3260", "target_lun": 0, "target_discovered": False}}
        store.put(Attachment(str(uuid.uuid4()), ISCSI, info, True, f"{i:064x}",
                             Status.ATTACHED, now, now, volume_id=f"vol-{i}", device=device))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def case_e(engine: str, requests: int, results: Results, notes: dict[str, str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="hostagent-bench-"))
    sock = str(root / "agent.sock")
    conf = root / "hostagent.conf"
    conf.write_text(f"[DEFAULT]\nsocket = {sock}\nstate_dir = {root / 'state'}\n"
                    f"lock_path = {root / 'locks'}\nsocket_group = 0\nengine = {engine}\n"
                    "log_level = WARNING\n")
    store = Store(root / "state")
    _rows(store, 100)
    store.close()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from hostagent.agent.daemon import "
                             "main; sys.exit(main())", "serve", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Client(sock, timeout=60)

        def answers() -> bool:
            try:
                return len(client.request("GET", "/v1/attachments")[1]) >= 0
            except ClientError:
                return False
        wait_until(answers, timeout=240, what="the agent's socket", interval=0.05)
        notes[f"e-start-{engine}"] = f"{time.monotonic() - start:.1f} s to serve"
        for _ in range(requests):
            gcpu, forks = _guest_stat()
            t0 = time.monotonic()
            status, body = client.request("GET", "/v1/attachments")
            wall = time.monotonic() - t0
            gcpu2, forks2 = _guest_stat()
            assert status == 200 and len(body["attachments"] if isinstance(body, dict)
                                         else body) == 100, status
            results.setdefault("e: GET /v1/attachments (100)", {}).setdefault(
                engine, []).append(Sample(round(wall, 4), 0, round(gcpu2 - gcpu, 2), 0,
                                          forks2 - forks))
        rss = _rss_kib(proc.pid) / 1024
        results.setdefault("e: daemon RSS (MiB)", {}).setdefault(engine, []).append(
            Sample(round(rss, 1), 0, 0, 0, 0))
        print(f"  e ({engine}): RSS {rss:.1f} MiB, {notes[f'e-start-{engine}']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)


# ---- the report ----------------------------------------------------------------------

def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(results: Results) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for op, by_engine in results.items():
        out[op] = {}
        for engine, samples in by_engine.items():
            out[op][engine] = {
                "n": len(samples),
                "wall": _stats([s.wall for s in samples]),
                "cpu": _stats([s.cpu for s in samples]),
                "guest_cpu": _stats([s.guest_cpu for s in samples]),
                "commands": statistics.median([s.commands for s in samples]),
                "forks": statistics.median([s.forks for s in samples]),
            }
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def table(summary: dict[str, dict[str, Any]], notes: dict[str, str]) -> str:
    def cell(op: str, engine: str, key: str) -> str:
        s = summary[op].get(engine)
        if s is None:
            return "n/a"
        w = s[key]
        digits = 3 if w["max"] < 0.1 else 2  # (e)'s round trips are milliseconds
        return " / ".join(f"{w[k]:.{digits}f}" for k in ("min", "median", "max"))

    def med(op: str, engine: str, key: str) -> float | None:
        s = summary[op].get(engine)
        return s[key]["median"] if s else None

    lines = ["| case | engine | wall s min / med / max | CPU s agent+children (med) "
             "| guest CPU s (med) | commands | guest forks |", "|---|---|---|---|---|---|---|"]
    for op in summary:
        for engine in ENGINES:
            s = summary[op].get(engine)
            if s is None:
                why = {"d": BRICK_FC, "e": "no lower-bound sequence of an API"}.get(
                    op[0], "not measured") if op[0] in "de" else "not measured"
                lines.append(f"| {op} | {engine} | n/a ({why}) | | | | |")
                continue
            lines.append(f"| {op} | {engine} | {cell(op, engine, 'wall')} | "
                         f"{s['cpu']['median']:.2f} | {s['guest_cpu']['median']:.2f} | "
                         f"{s['commands']:g} | {s['forks']:g} |")
    lines += ["", "| case | wall native/os-brick | wall native/direct | "
              "CPU native/os-brick | guest CPU native/os-brick |", "|---|---|---|---|---|"]
    pairs = (("wall", "os-brick"), ("wall", "direct"), ("cpu", "os-brick"),
             ("guest_cpu", "os-brick"))
    for op in summary:
        ratios = [_ratio(med(op, "native", key), med(op, other, key)) for key, other in pairs]
        lines.append(f"| {op} | " + " | ".join(ratios) + " |")
    if notes:
        lines += [""] + [f"- {k}: {v}" for k, v in sorted(notes.items())]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "?")
    return {"guest_kernel": platform.release(), "guest_cpus": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "os_brick": _version("os-brick"),
            "host_load_before": os.environ.get("BENCH_HOST_LOAD", "?")}


def _install_udev_rule() -> str:
    """hostagent's udev rule (`hostagent-cli multipath install` writes it): the guest's
    /etc is a tmpfs, so it goes with the guest."""
    done = asyncio.run(UdevRule(HostFS("/"), AsyncExecutor()).install())
    assert done.action == "written", done
    print(f"udev: {done.path} written (hostagent's rule), udev reloaded", flush=True)
    return done.path


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of (a) and (d)")
    parser.add_argument("--heavy-reps", type=int, default=1,
                        help="repetitions of (b) and (c), minutes each under emulation")
    parser.add_argument("--cases", default="abcde", help="which cases, e.g. 'ab'")
    parser.add_argument("--requests", type=int, default=50, help="GETs per daemon in (e)")
    parser.add_argument("--max-n", type=int, default=128,
                        help="(f): volumes attached at most (K2 LUNs, every 4th a Datera)")
    parser.add_argument("--profile-f", action="store_true",
                        help="(f): run native's ramp under cProfile (uncounted extra run)")
    parser.add_argument("--engines", default="native,os-brick,direct",
                        help="which engines, comma-separated (default: all three)")
    parser.add_argument("--f-budget", type=float, default=0,
                        help="(f): seconds one engine's attach ramp may take; it then stops "
                             "and says so (0: no limit)")
    parser.add_argument("--profile-health", action="store_true",
                        help="(f): at each measured N, one more health round under cProfile")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the extra, uncounted case (b) of native under cProfile")
    parser.add_argument("--udev-rule", "--udev-keep-lun-change", dest="udev_rule",
                        action="store_true",
                        help="install hostagent's udev rule first (as `multipath install` "
                             "does): a SCSI device's REPORTED LUNS DATA HAS CHANGED event "
                             "is not forwarded to its disk")
    args = parser.parse_args(argv)
    guest = guest_mod.prepare()
    workdir = Path(tempfile.mkdtemp(prefix="hostagent-bench-array-"))
    locks = tempfile.mkdtemp(prefix="hostagent-bench-locks-")
    engines: list[Engine] = [e for e in (Native(locks), Brick(locks), Direct(locks))
                             if e.name in args.engines.split(",")]
    bench = Bench(IscsiArray(guest, portals=2, workdir=workdir), {e.name: e for e in engines},
                  max_n=args.max_n, profile_health=args.profile_health,
                  f_budget=args.f_budget)
    if args.udev_rule:  # before the first attach
        bench.notes["udev"] = (f"hostagent's rule ({_install_udev_rule()}): REPORTED LUNS "
                               "DATA HAS CHANGED not forwarded to the disks")
    fabric = None
    if "d" in args.cases:
        fabric = FcFabric(links=2)
        fabric.start()
        bench.fc_array = FcArray(fabric, workdir)
    started = time.monotonic()
    try:
        for engine in engines:
            bench.warm_up(engine)
        for rep in range(max(args.reps, args.heavy_reps)):
            order = engines[rep % 3:] + engines[:rep % 3]  # interleaved, rotating
            print(f"== repetition {rep + 1}: {', '.join(e.name for e in order)}", flush=True)
            for case in "abcdf":
                reps = args.heavy_reps if case in "bcf" else args.reps
                if case in args.cases and rep < reps:
                    for engine in order:
                        bench.run(case, engine)
        if "a" in args.cases:
            for engine in engines:
                bench.timeline_a(engine)
        if "b" in args.cases and args.profile:
            profile = bench.profile_b(engines[0])
            (RESULTS / "bench-profile-b-native.txt").write_text(profile)
        if "f" in args.cases and args.profile_f:
            counted, bench.results = bench.results, {}
            scale = bench.scale
            bench.scale = {}
            profile = cProfile.Profile()
            profile.enable()
            try:
                bench.run("f", engines[0])
            finally:
                profile.disable()
                bench.results, bench.scale = counted, scale
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).strip_dirs()
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(50)
            (RESULTS / "bench-profile-f-native.txt").write_text(out.getvalue())
        if "e" in args.cases:
            for name in ("native", "os-brick"):
                try:
                    case_e(name, args.requests, bench.results, bench.notes)
                except Exception as err:
                    bench.notes[f"e-{name}-failed"] = f"{type(err).__name__}: {err}"[:300]
    finally:
        bench.array.close()
        if bench.fc_array is not None:
            bench.fc_array.close()
        if fabric is not None:
            fabric.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if bench.scale:
        bench.notes["f-plot"] = plot_f(bench.scale, RESULTS / f"bench-f-{stamp}.png")
        # The per-N rows are in the (f) table and the JSON's "scale", not the main table.
        bench.results = {op: by for op, by in bench.results.items() if not op.startswith("f:")}
    summary = summarize(bench.results)
    text = table(summary, bench.notes)
    if bench.scale:
        text += "\n\n" + table_f(bench.scale)
    print("\n" + text)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps({
        "machine": machine(), "reps": args.reps, "cases": args.cases,
        "seconds": round(time.monotonic() - started), "summary": summary, "notes": bench.notes,
        "timelines_a_attach": bench.timelines, "max_n": args.max_n, "scale": bench.scale,
        "samples": {op: {e: [asdict(s) for s in ss] for e, ss in by.items()}
                    for op, by in bench.results.items()}}, indent=2))
    (RESULTS / "bench-table.md").write_text(text + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
