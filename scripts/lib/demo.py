"""The hostagent demo, run INSIDE the guest by scripts/lib/guest-demo.

An LIO array exports a Datera-style and a K2-style volume with the connection_info
the Cinder drivers send; the node is prepared as an operator would (preflight,
`hostagent-cli multipath install`, preflight again); `hostagent serve` attaches both
through hostagent-cli, 4 MiB of random data go through each multipath device and
back, each map is shown running on its vendor's settings, both volumes are detached
and nothing may be left behind. Every step prints a `==> step` header
and the commands it runs; the exit status is 0 only if every step succeeded.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.kernel.testbed import guest as guest_mod
from tests.kernel.testbed import leaks
from tests.kernel.testbed.lio import Export, IscsiArray
from tests.kernel.testbed.sh import wait_until

RESULTS = Path(os.environ.get("HOSTAGENT_RESULTS", "results"))
RUN = Path("/run/hostagent-demo")
SOCKET = str(RUN / "hostagent.sock")
CONFIG_FILE = Path("/tmp/hostagent-demo.conf")
CONFIG = f"""\
[DEFAULT]
socket = {SOCKET}
state_dir = {RUN}/state
lock_path = {RUN}/locks
log_level = INFO
"""
DATA_BYTES = 4 << 20
COMMAND_TIMEOUT = 300  # s, for any one command: an attach under TCG takes well under that
# What a detach must take away (the array's loop devices and LIO objects go with step 8).
INITIATOR_SIDE = ("sessions", "node records", "scsi devices", "block devices")


class DemoFailed(Exception):
    pass


@dataclass
class Demo:
    """What step 7 must stop and what the summary reports, whatever step failed."""

    baseline: leaks.Snapshot | None = None  # right after the guest's preparation
    array: IscsiArray | None = None
    daemon: subprocess.Popen[bytes] | None = None
    times: dict[str, float] = field(default_factory=dict)  # wall time of attaches, detaches


current_step = ""  # for the failure message


def step(title: str) -> None:
    global current_step
    current_step = title
    print(f"\n==> {title}", flush=True)


def sh(argv: Sequence[str], *, ok: Sequence[int] = (0,), capture: bool = False
       ) -> subprocess.CompletedProcess[str]:
    """Run argv showing it; stderr always goes straight to the log, stdout too unless captured."""
    print(f"$ {shlex.join(argv)}", flush=True)
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE if capture else None, text=True,
                          timeout=COMMAND_TIMEOUT, check=False)
    if capture and proc.stdout:
        print(proc.stdout.rstrip("\n"), flush=True)
    if proc.returncode not in ok:
        raise DemoFailed(f"{shlex.join(argv)} exited with status {proc.returncode}")
    return proc


def cli(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return sh(["hostagent-cli", "--socket", SOCKET, *args], capture=capture)


def start_daemon() -> subprocess.Popen[bytes]:
    RUN.mkdir(parents=True, exist_ok=True)
    CONFIG_FILE.write_text(CONFIG)
    print(f"{CONFIG_FILE}:\n{CONFIG}", end="")
    log_path = RESULTS / "demo-hostagent.log"
    argv = ["hostagent", "serve", "--config", str(CONFIG_FILE)]
    print(f"$ {shlex.join(argv)} >{log_path} 2>&1 &", flush=True)
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    probe = ["hostagent-cli", "--socket", SOCKET, "connector"]

    def answers() -> tuple[str, float] | None:  # (connector properties, seconds taken)
        if daemon.poll() is not None:
            raise DemoFailed(f"hostagent serve exited with status {daemon.returncode}; "
                             f"its log:\n{log_path.read_text()}")
        if not os.path.exists(SOCKET):
            return None
        start = time.monotonic()
        proc = subprocess.run(probe, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              check=False)
        return (proc.stdout, time.monotonic() - start) if proc.returncode == 0 else None

    print(f"waiting (120 s at most) until `{shlex.join(probe)}` succeeds", flush=True)
    properties, took = wait_until(answers, timeout=120, what="hostagent's socket to answer",
                                  interval=0.5)
    print(properties.rstrip("\n"))
    print(f"hostagent serve (pid {daemon.pid}) answers on {SOCKET}; that hostagent-cli call "
          f"took {took:.1f} s, mostly the CLI starting up (part of every CLI time below)")
    return daemon


def attach(att_id: str, info_file: Path, export: Export) -> tuple[str, float]:
    start = time.monotonic()
    out = cli("attach", "--connection-info", str(info_file), "--id", att_id, capture=True).stdout
    took = time.monotonic() - start
    device = re.search(r"/dev/dm-\d+", out)
    if device is None:
        raise DemoFailed(f"the attach of {att_id} returned no multipath device")
    if export.wwid not in out:
        raise DemoFailed(f"the attach of {att_id} did not report the volume's WWID {export.wwid}")
    print(f"{att_id}: {device.group(0)} in {took:.1f} s")
    return device.group(0), took


def check_data(device: str) -> None:
    """Write random data with O_DIRECT|O_SYNC, read it back with O_DIRECT on a fresh open."""
    data, back = mmap.mmap(-1, DATA_BYTES), mmap.mmap(-1, DATA_BYTES)  # page-aligned buffers
    data.write(os.urandom(DATA_BYTES))
    print(f"write {DATA_BYTES >> 20} MiB of random data to {device} (O_DIRECT|O_SYNC)", flush=True)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_SYNC)
    try:
        written = os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    print(f"read them back through a fresh open of {device} (O_DIRECT)", flush=True)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        read = os.preadv(fd, [back], 0)
    finally:
        os.close(fd)
    want, got = hashlib.sha256(data).hexdigest(), hashlib.sha256(back).hexdigest()
    if written != DATA_BYTES or read != DATA_BYTES or want != got:
        raise DemoFailed(f"{device}: wrote {written} bytes (sha256 {want[:16]}), "
                         f"read {read} bytes (sha256 {got[:16]}): the data did NOT match")
    print(f"{device}: the data matched (sha256 {want[:16]}...)")


# What `multipath -ll` shows of etc/multipath.conf.d's stanzas (the vendors' values).
# Not K2's hardware_handler "0": LIO reports ALUA, so the kernel attaches scsi_dh_alua
# at scan and keeps it (kernels >= 4.3 retain an attached handler); a K2 reports none.
POLICIES = {"datera": ("hwhandler='1 alua'", "policy='queue-length 0'"),
            "k2": ("features='0'", "policy='queue-length 0'")}  # no_path_retry fail


def check_policy(att_id: str, export: Export) -> None:
    out = sh(["multipath", "-ll", export.wwid], capture=True).stdout
    wanted = POLICIES[export.personality]
    if not all(w in out for w in wanted):
        raise DemoFailed(f"{att_id}'s map does not run on the {export.personality} settings "
                         f"({', '.join(wanted)})")
    print(f"{att_id}: {export.personality} settings in effect ({', '.join(wanted)})")


def run_demo(d: Demo) -> None:
    step("1. prepare the guest (modules, portals, iscsid, multipathd) and an LIO array")
    guest = guest_mod.prepare()
    print(f"initiator {guest.initiator_iqn}, portals {', '.join(guest.portal_ips[:2])}")
    d.baseline = leaks.snapshot()
    workdir = Path(tempfile.mkdtemp(prefix="hostagent-demo-array-"))
    array = d.array = IscsiArray(guest, portals=2, workdir=workdir)
    exports = {"demo-datera": array.export_datera(), "demo-k2": array.export_k2()}
    files = {}
    for att_id, export in exports.items():
        files[att_id] = Path(f"/tmp/{att_id}.json")
        files[att_id].write_text(json.dumps(export.connection_info, indent=2) + "\n")
        print(f"\n{export.personality} volume {export.name} (WWID {export.wwid}); "
              f"Cinder's connection_info in {files[att_id]}:")
        print(json.dumps(export.connection_info, indent=2))

    step("2. prepare the node as an operator would: preflight, hostagent's multipath settings")
    preflight = ["hostagent-cli", "preflight", *(f"--portal={p}" for p in guest.portal_ips[:2])]
    first = sh(preflight, ok=(0, 1, 2))
    if first.returncode == 2:
        print("preflight fails where hostagent's multipath settings are not installed yet; "
              "its remedy says what to run:", flush=True)
    sh(["hostagent-cli", "multipath", "install"])
    sh(preflight, ok=(0, 1))  # 1: warnings only, each with its remedy

    step("3. start the agent")
    d.daemon = start_daemon()

    step("4. attach both volumes")
    devices = {}
    for att_id, export in exports.items():
        devices[att_id], d.times[f"attach {att_id}"] = attach(att_id, files[att_id], export)

    step("5. write and read back 4 MiB on each multipath device")
    for device in devices.values():
        check_data(device)

    step("6. what the host sees: the vendors' path policies in effect")
    cli("list")
    for att_id, export in exports.items():
        check_policy(att_id, export)
    sh(["iscsiadm", "-m", "session"])

    step("7. detach both volumes; nothing may be left behind")
    for att_id in exports:
        start = time.monotonic()
        cli("detach", att_id)
        d.times[f"detach {att_id}"] = time.monotonic() - start
        print(f"{att_id}: detached in {d.times[f'detach {att_id}']:.1f} s")
    sh(["iscsiadm", "-m", "session"], ok=(0, 21))
    sh(["iscsiadm", "-m", "node"], ok=(0, 21))
    sh(["multipath", "-ll"])
    left = [line for line in leaks.find(d.baseline) if line.startswith(INITIATOR_SIDE)]
    if left:
        raise DemoFailed("the detach left behind:\n  " + "\n  ".join(left))
    print("nothing left behind: no iSCSI session, no node record, no SCSI device, no sd/dm")


def finish(d: Demo) -> list[str]:
    """Step 8, also after a failure: stop the daemon and the array; what went wrong."""
    step("8. stop the agent and the array")
    problems = []
    if d.daemon is not None:
        print(f"$ kill -TERM {d.daemon.pid}  # hostagent serve", flush=True)
        d.daemon.send_signal(signal.SIGTERM)
        try:
            status = d.daemon.wait(timeout=60)
            print(f"hostagent serve exited with status {status}")
            if status != 0:
                problems.append(f"hostagent serve exited with status {status} on SIGTERM")
        except subprocess.TimeoutExpired:
            d.daemon.kill()
            problems.append("hostagent serve did not stop within 60 s of SIGTERM")
    if d.array is not None:
        print("array.close()  # unexport the LUNs; delete LIO targets, backstores, loop devices",
              flush=True)
        try:
            d.array.close()
        except Exception as err:
            problems.append(f"array.close() failed: {err}")
    if d.baseline is not None:
        left = leaks.find(d.baseline)
        if left:
            problems.append("left behind after step 7:\n  " + "\n  ".join(left))
            try:
                leaks.cleanup(d.baseline)
            except Exception as err:
                problems.append(f"sweeping up failed: {err}")
        else:
            print("the guest is back to its state right after step 1's preparation")
    return problems


def main() -> int:
    # rtslib-fb warns each time it opens LIO's configfs root after the first.
    warnings.filterwarnings("ignore", message="Cannot set dbroot")
    start = time.monotonic()
    d = Demo()
    problems = []
    try:
        run_demo(d)
    except DemoFailed as err:
        problems.append(f"step {current_step}: {err}")
    except Exception:
        problems.append(f"step {current_step}: {traceback.format_exc()}")
    problems += finish(d)
    for problem in problems:
        print(f"\nFAILED {problem}")
    timing = ", ".join(f"{what} {took:.1f} s" for what, took in d.times.items())
    print(f"\ndemo {'FAILED' if problems else 'passed'} in {time.monotonic() - start:.0f} s"
          + (f"; wall time of {timing}" if timing else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
