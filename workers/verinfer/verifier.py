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
# rows of (position x vocabulary) scored at once: bounds the float64 working set
_ROWS_PER_CHUNK = 256


@dataclass(frozen=True)
class JobRule:
    """The per-job rule: evidence summed over all positions of a claim.

    Every position contributes ``x_i = min(margin_i, cap) / cap`` in ``[0, 1]``; the job's
    statistic is ``S = sum_i x_i``. An honest position has mean ``E[x_i] <= rate`` (measured
    on honest claims, docs/verification.md §6). For independent positions Hoeffding's bound
    ``P(S >= n a) <= exp(-n KL(a || rate))`` holds for any ``[0, 1]`` variables with that mean,
    so a claim of ``n`` positions fails iff ``S`` exceeds ``threshold(n)``, the smallest value
    that an honest claim reaches with probability at most ``alpha``.
    """

    cap: float
    rate: float
    alpha: float = 1e-6

    def statistic(self, margins: Sequence[float]) -> float:
        """``S = sum_i min(margin_i, cap) / cap``."""
        return sum(min(m, self.cap) for m in margins) / self.cap

    def threshold(self, n: int) -> float:
        """Smallest ``s`` with ``exp(-n KL(s/n || rate)) <= alpha`` (``n`` when none exists)."""
        if n <= 0 or self.rate >= 1.0:
            return float(n)
        log_alpha = math.log(self.alpha)

        def log_bound(a: float) -> float:
            kl = a * math.log(a / self.rate)
            if a < 1.0:
                kl += (1.0 - a) * math.log((1.0 - a) / (1.0 - self.rate))
            return -n * kl

        if log_bound(1.0) > log_alpha:
            return float(n)  # too few positions for this alpha: the rule cannot fail
        lo, hi = self.rate, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if log_bound(mid) > log_alpha else (lo, mid)
        return n * hi


@dataclass
class NodeEvidence:
    """A per-node running statistic over the node's audited jobs (one job is not always enough
    evidence against a slightly different model, docs/verification.md §7).

    It sums the per-job statistics and positions of every audited claim of one node and
    model; because Hoeffding's bound holds for the total as for one job, the node is flagged
    when the total exceeds ``rule.threshold(total positions)`` at level ``alpha_j``. The j-th
    check spends ``alpha_j = alpha * 6 / (pi^2 j^2)``, so the probability that an honest node is
    ever flagged, however many jobs are audited, is at most ``alpha``.
    """

    rule: JobRule
    alpha: float = 1e-6
    statistic: float = 0.0
    positions: int = 0
    checks: int = 0
    flagged: bool = False

    def add(self, verdict: Verdict) -> bool:
        """Add one audited claim's verdict; True when the node is (now or already) flagged."""
        return self.add_margins(verdict.margins)

    def add_margins(self, margins: Sequence[float]) -> bool:
        """Add one audited claim's per-position margins; True when the node is flagged."""
        self.statistic += self.rule.statistic(margins)
        self.positions += len(margins)
        self.checks += 1
        if self.statistic > self.threshold():
            self.flagged = True
        return self.flagged

    def threshold(self) -> float:
        """The current check's threshold on the total statistic."""
        spent = self.alpha * 6.0 / (math.pi**2 * max(self.checks, 1) ** 2)
        return JobRule(self.rule.cap, self.rule.rate, spent).threshold(self.positions)


# Calibrated in docs/verification.md §6 (honest per-position rates measured on SmolLM2 and the
# tiny model, with a safety factor); alpha is the honest false-positive rate per job.
DEFAULT_JOB_RULE = {
    "float32": JobRule(cap=1e-4, rate=1e-4),
    # 2.1x SmolLM2's measured honest bf16 mean (0.0117; the tiny model's: 0.0047)
    "bfloat16": JobRule(cap=0.05, rate=0.025),
    "float16": JobRule(cap=0.01, rate=0.01),
}


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
    """The verifier's answer for one claim.

    ``valid`` is the conjunction of the per-token rule (``token_valid``: at most ``allowance``
    positions with a margin above ``tau``) and the per-job rule (``job_valid``:
    ``job_statistic <= job_threshold``, see JobRule). A structure error makes both false.
    """

    valid: bool
    failures: tuple[PositionFailure, ...] = ()
    reason: str | None = None
    max_margin: float = 0.0
    tau: float = 0.0
    allowance: int = 0
    margins: tuple[float, ...] = field(default=(), repr=False)
    token_valid: bool = False
    job_valid: bool = False
    job_statistic: float = 0.0
    job_threshold: float = 0.0


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

    Top-k: the verifier cannot know which tokens within ``tau`` of the k-th logit the
    generating node's top-k set held, so it takes the set most favourable to the claim that
    any execution within ``tau`` could have used: every token surely in (``l >= kth + tau``),
    the claimed token, and as many of the boundary tokens (``|l - kth| < tau``) as it takes to
    make ``k`` tokens, those with the lowest scores first. The k-th token's neighbourhood is
    therefore always in the comparison set: serving top-(k-1) for top-k fails.
    """
    n, vocab = logits.shape
    device = logits.device
    lg = logits.to(torch.float64)
    temps = torch.tensor(
        [0.0 if p.greedy else p.temperature for p in params], dtype=torch.float64, device=device
    )
    z = lg
    sampled = torch.nonzero(temps > 0)[:, 0]
    if len(sampled):
        rows = sampled.tolist()
        noise = gumbel_noise([params[r].seed for r in rows], positions[sampled], vocab, device)
        z = lg.clone()
        z[sampled] += temps[sampled, None] * noise
    claimed_l = lg.gather(1, claimed[:, None])[:, 0]
    claimed_z = z.gather(1, claimed[:, None])[:, 0]
    margins = z.max(dim=-1).values - claimed_z
    outside = torch.zeros(n, dtype=torch.bool, device=device)
    ks = torch.tensor(
        [p.top_k if (not p.greedy and 0 < p.top_k < vocab) else 0 for p in params],
        dtype=torch.long,
        device=device,
    )
    with_k = torch.nonzero(ks > 0)[:, 0]
    if len(with_k):
        k, lk, zk, ck = ks[with_k], lg[with_k], z[with_k], claimed[with_k]
        kth = torch.topk(lk, int(k.max())).values.gather(1, (k - 1)[:, None])[:, 0]
        is_claim = torch.zeros_like(lk, dtype=torch.bool).scatter_(1, ck[:, None], True)
        sure = lk >= (kth + tau)[:, None]
        boundary = (lk >= (kth - tau)[:, None]) & ~sure & ~is_claim
        # tokens still needed from the boundary: k - |sure ∪ {claimed}|
        need = (k - sure.sum(dim=1) - (~sure.gather(1, ck[:, None])[:, 0]).long()).clamp(min=0)
        best = torch.maximum(zk.masked_fill(~sure, -math.inf).max(dim=-1).values, claimed_z[with_k])
        if int(need.max()) > 0:
            lowest = torch.topk(
                zk.masked_fill(~boundary, math.inf), int(need.max()), largest=False
            ).values
            fill = lowest.gather(1, (need - 1).clamp(min=0)[:, None])[:, 0]
            best = torch.where(need > 0, torch.maximum(best, fill), best)
        out_k = claimed_l[with_k] < kth - tau
        margins[with_k] = torch.where(out_k, kth - claimed_l[with_k], best - claimed_z[with_k])
        outside[with_k] = out_k
    return margins.nan_to_num(0.0, posinf=math.inf, neginf=0.0).clamp(min=0.0), outside


@torch.inference_mode()
def teacher_forced_hidden(
    model: LoadedModel, prompts: Sequence[Sequence[int]], claims: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Final hidden states (sum(n) x H) at the positions that predict every claimed token.

    One right-padded prefill over ``prompt + claim[:-1]`` per row, explicit position ids.
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
    return hidden[torch.tensor(rows), torch.tensor(cols)]


@torch.inference_mode()
def output_logits(model: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The output head on hidden states, as float32 logits."""
    return model.model.get_output_embeddings()(hidden).float()


def teacher_forced_logits(
    model: LoadedModel, prompts: Sequence[Sequence[int]], claims: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Teacher-forced logits (float32, sum(n) x V) predicting every claimed token, in order."""
    return output_logits(model, teacher_forced_hidden(model, prompts, claims))


def _judge(
    tokens: Sequence[int],
    margins: list[float],
    outside: list[bool],
    tau: float,
    allowance: int,
    rule: JobRule,
) -> Verdict:
    failures = tuple(
        PositionFailure(pos, int(tokens[pos]), margins[pos], "outside_top_k" if out else "margin")
        for pos, out in enumerate(outside)
        if out or margins[pos] > tau
    )
    token_valid = len(failures) <= allowance
    stat, threshold = rule.statistic(margins), rule.threshold(len(margins))
    job_valid = stat <= threshold
    reasons = []
    if not token_valid:
        reasons.append(f"{len(failures)} positions fail (allowance {allowance})")
    if not job_valid:
        reasons.append(
            f"job statistic {stat:.3g} above {threshold:.3g} "
            f"({len(margins)} positions, cap {rule.cap:g}, rate {rule.rate:g}, "
            f"alpha {rule.alpha:g})"
        )
    return Verdict(
        valid=token_valid and job_valid,
        failures=failures,
        reason="; ".join(reasons) or None,
        max_margin=max(margins),
        tau=tau,
        allowance=allowance,
        margins=tuple(margins),
        token_valid=token_valid,
        job_valid=job_valid,
        job_statistic=stat,
        job_threshold=threshold,
    )


def verify_batch(
    model: LoadedModel,
    claims: Sequence[Claim],
    tau: float | None = None,
    allowance: int = DEFAULT_ALLOWANCE,
    batch_size: int = 16,
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    job_rule: JobRule | None = None,
) -> list[Verdict | JobError]:
    """Verify many claims against one model, ``batch_size`` sequences per forward pass.

    Returns a Verdict per claim, or a JobError where the job itself cannot run (bad input,
    prompt too long, max_tokens 0 or above the limit, another model id). ``tau`` and
    ``job_rule`` default to the calibrated values for the model's dtype.
    """
    tau = DEFAULT_TAU[model.manifest.dtype] if tau is None else tau
    rule = DEFAULT_JOB_RULE[model.manifest.dtype] if job_rule is None else job_rule
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
        hidden = teacher_forced_hidden(model, [p for _, p in chunk], toks)
        row_params = [claims[i].job.params for i, _ in chunk for _ in claims[i].token_ids]
        positions = torch.cat([torch.arange(len(t)) for t in toks]).to(hidden.device)
        claimed_t = torch.tensor([t for ts in toks for t in ts], dtype=torch.long)
        claimed_t = claimed_t.to(hidden.device)
        margins_l: list[float] = []
        outside_l: list[bool] = []
        for row in range(0, len(row_params), _ROWS_PER_CHUNK):
            end = row + _ROWS_PER_CHUNK
            margins, outside = position_margins(
                output_logits(model, hidden[row:end]),
                row_params[row:end],
                positions[row:end],
                claimed_t[row:end],
                tau,
            )
            margins_l += margins.tolist()
            outside_l += outside.tolist()
        offset = 0
        for (index, _), ts in zip(chunk, toks, strict=True):
            end = offset + len(ts)
            results[index] = _judge(
                ts, margins_l[offset:end], outside_l[offset:end], tau, allowance, rule
            )
            offset = end
    return [r for r in results if r is not None]


def verify(
    model: LoadedModel,
    prompt: Sequence[int] | bytes,
    params: SamplingParams,
    claimed: Sequence[int],
    finish_reason: int,
    tau: float | None = None,
    allowance: int = DEFAULT_ALLOWANCE,
    job_rule: JobRule | None = None,
) -> Verdict:
    """Verify one claim. ``prompt`` is token ids or job input bytes; JobError if the job is bad."""
    job = (
        Job(model.model_id, params, input_data=bytes(prompt))
        if isinstance(prompt, bytes | bytearray)
        else Job(model.model_id, params, prompt_ids=tuple(int(t) for t in prompt))
    )
    (result,) = verify_batch(
        model,
        [Claim(job, tuple(int(t) for t in claimed), int(finish_reason))],
        tau,
        allowance,
        1,
        job_rule=job_rule,
    )
    if isinstance(result, JobError):
        raise result
    return result
