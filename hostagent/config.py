"""Settings from an INI file in cinder.conf style, with defaults for every option.

Unknown sections or options and malformed values are errors naming
`section.option`: a typo in a config file must not silently fall back to a
default on a storage node.
"""

from __future__ import annotations

import configparser
import grp
import ipaddress
import math
import pwd
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from hostagent.errors import InvalidConfig
from hostagent.host.fs import ETC_HOSTAGENT, RUN_HOSTAGENT, VAR_LIB_HOSTAGENT

DEFAULT_PATH = f"{ETC_HOSTAGENT}/hostagent.conf"
ENGINES = ("native", "os-brick")  # os-brick: connectors/brick.py


@dataclass(frozen=True)
class Config:
    # [DEFAULT]
    socket: str = f"{RUN_HOSTAGENT}/hostagent.sock"
    socket_group: str = "hostagent"  # owns the socket; root only when the group is missing
    socket_mode: int = 0o660
    allowed_users: tuple[str, ...] = ()  # besides root, by name or uid
    allowed_groups: tuple[str, ...] = ("hostagent",)  # by name or gid
    state_dir: str = VAR_LIB_HOSTAGENT
    lock_path: str = f"{RUN_HOSTAGENT}/locks"  # oslo.concurrency file locks, per target
    engine: str = "native"
    multipath: bool = True
    restore: bool = True  # attached volumes gone at start-up (a reboot) are made again
    # A restore that fails for a reason that may pass is tried again: no try starts later
    # than restore_timeout s after start-up (0: one try); the waits between tries start at
    # restore_retry_interval s and double up to restore_retry_max_interval s.
    restore_timeout: float = 1800.0
    restore_retry_interval: float = 10.0
    restore_retry_max_interval: float = 60.0
    log_level: str = "INFO"
    max_body_bytes: int = 64 * 1024
    # This host's address in the connector (`ip`); None: the default route's source.
    my_ip: str | None = None
    # [iscsi]
    iface: str = "hostagent"
    login_timeout: int = 5
    login_attempts: int = 2
    portal_retry_interval: float = 30.0  # s a portal that did not answer rests; 0: never
    rediscover_after: float = 120.0  # s a SendTargets answer serves live sessions; 0: never
    # [timeouts] (seconds)
    attach_timeout: float = 180.0
    detach_timeout: float = 180.0
    device_timeout: float = 30.0
    command_timeout: float = 30.0
    max_parallel_commands: int = 16
    detached_retention: float = 24 * 3600.0  # how long a finished detach is remembered
    # [health]
    health_interval: float = 30.0  # s between periodic checks
    self_heal: bool = True
    heal_interval: float = 60.0  # s at least between two repairs of one path
    probe_read: bool = True  # one-block O_DIRECT read of each device per check
    probe_timeout: float = 10.0

    def restore_deadline(self) -> float:
        """Seconds after start-up by which every restore has ended (the undo of a try
        cut off aside): no try starts after restore_timeout, and the last one may wait
        [timeouts] attach for its target locks, then has [timeouts] attach to finish."""
        return self.restore_timeout + 2 * self.attach_timeout

    def allowed_uids(self) -> frozenset[int]:
        return frozenset(_ids(self.allowed_users, lambda n: pwd.getpwnam(n).pw_uid))

    def allowed_gids(self) -> frozenset[int]:
        return frozenset(_ids(self.allowed_groups, lambda n: grp.getgrnam(n).gr_gid))


def _ids(names: tuple[str, ...], lookup: Callable[[str], int]) -> set[int]:
    ids = set()
    for name in names:
        if name.isdigit():
            ids.add(int(name))
            continue
        try:
            ids.add(lookup(name))
        except KeyError:
            continue  # a group that does not exist on this host allows nobody
    return ids


def _count(text: str) -> int:
    value = int(text, 0)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _name(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be true or false")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _mode(text: str) -> int:
    value = int(text, 8)
    if value & ~0o777:
        raise ValueError("must be an octal permission mode like 0660")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    return parse


def _ip(text: str) -> str | None:
    """An address of this host, as the controller should see it; empty: unset."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError("must be an address of this host (not unspecified or multicast)")
    return str(addr)


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    return text


# section -> option -> (Config field, parser)
_SCHEMA: dict[str, dict[str, tuple[str, Callable[[str], Any]]]] = {
    "DEFAULT": {
        "socket": ("socket", _path),
        "socket_group": ("socket_group", _name),
        "socket_mode": ("socket_mode", _mode),
        "allowed_users": ("allowed_users", _names),
        "allowed_groups": ("allowed_groups", _names),
        "state_dir": ("state_dir", _path),
        "lock_path": ("lock_path", _path),
        "engine": ("engine", _choice(*ENGINES)),
        "multipath": ("multipath", _bool),
        "restore": ("restore", _bool),
        "restore_timeout": ("restore_timeout", _non_negative),
        "restore_retry_interval": ("restore_retry_interval", _positive),
        "restore_retry_max_interval": ("restore_retry_max_interval", _positive),
        "log_level": ("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
        "max_body_bytes": ("max_body_bytes", _count),
        "my_ip": ("my_ip", _ip),
    },
    "iscsi": {
        "iface": ("iface", _name),
        "login_timeout": ("login_timeout", _count),
        "login_attempts": ("login_attempts", _count),
        "portal_retry_interval": ("portal_retry_interval", _non_negative),
        "rediscover_after": ("rediscover_after", _non_negative),
    },
    "timeouts": {
        "attach": ("attach_timeout", _positive),
        "detach": ("detach_timeout", _positive),
        "device": ("device_timeout", _positive),
        "command": ("command_timeout", _positive),
        "max_parallel_commands": ("max_parallel_commands", _count),
        "detached_retention": ("detached_retention", _positive),
    },
    "health": {
        "interval": ("health_interval", _positive),
        "self_heal": ("self_heal", _bool),
        "heal_interval": ("heal_interval", _positive),
        "probe_read": ("probe_read", _bool),
        "probe_timeout": ("probe_timeout", _positive),
    },
}


def parse(text: str, source: str = "<config>") -> Config:
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        parser.read_string(text, source=source)
    except configparser.Error as err:
        raise InvalidConfig(source, str(err).splitlines()[0]) from err
    if parser.defaults():  # options under the parser's hidden default section's name
        raise InvalidConfig("__none__", f"unknown section (known: {', '.join(_SCHEMA)})")
    values: dict[str, Any] = {}
    for section in parser.sections():
        schema = _SCHEMA.get(section)
        if schema is None:
            raise InvalidConfig(section, f"unknown section (known: {', '.join(_SCHEMA)})")
        for option, raw in parser.items(section):
            if option not in schema:
                raise InvalidConfig(f"{section}.{option}",
                                    f"unknown option (known: {', '.join(schema)})")
            name, convert = schema[option]
            try:
                values[name] = convert(raw.strip())
            except ValueError as err:
                raise InvalidConfig(f"{section}.{option}", f"{raw.strip()!r}: {err}") from err
    known = {f.name for f in fields(Config)}
    assert set(values) <= known
    return _consistent(Config(**values))


def _consistent(cfg: Config) -> Config:
    """What no single option's parser can see."""
    if cfg.restore_retry_max_interval < cfg.restore_retry_interval:
        raise InvalidConfig("DEFAULT.restore_retry_max_interval",
                            f"{cfg.restore_retry_max_interval:g}: must be at least "
                            f"restore_retry_interval ({cfg.restore_retry_interval:g})")
    return cfg


def load(path: str | None = None) -> Config:
    """The file at `path` (an error if missing); without a path, DEFAULT_PATH if present."""
    target = DEFAULT_PATH if path is None else path
    try:
        with open(target, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if path is None:
            return Config()
        raise InvalidConfig(target, "no such file") from None
    except OSError as err:
        raise InvalidConfig(target, err.strerror or str(err)) from None
    except UnicodeDecodeError:
        raise InvalidConfig(target, "not UTF-8 text") from None
    return parse(text, target)
