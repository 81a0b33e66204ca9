"""Waiting for devices by udev event, never by sleep-polling.

A waiter states what it waits for as a `check` that reads the truth (sysfs, the
udev database) and returns a value once satisfied. udev events only wake the
waiters so their checks run again; the check is evaluated once before waiting,
so a device that is already there costs no wait at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pyudev

from hostagent.errors import DeviceTimeout
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.host.fs import SYS_CLASS, UDEV_DB, HostFS

T = TypeVar("T")
log = logging.getLogger("hostagent.host")

# The netlink socket can drop events under a burst (ENOBUFS); a slow recheck
# keeps a lost event from turning into a full timeout.
RECHECK_INTERVAL = 2.0
# A target's new LUN gives every other LUN's SCSI device a change event with this
# (scsi_lib.c scsi_evt_emit, SDEV_EVT_LUN_CHANGE_REPORTED): nothing a wait waits for,
# so it wakes none. Its property list is NUL-separated (libudev-monitor.c).
LUN_CHANGE_PROPERTY = b"SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED\0"


def wakes_waiters(datagram: bytes) -> bool:
    """Whether a udev netlink message may answer a wait: all but a LUN change."""
    return LUN_CHANGE_PROPERTY not in datagram


class Udev(Protocol):
    async def wait(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T: ...


def block_initialized(fs: HostFS, name: str) -> bool:
    """udev has processed block device `name` (its database entry exists)."""
    dev = fs.try_read(f"{SYS_CLASS}/block/{name}/dev")
    return dev is not None and fs.exists(f"{UDEV_DB}/b{dev}")


class PyudevWatcher:
    """Udev over pyudev's netlink monitor, integrated with the asyncio loop."""

    def __init__(self, subsystems: tuple[str, ...] = ("block", "scsi"), *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._subsystems = subsystems
        self._clock = clock
        self._monitor: Any = None
        self._fd = -1  # the monitor's: pyudev's fileno() costs a call into libudev each time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
        for subsystem in self._subsystems:
            monitor.filter_by(subsystem)
        monitor.start()
        self._fd = monitor.fileno()
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._drain)
        self._monitor, self._loop = monitor, loop

    def _drain(self) -> None:
        """Discard what is queued, unparsed, and wake the waiters: their checks read the
        truth themselves. Adding a LUN to a target with N others brings ~3N events
        (406 during one attach at N = 129 in the guest), and making a pyudev Device of
        each cost ~5 ms of CPU there: the agent's largest share of that attach's time.
        A batch of LUN-change events alone wakes nobody (run F: 63 per attach at N = 128,
        each re-running every waiter's check)."""
        fd = self._fd
        wake = False
        while True:
            try:
                datagram = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as err:
                wake = True  # events were lost, and may have mattered
                if err.errno != errno.ENOBUFS:  # ENOBUFS: overflowed, read on
                    log.warning("udev monitor: %s", err)
                    break
                continue
            if not datagram:
                break
            wake = wake or wakes_waiters(datagram)
        if wake:
            for waiter in self._waiters:
                waiter.set()

    async def wait(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (asyncio.run per call)
            self._start(loop)
        wake = asyncio.Event()
        self._waiters.add(wake)  # subscribed before the first check: no event is missed
        deadline = self._clock.monotonic() + timeout
        try:
            while True:
                # Cleared before the check: an event that lands during the check
                # still wakes the wait below instead of being lost.
                wake.clear()
                value = check()
                if value:
                    return value
                remaining = deadline - self._clock.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(f"timed out after {timeout:g} s waiting for {what}",
                                        waited_for=what, timeout=timeout)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(remaining, RECHECK_INTERVAL))
        finally:
            self._waiters.discard(wake)

    def close(self) -> None:
        if self._monitor is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        self._monitor = self._loop = None
