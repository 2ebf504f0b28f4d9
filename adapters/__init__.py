"""Execution on targets (connectors, supervisors, probes). Imports nothing
of ours: adapters execute and return results; the engine records them.
"""
