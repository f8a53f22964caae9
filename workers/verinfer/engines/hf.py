"""The transformers engine (torch, CPU or GPU): the default engine and the reference verifier.

Jobs are grouped by model and run in batches, left-padded, with a KV cache. Each step picks the
next token of every row with the keyed sampler (``verinfer.sampler``); the sampler's position
``i`` is the index of the token in the output (0 for the first generated token). Generation of
a row stops at the first token of its stop set (the job's ``stop_token_ids``, or the model's
EOS ids), which is included in the output with finish reason STOP, or after ``max_tokens``
tokens with finish reason LENGTH.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from verinfer.digest import FinishReason, SamplingParams
from verinfer.engines.base import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Job,
    JobError,
    JobResult,
    check_job_params,
    prompt_ids_for,
)
from verinfer.models.loader import LoadedModel, ModelRegistry, UnknownModelError
from verinfer.sampler import select_tokens


def _pad_id(model: LoadedModel) -> int:
    pad = getattr(model.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else int(model.eos_token_ids[0])


@torch.inference_mode()
def generate_batch(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    record_logits: list[torch.Tensor] | None = None,
) -> list[tuple[list[int], FinishReason]]:
    """Generate for already-validated prompts in one left-padded batch.

    ``record_logits``, when given, receives the (B, V) float32 logits of every step (used by
    the calibration in scripts/bench_verify.py).
    """
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    device = model.device
    ids = torch.full((batch, width), _pad_id(model), dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model.model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    logits, past = out.logits[:, -1, :], out.past_key_values
    next_pos = positions[:, -1:] + 1
    stops = [model.stop_ids(p.stop_token_ids) for p in params]
    outputs: list[list[int]] = [[] for _ in range(batch)]
    finish: list[FinishReason | None] = [None] * batch
    for step in range(max(p.max_tokens for p in params)):
        if record_logits is not None:
            record_logits.append(logits.float().cpu())
        chosen = select_tokens(logits.float(), params, [step] * batch).tolist()
        for row in range(batch):
            if finish[row] is not None:
                continue
            outputs[row].append(int(chosen[row]))
            if chosen[row] in stops[row]:
                finish[row] = FinishReason.STOP
            elif len(outputs[row]) >= params[row].max_tokens:
                finish[row] = FinishReason.LENGTH
        if all(f is not None for f in finish):
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model.model(
            input_ids=torch.tensor(chosen, dtype=torch.long, device=device)[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=past,
            use_cache=True,
        )
        logits, past = out.logits[:, -1, :], out.past_key_values
        next_pos = next_pos + 1
    return [
        (out_ids, FinishReason.LENGTH if reason is None else reason)
        for out_ids, reason in zip(outputs, finish, strict=True)
    ]


class TransformersEngine:
    """Batched generation with transformers for every model in a registry."""

    def __init__(
        self,
        models: ModelRegistry | LoadedModel,
        max_batch_size: int = 32,
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    ) -> None:
        self.registry = models if isinstance(models, ModelRegistry) else ModelRegistry([models])
        self.max_batch_size = max_batch_size
        self.max_output_tokens = max_output_tokens

    def generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        """One JobResult per job; jobs with bad input get an error and the rest still run."""
        results: list[JobResult] = [JobResult(error="not run")] * len(jobs)
        groups: dict[bytes, list[tuple[int, list[int]]]] = {}
        for index, job in enumerate(jobs):
            try:
                model = self.registry.get(job.model_id)
                prompt = prompt_ids_for(model, job)
                check_job_params(model, len(prompt), job.params, self.max_output_tokens)
            except (JobError, UnknownModelError) as exc:
                results[index] = JobResult(error=str(exc.args[0] if exc.args else exc))
                continue
            groups.setdefault(model.model_id, []).append((index, prompt))
        for mid, members in groups.items():
            model = self.registry.get(mid)
            for start in range(0, len(members), self.max_batch_size):
                chunk = members[start : start + self.max_batch_size]
                try:
                    outs = generate_batch(
                        model, [p for _, p in chunk], [jobs[i].params for i, _ in chunk]
                    )
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fail this chunk
                    for i, _ in chunk:
                        results[i] = JobResult(error=f"generation failed: {exc}")
                    continue
                for (i, _), (tokens, reason) in zip(chunk, outs, strict=True):
                    results[i] = JobResult(tuple(tokens), reason)
        return results
