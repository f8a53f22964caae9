"""A job as the chain knows it, rebuilt from the market's events.

The market stores only a hash of each job (PROTOCOL §4); every transition takes the job's
fields back as calldata. `JobRecord` collects those fields from `JobSubmitted`,
`JobClaimed` and `ResultPublished` and hands them back as the `IMarket.Job` struct, or as
the shorter `IMarket.Settlement` that `finalize` takes (the payment fields plus one hash of
the other eleven; its keccak256 is the job's stored hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

from verinfer.digest import SamplingParams, result_digest, unpack_tokens

ZERO_ADDRESS = "0x" + "00" * 20
ZERO_BYTES32 = b"\x00" * 32
PRIVATE_FLAG = 1 << 63  # Market.vy: the top bit of a private job's submitted_at


def submitted_time(submitted_at: int) -> int:
    """A job's submission time (unix seconds) from its ``submitted_at`` field, which also
    carries the private-job flag in its top bit (docs/protocol.md §8)."""
    return int(submitted_at) & (PRIVATE_FLAG - 1)


# IMarket.Settlement, and the fields of a Job hashed into its rest_hash, with their ABI types
SETTLEMENT_FIELDS = (
    "client",
    "max_payment",
    "node",
    "price_per_token",
    "collateral",
    "output_tokens",
    "published_at",
)
SETTLEMENT_TYPE = "(address,uint256,address,uint256,uint256,uint32,uint64,bytes32)"
REST_FIELDS = (
    ("model_id", "bytes32"),
    ("input_hash", "bytes32"),
    ("params_hash", "bytes32"),
    ("max_tokens", "uint32"),
    ("preferred_node", "address"),
    ("submitted_at", "uint64"),
    ("claim_deadline", "uint64"),
    ("result_deadline", "uint64"),
    ("finish_reason", "uint8"),
    ("result_digest", "bytes32"),
    ("published_block", "uint64"),
)


def settlement_of(job: Any) -> tuple:
    """`Market.settlement_of(job)`, computed locally for anything with the `IMarket.Job`
    field names as attributes: the payment fields, then keccak256 of the abi-encoded rest."""
    from eth_abi import encode
    from eth_utils import keccak

    rest = keccak(encode([t for _, t in REST_FIELDS], [getattr(job, f) for f, _ in REST_FIELDS]))
    return (*(getattr(job, f) for f in SETTLEMENT_FIELDS), rest)


class JobStatus(IntEnum):
    """`market.job_status(id)`."""

    NONE = 0
    OPEN = 1
    CLAIMED = 2
    PUBLISHED = 3
    VERIFYING = 4
    FINALIZED = 5
    CANCELLED = 6
    EXPIRED = 7
    SLASHED = 8


class DisputePhase(IntEnum):
    """`court.dispute_info(id).phase`."""

    NONE = 0
    ASSIGNED = 1  # the drawn verifier must accept
    ACCEPTED = 2  # ... and post its verdict
    VERDICT = 3  # appeal window open
    APPEALED = 4  # the drawn panel votes
    UNRESOLVED = 5  # no verifier left: settles as valid, bond returned
    SETTLED = 6
    DRAWING = 7  # a verifier draw is requested: `court.draw` from the next block on
    PANEL_DRAWING = 8  # an appeal panel draw is requested, likewise


DRAW_PHASES = (DisputePhase.DRAWING, DisputePhase.PANEL_DRAWING)


@dataclass
class JobRecord:
    """The fields of `IMarket.Job` (in struct order), plus the job's id, input and output."""

    client: str
    model_id: bytes
    input_hash: bytes
    params_hash: bytes
    max_tokens: int
    max_payment: int
    preferred_node: str
    submitted_at: int
    claim_deadline: int
    result_deadline: int
    node: str = ZERO_ADDRESS
    price_per_token: int = 0
    collateral: int = 0
    output_tokens: int = 0
    finish_reason: int = 0
    result_digest: bytes = ZERO_BYTES32
    published_at: int = 0
    published_block: int = 0
    # not part of the on-chain struct
    job_id: int = -1
    input: bytes = b""
    params: bytes = b""
    output: bytes = b""

    STRUCT_FIELDS: ClassVar[list[str]] = [
        "client",
        "model_id",
        "input_hash",
        "params_hash",
        "max_tokens",
        "max_payment",
        "preferred_node",
        "submitted_at",
        "claim_deadline",
        "result_deadline",
        "node",
        "price_per_token",
        "collateral",
        "output_tokens",
        "finish_reason",
        "result_digest",
        "published_at",
        "published_block",
    ]

    @classmethod
    def from_submitted(cls, log: Any) -> JobRecord:
        """Build the record from a decoded `JobSubmitted` log."""
        from eth_utils import keccak

        return cls(
            client=log.client,
            model_id=bytes(log.model_id),
            input_hash=keccak(bytes(log.input)),
            params_hash=keccak(bytes(log.params)),
            max_tokens=log.max_tokens,
            max_payment=log.max_payment,
            preferred_node=log.preferred_node,
            submitted_at=log.submitted_at,
            claim_deadline=log.claim_deadline,
            result_deadline=log.result_deadline,
            job_id=log.job_id,
            input=bytes(log.input),
            params=bytes(log.params),
        )

    def apply_claimed(self, log: Any) -> None:
        """Fold in a decoded `JobClaimed` log."""
        self.node = log.node
        self.price_per_token = log.price_per_token
        self.collateral = log.collateral

    def apply_published(self, log: Any) -> None:
        """Fold in a decoded `ResultPublished` log."""
        self.node = log.node
        self.output = bytes(log.output)
        self.output_tokens = log.output_tokens
        self.finish_reason = log.finish_reason
        self.result_digest = bytes(log.result_digest)
        self.published_at = log.published_at
        self.published_block = log.published_block

    def as_struct(self) -> tuple:
        """The `IMarket.Job` struct, as the tuple ape and web3 encode."""
        return tuple(getattr(self, name) for name in self.STRUCT_FIELDS)

    def as_settlement(self) -> tuple:
        """The `IMarket.Settlement` struct that `finalize` takes (`Market.settlement_of`)."""
        return settlement_of(self)

    def struct_hash(self) -> bytes:
        """keccak256(abi_encode(Settlement)) with the low byte cleared: `Market.hash_job`,
        computed locally (static structs: their encoding is their words in field order)."""
        from eth_abi import encode
        from eth_utils import keccak

        digest = keccak(encode([SETTLEMENT_TYPE], [settlement_of(self)]))
        return digest[:31] + b"\x00"

    @property
    def private(self) -> bool:
        """A private job (the market flagged its input's format byte at submission)."""
        return self.submitted_at >= PRIVATE_FLAG

    @property
    def submitted_time(self) -> int:
        """The submission time, without the private flag."""
        return submitted_time(self.submitted_at)

    @property
    def sampling_params(self) -> SamplingParams:
        return SamplingParams.decode(self.params)

    @property
    def output_token_ids(self) -> list[int]:
        """Output token ids of a public job (a private job's output is ciphertext)."""
        return unpack_tokens(self.output)

    def expected_digest(self) -> bytes:
        """The §5 digest of the published output, as a client recomputes it."""
        return result_digest(
            self.job_id,
            self.model_id,
            self.input,
            self.params,
            self.output_token_ids,
            self.finish_reason,
        )
