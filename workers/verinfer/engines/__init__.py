"""Inference engines behind one interface (``Engine.generate(jobs) -> list[JobResult]``).

``TransformersEngine`` is the default; ``verinfer.engines.vllm_engine.VllmEngine`` is the
optional GPU engine (``pip install 'verinfer[vllm]'``), imported lazily. The names below are
imported on first use (PEP 562): ``verinfer.engines.base`` alone does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from verinfer.lazy import lazy_attributes

_WHERE = {
    "Engine": "base",
    "Job": "base",
    "JobError": "base",
    "JobResult": "base",
    "TransformersEngine": "hf",
    "generate_batch": "hf",
}

__all__ = [
    "Engine",
    "Job",
    "JobError",
    "JobResult",
    "TransformersEngine",
    "generate_batch",
]

__getattr__ = lazy_attributes(__name__, _WHERE)


if TYPE_CHECKING:
    from verinfer.engines.base import Engine, Job, JobError, JobResult
    from verinfer.engines.hf import TransformersEngine, generate_batch
