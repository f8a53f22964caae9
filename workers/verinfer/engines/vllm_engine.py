"""Thin vLLM engine (GPU): vLLM generates, the keyed sampler decides every token.

vLLM is an optional extra (``pip install 'verinfer[vllm]'``) imported only when a VllmEngine is
built. Every request runs greedy (temperature 0) in vLLM, with a per-request logits processor
that replaces the row's logits by the keyed scores of ``verinfer.sampler`` (``logit/T + g`` over
the top-k set, ``-inf`` elsewhere); vLLM's argmax of those scores is then exactly the token the
transformers engine would pick from the same logits. ``VLLM_BATCH_INVARIANT=1`` is set on GPUs
that support it (compute capability >= 9.0) before vLLM is imported.

What does not need vLLM (the per-row transform, the request translation) is plain Python here
and is tested on CPU; the rest is exercised by ``scripts/gpu_check.py`` on a GPU host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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
from verinfer.models.loader import LoadedModel
from verinfer.sampler import gumbel_transform_row

EXTRA_KEY = "verinfer_params"


def keyed_row_processor(
    params: SamplingParams,
) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
    """Per-request processor ``(output_ids, logits_row) -> scores`` for one job.

    The sampler position is ``len(output_ids)``: the index of the token being chosen.
    """

    def process(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        return gumbel_transform_row(logits, params, len(output_ids)).to(logits.device)

    return process


def vllm_request_kwargs(params: SamplingParams, stop_ids: Iterable[int]) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for a job (greedy + our processor)."""
    return {
        "max_tokens": params.max_tokens,
        "temperature": 0.0,
        "stop_token_ids": sorted(stop_ids),
        "ignore_eos": True,  # the job's stop set is passed explicitly
        "detokenize": False,
        "extra_args": {EXTRA_KEY: params.encode().hex()},
    }


def result_from_vllm(token_ids: Sequence[int], stop_ids: frozenset[int]) -> JobResult:
    """Our JobResult from vLLM's output token ids (finish reason derived from the stop set)."""
    tokens = tuple(int(t) for t in token_ids)
    reason = FinishReason.STOP if tokens and tokens[-1] in stop_ids else FinishReason.LENGTH
    return JobResult(tokens, reason)


def set_batch_invariance() -> bool:
    """Set ``VLLM_BATCH_INVARIANT=1`` when the GPU supports it; returns whether it did."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9:
        os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")
        return True
    return False


def _processor_class() -> type:
    """The vLLM v1 AdapterLogitsProcessor subclass (built lazily: needs vLLM)."""
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    class KeyedGumbelProcessor(AdapterLogitsProcessor):  # type: ignore[misc, valid-type]
        """Applies ``keyed_row_processor`` to requests that carry verinfer params."""

        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params: Any) -> Any:
            extra = getattr(params, "extra_args", None) or {}
            if EXTRA_KEY not in extra:
                return None
            return keyed_row_processor(SamplingParams.decode(bytes.fromhex(extra[EXTRA_KEY])))

    return KeyedGumbelProcessor


class VllmEngine:
    """Generates with vLLM for one model; same interface as TransformersEngine."""

    def __init__(
        self,
        model: LoadedModel,
        max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        **llm_kwargs: Any,
    ) -> None:
        set_batch_invariance()
        # the per-request adapter below is the v1-runner API; newer vLLM defaults to MRV2
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        from vllm import LLM

        self.model = model
        self.max_output_tokens = max_output_tokens
        self.llm = LLM(
            model=str(model.path),
            dtype=model.manifest.dtype,
            logits_processors=[_processor_class()],
            seed=0,
            **llm_kwargs,
        )

    def generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        """One JobResult per job; bad jobs get an error and do not reach vLLM."""
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt

        results: list[JobResult] = [JobResult(error="not run")] * len(jobs)
        run: list[tuple[int, list[int], frozenset[int]]] = []
        for index, job in enumerate(jobs):
            try:
                if job.model_id != self.model.model_id:
                    raise JobError(f"model 0x{job.model_id.hex()} is not served here")
                prompt = prompt_ids_for(self.model, job)
                check_job_params(self.model, len(prompt), job.params, self.max_output_tokens)
            except JobError as exc:
                results[index] = JobResult(error=str(exc))
                continue
            run.append((index, prompt, self.model.stop_ids(job.params.stop_token_ids)))
        if not run:
            return results
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for _, p, _ in run],
            [VllmParams(**vllm_request_kwargs(jobs[i].params, s)) for i, _, s in run],
            use_tqdm=False,
        )
        for (index, _, stops), out in zip(run, outputs, strict=True):
            results[index] = result_from_vllm(out.outputs[0].token_ids, stops)
        return results
