"""Health of attached volumes, and the repairs that are safe to make.

Three parts kept apart so the rules can be tested without a host:
- gathering (I/O): what sysfs, multipathd and an optional O_DIRECT read show
  for each attached volume (`Observer`, `Prober`) -> AttachmentObservation;
- evaluation (pure): observation -> healthy / degraded / failed with reasons
  (`evaluate`), and which repairs apply (`plan_heal`);
- `HealthMonitor`: the periodic loop and the on-demand check, transitions
  history, metrics, and self-healing (`Healer`).

Self-healing never logs a session out (a slow session is left to iscsid: the
logout/login cycles of other agents turned file systems read-only), only acts
on attachments in hostagent's state store, and takes the attachment's lock and
its targets' locks as attach and detach do; an attachment with an operation
under way is skipped for that round.
"""

from hostagent.health.monitor import HealthMonitor, HealthReport, report_to_dict
from hostagent.health.observe import Observer, Prober
from hostagent.health.verdict import (
    NO_SESSION,
    Action,
    AttachmentObservation,
    HealthOptions,
    MapObservation,
    PathObservation,
    ProbeResult,
    Verdict,
    evaluate,
    plan_heal,
)

__all__ = ["NO_SESSION", "Action", "AttachmentObservation", "HealthMonitor", "HealthOptions",
           "HealthReport", "MapObservation", "Observer", "PathObservation", "ProbeResult",
           "Prober", "Verdict", "evaluate", "plan_heal", "report_to_dict"]
