"""Self-healing: the repairs plan_heal chose, made under the same locks as
attach and detach; never a logout."""

from __future__ import annotations

from dataclasses import replace

from hostagent.agent.service import Service
from hostagent.connection_info import parse
from hostagent.connectors.fc import FcConnector
from hostagent.connectors.iscsi import IscsiConnector
from hostagent.errors import LoginFailed, LunNotFound, WwnMismatch
from hostagent.health.observe import unique_targets
from hostagent.health.verdict import Action, HealAction, PathObservation
from hostagent.host import scsi
from hostagent.host.fs import HostFS
from hostagent.models import (
    Attachment,
    Device,
    FcVolume,
    IscsiVolume,
    PathInfo,
    Status,
)

# ---- self-healing ---------------------------------------------------------------------

class Healer:
    """Carries out HealActions through the native engines' own parts (their
    iscsiadm, disks and map code, their target locks)."""

    def __init__(self, service: Service, fs: HostFS) -> None:
        self.service = service
        self.fs = fs

    async def run(self, action: HealAction) -> str:
        """Do one repair under the attachment's and its targets' locks; what was
        done. Raises HostAgentError when it failed."""
        lock = self.service.attachment_lock(action.attachment_id)
        if lock.locked():
            return "skipped: an operation is under way"
        async with lock:
            att = self.service.store.get(action.attachment_id)
            if att is None or att.status != Status.ATTACHED or att.device is None:
                return "skipped: no longer attached"
            connector = self.service.connectors.get(att.protocol)
            spec = parse(att.connection_info)
            if isinstance(connector, IscsiConnector) and isinstance(spec, IscsiVolume):
                async with connector.locks.hold(t.iqn for t in
                                                (att.device.iscsi_targets or spec.targets)):
                    info = await self._iscsi(connector, spec, att.device, action)
            elif isinstance(connector, FcConnector) and isinstance(spec, FcVolume):
                async with connector.locks.hold(spec.target_keys):
                    info = await self._disk(connector, att.device, action, action.path.hctl,
                                            action.path.target)
            else:
                return "skipped: self-healing needs the native engine"
            self._record(att, action.path.label, info)
            return f"{info.device} ({info.hctl}) is a path of {att.device.path} again"

    async def _iscsi(self, connector: IscsiConnector, vol: IscsiVolume, device: Device,
                     action: HealAction) -> PathInfo:
        p = action.path
        hctl = p.hctl
        if action.action == Action.LOGIN:
            hctl = await self._login(connector, vol, device, p)
        info = await self._disk(connector, device, action, hctl, p.target)
        return replace(info, portal=p.label)

    async def _login(self, connector: IscsiConnector, vol: IscsiVolume, device: Device,
                     p: PathObservation) -> str:
        target = next((t for t in unique_targets(device.iscsi_targets or vol.targets)
                       if str(t.portal) == p.label and t.iqn == p.target), None)
        if target is None:
            raise LoginFailed(f"{p.label} is not a portal of the volume", portal=p.label)
        iscsiadm = connector.iscsiadm
        if not iscsiadm.has_node(target.iqn, target.portal):
            # The secrets are not stored, so the record cannot be made anew.
            raise LoginFailed(f"no node record of ours for {target.iqn} at {target.portal}",
                              iqn=target.iqn, portal=p.label)
        opts = connector.options
        # Never a logout first: a session that exists (however slow) is iscsid's to recover.
        await iscsiadm.login(target.iqn, target.portal,
                             mutual_chap=bool(vol.chap and vol.chap.mutual),
                             timeout=opts.login_timeout * opts.login_attempts + 15)
        s = connector.session(target.iqn, p.label)
        if s is not None:
            return f"{s.host}:0:{s.target_id}:{target.lun}"
        raise LoginFailed(f"logged in to {target.iqn} at {p.label} but the kernel shows no "
                          "session", iqn=target.iqn, portal=p.label)

    async def _disk(self, connector: IscsiConnector | FcConnector, device: Device,
                    action: HealAction, hctl: str | None, target: str | None) -> PathInfo:
        """The LUN's disk at hctl made or re-identified, checked, and in the map."""
        if hctl is None:
            raise LunNotFound(f"{action.path.label}: nothing to scan the LUN through")
        devices = connector.devices
        if action.action == Action.READD and action.path.device:
            scsi.rescan_device(self.fs, hctl)  # re-read the identity before trusting it
            sd, created = action.path.device, False
        else:  # a disk at hctl nobody holds is deleted and scanned anew by scan()
            sd, created = await devices.scan(hctl, lambda: LunNotFound(
                f"{action.path.label}: the target has no LUN at {hctl}", hctl=hctl))
        wwid = scsi.wwid(self.fs, hctl)
        if wwid != device.wwn:
            if created:
                await devices.delete_disks([PathInfo(sd, hctl)])
            raise WwnMismatch(f"{sd} ({hctl}) reports {wwid}, not the volume's {device.wwn}",
                              hctl=hctl, wwid=wwid)
        if device.multipath:
            await devices.build_map(device.wwn, [sd])
        return PathInfo(sd, hctl, None, target)

    def _record(self, att: Attachment, label: str, info: PathInfo) -> None:
        """The new disk joins the attachment's device, so a detach removes it."""
        assert att.device is not None
        paths = [p for p in att.device.paths
                 if p.hctl != info.hctl and not (info.portal and p.portal == info.portal)]
        missing = tuple(m for m in att.device.missing if not m.startswith(label))
        self.service.store.update(att.id, device=replace(
            att.device, paths=(*paths, info), missing=missing))


