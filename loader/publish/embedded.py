"""An in-process EVM (eth-tester on py-evm, the `chain-dev` extra) for the demo and fast tests.

It is a real EVM running the same contract bytecode, with prefunded development accounts; it
lives only as long as the process, so nothing published to it is durable.
"""

from __future__ import annotations

from dataclasses import dataclass

from loader.publish.keyfile import OperatorKey


@dataclass(frozen=True)
class EmbeddedChain:
    w3: object  # web3.Web3
    key: OperatorKey
    chain_id: int


def start() -> EmbeddedChain:
    from loader.publish import recursion_limit_kept

    try:
        with recursion_limit_kept():
            from eth_tester import EthereumTester, PyEVMBackend
            from eth_tester.exceptions import TransactionFailed
            from web3 import EthereumTesterProvider, Web3
    except ImportError as exc:
        from loader.errors import PublishError

        raise PublishError(
            f"the embedded chain needs eth-tester and py-evm ({exc.name} is missing): "
            "pip install 'cvm-trusted-loader[chain-dev]'"
        ) from exc
    from loader.publish import evm

    if TransactionFailed not in evm.REVERTS:
        evm.REVERTS.append(TransactionFailed)
    backend = PyEVMBackend()
    w3 = Web3(EthereumTesterProvider(EthereumTester(backend)))
    key = OperatorKey(bytes(backend.account_keys[0].to_bytes()))
    return EmbeddedChain(w3=w3, key=key, chain_id=w3.eth.chain_id)
