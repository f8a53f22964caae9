"""On-chain calls of a node operator: register, stake, serve models, unbond, withdraw.

The running node (``verinfer node run``) does the work; these are the operator's own
transactions, made through the same ``Client`` (ape account, one-line errors).
"""

from __future__ import annotations

from typing import Any

from verinfer.chain_errors import ClientError, guard
from verinfer.client import Client


def account_pubkey(account: Any) -> bytes:
    """The 64-byte uncompressed public key (x || y) of an ape account, when it can tell."""
    key = getattr(account, "private_key", None)
    if key is not None:
        from eth_keys import keys

        raw = bytes.fromhex(str(key)[2:]) if isinstance(key, str) else bytes(key)
        return bytes(keys.PrivateKey(raw).public_key.to_bytes())
    pub = getattr(account, "public_key", None)
    if pub is not None and len(bytes(pub)) == 64:
        return bytes(pub)
    raise ClientError("cannot read the account's public key: pass --pubkey")


def node_status(client: Client, node: str | None = None) -> dict[str, Any]:
    """Stake, locks, unbonding, served models and claimable earnings of ``node``."""
    who = node or client.address
    with guard("node info"):
        info = client.market.node_info(who)
        served = {}
        for m in client.models():
            if client.market.is_serving(who, m.model_id):
                served["0x" + m.model_id.hex()] = int(client.market.serve_price(who, m.model_id))
        claimable = int(client.market.claimable(who))
    return {
        "node": str(who),
        "registered": bool(info.registered),
        "slashed": bool(info.slashed),
        "stake": int(info.stake),
        "locked": int(info.locked),
        "free": int(info.stake) - int(info.locked),
        "unbonding": int(info.unbonding),
        "unbond_ready_at": int(info.unbond_ready_at),
        "endpoint": str(info.endpoint),
        "serves": served,
        "claimable": claimable,
    }


def stake(
    client: Client, amount: int, endpoint: str = "", pubkey: bytes | None = None
) -> dict[str, Any]:
    """Register the node if needed, then stake ``amount`` (approving the market first)."""
    info = client.market.node_info(client.address)
    wallet = int(client.token.balanceOf(client.address))
    if wallet < amount:
        raise ClientError(
            f"insufficient token balance: wallet holds {client.fmt(wallet)}, "
            f"stake needs {client.fmt(amount)}"
        )
    if not info.registered:
        key = pubkey or account_pubkey(client.account)
        with guard("register node"):
            client.market.register_node(key, endpoint, sender=client.account)
    client.ensure_allowance(amount)
    with guard("stake"):
        client.market.stake(amount, sender=client.account)
    return node_status(client)


def serve(client: Client, model: str | bytes, price_per_token: int) -> dict[str, Any]:
    """Serve ``model`` at ``price_per_token`` (base units per output token)."""
    mid = client.resolve_model(model)
    with guard("serve"):
        client.market.serve_model(mid, price_per_token, sender=client.account)
    return node_status(client)


def unstake(client: Client, amount: int) -> dict[str, Any]:
    """Start unbonding ``amount`` of free stake (withdrawable after the unbonding delay)."""
    with guard("unstake"):
        client.market.unbond(amount, sender=client.account)
    return node_status(client)


def withdraw(client: Client, to: str | None = None) -> dict[str, Any]:
    """Complete a ready unbonding and withdraw claimable earnings (to ``to``, default the
    node's own address); returns what moved. A ready unbonding stays while the node is a
    verifier or panel member of an open dispute (the court holds its stake)."""
    from ape import chain

    info = client.market.node_info(client.address)
    unbonded = earned = 0
    held = False
    now = int(chain.blocks.head.timestamp)
    if int(info.unbonding) > 0 and now >= int(info.unbond_ready_at):
        try:
            with guard("complete unbond"):
                client.market.complete_unbond(sender=client.account)
            unbonded = int(info.unbonding)
        except ClientError as exc:
            if "held by court" not in str(exc):
                raise
            held = True
    if int(client.market.claimable(client.address)) > 0:
        earned = client.collect(to)
    if unbonded == 0 and earned == 0:
        if held:
            raise ClientError(
                "nothing to withdraw yet: the court holds the unbonded stake while this node "
                "is a verifier or panel member of an open dispute; no claimable earnings"
            )
        if int(info.unbonding) > 0:
            raise ClientError(
                f"nothing to withdraw yet: unbonding ready at {int(info.unbond_ready_at)} "
                f"(chain time {now}), no claimable earnings"
            )
        raise ClientError("nothing to withdraw: no unbonded stake and no claimable earnings")
    return {"unbonded": unbonded, "earnings": earned, **node_status(client)}
