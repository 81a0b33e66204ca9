"""A logout meets iscsid restarting (iscsiadm 20 ISCSID_NOTCONN, 18 ISCSID_COMM_ERR) or
hung (our own command timeout): it is tried again a second apart within LOGOUT_ATTEMPTS
seconds, and judged by the sessions of ours left, as for the other logout failures.

The FakeExecutor is strict: a logout a test does not script fails it, and one scripted
but never run fails assert_done()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostagent.connectors.iscsi import LOGOUT_ATTEMPTS
from hostagent.errors import CommandTimeout, DaemonUnavailable
from hostagent.host.iscsiadm import IscsiErr
from hostagent.models import Device
from tests.unit.iscsihost import IQN, P1, P2, WWID, Host, datera

LOGOUT = ["iscsiadm", "-m", "node", "-T", IQN, "-I", "hostagent", "--logout"]
NOT_RUNNING = "iscsiadm: can not connect to iSCSI daemon (111)!"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    h.kernel.luns[(IQN, 0)] = WWID
    yield h
    h.executor.assert_done()


def attached(host: Host) -> Device:
    host.expect_attach(IQN)
    device = host.attach(datera())
    host.executor.assert_done()
    return device


def gone(host: Host) -> Callable[[], None]:
    """iscsid ended every session of ours to the target."""
    def effect() -> None:
        for p in (P1, P2):
            host.kernel.remove_session(IQN, p)
    return effect


def nothing_left(host: Host) -> None:
    assert host.kernel.session_host(IQN, P1) is None and host.kernel.session_host(IQN, P2) is None
    assert not host.record(IQN, P1).exists() and not host.record(IQN, P2).exists()


def test_a_detach_meeting_iscsid_restarting_logs_out_once_it_answers(host: Host) -> None:
    device = attached(host)
    host.executor.expect(LOGOUT, returncode=IscsiErr.ISCSID_NOTCONN, stderr=NOT_RUNNING)
    host.executor.expect(LOGOUT, returncode=IscsiErr.ISCSID_COMM_ERR,
                         stderr="iscsiadm: Could not communicate with iscsid")
    host.executor.expect(LOGOUT, side_effect=gone(host))
    asyncio.run(host.connector.detach(datera(), device))
    nothing_left(host)
    assert host.clock.sleeps == [1.0, 1.0]


def test_iscsid_gone_after_ending_the_sessions_is_a_done_logout(host: Host) -> None:
    device = attached(host)
    # Exactly one logout: a second one, unscripted, would fail the test.
    host.executor.expect(LOGOUT, returncode=IscsiErr.ISCSID_NOTCONN, stderr=NOT_RUNNING,
                         side_effect=gone(host))
    asyncio.run(host.connector.detach(datera(), device))
    nothing_left(host)
    assert host.clock.sleeps == []


def test_iscsid_that_never_comes_back_fails_the_logout_after_its_bound(host: Host) -> None:
    device = attached(host)
    host.executor.expect(LOGOUT, returncode=IscsiErr.ISCSID_NOTCONN, stderr=NOT_RUNNING,
                         times=LOGOUT_ATTEMPTS)
    with pytest.raises(DaemonUnavailable):
        asyncio.run(host.connector.detach(datera(), device))
    assert sum(host.clock.sleeps) == LOGOUT_ATTEMPTS - 1
    assert host.record(IQN, P1).exists()  # a session left keeps its record


def test_one_portal_logout_meeting_iscsid_restarting_is_tried_again(host: Host) -> None:
    device = attached(host)
    p1_host = host.kernel.session_host(IQN, P1)
    assert p1_host is not None
    host.kernel.add_disk(p1_host, 2, WWID[:-1] + "9")  # another LUN keeps P1's session
    logout_p2 = ["iscsiadm", "-m", "node", "-T", IQN, "-p", P2, "-I", "hostagent", "--logout"]
    host.executor.expect(logout_p2, returncode=IscsiErr.ISCSID_NOTCONN, stderr=NOT_RUNNING)
    host.executor.expect(logout_p2, side_effect=lambda: host.kernel.remove_session(IQN, P2))
    asyncio.run(host.connector.detach(datera(), device))
    assert host.kernel.session_host(IQN, P1) == p1_host
    assert host.kernel.session_host(IQN, P2) is None and not host.record(IQN, P2).exists()


def test_a_logout_past_our_timeout_that_iscsid_finished_is_done(host: Host) -> None:
    device = attached(host)
    host.executor.expect(LOGOUT, timeout=True, side_effect=gone(host))
    asyncio.run(host.connector.detach(datera(), device))
    nothing_left(host)


def test_a_logout_past_our_timeout_with_sessions_left_is_tried_again(host: Host) -> None:
    device = attached(host)
    host.executor.expect(LOGOUT, timeout=True)
    host.executor.expect(LOGOUT, side_effect=gone(host))
    asyncio.run(host.connector.detach(datera(), device))
    nothing_left(host)


def test_a_hung_iscsid_holds_a_logout_no_longer_than_its_bound(host: Host) -> None:
    device = attached(host)
    # Our 30 s command timeout is past LOGOUT_ATTEMPTS seconds: no second try (an
    # unscripted one would fail the test), the session left is reported.
    host.executor.expect(LOGOUT, timeout=True, side_effect=lambda: host.clock.advance(30))
    with pytest.raises(CommandTimeout):
        asyncio.run(host.connector.detach(datera(), device))
    assert host.clock.sleeps == []
    assert host.kernel.session_host(IQN, P1) is not None and host.record(IQN, P1).exists()
