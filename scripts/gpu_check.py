"""GPU check: generate with vLLM, verify with transformers, print the agreement (GPU hosts).

On a GPU host (``pip install -e '.[vllm]'``) this

1. checks that the keyed Gumbel hash is bit-identical on CPU and CUDA;
2. builds a larger random-weight Llama model in bfloat16 (the project's deterministic builder,
   ``--hidden/--layers`` wide), nothing downloaded;
3. generates ``--jobs`` jobs (greedy and sampled, 64 tokens) with vLLM (``VLLM_BATCH_INVARIANT=1``
   on compute capability >= 9.0) and, for comparison, with the transformers engine at batch 32;
4. verifies every claim with transformers (bf16, CUDA) in batches of 1 and 16, and reports the
   honest margin distribution, the fraction of claims valid at several candidate tau values,
   the token agreement between vLLM and transformers, and the verify/generate time ratio.

``--model smollm2`` runs the same checks on SmolLM2-135M-Instruct (``ensure_smollm2``: imported
from its pinned GGUF on first use, float32 files; ``--dtype bfloat16`` loads the same files in
bf16 under a bf16 manifest, which is another model id) with real chat questions, ended by EOS
or after 64 tokens: ``python scripts/gpu_check.py --model smollm2 --jobs 256``.

``--device cpu --no-vllm --hidden 128 --layers 2 --jobs 16`` (or ``--model smollm2 --jobs 8``)
runs the same code path on a CPU machine as a smoke test. The last stdout line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from verinfer.digest import MAX_UINT32, SamplingParams
from verinfer.engines import Job, JobResult, TransformersEngine
from verinfer.inputs import encode_chat_input
from verinfer.models import LoadedModel, TinyConfig, load_model, tiny_model_path
from verinfer.models.manifest import MANIFEST_NAME, Manifest
from verinfer.sampler import gumbel_hash, seed_words
from verinfer.verifier import Claim, Verdict, verify_batch

TAU_CANDIDATES = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def hash_cpu_equals_device(device: str) -> bool:
    """The Gumbel hash on ``device`` equals the CPU hash bit for bit."""
    seeds = [random.Random(i).getrandbits(64) for i in range(64)]
    pos = list(range(64))
    cpu = gumbel_hash(seed_words(seeds), torch.tensor(pos), torch.arange(152_064))
    dev = gumbel_hash(
        seed_words(seeds, device), torch.tensor(pos), torch.arange(152_064, device=device)
    )
    return bool(torch.equal(cpu, dev.cpu()))


def job_params(i: int, rng: random.Random, **extra: Any) -> SamplingParams:
    """Job ``i``'s sampling: greedy and sampled in turns, with and without top-k, 64 tokens."""
    return SamplingParams(
        max_tokens=64,
        temperature_milli=(0, 700, 1000, 1300)[i % 4],
        top_k=(0, 0, 50)[i % 3],
        seed=rng.getrandbits(64),
        **extra,
    )


def claims_of(jobs: list[Job], results: list[JobResult]) -> list[Claim]:
    """The claims of a generation run; an engine error (e.g. a model shape the engine
    refuses) stops the check with its message instead of a later TypeError."""
    errors = {r.error for r in results if not r.ok}
    if errors:
        raise SystemExit(f"gpu_check: {sorted(errors)[0]}")
    return [
        Claim(j, r.token_ids, int(r.finish_reason or 0)) for j, r in zip(jobs, results, strict=True)
    ]


def make_jobs(model: LoadedModel, n: int, rng: random.Random) -> list[Job]:
    """Greedy and sampled jobs, exactly 64 tokens (the stop id lies outside the vocabulary)."""
    jobs = []
    for i in range(n):
        params = job_params(i, rng, stop_token_ids=(MAX_UINT32,))
        prompt = (1, *(rng.randrange(5, model.vocab_size) for _ in range(rng.randrange(8, 120))))
        jobs.append(Job(model.model_id, params, prompt_ids=prompt))
    return jobs


QUESTIONS = (
    "What is the capital of France? Answer in one sentence.",
    "What is a GPU?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "Explain what a blockchain is to a child.",
    "Give me one tip for writing clear code.",
    "What is 17 times 3?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
)


def chat_jobs(model: LoadedModel, n: int, rng: random.Random) -> list[Job]:
    """Real chat questions (input format 0x01), greedy and sampled, up to 64 tokens, ended by
    the model's EOS (``<|im_end|>`` for SmolLM2) or by max_tokens."""
    jobs = []
    for i in range(n):
        params = job_params(i, rng)
        text = QUESTIONS[i % len(QUESTIONS)]
        data = encode_chat_input([{"role": "user", "content": text}])
        jobs.append(Job(model.model_id, params, input_data=data))
    return jobs


def margin_report(model: LoadedModel, claims: list[Claim], batch_size: int) -> dict[str, Any]:
    """Honest margin distribution and validity at each candidate tau."""
    verdicts = verify_batch(model, claims, tau=max(TAU_CANDIDATES), batch_size=batch_size)
    margins = torch.tensor(
        [m for v in verdicts if isinstance(v, Verdict) for m in v.margins], dtype=torch.float64
    )
    per_claim = [max(v.margins) if isinstance(v, Verdict) else float("inf") for v in verdicts]
    return {
        "positions": len(margins),
        "max_margin": float(margins.max()),
        "p999_margin": float(margins.quantile(0.999)),
        "nonzero_fraction": float((margins > 0).double().mean()),
        "valid_fraction_at_tau": {
            str(t): sum(1 for m in per_claim if m <= t) / len(per_claim) for t in TAU_CANDIDATES
        },
    }


def timed(fn: Any) -> tuple[Any, float]:
    """(result, wall seconds) of ``fn()``, synchronising CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    """Run the check and print one JSON object last."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--model", choices=("random", "smollm2"), default="random", help="Which model to check."
    )
    args = ap.parse_args()
    report: dict[str, Any] = {"device": args.device}
    if args.device != "cpu":
        report["gpu"] = torch.cuda.get_device_name()
        report["hash_cpu_equals_gpu"] = hash_cpu_equals_device(args.device)
    if args.model == "smollm2":
        from verinfer.models.smollm2 import ensure_smollm2

        path = ensure_smollm2()
        spec = Manifest.load(path / MANIFEST_NAME)
        spec = Manifest(spec.name, spec.revision, args.dtype, spec.files)  # same files
        model = load_model(path, spec, device=args.device)
        report["model"] = {"name": spec.name, "model_id": "0x" + spec.model_id.hex()}
        report["model"]["dtype"] = args.dtype
        jobs = chat_jobs(model, args.jobs, random.Random(7))
    else:
        cfg = TinyConfig(
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 11 // 4,
            num_hidden_layers=args.layers,
            num_attention_heads=max(1, args.hidden // 64),
            num_key_value_heads=max(1, args.hidden // 256),
            max_position_embeddings=2048,
            dtype=args.dtype,
        )
        cache = Path(tempfile.gettempdir()) / "verinfer-gpu-check"
        model = load_model(tiny_model_path(0, cfg, cache_dir=cache), device=args.device)
        report["model"] = {"hidden": args.hidden, "layers": args.layers, "dtype": args.dtype}
        jobs = make_jobs(model, args.jobs, random.Random(7))

    hf = TransformersEngine(model, max_batch_size=32)
    hf.generate(jobs[:32])
    hf_results, hf_s = timed(lambda: hf.generate(jobs))
    hf_claims = claims_of(jobs, hf_results)
    report["transformers_generated"] = {
        "gen_s": hf_s,
        "verify_bs1": margin_report(model, hf_claims, 1),
        "verify_bs16": margin_report(model, hf_claims, 16),
    }
    _, verify_s = timed(lambda: verify_batch(model, hf_claims, tau=1.0, batch_size=16))
    report["transformers_verify_over_generate"] = verify_s / hf_s

    if not args.no_vllm:
        from verinfer.engines.vllm_engine import VllmEngine

        engine = VllmEngine(model, gpu_memory_utilization=0.5, enforce_eager=False)
        engine.generate(jobs[:8])
        v_results, v_s = timed(lambda: engine.generate(jobs))
        v_claims = claims_of(jobs, v_results)
        same = sum(
            a == b
            for v, h in zip(v_results, hf_results, strict=True)
            for a, b in zip(v.token_ids, h.token_ids, strict=False)
        )
        total = sum(len(h.token_ids) for h in hf_results)
        report["vllm_generated"] = {
            "gen_s": v_s,
            "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT") == "1",
            "token_agreement_with_transformers": same / max(total, 1),
            "identical_outputs": sum(
                v.token_ids == h.token_ids for v, h in zip(v_results, hf_results, strict=True)
            ),
            "verify_bs16": margin_report(model, v_claims, 16),
        }
        report["verify_over_vllm_generate"] = verify_s / v_s
    print(json.dumps(report))


if __name__ == "__main__":
    main()
