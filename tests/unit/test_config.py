"""Settings: defaults, every option with its type, errors naming section.option,
and the shipped sample that must stay equal to the defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hostagent import config
from hostagent.config import Config
from hostagent.errors import InvalidConfig

SAMPLE = Path(__file__).resolve().parents[2] / "etc" / "hostagent" / "hostagent.conf"
OPTION_LINE = re.compile(r"^#([a-z_]+\s*=.*)$")


def _invalid(text: str) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as info:
        config.parse(text)
    return info.value


def _uncommented(text: str) -> list[str]:
    """The sample's lines with `#option = value` made live, comments left alone."""
    return [OPTION_LINE.sub(r"\1", line) for line in text.splitlines()]


# ---- defaults -----------------------------------------------------------------------

def test_no_path_and_no_default_file_gives_the_defaults(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    assert config.load() == Config()


def test_no_path_reads_the_default_file_when_present(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "hostagent.conf"
    default.write_text("[iscsi]\niface = other\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(default))
    assert config.load() == Config(iface="other")


def test_the_defaults() -> None:
    cfg = Config()
    assert cfg.socket == "/run/hostagent/hostagent.sock"
    assert cfg.socket_mode == 0o660
    assert cfg.allowed_users == ()
    assert cfg.allowed_groups == ("hostagent",)
    assert cfg.engine == "native"
    assert cfg.multipath is True
    assert (cfg.attach_timeout, cfg.detach_timeout) == (180.0, 180.0)
    assert cfg.detached_retention == 86400.0
    # Long enough for an array that boots after its hosts (a site power loss).
    assert (cfg.restore_timeout, cfg.restore_retry_interval,
            cfg.restore_retry_max_interval) == (1800.0, 10.0, 60.0)


def test_empty_file_and_empty_sections_give_the_defaults() -> None:
    assert config.parse("") == Config()
    assert config.parse("[DEFAULT]\n[iscsi]\n[timeouts]\n") == Config()


# ---- every option with its type -----------------------------------------------------

FULL = """\
[DEFAULT]
socket = /srv/ha/agent.sock
socket_group = storage
socket_mode = 0640
allowed_users = nova, 1001 ,cinder
allowed_groups = disk,  6
state_dir = /srv/ha/state
lock_path = /srv/ha/locks
engine = os-brick
multipath = off
restore = off
restore_timeout = 0
restore_retry_interval = 2.5
restore_retry_max_interval = 300
log_level = DEBUG
max_body_bytes = 0x2000
my_ip = 10.20.30.40

[iscsi]
iface = san0
login_timeout = 7
login_attempts = 3
portal_retry_interval = 0
rediscover_after = 0

[timeouts]
attach = 300
detach = 90.5
device = 12
command = 0.25
max_parallel_commands = 4
detached_retention = 3600
[health]
interval = 5
self_heal = off
heal_interval = 120
probe_read = no
probe_timeout = 2.5
"""


def test_every_option_parses_with_its_type(tmp_path: Path) -> None:
    path = tmp_path / "hostagent.conf"
    path.write_text(FULL)
    assert config.load(str(path)) == Config(
        socket="/srv/ha/agent.sock", socket_group="storage", socket_mode=0o640,
        allowed_users=("nova", "1001", "cinder"), allowed_groups=("disk", "6"),
        state_dir="/srv/ha/state", lock_path="/srv/ha/locks", engine="os-brick",
        multipath=False, restore=False, restore_timeout=0.0, restore_retry_interval=2.5,
        restore_retry_max_interval=300.0, log_level="DEBUG", max_body_bytes=8192,
        my_ip="10.20.30.40", iface="san0", login_timeout=7, login_attempts=3,
        portal_retry_interval=0.0, rediscover_after=0.0,
        attach_timeout=300.0, detach_timeout=90.5, device_timeout=12.0, command_timeout=0.25,
        max_parallel_commands=4, detached_retention=3600.0, health_interval=5.0,
        self_heal=False, heal_interval=120.0, probe_read=False, probe_timeout=2.5)


def test_full_sample_covers_every_field() -> None:
    # FULL above sets every field away from its default, so the test above checks them all.
    cfg, default = config.parse(FULL), Config()
    unchanged = [f.name for f in dataclasses.fields(Config)
                 if getattr(cfg, f.name) == getattr(default, f.name)]
    assert unchanged == []


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("yes", True), ("true", True), ("on", True), ("True", True), ("ON", True),
    ("0", False), ("no", False), ("false", False), ("off", False), ("No", False),
])
def test_bool_forms(text: str, value: bool) -> None:
    assert config.parse(f"[DEFAULT]\nmultipath = {text}\n").multipath is value


@pytest.mark.parametrize(("text", "mode"), [
    ("0660", 0o660), ("660", 0o660), ("0600", 0o600), ("0o640", 0o640), ("0", 0), ("0777", 0o777),
])
def test_socket_mode_is_octal(text: str, mode: int) -> None:
    assert config.parse(f"[DEFAULT]\nsocket_mode = {text}\n").socket_mode == mode


@pytest.mark.parametrize(("text", "names"), [
    ("", ()), ("root", ("root",)), (" a , b,,c ,", ("a", "b", "c")), ("0,1", ("0", "1")),
])
def test_comma_lists(text: str, names: tuple[str, ...]) -> None:
    cfg = config.parse(f"[DEFAULT]\nallowed_users = {text}\nallowed_groups = {text}\n")
    assert cfg.allowed_users == names
    assert cfg.allowed_groups == names


def test_option_names_are_case_insensitive_section_names_are_not() -> None:
    assert config.parse("[iscsi]\nLogin_Timeout = 9\n").login_timeout == 9
    assert _invalid("[ISCSI]\nlogin_timeout = 9\n").option == "ISCSI"


def test_later_sections_do_not_leak_into_others() -> None:
    # [DEFAULT] is an ordinary section here, not configparser's inherited defaults.
    cfg = config.parse("[DEFAULT]\nlog_level = ERROR\n[iscsi]\niface = x\n")
    assert (cfg.log_level, cfg.iface) == ("ERROR", "x")


# ---- errors name section.option -----------------------------------------------------

def test_the_parsers_hidden_default_section_is_no_back_door() -> None:
    assert _invalid("[__none__]\nsocket = /x\n").option == "__none__"


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig) as err:
        config.load(str(tmp_path))  # a directory
    assert err.value.option == str(tmp_path)
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"[DEFAULT]\nsocket = /\xff\n")
    with pytest.raises(InvalidConfig, match="not UTF-8"):
        config.load(str(binary))


def test_unknown_section_is_named() -> None:
    err = _invalid("[timeout]\nattach = 10\n")
    assert err.option == "timeout"
    assert err.details == {"option": "timeout"}
    assert "unknown section" in err.message


@pytest.mark.parametrize(("text", "option"), [
    ("[DEFAULT]\nsocket_path = /run/x.sock\n", "DEFAULT.socket_path"),
    ("[iscsi]\nlogin_retries = 3\n", "iscsi.login_retries"),
    ("[timeouts]\nattach_timeout = 10\n", "timeouts.attach_timeout"),
    ("[timeouts]\niface = x\n", "timeouts.iface"),  # known option, wrong section
])
def test_unknown_option_is_named(text: str, option: str) -> None:
    err = _invalid(text)
    assert err.option == option
    assert "unknown option" in err.message


@pytest.mark.parametrize(("text", "option"), [
    ("[DEFAULT]\nsocket_mode = 0999\n", "DEFAULT.socket_mode"),  # not octal
    ("[DEFAULT]\nsocket_mode = 01777\n", "DEFAULT.socket_mode"),  # sticky: not a plain mode
    ("[DEFAULT]\nsocket_mode = rw-rw----\n", "DEFAULT.socket_mode"),
    ("[DEFAULT]\nsocket_mode = -0660\n", "DEFAULT.socket_mode"),
    ("[DEFAULT]\nmultipath = maybe\n", "DEFAULT.multipath"),
    ("[DEFAULT]\nmultipath =\n", "DEFAULT.multipath"),
    ("[DEFAULT]\nengine = brick\n", "DEFAULT.engine"),
    ("[DEFAULT]\nlog_level = TRACE\n", "DEFAULT.log_level"),
    ("[DEFAULT]\nmax_body_bytes = 64k\n", "DEFAULT.max_body_bytes"),
    ("[iscsi]\nlogin_timeout = 2.5\n", "iscsi.login_timeout"),
    ("[iscsi]\nlogin_attempts = two\n", "iscsi.login_attempts"),
    ("[timeouts]\nattach = 0\n", "timeouts.attach"),
    ("[timeouts]\ndetach = -1\n", "timeouts.detach"),
    ("[timeouts]\ndevice = nan\n", "timeouts.device"),
    ("[timeouts]\ncommand = soon\n", "timeouts.command"),
    ("[health]\ninterval = 0\n", "health.interval"),
    ("[health]\nself_heal = maybe\n", "health.self_heal"),
    ("[health]\nprobe_timeout = -1\n", "health.probe_timeout"),
    ("[timeouts]\nmax_parallel_commands = 1.5\n", "timeouts.max_parallel_commands"),
    ("[timeouts]\ndetached_retention = 0\n", "timeouts.detached_retention"),
    ("[timeouts]\nattach = inf\n", "timeouts.attach"),
    ("[iscsi]\nlogin_timeout = -5\n", "iscsi.login_timeout"),
    ("[iscsi]\nlogin_attempts = 0\n", "iscsi.login_attempts"),
    ("[iscsi]\nportal_retry_interval = -1\n", "iscsi.portal_retry_interval"),
    ("[iscsi]\nrediscover_after = -1\n", "iscsi.rediscover_after"),
    ("[iscsi]\niface =\n", "iscsi.iface"),
    ("[DEFAULT]\nsocket_group =\n", "DEFAULT.socket_group"),
    ("[DEFAULT]\nmax_body_bytes = 0\n", "DEFAULT.max_body_bytes"),
    ("[timeouts]\nmax_parallel_commands = 0\n", "timeouts.max_parallel_commands"),
    ("[DEFAULT]\nrestore_timeout = -1\n", "DEFAULT.restore_timeout"),
    ("[DEFAULT]\nrestore_timeout = inf\n", "DEFAULT.restore_timeout"),
    ("[DEFAULT]\nrestore_timeout = half an hour\n", "DEFAULT.restore_timeout"),
    ("[DEFAULT]\nrestore_retry_interval = 0\n", "DEFAULT.restore_retry_interval"),
    ("[DEFAULT]\nrestore_retry_interval = nan\n", "DEFAULT.restore_retry_interval"),
    ("[DEFAULT]\nrestore_retry_max_interval = -60\n", "DEFAULT.restore_retry_max_interval"),
    # A cap below the first wait would make the "growing" waits shrink.
    ("[DEFAULT]\nrestore_retry_interval = 30\nrestore_retry_max_interval = 20\n",
     "DEFAULT.restore_retry_max_interval"),
    ("[DEFAULT]\nrestore_retry_max_interval = 5\n", "DEFAULT.restore_retry_max_interval"),
])
def test_malformed_value_is_named(text: str, option: str) -> None:
    err = _invalid(text)
    assert err.option == option
    assert err.details == {"option": option}
    assert err.message.startswith(f"{option}: ")


@pytest.mark.parametrize("option", ["socket", "state_dir", "lock_path"])
@pytest.mark.parametrize("value", ["run/hostagent.sock", "./state", "~/locks", ""])
def test_relative_path_is_refused(option: str, value: str) -> None:
    err = _invalid(f"[DEFAULT]\n{option} = {value}\n")
    assert err.option == f"DEFAULT.{option}"
    assert "absolute" in err.message


def test_malformed_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("socket_mode = 0660\n")  # no section header
    with pytest.raises(InvalidConfig) as info:
        config.load(str(path))
    assert info.value.option == str(path)


def test_duplicate_option_is_refused() -> None:
    err = _invalid("[iscsi]\niface = a\niface = b\n")
    assert "iface" in err.message


def test_missing_explicit_file_is_an_error(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Even when the default file exists: an explicit path must not fall back to it.
    default = tmp_path / "default.conf"
    default.write_text("")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(default))
    missing = tmp_path / "missing.conf"
    with pytest.raises(InvalidConfig) as info:
        config.load(str(missing))
    assert info.value.option == str(missing)
    assert "no such file" in info.value.message


# ---- allowed ids --------------------------------------------------------------------

def test_allowed_ids_resolve_numbers_and_names_and_ignore_unknown_names() -> None:
    cfg = Config(allowed_users=("root", "4242", "no-such-user-hostagent"),
                 allowed_groups=("root", "4343", "no-such-group-hostagent"))
    assert cfg.allowed_uids() == frozenset({0, 4242})
    assert cfg.allowed_gids() == frozenset({0, 4343})


def test_allowed_ids_empty() -> None:
    cfg = Config(allowed_users=(), allowed_groups=("no-such-group-hostagent",))
    assert cfg.allowed_uids() == frozenset()
    assert cfg.allowed_gids() == frozenset()


# ---- the shipped sample -------------------------------------------------------------

def test_sample_as_shipped_is_a_no_op() -> None:
    assert config.parse(SAMPLE.read_text(), str(SAMPLE)) == Config()


def test_sample_uncommented_equals_the_defaults() -> None:
    shipped = SAMPLE.read_text().splitlines()
    lines = _uncommented(SAMPLE.read_text())
    changed = [line for old, line in zip(shipped, lines, strict=True) if old != line]
    assert len(changed) == sum(len(options) for options in config._SCHEMA.values())
    assert config.parse("\n".join(lines) + "\n", str(SAMPLE)) == Config()


def test_sample_lists_every_option_once() -> None:
    # Equal to the defaults is not enough: an option left out would parse as its default too.
    listed: list[tuple[str, str]] = []
    section = ""
    for line in SAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
        elif option := OPTION_LINE.fullmatch(line):
            listed.append((section, option[1].split("=")[0].strip()))
    schema = [(s, o) for s, options in config._SCHEMA.items() for o in options]
    assert sorted(listed) == sorted(schema)


def test_sample_writes_socket_mode_in_octal() -> None:
    assert "#socket_mode = 0660" in SAMPLE.read_text().splitlines()


# ---- my_ip ---------------------------------------------------------------------------

def test_my_ip_defaults_to_unset() -> None:
    assert Config().my_ip is None
    assert config.parse("[DEFAULT]\nmy_ip =\n").my_ip is None


@pytest.mark.parametrize(("text", "value"), [
    ("192.168.10.5", "192.168.10.5"),
    (" 10.0.0.1 ", "10.0.0.1"),
    ("2001:DB8:0:0::7", "2001:db8::7"),  # the compressed form, as the kernel prints it
    ("127.0.0.1", "127.0.0.1"),  # allowed (a one-host test bed); preflight warns
])
def test_my_ip_is_an_address(text: str, value: str) -> None:
    assert config.parse(f"[DEFAULT]\nmy_ip = {text}\n").my_ip == value


@pytest.mark.parametrize(("text", "why"), [
    ("host.example.com", "must be an IPv4 or IPv6 address"),
    ("10.0.0", "must be an IPv4 or IPv6 address"),
    ("10.0.0.1/24", "must be an IPv4 or IPv6 address"),
    ("010.0.0.1", "must be an IPv4 or IPv6 address"),
    ("10.0.0.1, 10.0.0.2", "must be an IPv4 or IPv6 address"),
    ("0.0.0.0", "must be an address of this host (not unspecified or multicast)"),
    ("::", "must be an address of this host (not unspecified or multicast)"),
    ("224.0.0.1", "must be an address of this host (not unspecified or multicast)"),
])
def test_a_bad_my_ip_is_named(text: str, why: str) -> None:
    err = _invalid(f"[DEFAULT]\nmy_ip = {text}\n")
    assert err.option == "DEFAULT.my_ip"
    assert err.message == f"DEFAULT.my_ip: {text!r}: {why}"


def test_my_ip_belongs_to_default() -> None:
    assert _invalid("[iscsi]\nmy_ip = 10.0.0.1\n").option == "iscsi.my_ip"


# ---- the restore policy and the unit that waits for it -------------------------------

UNIT = SAMPLE.parents[1] / "systemd" / "hostagent.service"


def test_restore_options_belong_to_default() -> None:
    cfg = config.parse("[DEFAULT]\nrestore_timeout = 0\nrestore_retry_interval = 60\n"
                       "restore_retry_max_interval = 60\n")
    assert (cfg.restore_timeout, cfg.restore_retry_interval,
            cfg.restore_retry_max_interval) == (0.0, 60.0, 60.0)
    assert _invalid("[timeouts]\nrestore_timeout = 60\n").option == "timeouts.restore_timeout"


def test_restore_deadline_covers_a_last_try_that_waits_for_its_locks() -> None:
    # No try starts after restore_timeout; the last may wait up to [timeouts] attach for
    # its target locks and then has [timeouts] attach to finish.
    assert Config().restore_deadline() == 1800.0 + 2 * 180.0
    assert Config(restore_timeout=0.0, attach_timeout=30.0).restore_deadline() == 60.0


def _unit_setting(name: str) -> str:
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
              if line.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= in {UNIT}: {values}"
    return values[0]


def test_the_unit_waits_for_the_whole_restore_and_its_start_timeout_is_above() -> None:
    # A `hostagent-cli wait` that gives up before the restore does fails the unit, and
    # its restart cuts the restore: the wait covers the restore's deadline with room for
    # the undo of a last try cut off, and systemd's start timeout is above the wait.
    argv = _unit_setting("ExecStartPost").split()
    assert argv[:2] == ["/usr/local/bin/hostagent-cli", "wait"]
    wait = float(argv[argv.index("--timeout") + 1])
    assert wait >= Config().restore_deadline() + 120
    assert float(_unit_setting("TimeoutStartSec")) > wait


def test_the_cli_waits_as_long_as_the_unit_by_default() -> None:
    from hostagent.cli import main as cli
    argv = _unit_setting("ExecStartPost").split()
    assert cli.parser().parse_args(["wait"]).timeout == float(argv[argv.index("--timeout") + 1])
