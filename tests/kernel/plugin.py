"""pytest plugin of the real-kernel test bed.

Fixtures: `guest` (session: modules, portals, iscsid, multipathd), `array`
(an LIO iSCSI array of 2 portals; parametrize it indirectly with 3 for more),
`fc_array` (K2 over software FCoE, two links), `faults`, and an automatic leak
check after every kernel test: a test that leaves an iSCSI session, node
record, SCSI device, sd/dm device, loop device or LIO object behind fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.testbed import guest as guest_mod
from tests.kernel.testbed import leaks
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FcArray, FcFabric
from tests.kernel.testbed.lio import IscsiArray

KERNEL_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KERNEL_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def guest() -> guest_mod.Guest:
    release = os.uname().release
    if not Path(f"/lib/modules/{release}/kernel/drivers/scsi/iscsi_tcp.ko").exists():
        pytest.fail(f"kernel {release} has no iscsi_tcp module: kernel tests run in the guest "
                    "(scripts/test kernel)", pytrace=False)
    return guest_mod.prepare()


@pytest.fixture(scope="session")
def baseline(guest: guest_mod.Guest) -> leaks.Snapshot:
    return leaks.snapshot()


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("kernel") is None:
        yield
        return
    base: leaks.Snapshot = request.getfixturevalue("baseline")
    yield
    found = leaks.find(base)
    if found:
        leaks.cleanup(base)
        left = leaks.find(base)
        pytest.fail("the test leaked:\n  " + "\n  ".join(found)
                    + ("\ncleanup could not remove:\n  " + "\n  ".join(left) if left else ""),
                    pytrace=False)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hostagent-array-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def array(guest: guest_mod.Guest, workdir: Path, request: pytest.FixtureRequest
          ) -> Iterator[IscsiArray]:
    portals = getattr(request, "param", 2)
    arr = IscsiArray(guest, portals=portals, workdir=workdir)
    yield arr
    arr.close()


@pytest.fixture(scope="session")
def fc_fabric(guest: guest_mod.Guest) -> Iterator[FcFabric]:
    fabric = FcFabric(links=2)
    fabric.start()
    yield fabric
    fabric.stop()


@pytest.fixture
def fc_array(fc_fabric: FcFabric, workdir: Path) -> Iterator[FcArray]:
    arr = FcArray(fc_fabric, workdir)
    yield arr
    arr.close()


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[Faults]:
    fabric = request.getfixturevalue("fc_fabric") if "fc_array" in request.fixturenames else None
    f = Faults(fabric)
    yield f
    f.restore()
