"""Preparing a node, with or without the daemon: preflight checks and
hostagent's multipath settings."""
