"""SendTargets: one discovery per portal however many attaches ask at once, and a
discovery the target dropped is retried (LIO drops parallel discovery sessions:
iscsiadm then dies of SIGPIPE or reports a PDU timeout)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hostagent.errors import AuthenticationFailed, LoginFailed
from hostagent.host.fs import HostFS
from hostagent.host.iscsiadm import DISCOVERY_BACKOFF, DiscoveredTarget, Iscsiadm
from hostagent.models import Portal
from tests.unit.fakes import FakeClock, FakeExecutor

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures/guest/"
           "iscsiadm_discovery_nonpersistent.txt").read_text()
PORTAL = Portal("127.0.0.1", 3260)
ARGV = ["iscsiadm", "-m", "discovery", "-t", "st", "-p", "127.0.0.1:3260", "-I", "hostagent",
        "-o", "nonpersistent"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def iscsiadm(tmp_path: Path, executor: FakeExecutor, clock: FakeClock) -> Iscsiadm:
    return Iscsiadm(executor, HostFS(tmp_path), clock=clock)


def test_concurrent_discoveries_of_one_portal_share_one_send_targets(
        tmp_path: Path, clock: FakeClock) -> None:
    executor = FakeExecutor()
    executor.expect(ARGV, stdout=FIXTURE, delay=0.05)
    adm = iscsiadm(tmp_path, executor, clock)

    async def eight() -> list[list[DiscoveredTarget]]:
        return list(await asyncio.gather(*(adm.discover(PORTAL, None) for _ in range(8))))

    results = asyncio.run(eight())
    executor.assert_done()
    assert len(executor.calls) == 1
    assert all(r == results[0] for r in results) and len(results[0]) == 4


def test_a_later_discovery_asks_again(tmp_path: Path, clock: FakeClock) -> None:
    executor = FakeExecutor()
    executor.expect(ARGV, stdout=FIXTURE, times=2)
    adm = iscsiadm(tmp_path, executor, clock)
    asyncio.run(adm.discover(PORTAL, None))
    asyncio.run(adm.discover(PORTAL, None))
    executor.assert_done()  # no stale answer is kept between attaches


@pytest.mark.parametrize("returncode", [-13, 11, 8])
def test_a_dropped_discovery_is_retried(tmp_path: Path, clock: FakeClock,
                                        returncode: int) -> None:
    executor = FakeExecutor()
    executor.expect(ARGV, returncode=returncode, stderr="Connection to Discovery Address "
                    "127.0.0.1 closed")
    executor.expect(ARGV, stdout=FIXTURE)
    found = asyncio.run(iscsiadm(tmp_path, executor, clock).discover(PORTAL, None))
    executor.assert_done()
    assert clock.sleeps == [DISCOVERY_BACKOFF]  # one back-off, before the second try
    assert {t.iqn for t in found} == {"iqn.2013-05.com.daterainc:tc:01:sn:990419f809471ce2",
                                      "iqn.2009-01.com.kaminario:storage.k2.7aec20"}


def test_a_discovery_that_keeps_failing_says_how_often_it_tried(
        tmp_path: Path, clock: FakeClock) -> None:
    executor = FakeExecutor()
    executor.expect(ARGV, returncode=11, times=3)
    with pytest.raises(LoginFailed) as err:
        asyncio.run(iscsiadm(tmp_path, executor, clock).discover(PORTAL, None))
    executor.assert_done()
    assert err.value.details["attempts"] == 3 and err.value.details["returncode"] == 11
    # The back-off grows with the attempt, and nothing is waited after the last one.
    assert clock.sleeps == [DISCOVERY_BACKOFF, 2 * DISCOVERY_BACKOFF]


@pytest.mark.parametrize(("returncode", "error"), [(24, AuthenticationFailed), (21, LoginFailed)])
def test_refusals_are_not_retried(tmp_path: Path, clock: FakeClock, returncode: int,
                                  error: type[Exception]) -> None:
    executor = FakeExecutor()
    executor.expect(ARGV, returncode=returncode)
    with pytest.raises(error):
        asyncio.run(iscsiadm(tmp_path, executor, clock).discover(PORTAL, None))
    executor.assert_done()
    assert len(executor.calls) == 1 and clock.sleeps == []
