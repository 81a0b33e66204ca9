"""Prepare the guest once per test session: modules, portals, iscsid, multipathd.

The guest shares the host's root file system read-only with tmpfs overlays on
/etc, /var and /tmp, so the configuration written here lives only in the guest.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .sh import run, wait_until, write

INITIATOR_IQN = "iqn.2026-11.org.hostagent.test:initiator"
# Extra portal addresses sit on dummy interfaces: one interface per portal so a
# test can change one portal's interface (MTU, address) without touching others.
EXTRA_PORTALS = (("dummy0", "10.99.0.2"), ("dummy1", "10.99.1.2"))

MODULES = (
    "sd_mod", "sg", "loop", "dummy", "iscsi_tcp", "dm_multipath", "dm_round_robin",
    "dm_service_time", "dm_queue_length", "scsi_dh_alua",
    "target_core_mod", "iscsi_target_mod", "target_core_iblock",
)

# Timeouts suited to multipath (as TESTBED.md measured): a dead portal fails its
# path within ~10 s instead of the 120 s default, and logins give up quickly.
ISCSID_CONF = """\
iscsid.startup = /bin/true
node.startup = manual
node.session.timeo.replacement_timeout = 5
node.conn[0].timeo.noop_out_interval = 2
node.conn[0].timeo.noop_out_timeout = 2
node.conn[0].timeo.login_timeout = 5
node.session.initial_login_retry_max = 2
node.session.iscsi.FastAbort = Yes
"""

MULTIPATH_CONF = """\
defaults {
    user_friendly_names no
    find_multipaths %(find_multipaths)s
    polling_interval 2
    no_path_retry 6
}
blacklist {
    devnode "^(ram|loop|fd|md|sr|scd|st|vd|nvme)[0-9]*"
}
"""


@dataclass(frozen=True)
class Guest:
    initiator_iqn: str
    portal_ips: tuple[str, ...]  # 127.0.0.1 first, then the dummy addresses

    def portal_interface(self, ip: str) -> str:
        for ifname, addr in EXTRA_PORTALS:
            if addr == ip:
                return ifname
        return "lo"


def prepare() -> Guest:
    for module in MODULES:
        run(["modprobe", module])
    # rtslib-fb keeps LIO's persistent-reservation files under its dbroot.
    Path("/etc/target").mkdir(exist_ok=True)
    if not os.path.ismount("/sys/kernel/config"):
        run(["mount", "-t", "configfs", "none", "/sys/kernel/config"])
    for ifname, addr in EXTRA_PORTALS:
        if not Path(f"/sys/class/net/{ifname}").exists():
            run(["ip", "link", "add", ifname, "type", "dummy"])
            run(["ip", "addr", "add", f"{addr}/24", "dev", ifname])
            run(["ip", "link", "set", ifname, "up"])
    _ensure_udevd()
    _start_iscsid()
    set_find_multipaths("no", start=True)
    return Guest(INITIATOR_IQN, ("127.0.0.1", *(addr for _, addr in EXTRA_PORTALS)))


def _ensure_udevd() -> None:
    if run(["pgrep", "-x", "systemd-udevd"], ok=(0, 1)).returncode != 0:
        run([shutil.which("systemd-udevd") or "/lib/systemd/systemd-udevd", "--daemon"])
    run(["udevadm", "settle", "-t", "10"])


def _start_iscsid() -> None:
    Path("/etc/iscsi").mkdir(parents=True, exist_ok=True)
    write("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={INITIATOR_IQN}\n")
    write("/etc/iscsi/iscsid.conf", ISCSID_CONF)
    for stale in ("nodes", "send_targets"):
        shutil.rmtree(f"/etc/iscsi/{stale}", ignore_errors=True)
    if run(["pgrep", "-x", "iscsid"], ok=(0, 1)).returncode != 0:
        run(["iscsid"])
    # 21 = no sessions: iscsid answers. 20 would mean it is not reachable yet.
    wait_until(
        lambda: run(["iscsiadm", "-m", "session"], ok=(0, 20, 21)).returncode in (0, 21),
        timeout=20,
        what="iscsid to answer",
    )


def set_find_multipaths(value: str, *, start: bool = False) -> None:
    """(Re)write the test multipath.conf and start or reconfigure multipathd."""
    Path("/etc/multipath").mkdir(exist_ok=True)
    write("/etc/multipath.conf", MULTIPATH_CONF % {"find_multipaths": value})
    if start and run(["pgrep", "-x", "multipathd"], ok=(0, 1)).returncode != 0:
        run(["multipathd"])
    wait_until(
        lambda: run(["multipathd", "show", "status"], ok=(0, 1)).returncode == 0,
        timeout=20,
        what="multipathd to answer",
    )
    if not start:
        run(["multipathd", "reconfigure"])


def restart_iscsid() -> None:
    """iscsid stopped and started again; the kernel keeps the sessions meanwhile."""
    run(["pkill", "-x", "iscsid"], ok=(0, 1))
    wait_until(lambda: run(["pgrep", "-x", "iscsid"], ok=(0, 1)).returncode == 1 or None,
               timeout=30, what="iscsid to stop")
    run(["iscsid"])
    wait_until(lambda: run(["iscsiadm", "-m", "session"], ok=(0, 20, 21)).returncode
               in (0, 21) or None, timeout=30, what="iscsid to answer")


def restart_multipathd() -> None:
    """multipathd shut down and started again; the kernel keeps the maps meanwhile."""
    run(["multipathd", "shutdown"], ok=(0, 1))
    wait_until(lambda: run(["pgrep", "-x", "multipathd"], ok=(0, 1)).returncode == 1 or None,
               timeout=30, what="multipathd to stop")
    run(["multipathd"])
    wait_until(lambda: run(["multipathd", "show", "status"], ok=(0, 1)).returncode == 0 or None,
               timeout=30, what="multipathd to answer")
