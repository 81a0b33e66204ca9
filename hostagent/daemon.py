"""`hostagent serve`: the agent on its Unix socket.

Start-up order matters: the state store and the reconcile run before the socket
accepts anyone, so no request meets a half-finished operation from before a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace

from aiohttp import web

from hostagent import __version__, config, logs
from hostagent.api import PeerCheck, make_app
from hostagent.config import Config
from hostagent.connection_info import FIBRE_CHANNEL, ISCSI
from hostagent.connectors.base import Connector
from hostagent.connectors.fc import FcConnector, FcOptions
from hostagent.connectors.iscsi import IscsiConnector, IscsiOptions
from hostagent.errors import HostAgentError
from hostagent.exitcodes import ExitCode
from hostagent.host.executor import AsyncExecutor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.udev import PyudevWatcher
from hostagent.locks import TargetLocks
from hostagent.service import Service
from hostagent.state import Store

log = logging.getLogger("hostagent.daemon")


@dataclass
class Agent:
    config: Config
    service: Service
    store: Store
    peer_check: PeerCheck


def build(cfg: Config, fs: HostFS | None = None) -> Agent:
    fs = fs or HostFS("/")
    os.makedirs(cfg.lock_path, mode=0o700, exist_ok=True)
    executor = AsyncExecutor(max_parallel=cfg.max_parallel_commands)
    # One udev watcher and one lock table for both engines (IQNs and WWPNs never collide).
    udev, locks, multipathd = PyudevWatcher(), TargetLocks(cfg.lock_path), SocketClient()
    iscsi = IscsiConnector(
        executor, fs, udev, multipathd, locks=locks,
        options=IscsiOptions(iface=cfg.iface, login_timeout=cfg.login_timeout,
                             login_attempts=cfg.login_attempts,
                             device_timeout=cfg.device_timeout,
                             command_timeout=cfg.command_timeout))
    fc = FcConnector(executor, fs, udev, multipathd, locks=locks,
                     options=FcOptions(device_timeout=cfg.device_timeout,
                                       command_timeout=cfg.command_timeout))
    connectors: dict[str, Connector] = {ISCSI: iscsi, FIBRE_CHANNEL: fc}
    store = Store(cfg.state_dir)
    service = Service(store, connectors, multipath=cfg.multipath,
                      attach_timeout=cfg.attach_timeout, detach_timeout=cfg.detach_timeout,
                      detached_retention=cfg.detached_retention)
    return Agent(cfg, service, store, PeerCheck(fs, cfg.allowed_uids(), cfg.allowed_gids()))


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
    agent = build(cfg)
    counts = await agent.service.reconcile()
    if counts["failed"]:
        log.error("%d attachments could not be reconciled; see above", counts["failed"])
    app = make_app(agent.service, peer_check=agent.peer_check,
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: waiting for running operations")
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
