"""Read models of the ledger with tracked positions: spatial reality (what
runs where) and release history per installation. Catch-up runs before any
read command; rebuilding from scratch equals incremental catch-up.
"""
