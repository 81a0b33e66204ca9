"""`hostagent serve`: the agent on its Unix socket.

Start-up order matters: the state store and the reconcile run before the socket
accepts anyone, so no request meets a half-finished operation from before a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import grp
import logging
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass, replace

from aiohttp import web

from hostagent import __version__, config
from hostagent.agent import crashhook, logs
from hostagent.agent.metrics import Metrics, report_preflight
from hostagent.agent.restore import RestorePolicy, Restorer
from hostagent.agent.service import Service
from hostagent.agent.state import Store, claim_directory
from hostagent.api.app import make_app
from hostagent.api.peer import PeerCheck
from hostagent.config import Config
from hostagent.connection_info import FIBRE_CHANNEL, ISCSI
from hostagent.connectors.base import Connector
from hostagent.connectors.brick import BrickOptions, brick_connectors
from hostagent.connectors.fc import FcConnector, FcOptions
from hostagent.connectors.iscsi import IscsiConnector, IscsiOptions
from hostagent.connectors.locks import TargetLocks, preload
from hostagent.errors import HostAgentError
from hostagent.exitcodes import ExitCode
from hostagent.health import HealthMonitor, HealthOptions
from hostagent.host.clock import SystemClock
from hostagent.host.executor import AsyncExecutor, Executor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import MultipathdClient, SocketClient
from hostagent.host.net import HostNet
from hostagent.host.proc import supplementary_groups
from hostagent.host.udev import PyudevWatcher
from hostagent.node.mpathconf import MultipathConfig
from hostagent.node.preflight import Preflight
from hostagent.node.udevrule import UdevRule

log = logging.getLogger("hostagent.daemon")


@dataclass
class Agent:
    config: Config
    service: Service
    store: Store
    peer_check: PeerCheck
    preflight: Preflight
    health: HealthMonitor | None = None
    metrics: Metrics | None = None


def build(cfg: Config, fs: HostFS | None = None) -> Agent:
    fs = fs or HostFS("/")
    os.makedirs(cfg.lock_path, mode=0o700, exist_ok=True)
    executor = AsyncExecutor(max_parallel=cfg.max_parallel_commands)
    clock = SystemClock()
    # One udev watcher and one lock table for both engines (IQNs and WWPNs never collide).
    udev, locks, multipathd = PyudevWatcher(clock=clock), TargetLocks(cfg.lock_path), SocketClient()
    hook = crashhook.from_environment()  # kernel tests of crash recovery
    run, mpd = _engine_seams(executor, multipathd, hook)
    iscsi = IscsiConnector(
        run, fs, udev, mpd, locks=locks, clock=clock,
        options=IscsiOptions(iface=cfg.iface, login_timeout=cfg.login_timeout,
                             login_attempts=cfg.login_attempts,
                             portal_retry_interval=cfg.portal_retry_interval,
                             rediscover_after=cfg.rediscover_after,
                             device_timeout=cfg.device_timeout,
                             command_timeout=cfg.command_timeout, my_ip=cfg.my_ip))
    fc = FcConnector(run, fs, udev, mpd, locks=locks, clock=clock,
                     options=FcOptions(device_timeout=cfg.device_timeout,
                                       command_timeout=cfg.command_timeout, my_ip=cfg.my_ip))
    connectors: dict[str, Connector] = {ISCSI: iscsi, FIBRE_CHANNEL: fc}
    if cfg.engine == "os-brick":  # loads os-brick now, not at the first attach
        connectors = brick_connectors(fs, BrickOptions(lock_path=cfg.lock_path), connectors)
    store = Store(cfg.state_dir)
    metrics = Metrics(attachments=lambda: Counter(a.status.value for a in store.list()),
                      commands=lambda: executor.counts, socket_calls=lambda: multipathd.calls)
    service = Service(store, connectors, multipath=cfg.multipath,
                      attach_timeout=cfg.attach_timeout, detach_timeout=cfg.detach_timeout,
                      detached_retention=cfg.detached_retention,
                      observe=metrics.observe_operation,
                      on_phase=hook.phase if hook is not None else None,
                      restore=cfg.restore)
    health = HealthMonitor(service, fs, multipathd, metrics=metrics, clock=clock,
                           command_timeout=cfg.command_timeout, options=HealthOptions(
                               interval=cfg.health_interval, self_heal=cfg.self_heal,
                               heal_interval=cfg.heal_interval, probe=cfg.probe_read,
                               probe_timeout=cfg.probe_timeout))
    preflight = Preflight(fs, executor, multipathd, HostNet(),
                          MultipathConfig(fs, executor, multipathd), UdevRule(fs, executor),
                          observe=report_preflight,
                          my_ip=cfg.my_ip)
    peers = PeerCheck(functools.partial(supplementary_groups, fs), cfg.allowed_uids(),
                      cfg.allowed_gids())
    return Agent(cfg, service, store, peers, preflight, health, metrics)


def _engine_seams(executor: Executor, multipathd: MultipathdClient,
                  hook: crashhook.CrashHook | None) -> tuple[Executor, MultipathdClient]:
    """The engines' seams; under the crash test hook, each of their host commands
    is a place to die (health checks and preflight stay out of the count)."""
    if hook is None:
        return executor, multipathd
    return crashhook.CrashingExecutor(executor, hook), crashhook.CrashingMultipathd(
        multipathd, hook)


def _socket_group(name: str) -> int | None:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def prepare_socket(cfg: Config) -> None:
    directory = os.path.dirname(cfg.socket)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cfg.socket)  # a stale socket of an earlier run


def secure_socket(cfg: Config) -> None:
    gid = _socket_group(cfg.socket_group)
    if gid is None:
        log.warning("group %r does not exist: the socket stays root-only", cfg.socket_group)
    else:
        os.chown(cfg.socket, 0, gid)
    os.chmod(cfg.socket, cfg.socket_mode)


async def serve(cfg: Config) -> None:
    claim_directory(cfg.state_dir)  # before anything: a second daemon touches nothing
    agent = build(cfg)
    counts = await agent.service.reconcile()
    if counts["failed"]:
        log.error("%d attachments could not be reconciled; see above", counts["failed"])
    app = make_app(agent.service, peer_check=agent.peer_check, preflight=agent.preflight,
                   health=agent.health, metrics=agent.metrics,
                   max_body_bytes=cfg.max_body_bytes)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    prepare_socket(cfg)
    old_umask = os.umask(0o177)  # no window in which the socket is open to all
    try:
        site = web.UnixSite(runner, cfg.socket)
        await site.start()
    finally:
        os.umask(old_umask)
    secure_socket(cfg)
    log.info("hostagent %s serving on %s (engine %s, multipath %s)", __version__, cfg.socket,
             cfg.engine, "on" if cfg.multipath else "off")
    # While the API serves: a restore waits on the array, and `hostagent-cli wait` asks.
    policy = RestorePolicy(timeout=cfg.restore_timeout, interval=cfg.restore_retry_interval,
                           max_interval=cfg.restore_retry_max_interval)
    restoring = asyncio.ensure_future(Restorer(agent.service, policy=policy).run())
    warming = asyncio.ensure_future(asyncio.to_thread(preload))
    if agent.health is not None:  # after reconcile: only settled attachments are checked
        agent.health.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: waiting for running operations")
    restoring.cancel()  # an unfinished restore is started again at the next start
    await asyncio.gather(restoring, warming, return_exceptions=True)
    if agent.health is not None:
        await agent.health.stop()
    await runner.cleanup()
    await agent.service.close()
    agent.store.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cfg.socket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostagent", description="The hostagent daemon.")
    parser.add_argument("--version", action="version", version=f"hostagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve the API on the Unix socket")
    run.add_argument("--config", help=f"INI file (default {config.DEFAULT_PATH} if present)")
    run.add_argument("--socket", help="override the socket path")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config)
    except HostAgentError as err:
        print(f"hostagent: {err.message}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.socket:
        cfg = replace(cfg, socket=args.socket)
    logs.setup(cfg.log_level)
    if os.geteuid() != 0:
        log.error("hostagent must run as root (it logs in to targets and builds maps)")
        return ExitCode.FORBIDDEN
    try:
        asyncio.run(serve(cfg))
    except HostAgentError as err:
        log.error("%s", err.message)
        return ExitCode.for_error(err)
    return ExitCode.OK
