"""Fixtures for the inference tests: the project's tiny model (built once, cached)."""

from __future__ import annotations

import pytest
import torch
from verinfer.digest import SamplingParams
from verinfer.engines import Job, TransformersEngine
from verinfer.models import LoadedModel, load_model, tiny_model_path

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    """The seed-0 tiny Llama model."""
    return load_model(tiny_model_path(0))


@pytest.fixture(scope="session")
def tiny_other() -> LoadedModel:
    """Same architecture, seed 1: a different model (another model_id)."""
    return load_model(tiny_model_path(1))


@pytest.fixture(scope="session")
def engine(tiny: LoadedModel) -> TransformersEngine:
    """A transformers engine serving the tiny model."""
    return TransformersEngine(tiny, max_batch_size=16)


def make_jobs(model: LoadedModel, n: int, max_tokens: int = 24, offset: int = 0) -> list[Job]:
    """n jobs with varied prompt lengths (padded batches), greedy/sampled and top-k mixed."""
    jobs = []
    for i in range(offset, offset + n):
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature_milli=(0, 700, 1000, 1300)[i % 4],
            top_k=(0, 0, 20)[i % 3],
            seed=1000 + i,
            stop_token_ids=(),
        )
        prompt = tuple(5 + (7 * i + 3 * j) % 500 for j in range(4 + (i * 5) % 23))
        jobs.append(Job(model.model_id, params, prompt_ids=prompt))
    return jobs
