"""HostFS: the one way to /sys, /dev and /etc.

Every host path in hostagent is written as the real absolute path ("/sys/...")
and resolved under `root`, which is "/" in production and a tree under tmp_path
in tests (built with relative symlinks, the way the kernel lays out sysfs).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

BLKFLSBUF = 0x1261  # linux/fs.h: flush a block device's buffer cache
BLKROSET = 0x125D  # linux/fs.h: set a block device read-only (an int argument)

# The host locations hostagent knows; every other module builds paths from these.
SYS_BLOCK = "/sys/block"
SYS_CLASS = "/sys/class"
DEV = "/dev"
ETC_ISCSI = "/etc/iscsi"
ETC_NVME = "/etc/nvme"
VAR_LIB_ISCSI = "/var/lib/iscsi"  # RHEL's node db
ETC_MULTIPATH = "/etc/multipath"
MULTIPATH_CONF = "/etc/multipath.conf"
MULTIPATH_CONF_DIR = "/etc/multipath/conf.d"  # multipath-tools' built-in config_dir
SYS_MODULE = "/sys/module"
# Where preflight looks for the tools hostagent runs (systemd's default PATH).
BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
UDEV_DB = "/run/udev/data"
ETC_UDEV_RULES = "/etc/udev/rules.d"  # masks a rules file of the same name below
LIB_UDEV_RULES = ("/usr/lib/udev/rules.d", "/lib/udev/rules.d")  # the distribution's
DISK_BY_ID = "/dev/disk/by-id"
ISCSI_LOCK_DIR = "/run/lock/iscsi"  # open-iscsi idbm.h LOCK_DIR (/var/lock is a link to it)
PROC = "/proc"
# The agent's own places (defaults of its configuration).
ETC_HOSTAGENT = "/etc/hostagent"
RUN_HOSTAGENT = "/run/hostagent"
VAR_LIB_HOSTAGENT = "/var/lib/hostagent"


def dev_node(name: str) -> str:
    """/dev/<name> of a kernel block device name (sdX, dm-N)."""
    return f"{DEV}/{name}"


class HostFS:
    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)
        self._prefix = str(self.root).rstrip("/")  # "" for "/"

    def path(self, host_path: str) -> Path:
        return Path(self._os_path(host_path))

    def _os_path(self, host_path: str) -> str:
        """The path as a string: the health round reads thousands of sysfs files, and
        pathlib's parsing cost more than the reads themselves (cProfile, fake host)."""
        if not host_path.startswith("/"):
            raise ValueError(f"host paths are absolute: {host_path!r}")
        return self._prefix + host_path

    def host_path(self, path: Path) -> str:
        """The host-absolute form of a path under root."""
        return "/" + str(path.relative_to(self.root)) if path != self.root else "/"

    def exists(self, host_path: str) -> bool:
        return os.path.exists(self._os_path(host_path))

    def read(self, host_path: str) -> str:
        fd = os.open(self._os_path(host_path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode().strip()

    def try_read(self, host_path: str) -> str | None:
        """The stripped content, or None when the file is absent or unreadable
        (sysfs attributes of a device that is going away)."""
        try:
            return self.read(host_path)
        except OSError:
            return None

    def write(self, host_path: str, value: str) -> None:
        # sysfs attributes want a single write() of the whole value.
        with self.path(host_path).open("w") as f:
            f.write(value)

    def listdir(self, host_path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._os_path(host_path)))
        except OSError:
            return []

    def glob(self, host_pattern: str) -> Iterator[str]:
        base = self.path("/")
        for match in sorted(base.glob(host_pattern.lstrip("/"))):
            yield self.host_path(match)

    def readlink(self, host_path: str) -> str:
        """A symlink's own text (one syscall, where realpath stats every component)."""
        return os.readlink(self._os_path(host_path))

    def realpath(self, host_path: str) -> str:
        real = os.path.realpath(self._os_path(host_path))
        if self._prefix and real.startswith(self._prefix + "/"):
            return real[len(self._prefix):]
        return self.host_path(Path(real))

    def is_executable(self, host_path: str) -> bool:
        path = self.path(host_path)
        return path.is_file() and os.access(path, os.X_OK)

    def replace_file(self, host_path: str, text: str, mode: int = 0o644) -> None:
        """Write a whole configuration file so that a reader sees the old or the
        new content, never a part: a temporary file renamed over it."""
        path = self.path(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.hostagent-tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        with os.fdopen(os.open(tmp, flags, mode), "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)  # the umask must not narrow it
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def try_link(self, target: str, link: str) -> bool:
        """A hard link `link` to `target`; False when `link` exists (the way open-iscsi
        takes its node-db lock)."""
        try:
            os.link(self.path(target), self.path(link))
        except FileExistsError:
            return False
        return True

    def ensure_file(self, host_path: str, mode: int) -> None:
        path = self.path(host_path)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode))

    def unlink(self, host_path: str) -> None:
        self.path(host_path).unlink(missing_ok=True)

    def remove_empty_dir(self, host_path: str) -> None:
        """rmdir, quietly leaving a directory that is gone or still holds something."""
        try:
            self.path(host_path).rmdir()
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise

    def update_locked(self, host_path: str, edit: Callable[[str], str]) -> None:
        """Rewrite a shared text file under the same fcntl lock multipath-tools takes,
        atomically: a crash leaves the old content or the new, never a cut file (an
        empty wwids file or node record would lose volumes at the next boot). The new
        file keeps the old one's mode (node records hold secrets: 0600)."""
        path = self.path(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with path.open("a+") as f:
                fcntl.lockf(f, fcntl.LOCK_EX)
                st = os.fstat(f.fileno())
                if not path.exists() or os.stat(path).st_ino != st.st_ino:
                    continue  # replaced by another writer while we waited: lock the new one
                f.seek(0)
                old = f.read()
                new = edit(old)
                if new != old:
                    self.replace_file(host_path, new, stat.S_IMODE(st.st_mode))
                return

    def read_direct(self, dev_path: str, size: int = 4096) -> int:
        """Read `size` bytes at offset 0 of a block device with O_DIRECT: the read
        reaches the device, not the page cache. The bytes read. Blocks as long as
        the device does (a queueing map): callers run it off the event loop."""
        buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants
        fd = os.open(self.path(dev_path), os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            return os.readv(fd, [buf])
        finally:
            os.close(fd)
            buf.close()

    def set_read_only(self, dev_path: str) -> None:
        """BLKROSET on a block device: what `blockdev --setro` does, in-process. It sets
        the device's own flag, which a dm table reload (multipathd's) leaves alone;
        writes then fail with EPERM until the device is gone."""
        fd = os.open(self.path(dev_path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKROSET, struct.pack("i", 1))
        finally:
            os.close(fd)

    def flush_buffers(self, dev_path: str) -> None:
        """BLKFLSBUF on a block device: what `blockdev --flushbufs` does, in-process."""
        fd = os.open(self.path(dev_path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        finally:
            os.close(fd)
