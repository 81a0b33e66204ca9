"""hostagent: the host side of SAN volume attachment (iSCSI, FC, dm-multipath)."""

__version__ = "0.1.0"
