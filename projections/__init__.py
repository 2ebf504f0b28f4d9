"""Read models of the ledger (spatial reality, release history, hosts,
leases), each with a tracked position. Built by the deploy engine work.
"""
