"""Publishing integrity reports: the spool ledger, delivery with retry, and the sinks (file, EVM).

Nothing here imports web3 at module level: the EVM sink (`loader.publish.evm`) is imported only
when a chain is configured, so the loader starts fast and runs without the `chain` extra.
"""

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def recursion_limit_kept() -> Iterator[None]:
    """Import web3 / eth-tester without letting them change the interpreter's recursion limit.

    py-evm (pulled in by web3 when installed, and by eth-tester) raises the limit to 100000 on
    import. With that limit, a deeply nested hostile JSON or CBOR document parsed later in the
    same process overflows the C stack and kills the process instead of raising RecursionError.
    """
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
