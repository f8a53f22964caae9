"""The gateway's own transaction signer against eth_account: the same raw bytes, and the
sender recovered from them."""

from __future__ import annotations

from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from verinfer.gateway.rpc import TxSigner

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
TO = "0x5FbDB2315678afecb367f032d93F642f64180aa3"

u64 = st.integers(min_value=0, max_value=2**64 - 1)
u256 = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=60, deadline=None)
@given(
    chain_id=st.integers(min_value=1, max_value=2**32),
    nonce=u64,
    gas=st.integers(min_value=21_000, max_value=30_000_000),
    max_fee=u256,
    tip=u256,
    data=st.binary(max_size=9_000),
)
def test_signed_bytes__equal_eth_account(
    chain_id: int, nonce: int, gas: int, max_fee: int, tip: int, data: bytes
) -> None:
    signer = TxSigner(KEY, chain_id)
    raw = signer.sign(TO, data, nonce, gas, max_fee, tip)
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": TO,
        "value": 0,
        "data": data,
        "gas": gas,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
    }
    expected = Account.sign_transaction(tx, KEY)
    assert raw == bytes(expected.raw_transaction)
    assert Account.recover_transaction(raw) == signer.address == Account.from_key(KEY).address


def test_signer__key_as_bytes_or_hex__same_address() -> None:
    assert TxSigner(bytes.fromhex(KEY[2:]), 1).address == TxSigner(KEY, 1).address
