"""Chassis: the deployment plane, recorded in a signed, hash-chained ledger."""

__version__ = "0.1.0"
