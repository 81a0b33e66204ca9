"""Connectors: one engine per transport behind the same protocol."""
