"""Canonical encodings shared by the contracts, the node, the client and the verifier.

Everything that is hashed on one side and checked on the other is defined here once
(PROTOCOL.md §3 and §5):

* ``encode_params``  — the job's canonical sampling parameters, ABI-encoded;
  ``params_hash = keccak256(encode_params(...))``.
* ``pack_tokens``    — output token ids as the concatenation of big-endian uint32
  words (cheap calldata; the contract stores only ``keccak256`` of it in events).
* ``result_digest``  — ``keccak256(abi_encode(job_id, model_id, keccak256(input),
  params_hash, keccak256(pack_tokens(output)), finish_reason))``.
* ``model_id``       — ``keccak256(abi_encode(name, revision, manifest_hash))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

MAX_UINT32 = 2**32 - 1
TEMPERATURE_SCALE = 1000  # temperature is carried as an integer number of thousandths
PARAMS_ABI = ("uint32", "uint32", "uint32", "uint64", "uint32[]")


class FinishReason(IntEnum):
    """Why generation stopped: a stop/EOS token, or ``max_tokens`` reached."""

    STOP = 0
    LENGTH = 1


@dataclass(frozen=True)
class SamplingParams:
    """Canonical sampling parameters of a job.

    ``temperature_milli == 0`` means greedy decoding; ``top_k == 0`` means no top-k.
    ``stop_token_ids`` empty means "the model's EOS token".
    """

    max_tokens: int
    temperature_milli: int = 0
    top_k: int = 0
    seed: int = 0
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("max_tokens", "temperature_milli", "top_k"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_UINT32:
                raise ValueError(f"{name} must be in [0, 2**32-1], got {value}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64-1], got {self.seed}")
        if any(not 0 <= t <= MAX_UINT32 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be uint32 values")

    @property
    def temperature(self) -> float:
        return self.temperature_milli / TEMPERATURE_SCALE

    @property
    def greedy(self) -> bool:
        return self.temperature_milli == 0

    def encode(self) -> bytes:
        return encode_params(self)

    @classmethod
    def decode(cls, data: bytes) -> SamplingParams:
        max_tokens, temp, top_k, seed, stops = abi_decode(PARAMS_ABI, data)
        return cls(max_tokens, temp, top_k, seed, tuple(stops))

    def hash(self) -> bytes:
        return keccak(self.encode())


def encode_params(p: SamplingParams) -> bytes:
    return abi_encode(
        PARAMS_ABI,
        (p.max_tokens, p.temperature_milli, p.top_k, p.seed, list(p.stop_token_ids)),
    )


def pack_tokens(token_ids: Sequence[int]) -> bytes:
    """Token ids as consecutive big-endian uint32 words."""
    out = bytearray()
    for t in token_ids:
        if not 0 <= int(t) <= MAX_UINT32:
            raise ValueError(f"token id {t} is not a uint32")
        out += int(t).to_bytes(4, "big")
    return bytes(out)


def unpack_tokens(data: bytes) -> list[int]:
    if len(data) % 4:
        raise ValueError("packed token bytes must be a multiple of 4 long")
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def result_digest(
    job_id: int,
    model_id: bytes,
    input_data: bytes,
    params: SamplingParams | bytes,
    output_token_ids: Sequence[int],
    finish_reason: FinishReason | int,
    salt: bytes = b"",
) -> bytes:
    """The §5 result digest; ``params`` may be a SamplingParams or its encoded bytes. A private
    job's output commitment is ``keccak256(salt ‖ packed tokens)`` (docs/privacy.md); a public
    job has no salt."""
    params_bytes = params.encode() if isinstance(params, SamplingParams) else params
    return keccak(
        abi_encode(
            ("uint256", "bytes32", "bytes32", "bytes32", "bytes32", "uint8"),
            (
                job_id,
                model_id,
                keccak(input_data),
                keccak(params_bytes),
                keccak(salt + pack_tokens(output_token_ids)),
                int(finish_reason),
            ),
        )
    )


def model_id(name: str, revision: str, manifest_hash: bytes) -> bytes:
    """``keccak256(abi_encode(string name, string revision, bytes32 manifest_hash))``."""
    return keccak(abi_encode(("string", "string", "bytes32"), (name, revision, manifest_hash)))
