"""Which jobs the node takes: served model, price at or above its floor, capacity free,
input valid for the model, and finishable before the result deadline."""

from __future__ import annotations

import json
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
    """The node's admission rules (PROTOCOL §9)."""

    def __init__(
        self,
        models: dict[bytes, ServedModel],
        price_floor: int,
        capacity: int,
        est_job_s: float,
        deadline_margin_s: float,
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    ) -> None:
        self.models = models
        self.price_floor = price_floor
        self.capacity = capacity
        self.est_job_s = est_job_s
        self.deadline_margin_s = deadline_margin_s
        self.max_output_tokens = max_output_tokens

    def decide(self, job: JobRecord, now: float, inflight: int) -> Decision:
        """Whether to take ``job`` at chain time ``now`` with ``inflight`` jobs in hand."""
        model = self.models.get(job.model_id)
        if model is None:
            return Decision(False, "model not served")
        if job.max_tokens == 0 or job.max_payment < job.max_tokens * self.price_floor:
            return Decision(False, "pays below the price floor")
        if inflight >= self.capacity:
            return Decision(False, f"at capacity ({inflight}/{self.capacity})")
        if now > job.claim_deadline:
            return Decision(False, "claim deadline passed")
        finish_by = now + (inflight + 1) * self.est_job_s + self.deadline_margin_s
        if finish_by > job.result_deadline:
            return Decision(False, f"cannot finish before the deadline ({job.result_deadline})")
        try:
            params = SamplingParams.decode(job.params)
            prompt = tokenize_input(model.tokenizer, job.input)
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
