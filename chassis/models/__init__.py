"""Model assets: manifests, their registry in the ledger, their life on hosts."""
