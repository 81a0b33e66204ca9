"""Prometheus metrics of the agent, served at GET /metrics.

One registry per agent (not prometheus-client's global one), so tests and a
second agent in one process never share counters. What already lives elsewhere
is read at scrape time rather than copied: attachments by state from the store,
host commands from the executor's per-program counters, preflight results from
the last report_preflight() call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from hostagent.models import Status

# Seconds; an attach over TCG takes a few, a real one under a second, a bad one minutes.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0)
PATH_STATES = ("up", "down", "missing")
HEALTH_STATES = ("healthy", "degraded", "failed")

CommandCounts = Callable[[], Mapping[tuple[str, str], int]]


class _Preflight:
    """The latest preflight result, by status; set by preflight, read at scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] | None = None

    def report(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            self._counts = dict(counts)

    def counts(self) -> dict[str, int] | None:
        with self._lock:
            return None if self._counts is None else dict(self._counts)


PREFLIGHT = _Preflight()


def report_preflight(counts: Mapping[str, int]) -> None:
    """The hook preflight calls after a run: number of checks per status
    (e.g. {"pass": 12, "warn": 1, "fail": 0}). Shown as hostagent_preflight_checks."""
    PREFLIGHT.report(counts)


class _Scraped(Collector):
    """Values owned by other objects, read when Prometheus scrapes."""

    def __init__(self, attachments: Callable[[], Mapping[str, int]],
                 commands: CommandCounts, socket_calls: Callable[[], int]) -> None:
        self.attachments = attachments
        self.commands = commands
        self.socket_calls = socket_calls

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("hostagent_attachments", "Attachments by state",
                                   labels=["state"])
        counts = self.attachments()
        for state in Status:
            states.add_metric([state.value], counts.get(state.value, 0))
        yield states
        commands = CounterMetricFamily("hostagent_host_commands",
                                       "Host commands run, by program and outcome",
                                       labels=["command", "outcome"])
        for (program, outcome), n in sorted(self.commands().items()):
            commands.add_metric([program, outcome], n)
        yield commands
        yield CounterMetricFamily("hostagent_multipathd_socket_commands",
                                  "Commands sent over multipathd's socket",
                                  value=self.socket_calls())
        preflight = GaugeMetricFamily("hostagent_preflight_checks",
                                      "Preflight checks of the last run, by status",
                                      labels=["status"])
        for status, n in sorted((PREFLIGHT.counts() or {}).items()):
            preflight.add_metric([status], n)
        yield preflight


class Metrics:
    def __init__(self, *, attachments: Callable[[], Mapping[str, int]] = dict,
                 commands: CommandCounts = dict,
                 socket_calls: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        self.operations = Histogram(
            "hostagent_operation_seconds", "Attach, detach and extend latency",
            ["operation", "outcome"], buckets=OPERATION_BUCKETS, registry=self.registry)
        self.paths = Gauge("hostagent_paths", "Paths of attached volumes by state at the "
                           "last health check", ["state"], registry=self.registry)
        self.health = Gauge("hostagent_attachments_health", "Attached volumes by health "
                            "at the last check", ["status"], registry=self.registry)
        self.checks = Counter("hostagent_health_checks", "Health checks run",
                              registry=self.registry)
        self.heal_actions = Counter("hostagent_self_heal_actions", "Self-healing actions by "
                                    "kind and outcome", ["action", "outcome"],
                                    registry=self.registry)
        self.registry.register(_Scraped(attachments, commands, socket_calls))

    def observe_operation(self, operation: str, seconds: float, ok: bool) -> None:
        self.operations.labels(operation, "ok" if ok else "error").observe(seconds)

    def set_health(self, verdicts: Mapping[str, int], paths: Mapping[str, int]) -> None:
        self.checks.inc()
        for status in HEALTH_STATES:
            self.health.labels(status).set(verdicts.get(status, 0))
        for state in PATH_STATES:
            self.paths.labels(state).set(paths.get(state, 0))

    def heal_action(self, action: str, ok: bool) -> None:
        self.heal_actions.labels(action, "ok" if ok else "failed").inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
