"""Faults a test can inject, each undone at the end of the test."""

from __future__ import annotations

from .fcoe import FcFabric
from .sh import run


class Faults:
    def __init__(self, fc: FcFabric | None = None) -> None:
        self._fc = fc
        self._blocked: set[str] = set()
        self._links_down: set[int] = set()

    @staticmethod
    def _rules(ip: str, port: int) -> list[list[str]]:
        # Both directions: the initiator's segments to the portal and the replies.
        return [["INPUT", "-p", "tcp", "-d", ip, "--dport", str(port), "-j", "DROP"],
                ["INPUT", "-p", "tcp", "-s", ip, "--sport", str(port), "-j", "DROP"]]

    def block_portal(self, portal: str) -> None:
        """Drop all traffic to and from portal 'ip:port' (a dead path, not a refused one).

        `ip link set down` would not do: the local route of the address stays.
        """
        ip, port = portal.rsplit(":", 1)
        for rule in self._rules(ip, int(port)):
            run(["iptables", "-I", *rule])
        self._blocked.add(portal)

    def unblock_portal(self, portal: str) -> None:
        ip, port = portal.rsplit(":", 1)
        for rule in self._rules(ip, int(port)):
            run(["iptables", "-D", *rule])
        self._blocked.discard(portal)

    def fc_link_down(self, index: int) -> None:
        assert self._fc is not None, "fc_link_down needs the fc_array fixture"
        run(["ip", "link", "set", self._fc.links[index].initiator_if, "down"])
        self._links_down.add(index)

    def fc_link_up(self, index: int) -> None:
        assert self._fc is not None, "fc_link_up needs the fc_array fixture"
        run(["ip", "link", "set", self._fc.links[index].initiator_if, "up"])
        self._links_down.discard(index)

    def restore(self) -> None:
        for portal in list(self._blocked):
            self.unblock_portal(portal)
        for index in list(self._links_down):
            self.fc_link_up(index)
