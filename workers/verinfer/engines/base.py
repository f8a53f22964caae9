"""The engine interface: generate for a batch of jobs, one result (or error) per job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from verinfer.digest import FinishReason, SamplingParams
from verinfer.inputs import InputFormatError, tokenize_input

if TYPE_CHECKING:  # the loader imports torch; this module does not need it
    from verinfer.models.loader import LoadedModel

DEFAULT_MAX_OUTPUT_TOKENS = 4096


class JobError(ValueError):
    """A job that cannot be run (bad input, bad parameters, unknown model, ...)."""


@dataclass(frozen=True)
class Job:
    """One inference job: the model, the prompt (input bytes or token ids) and the params."""

    model_id: bytes
    params: SamplingParams
    input_data: bytes | None = None
    prompt_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class JobResult:
    """Output token ids and finish reason, or the error that stopped this job."""

    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the job produced an output."""
        return self.error is None


class Engine(Protocol):
    """Anything that generates for a batch of jobs."""

    def generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        """One JobResult per job, in order; a bad job never fails the others."""
        ...


def prompt_ids_for(model: LoadedModel, job: Job) -> list[int]:
    """The job's prompt token ids (tokenizing its input bytes if needed); JobError if bad."""
    if (job.input_data is None) == (job.prompt_ids is None):
        raise JobError("a job needs exactly one of input_data or prompt_ids")
    if job.prompt_ids is not None:
        ids = [int(t) for t in job.prompt_ids]
    else:
        try:
            ids = tokenize_input(model.tokenizer, bytes(job.input_data or b""))
        except InputFormatError as exc:
            raise JobError(f"bad input: {exc}") from exc
    if not ids:
        raise JobError("prompt is empty")
    if bad := [t for t in ids if not 0 <= t < model.vocab_size]:
        raise JobError(f"prompt token id {bad[0]} outside the vocabulary (size {model.vocab_size})")
    return ids


def check_job_params(
    model: LoadedModel,
    prompt_len: int,
    params: SamplingParams,
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
) -> None:
    """JobError unless ``params`` can run on ``model`` after a prompt of ``prompt_len`` tokens."""
    if params.max_tokens == 0:
        raise JobError("max_tokens must be at least 1")
    if params.max_tokens > max_output_tokens:
        raise JobError(f"max_tokens {params.max_tokens} above the limit {max_output_tokens}")
    if model.max_context and prompt_len + params.max_tokens > model.max_context:
        raise JobError(
            f"prompt of {prompt_len} tokens + max_tokens {params.max_tokens} exceeds the model "
            f"context of {model.max_context} tokens"
        )
