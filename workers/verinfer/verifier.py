"""Teacher-forced, noise-tolerant verification of a claimed output (PROTOCOL.md §6).

One prefill pass over ``prompt + claimed[:-1]`` gives the logits ``l`` that predicted every
claimed token. With ``T`` the job's temperature (0 for greedy) and ``g`` the keyed Gumbel noise
of ``verinfer.sampler``, every token ``v`` gets the score, in logit units,

    z_v = l_v + T * g(seed, i, v)          (greedy: z_v = l_v)

and position ``i`` passes iff the claimed token ``c`` is within ``tau`` of the best score:
``margin_i = max_{v in S} z_v - z_c <= tau``. With top-k, ``c`` must itself be in the top-k set
up to ``tau`` (``l_c >= kth - tau``) and ``S`` is the set of tokens surely in the top-k
(``l_v >= kth + tau``), so a boundary token that the generating node's noise left out cannot
fail an honest claim. Because ``z`` is in logit units for every temperature, one ``tau``
covers greedy and sampled jobs: an honest claim has margins bounded by twice the largest logit
error between the two executions.

Termination: finish reason STOP needs the last claimed token to be in the job's stop set (and
to pass the rule like every token); LENGTH needs exactly ``max_tokens`` tokens; no stop token
may appear before the end. The verdict is valid iff the structure holds and at most
``allowance`` positions fail. ``tau`` and ``allowance`` are calibrated in docs/verification.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from verinfer.digest import FinishReason, SamplingParams
from verinfer.engines.base import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Job,
    JobError,
    check_job_params,
    prompt_ids_for,
)
from verinfer.models.loader import LoadedModel
from verinfer.sampler import gumbel_noise

# Calibrated in docs/verification.md (float32 on CPU; bf16 needs its own measurement).
DEFAULT_TAU = {"float32": 1e-3, "bfloat16": 0.5, "float16": 0.1}
DEFAULT_ALLOWANCE = 0


@dataclass(frozen=True)
class Claim:
    """A published result to verify: the job (model, prompt, params) and the claimed output."""

    job: Job
    token_ids: tuple[int, ...]
    finish_reason: int


@dataclass(frozen=True)
class PositionFailure:
    """A claimed token that fails the per-position rule."""

    position: int
    token_id: int
    margin: float
    kind: str = "margin"  # "margin" or "outside_top_k"


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer for one claim."""

    valid: bool
    failures: tuple[PositionFailure, ...] = ()
    reason: str | None = None
    max_margin: float = 0.0
    tau: float = 0.0
    allowance: int = 0
    margins: tuple[float, ...] = field(default=(), repr=False)


def _structure_error(
    claimed: Sequence[int], reason: int, params: SamplingParams, stops: frozenset[int], vocab: int
) -> str | None:
    """Why the claim's shape is wrong (before any forward pass), or None."""
    if reason not in (FinishReason.STOP, FinishReason.LENGTH):
        return f"unknown finish reason {reason}"
    for pos, tok in enumerate(claimed):
        if not 0 <= tok < vocab:
            return f"token id {tok} at position {pos} outside the vocabulary (size {vocab})"
    if len(claimed) > params.max_tokens:
        return f"{len(claimed)} tokens claimed, max_tokens is {params.max_tokens}"
    if reason == FinishReason.LENGTH and len(claimed) != params.max_tokens:
        return f"finish reason length with {len(claimed)} tokens, max_tokens is {params.max_tokens}"
    if reason == FinishReason.STOP and (not claimed or claimed[-1] not in stops):
        return "finish reason stop but the last token is not a stop token"
    for pos, tok in enumerate(claimed[:-1]):
        if tok in stops:
            return f"stop token {tok} at position {pos} before the end of the output"
    if reason == FinishReason.LENGTH and claimed and claimed[-1] in stops:
        return "finish reason length but the last token is a stop token"
    return None


def position_margins(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    positions: torch.Tensor,
    claimed: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins (float64) of claimed tokens, one row per (claim, position), and a top-k mask.

    ``logits`` is (N, V) float32; ``params[r]``, ``positions[r]`` (output index) and
    ``claimed[r]`` describe row ``r``. Returns ``(margins, outside_top_k)``.
    """
    n, vocab = logits.shape
    device = logits.device
    lg = logits.to(torch.float64)
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float64, device=device)
    z = lg
    sampled = torch.nonzero(temps > 0)[:, 0]
    if len(sampled):
        rows = sampled.tolist()
        noise = gumbel_noise([params[r].seed for r in rows], positions[sampled], vocab, device)
        z = lg.clone()
        z[sampled] += temps[sampled, None] * noise
    claimed_l = lg.gather(1, claimed[:, None])[:, 0]
    claimed_z = z.gather(1, claimed[:, None])[:, 0]
    ks = torch.tensor(
        [p.top_k if (not p.greedy and 0 < p.top_k < vocab) else 0 for p in params],
        dtype=torch.long,
        device=device,
    )
    outside = torch.zeros(n, dtype=torch.bool, device=device)
    if bool((ks > 0).any()):
        kth = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        with_k = torch.nonzero(ks > 0)[:, 0]
        top = torch.topk(lg[with_k], int(ks.max())).values
        kth[with_k] = top.gather(1, (ks[with_k] - 1)[:, None])[:, 0]
        z = z.masked_fill(lg < (kth + tau)[:, None], -math.inf)
        outside = claimed_l < kth - tau
        best = z.max(dim=-1).values
        margins = torch.where(outside, kth - claimed_l, best - claimed_z)
        return margins.nan_to_num(0.0, neginf=0.0).clamp(min=0.0), outside
    return (z.max(dim=-1).values - claimed_z).clamp(min=0.0), outside


@torch.inference_mode()
def teacher_forced_logits(
    model: LoadedModel, prompts: Sequence[Sequence[int]], claims: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Teacher-forced logits (float32, sum(n) x V) predicting every claimed token, in order.

    One right-padded prefill over ``prompt + claim[:-1]`` per row; the output head runs only on
    the positions that predict claimed tokens.
    """
    seqs = [list(p) + list(c[:-1]) for p, c in zip(prompts, claims, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        start = len(prompts[row]) - 1
        rows += [row] * len(claims[row])
        cols += range(start, start + len(claims[row]))
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = torch.arange(width, device=model.device)[None, :].expand(len(seqs), width)
    hidden = model.model.get_decoder()(
        input_ids=ids, attention_mask=mask, position_ids=positions
    ).last_hidden_state
    picked = hidden[torch.tensor(rows), torch.tensor(cols)]
    return model.model.get_output_embeddings()(picked).float()


def verify_batch(
    model: LoadedModel,
    claims: Sequence[Claim],
    tau: float | None = None,
    allowance: int = DEFAULT_ALLOWANCE,
    batch_size: int = 16,
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
) -> list[Verdict | JobError]:
    """Verify many claims against one model, ``batch_size`` sequences per forward pass.

    Returns a Verdict per claim, or a JobError where the job itself cannot run (bad input,
    prompt too long, max_tokens 0 or above the limit, another model id).
    """
    tau = DEFAULT_TAU[model.manifest.dtype] if tau is None else tau
    results: list[Verdict | JobError | None] = [None] * len(claims)
    pending: list[tuple[int, list[int]]] = []
    for index, claim in enumerate(claims):
        params = claim.job.params
        try:
            if claim.job.model_id != model.model_id:
                raise JobError(f"claim is for model 0x{claim.job.model_id.hex()}, not this one")
            prompt = prompt_ids_for(model, claim.job)
            check_job_params(model, len(prompt), params, max_output_tokens)
        except JobError as exc:
            results[index] = exc
            continue
        claimed = [int(t) for t in claim.token_ids]
        bad = _structure_error(
            claimed,
            int(claim.finish_reason),
            params,
            model.stop_ids(params.stop_token_ids),
            model.vocab_size,
        )
        if bad is not None:
            results[index] = Verdict(False, reason=bad, tau=tau, allowance=allowance)
        else:
            pending.append((index, prompt))
    # batch claims of similar length together: less padding, same verdicts
    pending.sort(key=lambda item: len(item[1]) + len(claims[item[0]].token_ids))
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        toks = [claims[i].token_ids for i, _ in chunk]
        logits = teacher_forced_logits(model, [p for _, p in chunk], toks)
        row_params = [claims[i].job.params for i, _ in chunk for _ in claims[i].token_ids]
        positions = torch.cat([torch.arange(len(t)) for t in toks])
        claimed_t = torch.tensor([t for ts in toks for t in ts], dtype=torch.long)
        margins, outside = position_margins(
            logits, row_params, positions.to(logits.device), claimed_t.to(logits.device), tau
        )
        margins_l, outside_l = margins.tolist(), outside.tolist()
        offset = 0
        for (index, _), ts in zip(chunk, toks, strict=True):
            m = margins_l[offset : offset + len(ts)]
            o = outside_l[offset : offset + len(ts)]
            offset += len(ts)
            failures = tuple(
                PositionFailure(pos, int(ts[pos]), m[pos], "outside_top_k" if o[pos] else "margin")
                for pos in range(len(ts))
                if o[pos] or m[pos] > tau
            )
            valid = len(failures) <= allowance
            results[index] = Verdict(
                valid=valid,
                failures=failures,
                reason=None if valid else f"{len(failures)} positions fail (allowance {allowance})",
                max_margin=max(m),
                tau=tau,
                allowance=allowance,
                margins=tuple(m),
            )
    return [r for r in results if r is not None]


def verify(
    model: LoadedModel,
    prompt: Sequence[int] | bytes,
    params: SamplingParams,
    claimed: Sequence[int],
    finish_reason: int,
    tau: float | None = None,
    allowance: int = DEFAULT_ALLOWANCE,
) -> Verdict:
    """Verify one claim. ``prompt`` is token ids or job input bytes; JobError if the job is bad."""
    job = (
        Job(model.model_id, params, input_data=bytes(prompt))
        if isinstance(prompt, bytes | bytearray)
        else Job(model.model_id, params, prompt_ids=tuple(int(t) for t in prompt))
    )
    (result,) = verify_batch(
        model, [Claim(job, tuple(int(t) for t in claimed), int(finish_reason))], tau, allowance, 1
    )
    if isinstance(result, JobError):
        raise result
    return result
