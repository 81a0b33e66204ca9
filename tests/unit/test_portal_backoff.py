"""A portal that did not answer rests for portal_retry_interval: no attach or heal
logs in to it sooner, and the error says when it will be tried again.

The FakeExecutor is strict: a login to a resting portal that a test does not
script fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.connectors.backoff import PortalBackoff
from hostagent.errors import (
    AuthenticationFailed,
    CommandTimeout,
    LoginFailed,
    PortalResting,
    PortalUnreachable,
)
from hostagent.host.iscsiadm import IscsiErr
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


def test_the_next_attach_does_not_try_a_portal_that_just_timed_out(host: Host) -> None:
    attach_datera_with_p2_dead(host)
    host.clock.advance(5)
    host.expect_new_node(K2, P1)
    host.expect_login(K2, P1)  # and nothing towards P2: not even its node record
    device = host.attach(k2(1))
    host.executor.assert_done()
    assert [p.portal for p in device.paths] == [P1]
    (missing,) = device.missing
    assert missing.startswith(f"{P2}: portal_resting: {P2} failed 5 s ago")
    assert "not tried again for 25 s" in missing


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
        host.attach(k2(1))
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
    (CommandTimeout(["iscsiadm"], 25), True),
    (LoginFailed("login failed: FATAL_LOGIN"), False),
    (AuthenticationFailed("refused our CHAP credentials"), False),
])
def test_only_a_portal_that_did_not_answer_rests(err: Exception, rests: bool) -> None:
    backoff = PortalBackoff(FakeClock(), 30)
    backoff.record(P1, err)
    if rests:
        with pytest.raises(PortalResting, match=r"login timed out|did not finish"):
            backoff.check(P1)
    else:
        backoff.check(P1)


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
