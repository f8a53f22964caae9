"""Inference engines behind one interface (``Engine.generate(jobs) -> list[JobResult]``).

``TransformersEngine`` is the default; ``verinfer.engines.vllm_engine.VllmEngine`` is the
optional GPU engine (``pip install 'verinfer[vllm]'``), imported lazily.
"""

from verinfer.engines.base import Engine, Job, JobError, JobResult
from verinfer.engines.hf import TransformersEngine, generate_batch

__all__ = ["Engine", "Job", "JobError", "JobResult", "TransformersEngine", "generate_batch"]
