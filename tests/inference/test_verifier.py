"""Teacher-forced verifier: honest claims pass across batch shapes, every cheat kind fails."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from verinfer.digest import MAX_UINT32, FinishReason, SamplingParams, result_digest
from verinfer.engines import Job, JobError, TransformersEngine
from verinfer.sampler import gumbel_noise
from verinfer.verifier import (
    DEFAULT_TAU,
    Claim,
    JobRule,
    NodeEvidence,
    Verdict,
    position_margins,
    verify,
    verify_batch,
)

from .conftest import make_jobs

TAU = DEFAULT_TAU["float32"]


@pytest.fixture(scope="module")
def honest(tiny, engine):
    """24 jobs generated in mixed, padded batches of 16 and 8 and their claims."""
    jobs = make_jobs(tiny, 24, max_tokens=24)
    results = engine.generate(jobs[:16]) + TransformersEngine(tiny, 8).generate(jobs[16:])
    return [Claim(j, r.token_ids, int(r.finish_reason)) for j, r in zip(jobs, results, strict=True)]


def _verdicts(model, claims, batch_size=5) -> list[Verdict]:
    out = verify_batch(model, claims, batch_size=batch_size)
    assert all(isinstance(v, Verdict) for v in out)
    return out  # type: ignore[return-value]


def test_verify__honest_claims__valid_at_every_verify_batch_size(tiny, honest):
    for batch_size in (1, 5, 24):
        verdicts = _verdicts(tiny, honest, batch_size)
        assert all(v.valid and v.failures == () for v in verdicts)
        assert max(v.max_margin for v in verdicts) <= TAU
        assert [len(v.margins) for v in verdicts] == [len(c.token_ids) for c in honest]


def test_verify__honest_claims_with_two_threads_and_one(tiny, honest):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _verdicts(tiny, honest, 7)
    finally:
        torch.set_num_threads(old)
    assert all(v.valid for v in one)


def test_verify__wrong_model__invalid_with_failures(tiny, tiny_other, honest):
    jobs = [replace(c.job, model_id=tiny_other.model_id) for c in honest[:8]]
    fake = TransformersEngine(tiny_other).generate(jobs)
    claims = [
        Claim(c.job, r.token_ids, int(r.finish_reason))
        for c, r in zip(honest[:8], fake, strict=True)
    ]
    for verdict in _verdicts(tiny, claims):
        assert not verdict.valid
        assert not verdict.token_valid
        assert verdict.reason is not None
        assert verdict.reason.startswith(f"{len(verdict.failures)} positions fail (allowance 0)")
        assert all(f.margin > TAU or f.kind == "outside_top_k" for f in verdict.failures)


def test_verify__perturbed_weights__invalid(tiny, honest):
    cheat = copy.copy(tiny)
    cheat.model = copy.deepcopy(tiny.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in cheat.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2 * p.std().clamp(min=1e-2))
    fake = TransformersEngine(cheat).generate([c.job for c in honest])
    claims = [
        Claim(c.job, r.token_ids, int(r.finish_reason))
        for c, r in zip(honest, fake, strict=True)
        if r.token_ids != c.token_ids  # an identical output is not a cheat
    ]
    assert len(claims) >= len(honest) // 2
    assert not any(v.valid for v in _verdicts(tiny, claims))


def test_verify__one_token_swapped__invalid_at_that_position(tiny, honest):
    rng = random.Random(0)
    for claim in honest[:12]:
        pos = rng.randrange(len(claim.token_ids) - 1)
        good = claim.token_ids[pos]
        margins = _verdicts(tiny, [claim])[0].margins
        assert margins[pos] <= TAU
        bad = (good + 1 + rng.randrange(400)) % 500 + 5
        tokens = list(claim.token_ids)
        tokens[pos] = bad if bad != good else bad + 1
        verdict = _verdicts(tiny, [replace(claim, token_ids=tuple(tokens))])[0]
        assert not verdict.valid
        assert verdict.failures[0].position == pos
        assert verdict.failures[0].token_id == tokens[pos]
        assert verdict.failures[0].margin > TAU


def test_verify__random_suffix__invalid(tiny, honest):
    rng = random.Random(1)
    claims = []
    for claim in [c for c in honest if c.finish_reason == FinishReason.LENGTH][:12]:
        keep = rng.randrange(1, len(claim.token_ids) - 1)
        suffix = [rng.randrange(5, 512) for _ in range(len(claim.token_ids) - keep)]
        claims.append(replace(claim, token_ids=claim.token_ids[:keep] + tuple(suffix)))
    for claim, verdict in zip(claims, _verdicts(tiny, claims), strict=True):
        assert not verdict.valid
        assert len(verdict.failures) >= 1
        assert all(f.position < len(claim.token_ids) for f in verdict.failures)


def test_termination__truncated_length_claim__invalid(tiny, honest):
    claim = next(c for c in honest if c.finish_reason == FinishReason.LENGTH)
    cut = replace(claim, token_ids=claim.token_ids[:-3])
    verdict = _verdicts(tiny, [cut])[0]
    assert not verdict.valid
    assert (
        verdict.reason == f"finish reason length with {len(cut.token_ids)} tokens, max_tokens is 24"
    )


def test_termination__truncated_with_eos_appended__invalid_at_the_eos(tiny, honest):
    claim = next(
        c for c in honest if c.finish_reason == FinishReason.LENGTH and c.job.params.greedy
    )
    tokens = (*claim.token_ids[:10], 2)
    verdict = _verdicts(tiny, [Claim(claim.job, tokens, FinishReason.STOP)])[0]
    assert not verdict.valid
    assert [f.position for f in verdict.failures] == [10]
    assert verdict.failures[0].token_id == 2


def test_termination__stop_without_stop_token__invalid(tiny, honest):
    claim = honest[0]
    verdict = _verdicts(tiny, [replace(claim, finish_reason=FinishReason.STOP)])[0]
    assert not verdict.valid
    assert verdict.reason == "finish reason stop but the last token is not a stop token"


def test_termination__stop_token_before_the_end__invalid(tiny, honest):
    claim = honest[0]
    tokens = (*claim.token_ids[:3], 4, *claim.token_ids[4:])
    verdict = _verdicts(tiny, [replace(claim, token_ids=tokens)])[0]
    assert not verdict.valid
    assert verdict.reason == "stop token 4 at position 3 before the end of the output"


def test_termination__length_ending_on_stop_token_and_too_long__invalid(tiny, honest):
    claim = honest[0]
    ends_on_eos = replace(claim, token_ids=(*claim.token_ids[:-1], 2))
    too_long = replace(claim, token_ids=(*claim.token_ids, 7))
    bad_reason = replace(claim, finish_reason=7)
    verdicts = _verdicts(tiny, [ends_on_eos, too_long, bad_reason])
    assert [v.valid for v in verdicts] == [False, False, False]
    assert [v.reason for v in verdicts] == [
        "finish reason length but the last token is a stop token",
        "25 tokens claimed, max_tokens is 24",
        "unknown finish reason 7",
    ]


def test_verify__honest_stop_claim__eos_passes_the_rule(tiny, engine):
    """A claim ending on the EOS the model would emit passes; the termination rule is met."""
    job = make_jobs(tiny, 1, max_tokens=12)[0]
    free = engine.generate([job])[0]
    stop_token = free.token_ids[4]
    params = replace(job.params, stop_token_ids=(stop_token,))
    out = engine.generate([replace(job, params=params)])[0]
    verdict = verify(tiny, job.prompt_ids, params, out.token_ids, out.finish_reason)
    assert out.finish_reason == FinishReason.STOP and verdict.valid
    assert len(verdict.margins) == len(out.token_ids)


def test_verify__token_ids_outside_vocabulary__invalid_with_reason(tiny, honest):
    claim = honest[1]
    tokens = (*claim.token_ids[:5], 512, *claim.token_ids[6:])
    verdict = _verdicts(tiny, [replace(claim, token_ids=tokens)])[0]
    assert not verdict.valid
    assert verdict.reason == "token id 512 at position 5 outside the vocabulary (size 512)"
    negative = replace(claim, token_ids=(-1, *claim.token_ids[1:]))
    assert _verdicts(tiny, [negative])[0].reason.startswith("token id -1 at position 0")


def test_verify__bad_jobs__job_errors_not_verdicts(tiny, honest):
    claim = honest[0]
    too_long = replace(claim, job=replace(claim.job, prompt_ids=tuple([5] * 1020)))
    zero = replace(claim, job=replace(claim.job, params=replace(claim.job.params, max_tokens=0)))
    other = replace(claim, job=replace(claim.job, model_id=b"\x22" * 32))
    out = verify_batch(tiny, [too_long, zero, other, claim])
    assert [type(o) for o in out] == [JobError, JobError, JobError, Verdict]
    assert "exceeds the model context" in str(out[0])
    assert str(out[1]) == "max_tokens must be at least 1"
    assert str(out[2]) == f"claim is for model 0x{'22' * 32}, not this one"
    assert out[3].valid
    with pytest.raises(JobError, match="max_tokens must be at least 1"):
        verify(tiny, [5, 6], SamplingParams(0), [], FinishReason.LENGTH)


def test_position_margins__tolerates_noise_below_tau_and_top_k_boundary():
    logits = torch.tensor([[5.0, 5.0 - TAU / 2, 1.0, 0.0], [3.0, 2.0, 2.0 - TAU / 4, 1.0]])
    greedy = SamplingParams(4)
    margins, outside = position_margins(
        logits, [greedy, greedy], torch.tensor([0, 1]), torch.tensor([1, 0]), TAU
    )
    assert margins.tolist()[0] == pytest.approx(TAU / 2, rel=1e-3)
    assert margins.tolist()[1] == 0.0 and not outside.any()
    # top-k=2: token 2 misses the top-2 by TAU/4 only -> tolerated; token 3 is clearly outside
    topk = SamplingParams(4, 1000, 2, 3)
    row, pos = logits[1:], torch.tensor([0])
    _, outside = position_margins(row, [topk], pos, torch.tensor([2]), TAU)
    assert not bool(outside[0])
    margins, outside = position_margins(row, [topk], pos, torch.tensor([3]), TAU)
    assert bool(outside[0]) and margins.tolist()[0] == pytest.approx(1.0)
    tight = SamplingParams(4, 1000, 1, 3)
    margins, outside = position_margins(row, [tight], pos, torch.tensor([1]), TAU)
    assert bool(outside[0]) and margins.tolist()[0] == pytest.approx(1.0)


def test_digest__generator_and_verifier_compute_the_same_digest(tiny, honest):
    claim = honest[2]
    input_data = b"\x00prompt"
    node_side = result_digest(
        42, tiny.model_id, input_data, claim.job.params, claim.token_ids, claim.finish_reason
    )
    verifier_side = result_digest(
        42,
        tiny.model_id,
        input_data,
        claim.job.params.encode(),
        list(claim.token_ids),
        FinishReason(claim.finish_reason),
    )
    assert node_side == verifier_side
    swapped = (claim.token_ids[1], claim.token_ids[0], *claim.token_ids[2:])
    assert result_digest(42, tiny.model_id, input_data, claim.job.params, swapped, 1) != node_side


def test_digest__pinned_value():
    digest = result_digest(
        7, bytes(range(32)), b"\x00hello", SamplingParams(4, 700, 5, 9, (2,)), [10, 11, 12, 2], 0
    )
    assert digest.hex() == "769d58504e0f8ab1d20408609a944d5fadd731b4ac59f2b2ae59f023290eeea3"


def test_verify__sampled_claim_depends_on_the_seed(tiny, honest):
    claim = next(c for c in honest if not c.job.params.greedy and c.job.params.top_k == 0)
    wrong_seed = replace(claim.job.params, seed=claim.job.params.seed + 1)
    verdict = _verdicts(
        tiny,
        [replace(claim, job=Job(claim.job.model_id, wrong_seed, prompt_ids=claim.job.prompt_ids))],
    )[0]
    assert not verdict.valid
    assert len(verdict.failures) >= 5


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Generation in one torch thread (much faster than two on a loaded two-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sampled_winner(logits: list[float], candidates: list[int], seed: int) -> int:
    z = torch.tensor(logits, dtype=torch.float64) + gumbel_noise([seed], [0], len(logits))[0]
    return max(candidates, key=lambda v: float(z[v]))


def test_position_margins__top_k__the_kth_token_is_in_the_comparison_set():
    """top_k = k served as top-(k-1) fails wherever the k-th token was the honest sample."""
    for k, logits in ((2, [3.0, 2.5, 0.0, -1.0]), (3, [3.0, 2.6, 2.2, -1.0])):
        seed = next(
            s
            for s in range(10_000)
            if _sampled_winner(logits, list(range(k)), s) == k - 1
            and _sampled_winner(logits, list(range(k - 1)), s) != k - 1
        )
        params = SamplingParams(4, 1000, k, seed)
        rows = torch.tensor([logits])
        honest_token = k - 1
        cheat_token = _sampled_winner(logits, list(range(k - 1)), seed)
        margins, outside = position_margins(
            rows.repeat(2, 1),
            [params, params],
            torch.tensor([0, 0]),
            torch.tensor([honest_token, cheat_token]),
            TAU,
        )
        assert not outside.any()
        assert margins.tolist()[0] == 0.0
        assert margins.tolist()[1] > TAU


@pytest.fixture(scope="module")
def top_k_jobs(tiny):
    jobs = []
    for i in range(48):
        params = SamplingParams(24, (700, 1000)[i % 2], (2, 5, 40)[i % 3], 5000 + i, (MAX_UINT32,))
        prompt = tuple(5 + (11 * i + 5 * j) % 500 for j in range(3 + i % 17))
        jobs.append(Job(tiny.model_id, params, prompt_ids=prompt))
    return jobs


def test_verify__top_k_served_with_k_minus_1_or_greedily__invalid(tiny, engine, top_k_jobs):
    """Honest top-k claims pass; the same jobs served with top-(k-1) (greedy for k = 2) fail."""

    def fewer(p: SamplingParams) -> SamplingParams:
        return replace(p, temperature_milli=0) if p.top_k == 2 else replace(p, top_k=p.top_k - 1)

    with one_thread():
        honest = engine.generate(top_k_jobs)
        cheat = engine.generate([replace(j, params=fewer(j.params)) for j in top_k_jobs])
    honest_claims = [
        Claim(j, r.token_ids, r.finish_reason) for j, r in zip(top_k_jobs, honest, strict=True)
    ]
    assert all(v.valid for v in _verdicts(tiny, honest_claims, 7))
    differ = [
        Claim(j, c.token_ids, c.finish_reason)
        for j, h, c in zip(top_k_jobs, honest, cheat, strict=True)
        if c.token_ids != h.token_ids
    ]
    assert len([c for c in differ if c.job.params.top_k == 2]) >= 12
    assert len([c for c in differ if c.job.params.top_k == 5]) >= 8
    verdicts = _verdicts(tiny, differ)
    assert not any(v.valid for v in verdicts)
    assert all(v.failures and v.failures[0].kind == "margin" for v in verdicts)


def test_job_rule__threshold_bounds_the_exact_binomial_tail():
    """Hoeffding's bound holds for 0/1 positions: P(S > threshold) <= alpha, and it is not
    much looser than the exact binomial quantile."""
    for rate in (1e-4, 1e-3, 1e-2):
        previous = 0.0
        for n in (16, 64, 256, 1024, 4096):
            rule = JobRule(cap=1.0, rate=rate, alpha=1e-6)
            threshold = rule.threshold(n)
            assert threshold >= previous
            previous = threshold

            def tail(k: int, n: int = n, rate: float = rate) -> float:
                return sum(
                    math.exp(
                        math.lgamma(n + 1)
                        - math.lgamma(j + 1)
                        - math.lgamma(n - j + 1)
                        + j * math.log(rate)
                        + (n - j) * math.log1p(-rate)
                    )
                    for j in range(k, min(n, k + 400) + 1)
                )

            fails_from = math.floor(threshold) + 1
            assert fails_from > n or tail(fails_from) <= 1e-6
            exact = next(k for k in range(n + 2) if k > n or tail(k) <= 1e-6)
            assert fails_from <= 3 * exact + 2, (rate, n, threshold, exact)


def test_job_rule__statistic_caps_each_position():
    rule = JobRule(cap=0.1, rate=1e-3)
    assert rule.statistic([0.0, 0.05, 0.1, 7.0]) == pytest.approx(2.5)
    assert rule.threshold(0) == 0.0


@pytest.fixture(scope="module")
def near_model_claims(tiny, engine):
    """Greedy jobs of 64 tokens: honest claims and those of the model with weights perturbed
    by 1e-2 (a slightly different model whose margins are small but many)."""
    jobs = [
        Job(
            tiny.model_id,
            SamplingParams(64, 0, 0, i, (MAX_UINT32,)),
            prompt_ids=tuple(5 + (13 * i + 7 * j) % 500 for j in range(4 + i % 13)),
        )
        for i in range(24)
    ]
    cheat = copy.copy(tiny)
    cheat.model = copy.deepcopy(tiny.model)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in cheat.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2 * p.pow(2).mean().sqrt())
    with one_thread():
        honest = engine.generate(jobs)
        fake = TransformersEngine(cheat, 16).generate(jobs)
    return (
        [Claim(j, r.token_ids, r.finish_reason) for j, r in zip(jobs, honest, strict=True)],
        [
            Claim(j, f.token_ids, f.finish_reason)
            for j, h, f in zip(jobs, honest, fake, strict=True)
            if f.token_ids != h.token_ids
        ],
    )


def test_verify__job_rule_catches_a_near_model_the_token_rule_misses(tiny, near_model_claims):
    """With a loose tau (as bf16 needs), the per-token rule lets a slightly different model
    through; the per-job statistic over all positions does not. Honest claims pass both."""
    honest, cheats = near_model_claims
    rule = JobRule(cap=0.01, rate=1e-3)
    assert len(cheats) >= 10
    assert all(v.valid for v in _verdicts_with(tiny, honest, tau=0.5, job_rule=rule))
    verdicts = _verdicts_with(tiny, cheats, tau=0.5, job_rule=rule)
    missed_by_tokens = [v for v in verdicts if v.token_valid]
    assert len(missed_by_tokens) >= len(cheats) // 2
    caught_by_job = [v for v in missed_by_tokens if not v.job_valid]
    assert len(caught_by_job) >= 4
    for v in caught_by_job:
        assert not v.valid and v.job_statistic > v.job_threshold
        assert v.reason is not None and v.reason.startswith("job statistic")
    # the default float32 rules catch every one of them (tau alone already does)
    assert not any(v.valid for v in _verdicts(tiny, cheats))


def _verdicts_with(model, claims, **kw) -> list[Verdict]:
    out = verify_batch(model, claims, **kw)
    assert all(isinstance(v, Verdict) for v in out)
    return out  # type: ignore[return-value]


def test_node_evidence__flags_a_node_that_no_single_job_convicts():
    rule = JobRule(cap=0.01, rate=1e-3)
    # one position at the cap in every job of 16: below every job's threshold ...
    cheat_job = [0.0] * 15 + [0.01]
    assert rule.statistic(cheat_job) <= rule.threshold(16)
    node = NodeEvidence(rule)
    flagged_after = next(n for n in range(1, 200) if node.add_margins(cheat_job))
    assert 2 <= flagged_after <= 40
    # ... while an honest node (positions at the cap at the honest rate) is never flagged
    rng = random.Random(5)
    honest = NodeEvidence(rule)
    for _ in range(3000):
        job = [0.01 if rng.random() < 1e-3 else 0.0 for _ in range(16)]
        assert not honest.add_margins(job)
    assert honest.positions == 48_000 and honest.checks == 3000
