"""Teacher-forced verifier: honest claims pass across batch shapes, every cheat kind fails."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest
import torch
from verinfer.digest import FinishReason, SamplingParams, result_digest
from verinfer.engines import Job, JobError, TransformersEngine
from verinfer.verifier import DEFAULT_TAU, Claim, Verdict, position_margins, verify, verify_batch

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
        assert verdict.reason == f"{len(verdict.failures)} positions fail (allowance 0)"
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
