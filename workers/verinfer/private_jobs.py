"""The client's side of private jobs (docs/privacy.md), shared by the SDK, the CLI and the
gateway: choose a node with a valid encryption key, seal the input to it, keep the job key,
open the answer, and hand the key to a drawn verifier.

Job keys are kept in ``$VERINFER_HOME/job-keys/<chain id>-<market>.json`` (default
``~/.verinfer``), one file per market, mode 0600: whoever holds that file can read the
client's private jobs, so it is as sensitive as the answers themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verinfer.chain_errors import ClientError
from verinfer.digest import unpack_tokens
from verinfer.jobs import JobRecord
from verinfer.privacy import (
    PrivacyError,
    is_private_input,
    open_output,
    private_result_digest,
    seal_input,
    valid_pubkey,
    wrap_for,
)


def home() -> Path:
    return Path(os.environ.get("VERINFER_HOME") or Path.home() / ".verinfer")


class JobKeys:
    """The job keys of one market's private jobs submitted from this machine."""

    def __init__(self, chain_id: int, market: str, directory: Path | None = None) -> None:
        folder = directory or home() / "job-keys"
        self.path = folder / f"{chain_id}-{market.lower()}.json"

    def _read(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        return dict(json.loads(self.path.read_text()))

    def put(self, job_id: int, job_key: bytes) -> None:
        keys = self._read()
        keys[str(job_id)] = job_key.hex()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(keys, indent=1, sort_keys=True))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def get(self, job_id: int) -> bytes | None:
        hexed = self._read().get(str(job_id))
        return bytes.fromhex(hexed) if hexed else None


def node_pubkey(market: Any, node: str) -> bytes:
    """A node's registered encryption key (NodeInfo.pubkey) through an ape or web3 market."""
    info = market.node_info(node)
    if hasattr(info, "call"):  # web3
        info = info.call()
    return bytes(info.pubkey if hasattr(info, "pubkey") else info[6])


def require_key(market: Any, node: str) -> bytes:
    """The node's encryption key, or ClientError saying why a private job cannot go to it."""
    pubkey = node_pubkey(market, node)
    if not valid_pubkey(pubkey):
        raise ClientError(
            f"node {node} has no valid encryption key registered: cannot send it a private job"
        )
    return pubkey


def pick_node(candidates: Sequence[tuple[str, int, bytes]]) -> str:
    """The cheapest node with a valid encryption key among ``(node, price, pubkey)``
    (ties: the first in the model's active set)."""
    usable = [
        (price, i, node) for i, (node, price, pub) in enumerate(candidates) if valid_pubkey(pub)
    ]
    if not usable:
        raise ClientError("no node of this model has a valid encryption key: no private job")
    return min(usable)[2]


def seal(data: bytes, pubkey: bytes) -> tuple[bytes, bytes]:
    """``(envelope, job key)`` for a plain input."""
    try:
        return seal_input(data, pubkey)
    except PrivacyError as exc:
        raise ClientError(f"cannot encrypt the input: {exc}") from None


def open_tokens(record: JobRecord, job_key: bytes | None) -> tuple[list[int], bool]:
    """A published private job's token ids and whether the salted digest matches them;
    ``([], False)`` without the key or when the output does not open under it."""
    if job_key is None or record.published_block == 0:
        return [], False
    try:
        tokens = unpack_tokens(open_output(record.output, job_key, record.job_id))
    except (PrivacyError, ValueError):
        return [], False
    digest = private_result_digest(
        record.job_id,
        record.model_id,
        record.input,
        record.params,
        tokens,
        record.finish_reason,
        job_key,
    )
    return tokens, digest == record.result_digest


def is_private(record: JobRecord) -> bool:
    return is_private_input(record.input)


def hand_key_args(market: Any, job_id: int, job_key: bytes, recipients: Sequence[str]) -> bytes:
    """The ``wrapped`` argument of Court.hand_key for ``recipients`` (the verifier or panel)."""
    return wrap_for(job_key, [node_pubkey(market, r) for r in recipients])
