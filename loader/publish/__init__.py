"""Publishing integrity reports: the spool ledger, delivery with retry, and the sinks (file, EVM).

Nothing here imports web3 at module level: the EVM sink (`loader.publish.evm`) is imported only
when a chain is configured, so the loader starts fast and runs without the `chain` extra.
"""
