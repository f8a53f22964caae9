"""Transformers engine: batching, stop handling, bad jobs isolated; the vLLM adapter's pieces."""

from __future__ import annotations

from dataclasses import replace

import torch
from verinfer.digest import FinishReason, SamplingParams
from verinfer.engines import Job, JobResult, TransformersEngine
from verinfer.engines.vllm_engine import (
    EXTRA_KEY,
    keyed_row_processor,
    result_from_vllm,
    vllm_request_kwargs,
)
from verinfer.inputs import encode_chat_input, encode_text_input
from verinfer.sampler import select_tokens
from verinfer.verifier import verify

from .conftest import make_jobs


def test_generate__solo_and_mixed_padded_batches__same_outputs(tiny, engine):
    jobs = make_jobs(tiny, 12, max_tokens=20)
    batched = engine.generate(jobs)
    solo = [engine.generate([job])[0] for job in jobs[:4]]
    assert all(r.ok and r.finish_reason is not None for r in batched)
    assert [r.token_ids for r in solo] == [r.token_ids for r in batched[:4]]
    for job, result in zip(jobs, batched, strict=True):
        assert len(result.token_ids) <= job.params.max_tokens
        if result.finish_reason == FinishReason.LENGTH:
            assert len(result.token_ids) == job.params.max_tokens


def test_generate__text_and_chat_inputs(tiny, engine):
    params = SamplingParams(max_tokens=6)
    jobs = [
        Job(tiny.model_id, params, input_data=encode_text_input("Hello there")),
        Job(
            tiny.model_id, params, input_data=encode_chat_input([{"role": "user", "content": "Hi"}])
        ),
    ]
    results = engine.generate(jobs)
    assert all(r.ok and len(r.token_ids) >= 1 for r in results)
    verdict = verify(
        tiny, jobs[1].input_data, params, results[1].token_ids, results[1].finish_reason
    )
    assert verdict.valid


def test_generate__stops_at_first_stop_token_and_includes_it(tiny, engine):
    job = make_jobs(tiny, 1, max_tokens=16)[0]
    free = engine.generate([job])[0]
    stop_at = 5
    stop_token = free.token_ids[stop_at]
    first_index = free.token_ids.index(stop_token)
    stopped_job = replace(job, params=replace(job.params, stop_token_ids=(stop_token,)))
    stopped = engine.generate([stopped_job])[0]
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.token_ids == free.token_ids[: first_index + 1]
    assert verify(
        tiny, job.prompt_ids, stopped_job.params, stopped.token_ids, FinishReason.STOP
    ).valid


def test_generate__bad_jobs_get_clear_errors_and_the_rest_still_run(tiny, engine):
    good = make_jobs(tiny, 2, max_tokens=8)
    expected = engine.generate(good)
    mid = tiny.model_id
    bad = [
        Job(mid, SamplingParams(max_tokens=8), prompt_ids=tuple([5] * 1020)),
        Job(mid, SamplingParams(max_tokens=0), prompt_ids=(5, 6)),
        Job(mid, SamplingParams(max_tokens=5000), prompt_ids=(5, 6)),
        Job(b"\x11" * 32, SamplingParams(max_tokens=8), prompt_ids=(5, 6)),
        Job(mid, SamplingParams(max_tokens=8), input_data=b"\x05nope"),
        Job(mid, SamplingParams(max_tokens=8), prompt_ids=(5, 512)),
        Job(mid, SamplingParams(max_tokens=8)),
    ]
    results = engine.generate([good[0], *bad, good[1]])
    assert results[0] == expected[0] and results[-1] == expected[1]
    errors = [r.error for r in results[1:-1]]
    assert all(not r.ok and r.token_ids == () for r in results[1:-1])
    assert errors == [
        "prompt of 1020 tokens + max_tokens 8 exceeds the model context of 1024 tokens",
        "max_tokens must be at least 1",
        "max_tokens 5000 above the limit 4096",
        f"model 0x{'11' * 32} is not served here",
        "bad input: unknown input format byte 0x05",
        "prompt token id 512 outside the vocabulary (size 512)",
        "a job needs exactly one of input_data or prompt_ids",
    ]


def test_generate__max_output_tokens_limit_is_configurable(tiny):
    engine = TransformersEngine(tiny, max_output_tokens=4)
    (result,) = engine.generate([Job(tiny.model_id, SamplingParams(5), prompt_ids=(5,))])
    assert result == JobResult(error="max_tokens 5 above the limit 4")


def test_vllm_row_processor__argmax_equals_the_engines_choice():
    gen = torch.Generator().manual_seed(1)
    for params in (
        SamplingParams(8, 0),
        SamplingParams(8, 900, 0, 5),
        SamplingParams(8, 1200, 7, 6),
    ):
        process = keyed_row_processor(params)
        for position in range(10):
            logits = torch.randn(64, generator=gen) * 3
            scores = process([0] * position, logits)
            expected = select_tokens(logits[None], [params], [position])
            assert int(scores.argmax()) == int(expected[0])
            if params.top_k:
                assert int(torch.isfinite(scores).sum()) == params.top_k


def test_vllm_request_kwargs__greedy_with_encoded_params():
    params = SamplingParams(12, 800, 4, 99, (7,))
    kwargs = vllm_request_kwargs(params, frozenset({7}))
    assert kwargs["temperature"] == 0.0 and kwargs["max_tokens"] == 12
    assert kwargs["stop_token_ids"] == [7] and kwargs["ignore_eos"] is True
    assert SamplingParams.decode(bytes.fromhex(kwargs["extra_args"][EXTRA_KEY])) == params


def test_result_from_vllm__finish_reason_from_the_stop_set():
    assert result_from_vllm([3, 4, 2], frozenset({2})) == JobResult((3, 4, 2), FinishReason.STOP)
    assert result_from_vllm([3, 4, 5], frozenset({2})) == JobResult((3, 4, 5), FinishReason.LENGTH)
