"""A portal that did not answer rests for portal_retry_interval: no attach or heal
logs in to it sooner, and the error says when it will be tried again. A login's
failure rests only its target at that portal; a SendTargets failure the whole portal;
our own command timeout (a slow iscsid) nothing.

The FakeExecutor is strict: a login to a resting portal that a test does not
script fails the test."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hostagent.connectors.backoff import PortalBackoff
from hostagent.connectors.base import PathRepair, RepairKind
from hostagent.errors import (
    AuthenticationFailed,
    CommandTimeout,
    DaemonUnavailable,
    LoginFailed,
    PortalResting,
    PortalUnreachable,
)
from hostagent.host.iscsiadm import IscsiErr
from hostagent.models import IscsiVolume
from tests.unit.fakehost import drop_from_map
from tests.unit.fakes import FakeClock
from tests.unit.iscsihost import IQN, K2, P1, P2, WWID, Host, datera, k2

K2_WWID = "36001405" + "fedcba9876543210fedcba987"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    h.kernel.luns[(IQN, 0)] = WWID
    h.kernel.luns[(K2, 1)] = K2_WWID
    return h


def attach_datera_with_p2_dead(host: Host) -> None:
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    host.expect_new_node(IQN, P2)
    host.expect_login(IQN, P2, returncode=IscsiErr.TRANS_TIMEOUT)
    device = host.attach(datera())
    assert [p.portal for p in device.paths] == [P1]
    assert "portal_unreachable" in device.missing[0]
    host.executor.assert_done()


def test_a_login_timeout_does_not_rest_the_portal_for_another_target(host: Host) -> None:
    attach_datera_with_p2_dead(host)
    host.clock.advance(5)
    host.expect_attach(K2)  # P2 too: its timeout was evidence about the Datera target only
    device = host.attach(k2(1))
    host.executor.assert_done()
    assert sorted(p.portal or "" for p in device.paths) == sorted([P1, P2])
    assert device.missing == ()


def test_the_target_whose_login_timed_out_rests_at_that_portal(host: Host) -> None:
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p, returncode=IscsiErr.TRANS_TIMEOUT)
    with pytest.raises(PortalUnreachable):
        host.attach(datera())
    host.clock.advance(5)
    host.expect_attach(K2)  # another IQN at the same portals: tried, and attached
    assert host.attach(k2(1)).missing == ()
    host.executor.assert_done()
    calls = len(host.executor.calls)
    with pytest.raises(PortalResting) as refused:  # an unscripted login would fail the test
        host.attach(datera())
    assert len(host.executor.calls) == calls
    assert refused.value.details["iqn"] == IQN
    assert refused.value.details["portal"] in (P1, P2)
    assert refused.value.details["retry_after"] == 25.0
    assert f"{IQN} at {refused.value.details['portal']} failed 5 s ago" in refused.value.message
    assert "not tried again for 25 s" in refused.value.message


def test_a_resting_portal_is_tried_again_once_the_interval_passed(host: Host) -> None:
    attach_datera_with_p2_dead(host)
    host.clock.advance(30)
    host.expect_attach(K2)
    device = host.attach(k2(1))
    host.executor.assert_done()
    assert sorted(p.portal or "" for p in device.paths) == sorted([P1, P2])
    assert device.missing == ()


def test_refused_credentials_do_not_make_a_portal_rest(host: Host) -> None:
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    host.expect_new_node(IQN, P2)
    host.expect_login(IQN, P2, returncode=IscsiErr.LOGIN_AUTH_FAILED)
    assert "authentication_failed" in host.attach(datera()).missing[0]
    host.expect_attach(K2)
    assert host.attach(k2(1)).missing == ()
    host.executor.assert_done()


def test_an_attach_whose_every_portal_rests_runs_nothing_and_says_when(host: Host) -> None:
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p, returncode=IscsiErr.TRANS)
    with pytest.raises(PortalUnreachable):
        host.attach(datera())
    host.executor.assert_done()
    calls = len(host.executor.calls)
    host.clock.advance(10)
    with pytest.raises(PortalResting) as refused:
        host.attach(datera())
    assert len(host.executor.calls) == calls
    assert refused.value.retryable
    assert refused.value.details["retry_after"] == 20.0
    assert refused.value.details["retry_at"] == pytest.approx(host.clock.time() + 20)


def test_interval_zero_never_rests() -> None:
    backoff = PortalBackoff(FakeClock(), 0)
    backoff.record(P2, PortalUnreachable("gone", portal=P2))
    backoff.check(P2)  # no PortalResting


@pytest.mark.parametrize(("err", "rests"), [
    (PortalUnreachable("login timed out"), True),
    (CommandTimeout(["iscsiadm"], 25), False),  # iscsiadm did not return: not the portal
    (DaemonUnavailable("iscsid is not running or does not answer"), False),
    (LoginFailed("login failed: FATAL_LOGIN"), False),
    (AuthenticationFailed("refused our CHAP credentials"), False),
])
def test_only_a_portal_that_did_not_answer_rests(err: Exception, rests: bool) -> None:
    backoff = PortalBackoff(FakeClock(), 30)
    backoff.record(P1, err)
    backoff.record(P2, err, iqn=IQN)
    if rests:
        with pytest.raises(PortalResting, match=r"login timed out"):
            backoff.check(P1)
        with pytest.raises(PortalResting, match=r"login timed out"):
            backoff.check(P2, iqn=IQN)
    else:
        backoff.check(P1)
        backoff.check(P2, iqn=IQN)


def test_a_login_failure_rests_that_target_at_that_portal_only() -> None:
    backoff = PortalBackoff(FakeClock(), 30)
    backoff.record(P1, PortalUnreachable("login timed out"), iqn=IQN)
    with pytest.raises(PortalResting) as refused:
        backoff.check(P1, iqn=IQN)
    assert refused.value.details["iqn"] == IQN and refused.value.details["portal"] == P1
    backoff.check(P1, iqn=K2)  # another target at the same portal
    backoff.check(P2, iqn=IQN)  # the same target at another portal
    backoff.check(P1)  # a SendTargets: it names no target


def test_a_discovery_failure_rests_the_portal_for_every_target() -> None:
    backoff = PortalBackoff(FakeClock(), 30)
    backoff.record(P1, PortalUnreachable("SendTargets timed out"))
    for iqn in (IQN, K2, None):
        with pytest.raises(PortalResting) as refused:
            backoff.check(P1, iqn=iqn)
        assert "iqn" not in refused.value.details
    backoff.check(P2, iqn=IQN)


def test_a_login_success_ends_the_portal_rest_a_discovery_success_not_a_target_rest() -> None:
    backoff = PortalBackoff(FakeClock(), 30)
    backoff.record(P1, PortalUnreachable("SendTargets timed out"))
    backoff.record(P1, None, iqn=K2)  # the portal answered a login
    backoff.check(P1, iqn=IQN)
    backoff.record(P1, PortalUnreachable("login timed out"), iqn=IQN)
    backoff.record(P1, None)  # the portal answered a SendTargets: says nothing of IQN's login
    with pytest.raises(PortalResting):
        backoff.check(P1, iqn=IQN)


def test_a_success_ends_the_rest() -> None:
    backoff = PortalBackoff(FakeClock(), 30)
    backoff.record(P1, PortalUnreachable("login timed out"))
    backoff.record(P1, None)
    backoff.check(P1)


def test_discovery_on_a_dead_portal_makes_it_rest(host: Host) -> None:
    sendtargets = ["iscsiadm", "-m", "discovery", "-t", "st", "-p", P1, "-I", "hostagent",
                   "-o", "nonpersistent"]
    host.executor.expect(sendtargets, returncode=IscsiErr.TRANS_TIMEOUT, times=3)
    vol = k2(1)
    discovering = type(vol)(vol.targets[:1], discover=True)
    with pytest.raises(PortalUnreachable):
        host.attach(discovering)
    host.executor.assert_done()
    with pytest.raises(PortalResting):  # no second SendTargets: unscripted, it would fail
        host.attach(discovering)


SENDTARGETS = ["iscsiadm", "-m", "discovery", "-t", "st", "-p", P1, "-I", "hostagent",
               "-o", "nonpersistent"]


def discovering_k2() -> IscsiVolume:
    vol = k2(1)
    return IscsiVolume(vol.targets[:1], discover=True)


def test_a_discovery_failure_rests_the_portal_for_every_targets_login(host: Host) -> None:
    host.executor.expect(SENDTARGETS, returncode=IscsiErr.TRANS_TIMEOUT, times=3)
    with pytest.raises(PortalUnreachable):
        host.attach(discovering_k2())
    host.expect_new_node(IQN, P2)
    host.expect_login(IQN, P2)  # and nothing towards P1: not even its node record
    device = host.attach(datera())
    host.executor.assert_done()
    assert [p.portal for p in device.paths] == [P2]
    (missing,) = device.missing
    assert missing.startswith(f"{P1}: portal_resting: {P1} failed 0 s ago")


def test_our_own_timeout_of_a_login_rests_nothing(host: Host) -> None:
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    host.expect_new_node(IQN, P2)
    host.executor.expect(["iscsiadm", "-m", "node", "-T", IQN, "-p", P2, "-I", "hostagent",
                          "--login"], timeout=True)  # iscsid slow: iscsiadm did not return
    assert "host_command_timeout" in host.attach(datera()).missing[0]
    host.expect_attach(K2)  # P2 tried at once for another target
    device = host.attach(k2(1))
    host.executor.assert_done()
    assert sorted(p.portal or "" for p in device.paths) == sorted([P1, P2])
    assert device.missing == ()


def test_our_own_timeout_of_a_discovery_rests_nothing(host: Host) -> None:
    host.executor.expect(SENDTARGETS, timeout=True)
    with pytest.raises(CommandTimeout):
        host.attach(discovering_k2())
    host.executor.expect(SENDTARGETS, stdout=f"{P1},1 {K2}\n{P2},1 {K2}\n")
    host.expect_attach(K2)
    assert host.attach(discovering_k2()).missing == ()
    host.executor.assert_done()


def test_self_healing_is_not_refused_for_another_targets_failure(host: Host) -> None:
    host.expect_attach(IQN)
    device = host.attach(datera())
    p2_host = host.kernel.session_host(IQN, P2)
    hctl = f"{p2_host}:0:0:0"
    sd = os.listdir(host.kernel.p(f"/sys/class/scsi_device/{hctl}/device/block"))[0]
    drop_from_map(host.kernel, sd)
    host.kernel.delete_disk(hctl)
    host.kernel.remove_session(IQN, P2)  # A's path at P2 is gone
    host.expect_new_node(K2, P1)
    host.expect_login(K2, P1)
    host.expect_new_node(K2, P2)
    host.expect_login(K2, P2, returncode=IscsiErr.TRANS_TIMEOUT)  # B's login at P2 fails
    assert "portal_unreachable" in host.attach(k2(1)).missing[0]
    host.expect_login(IQN, P2)  # A's own record: the heal logs in, not refused as resting
    repair = PathRepair(RepairKind.LOGIN, P2, IQN, None, None)
    path = asyncio.run(host.connector.repair(datera(), device, repair))
    host.executor.assert_done()
    assert path.portal == P2 and host.kernel.session_host(IQN, P2) is not None
