"""Which jobs the node takes: served model, an escrow that covers the node's price for every
token asked and its expected gas, capacity free, input valid for the model, and finishable
before the result deadline."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verinfer.digest import SamplingParams
from verinfer.engines.base import DEFAULT_MAX_OUTPUT_TOKENS
from verinfer.inputs import InputFormatError, tokenize_input
from verinfer.jobs import JobRecord
from verinfer.models.manifest import MANIFEST_NAME, Manifest


@dataclass
class ServedModel:
    """What the policy needs to know of a served model: its id, tokenizer and limits."""

    model_id: bytes
    tokenizer: Any
    max_context: int
    vocab_size: int

    @classmethod
    def from_path(cls, path: Path) -> ServedModel:
        """Read the manifest, config and tokenizer (not the weights) of a model directory."""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        manifest = Manifest.load(Path(path) / MANIFEST_NAME)
        config = json.loads((Path(path) / "config.json").read_text())
        return cls(
            model_id=manifest.model_id,
            tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
            max_context=int(config.get("max_position_embeddings", 0) or 0),
            vocab_size=int(config["vocab_size"]),
        )


@dataclass(frozen=True)
class Decision:
    """Take the job or not, and why not."""

    take: bool
    reason: str = ""


class Policy:
    """The node's admission rules (PROTOCOL §9).

    Economics: a job is taken only if its escrow covers ``max_tokens`` x the node's price per
    token (``max(price_floor, price_fraction x own_prices[model])``, rounded up) plus the
    expected gas of a job (``gas_per_job`` x ``gas_price_wei`` x ``gas_token_rate``, in
    payment-token base units; ``gas_price_wei`` is kept current by the watcher). The market
    pays ``min(output_tokens x price, max_payment)``, so an escrow below that covers only part
    of the node's price."""

    enc_key: Any = None  # private jobs: the node's EncryptionKey (verinfer.node.private)

    def __init__(
        self,
        models: dict[bytes, ServedModel],
        price_floor: int,
        capacity: int,
        est_job_s: float,
        deadline_margin_s: float,
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        own_prices: dict[bytes, int] | None = None,
        price_fraction: float = 1.0,
        gas_per_job: int = 0,
        gas_token_rate: float = 0.0,
        fmt: Callable[[int], str] = str,
    ) -> None:
        self.models = models
        self.price_floor = price_floor
        self.capacity = capacity
        self.est_job_s = est_job_s
        self.deadline_margin_s = deadline_margin_s
        self.max_output_tokens = max_output_tokens
        self.own_prices = own_prices or {}
        self.price_fraction = price_fraction
        self.gas_per_job = gas_per_job
        self.gas_token_rate = gas_token_rate
        self.gas_price_wei = 0
        self.fmt = fmt

    def price(self, model_id: bytes) -> int:
        """The least price per token the node takes for ``model_id`` (token base units)."""
        own = self.own_prices.get(model_id, 0)
        return max(self.price_floor, math.ceil(own * self.price_fraction))

    def gas_cost(self) -> int:
        """Expected gas of one job, in payment-token base units (0 when no rate is set)."""
        return math.ceil(self.gas_per_job * self.gas_price_wei * self.gas_token_rate)

    def underpaid(self, job: JobRecord) -> str:
        """Why ``job``'s escrow does not cover the node's price and gas ("" when it does)."""
        if job.max_tokens == 0:
            return "max_tokens is 0"
        price, gas = self.price(job.model_id), self.gas_cost()
        if job.max_payment >= job.max_tokens * price + gas:
            return ""
        needed = f"{job.max_tokens} tokens x {self.fmt(price)}"
        if gas:
            needed += f" + gas {self.fmt(gas)}"
        return (
            f"pays below the node's price: escrow {self.fmt(job.max_payment)} < {needed} = "
            f"{self.fmt(job.max_tokens * price + gas)}"
        )

    def decide(self, job: JobRecord, now: float, inflight: int) -> Decision:
        """Whether to take ``job`` at chain time ``now`` with ``inflight`` jobs in hand."""
        model = self.models.get(job.model_id)
        if model is None:
            return Decision(False, f"model 0x{job.model_id.hex()[:16]} not served here")
        if why := self.underpaid(job):
            return Decision(False, why)
        if inflight >= self.capacity:
            return Decision(False, f"at capacity ({inflight}/{self.capacity})")
        if now > job.claim_deadline:
            return Decision(False, "claim deadline passed")
        finish_by = now + (inflight + 1) * self.est_job_s + self.deadline_margin_s
        if finish_by > job.result_deadline:
            return Decision(False, f"cannot finish before the deadline ({job.result_deadline})")
        try:
            params = SamplingParams.decode(job.params)
            prompt = tokenize_input(model.tokenizer, _plain_input(job, self.enc_key))
        except (InputFormatError, ValueError) as exc:
            return Decision(False, f"bad input: {exc}")
        if params.max_tokens != job.max_tokens:
            return Decision(False, "params disagree with max_tokens")
        if params.max_tokens > self.max_output_tokens:
            return Decision(False, f"max_tokens above {self.max_output_tokens}")
        if model.max_context and len(prompt) + params.max_tokens > model.max_context:
            return Decision(
                False,
                f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} exceeds the "
                f"model context of {model.max_context} tokens",
            )
        return Decision(True)


def _plain_input(job: JobRecord, enc_key: Any) -> bytes:
    """A job's input in plain form: a private job's envelope opened with the node's key
    (InputFormatError with the reason when it cannot be: the job is skipped)."""
    from verinfer.node.private import open_for_serving

    opened = open_for_serving(job, enc_key)
    if isinstance(opened, str):
        raise InputFormatError(opened)
    return opened[0].input
