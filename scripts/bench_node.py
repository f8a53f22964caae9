"""`make bench-node`: flood one node with 200 jobs on Anvil (1-second blocks) and compare the
pipeline with the raw engine on the same prompts. Last stdout line: one JSON object.

Bench model: the project's small Llama architecture scaled to hidden 384, 11 layers, MLP
1152, 6 heads (3 KV heads), vocab 512 (19.9 M parameters), which needs about 50 ms of wall
time per job of 64 output tokens at its best batch size on this 2-core CPU (47-50 ms
measured: raw 20-21 jobs/s), the scale issue 4 asks for. The node runs it with
claim_mode=run-first: open jobs are run first and claimed+published in one transaction.

Figures:
* raw_engine_jobs_per_s: the engine alone on all the bench prompts, the best of two layouts:
  one process with THREADS torch threads (all the cores), at each batch size of BATCHES (the
  best batch is the node's VERINFER_BATCH_SIZE), and the node's own layout at that batch (its
  inference workers as that many processes of its torch threads each, the prompts dealt
  among them, all started together; `raw_jobs_per_s_by_layout` gives both). Both are measured
  before the node starts and again after it stopped; the highest figure counts. The node
  runs with its defaults: two inference workers of one torch thread each here (the cores
  minus one, split between the workers and rounded up); BENCH_INFER_WORKERS and
  BENCH_NODE_THREADS change that.
* pipeline_jobs_per_s: jobs / (client holding the last checked result - the node seeing the
  first job). The 200 submissions are signed up front and sent with consecutive nonces
  (raw web3), so the window measures the node, not the client.
* node_overhead_cpu_ms_per_job: CPU of every node process (supervisor with watcher and
  keeper, Celery workers, sender) during the flood minus the engine's own CPU, per job.
* p50/p95_submit_to_result_s: from the client's submission to the client holding a result
  whose digest it checked.

BENCH_RAW=node measures the raw engine in the node's layout only; BENCH_JOBS=n changes the
job count; BENCH_LOG_LEVEL=INFO shows the node's per-batch lines;
BENCH_KEEP=1 keeps the node log; BENCH_PYSPY=out.txt records every node process with py-spy
(raw collapsed stacks) during the flood.

BENCH_MODELS (default ``bench,smollm2``) says which models run, one after the other, each on a
fresh chain, Redis and node: ``bench`` is the bench model above, ``smollm2`` the real
SmolLM2-135M-Instruct (134.5 M parameters, ``verinfer.models.smollm2``; its raw engine is
measured at batch 32 only, BENCH_SMOLLM2_BATCHES=8,16,32 for more). Each model's figures add
``output_tokens_per_s`` (pipeline and raw) and ``infer_worker_peak_rss_mb`` (the largest
inference worker process). The last line is ``{"models": {"<model name>": {...}, ...}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workers"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from verinfer.node.settings import NodeSettings, auto_engine_threads  # noqa: E402

N_JOBS = int(os.environ.get("BENCH_JOBS", "200"))
MAX_TOKENS = 64
THREADS = 2
CORES = os.cpu_count() or THREADS
# the node's inference workers: INFER_WORKERS processes (VERINFER_INFER_WORKERS; by default
# the node's default, 2) of NODE_THREADS torch threads each (VERINFER_TORCH_THREADS; 0: the
# node's default, the cores minus one split among the workers, rounded up: 1 here), on the
# same cores as the raw engine
INFER_WORKERS = int(
    os.environ.get("BENCH_INFER_WORKERS", NodeSettings.model_fields["infer_workers"].default)
)
NODE_THREADS = int(os.environ.get("BENCH_NODE_THREADS", "0"))
BATCHES = (8, 16, 32)
# BENCH_RAW=node: the raw engine only in the node's own layout (the baseline), at the
# last of the model's batch sizes; the one-process layout of THREADS threads is skipped (on a
# CPU shared with other jobs, two torch threads that wait on each other crawl)
RAW_LAYOUTS = os.environ.get("BENCH_RAW", "both")
BENCH_CONFIG = dict(
    hidden_size=384,
    intermediate_size=1152,
    num_hidden_layers=11,
    num_attention_heads=6,
    num_key_value_heads=3,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    results: dict[str, Any] = {}
    for key in os.environ.get("BENCH_MODELS", "bench,smollm2").split(","):
        name, result = bench(key.strip())
        log(f"== {name}: {json.dumps(result)}")
        results[name] = result
    print(json.dumps({"models": results}))
    return 0


def bench_model(key: str) -> tuple[Path, tuple[int, ...]]:
    """The model directory of ``key`` (``bench`` or ``smollm2``) and the raw batch sizes."""
    if key == "smollm2":
        from verinfer.models.smollm2 import ensure_smollm2

        batches = os.environ.get("BENCH_SMOLLM2_BATCHES", "32")
        return ensure_smollm2(), tuple(int(b) for b in batches.split(","))
    if key != "bench":
        raise SystemExit(f"bench-node: unknown model {key!r} in BENCH_MODELS (bench, smollm2)")
    from verinfer.models.tiny import TinyConfig, tiny_model_path

    return tiny_model_path(seed=11, config=TinyConfig(**BENCH_CONFIG)), BATCHES  # type: ignore[arg-type]


def bench(key: str) -> tuple[str, dict[str, Any]]:
    """Flood one node serving model ``key``; returns the model name and its figures."""
    import psutil
    import redis
    from verinfer.digest import SamplingParams
    from verinfer.inputs import encode_text_input
    from verinfer.jobs import JobRecord, JobStatus
    from verinfer.models.manifest import MANIFEST_NAME, Manifest
    from verinfer.node.devchain import UNIT, deploy_protocol, start_anvil, transact
    from verinfer.node.localnet import CLIENT_A, NODE_A, PRICE, Net
    from verinfer.node.metrics import Metrics
    from verinfer.node.redis_server import start_redis
    from verinfer.node.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="verinfer-bench-"))
    anvil, rpc, _ = start_anvil(block_time=1, log_path=tmp / "anvil.log")
    redis_proc, redis_url = start_redis(tmp / "redis")
    node = None
    try:
        path, batches = bench_model(key)
        manifest = Manifest.load(path / MANIFEST_NAME)
        log(f"== {manifest.name}: {path}")
        dev = deploy_protocol(rpc)
        net = Net(dev, rpc, redis_url, tmp, manifest.model_id, path)
        transact(
            dev.w3,
            dev.market.functions.register_model(
                manifest.name, manifest.revision, manifest.manifest_hash
            ),
            net.addr(0),
        )
        dev.add_node(net.addr(NODE_A), 100_000 * UNIT, manifest.model_id, PRICE)
        dev.fund_client(net.addr(CLIENT_A), 10_000 * UNIT)
        log("== raw engine on the same prompts")
        prompts = [f"Job {i}: explain how open models are served." for i in range(N_JOBS)]
        layout = (INFER_WORKERS, NODE_THREADS or auto_engine_threads(INFER_WORKERS))
        one_process = RAW_LAYOUTS != "node" or layout == (1, THREADS)
        raw_rates: dict[str, float] = {}
        best_batch = batches[-1]
        if one_process:
            raw_rates[f"1x{THREADS}"], best_batch = raw_engine(path, prompts, batches)
        # the node's own layout too (its workers x their threads): raw is the best of both
        if layout != (1, THREADS):
            raw_rates[f"{layout[0]}x{layout[1]}"] = raw_layout(path, prompts, best_batch, *layout)
        node = net.node(
            NODE_A,
            "bench-node",
            claim_mode="run-first",
            batch_size=best_batch,
            torch_threads=NODE_THREADS,
            infer_workers=INFER_WORKERS,
            capacity=1000,
            est_job_s="0.05",
            log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        ).start()
        ns = node.env["VERINFER_MARKET"][-8:].lower()
        metrics = Metrics(redis.Redis.from_url(redis_url), f"verinfer:{ns}:bench-node")
        log(
            f"== warming the node up (engine batch {best_batch}, {INFER_WORKERS} inference "
            f"workers x {layout[1]} torch threads)"
        )
        w3, market = dev.w3, dev.market
        client = net.keys[CLIENT_A]

        def submit_raw(i: int, nonce: int, now: int) -> bytes:
            params = SamplingParams(
                max_tokens=MAX_TOKENS, temperature_milli=700, seed=i, stop_token_ids=(2**31,)
            )
            fn = market.functions.submit(
                manifest.model_id,
                encode_text_input(prompts[i]),
                params.encode(),
                MAX_TOKENS * PRICE,
                "0x" + "00" * 20,
                now + 600,
                now + 1800,
            )
            tx = fn.build_transaction(
                {
                    "from": client.address,
                    "nonce": nonce,
                    "gas": 400_000,
                    "maxFeePerGas": 10**11,
                    "maxPriorityFeePerGas": 10**9,
                    "chainId": 31337,
                }
            )
            return bytes(client.sign_transaction(tx).raw_transaction)

        store = Store(redis.Redis.from_url(redis_url), f"verinfer:{ns}:bench-node")
        deadline = time.monotonic() + 300  # every inference worker has loaded the model
        while sum(w.startswith("infer@") for w in store.workers()) < INFER_WORKERS:
            assert node.running and time.monotonic() < deadline, node.log()[-2000:]
            time.sleep(0.2)
        warm = net.submit(CLIENT_A, "warm up", max_tokens=4)
        deadline = time.monotonic() + 300
        while net.status(warm) < JobStatus.PUBLISHED and time.monotonic() < deadline:
            time.sleep(0.2)
        procs = [psutil.Process(node.proc.pid)]  # type: ignore[union-attr]
        procs += procs[0].children(recursive=True)
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        # the rest of the machine in the same window: the chain, Redis, this client
        others = {
            "anvil": psutil.Process(anvil.pid),  # (its npm launcher runs the binary as a child)
            "redis": psutil.Process(redis_proc.pid),
            "bench_client": psutil.Process(),
        }

        def cpu_of(proc: Any) -> float:
            """User + system CPU seconds of ``proc`` and its children (threads included)."""
            total = 0.0
            for q in [proc, *(proc.children(recursive=True) if proc.pid != os.getpid() else [])]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += sum(q.cpu_times()[:2])
            return total

        others0 = {k: cpu_of(p) for k, p in others.items()}
        engine0 = metrics.get("engine_cpu_s")
        peak = [0.0]
        peak_by_pid: dict[int, float] = {}
        infer_pids = set()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if ":infer" in " ".join(p.cmdline()):  # celery worker -Q <namespace>:infer
                    infer_pids.add(p.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                rss = 0
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        mb = p.memory_info().rss / 2**20
                        rss += mb
                        peak_by_pid[p.pid] = max(peak_by_pid.get(p.pid, 0.0), mb)
                peak[0] = max(peak[0], rss)

        threading.Thread(target=sample, daemon=True).start()
        spy = None
        if os.environ.get("BENCH_PYSPY"):  # profile every node process during the flood
            import subprocess

            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--subprocesses",
                    "-f",
                    "raw",
                    "-r",
                    "50",
                    "-o",
                    os.environ["BENCH_PYSPY"],
                    "-p",
                    str(node.proc.pid),
                ]  # type: ignore[union-attr]
            )
            time.sleep(1)
        log(f"== flooding the node with {N_JOBS} jobs")
        now = int(w3.eth.get_block("latest")["timestamp"])
        nonce = w3.eth.get_transaction_count(client.address, "pending")
        raws = [submit_raw(i, nonce + i, now) for i in range(N_JOBS)]
        first_id = int(market.functions.next_job_id().call())
        sent: dict[int, float] = {}
        for i, raw in enumerate(raws):
            w3.eth.send_raw_transaction(raw)
            sent[first_id + i] = time.time()
        got: dict[int, float] = {}
        blocks: set[int] = set()
        records: dict[int, JobRecord] = {}
        seen_block = int(w3.eth.block_number) - 2
        end = time.monotonic() + 1800  # SmolLM2 on a shared 2-core CPU takes minutes
        submitted_ev, published_ev = market.events.JobSubmitted(), market.events.ResultPublished()
        while len(got) < N_JOBS and time.monotonic() < end:
            head = int(w3.eth.block_number)
            if head <= seen_block:  # 1-second blocks: a quarter second costs little latency
                time.sleep(0.25)  # and leaves the CPU to the node (20 polls/s took ~4 % of it)
                continue
            span = {"from_block": seen_block + 1, "to_block": head}
            for ev in submitted_ev.get_logs(**span):
                blocks.add(int(ev["blockNumber"]))
                records.setdefault(ev["args"]["job_id"], JobRecord.from_submitted(ev["args"]))
            for ev in published_ev.get_logs(**span):
                jid = ev["args"]["job_id"]
                if jid in sent and jid not in got and jid in records:
                    rec = records[jid]
                    rec.apply_published(ev["args"])
                    if rec.result_digest == rec.expected_digest():  # the client's check
                        got[jid] = time.time()
            seen_block = head
        t_end = max(got.values()) if got else time.time()
        stop.set()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        cpu1 = sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
        others_cpu = {k: cpu_of(p) - others0[k] for k, p in others.items()}
        engine_cpu = metrics.get("engine_cpu_s") - engine0
        rclient = redis.Redis.from_url(redis_url)
        seen_at = rclient.hmget(f"verinfer:{ns}:bench-node:seen_at", [str(j) for j in sent])
        first_seen = min(float(t) for t in seen_at if t is not None)
        wall = t_end - first_seen
        pipeline_rate = len(got) / wall
        log(
            f"   {len(got)} results in {wall:.1f}s from the first job seen by the node "
            f"({t_end - min(sent.values()):.1f}s from the first submission; submissions in "
            f"{len(blocks)} blocks, engine batches {metrics.get('engine_batches'):.0f}); finalizing"
        )
        dev.mine(seconds=120)
        ids = list(sent)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sum(market.functions.job_status(j).call() == JobStatus.FINALIZED for j in ids)
            if done == len(ids):
                break
            time.sleep(1)
        node.stop()
        node = None
        log("== raw engine again (after the flood), same prompts")
        if one_process:
            raw_rates[f"1x{THREADS}"] = max(
                raw_rates[f"1x{THREADS}"], raw_engine(path, prompts, (best_batch,))[0]
            )
        if layout != (1, THREADS):
            key = f"{layout[0]}x{layout[1]}"
            raw_rates[key] = max(raw_rates[key], raw_layout(path, prompts, best_batch, *layout))
        raw_rate = max(raw_rates.values())
        lat = sorted(got[j] - sent[j] for j in got)
        result = {
            "jobs": N_JOBS,
            "finalized": done,
            "pipeline_jobs_per_s": round(pipeline_rate, 2),
            "raw_engine_jobs_per_s": round(raw_rate, 2),
            "pipeline_vs_raw": round(pipeline_rate / raw_rate, 3),
            "node_overhead_cpu_ms_per_job": round((cpu1 - cpu0 - engine_cpu) / N_JOBS * 1000, 1),
            "p50_submit_to_result_s": round(statistics.median(lat), 2),
            "p95_submit_to_result_s": round(lat[int(0.95 * (len(lat) - 1))], 2),
            "node_peak_rss_mb": round(peak[0]),
            "infer_worker_peak_rss_mb": round(
                max((peak_by_pid.get(pid, 0.0) for pid in infer_pids), default=0.0)
            ),
            "pipeline_output_tokens_per_s": round(pipeline_rate * MAX_TOKENS, 1),
            "raw_output_tokens_per_s": round(raw_rate * MAX_TOKENS, 1),
            "max_tokens": MAX_TOKENS,
            "raw_jobs_per_s_by_layout": {k: round(v, 2) for k, v in raw_rates.items()},
            "node_layout": f"{layout[0]} inference workers x {layout[1]} torch threads",
            # where the machine's CPU went during the flood (seconds; cores x wall available)
            "flood_cpu_s": {
                "available": round(wall * CORES, 1),
                "engine": round(engine_cpu, 1),
                "node_other": round(cpu1 - cpu0 - engine_cpu, 1),
                **{k: round(v, 1) for k, v in others_cpu.items()},
            },
        }
    finally:
        if node is not None:
            node.stop()
        redis_proc.terminate()
        anvil.terminate()
        if os.environ.get("BENCH_KEEP"):
            log(f"   kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest.name, result


def raw_engine(path: Path, prompts: list[str], batches: tuple[int, ...]) -> tuple[float, int]:
    """Jobs per second of the engine alone on all ``prompts`` (same jobs, same threads) at its
    best batch size among ``batches``; returns (rate, batch)."""
    import torch
    from verinfer.engines.hf import TransformersEngine
    from verinfer.models.loader import load_model

    torch.set_num_threads(THREADS)
    model = load_model(path)
    jobs = _jobs(model.model_id, list(enumerate(prompts)))
    best, best_batch = 0.0, batches[0]
    for batch in batches:
        engine = TransformersEngine(model, max_batch_size=batch)
        engine.generate(jobs[:batch])
        t = time.perf_counter()
        engine.generate(jobs)
        rate = len(jobs) / (time.perf_counter() - t)
        log(f"   batch {batch}: {rate:.1f} jobs/s ({1000 / rate:.0f} ms/job)")
        if rate > best:
            best, best_batch = rate, batch
    return best, best_batch


def _raw_worker(
    path: Path, prompts: list[tuple[int, str]], batch: int, threads: int, start: Any, out: Any
) -> None:
    """One process of `raw_layout`: load, warm up, wait for the others, time its share."""
    import torch
    from verinfer.engines.hf import TransformersEngine
    from verinfer.models.loader import load_model

    torch.set_num_threads(threads)
    model = load_model(path)
    jobs = _jobs(model.model_id, prompts)
    engine = TransformersEngine(model, max_batch_size=batch)
    engine.generate(jobs[:batch])
    start.wait()
    engine.generate(jobs)
    out.put(time.perf_counter())


def raw_layout(path: Path, prompts: list[str], batch: int, procs: int, threads: int) -> float:
    """Jobs per second of the engine alone run the way the node runs it: ``procs`` processes
    of ``threads`` torch threads each, the prompts dealt round-robin, all started together;
    the rate is all jobs over the time until the last process finishes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(procs + 1), ctx.Queue()
    numbered = list(enumerate(prompts))
    workers = [
        ctx.Process(target=_raw_worker, args=(path, numbered[k::procs], batch, threads, start, out))
        for k in range(procs)
    ]
    for w in workers:
        w.start()
    start.wait(timeout=600)
    t0 = time.perf_counter()
    finished = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    rate = len(prompts) / (max(finished) - t0)
    log(f"   {procs} processes x {threads} threads, batch {batch}: {rate:.1f} jobs/s")
    return rate


def _jobs(model_id: bytes, prompts: list[tuple[int, str]]) -> list[Any]:
    from verinfer.digest import SamplingParams
    from verinfer.engines.base import Job
    from verinfer.inputs import encode_text_input

    return [
        Job(
            model_id,
            SamplingParams(
                max_tokens=MAX_TOKENS, temperature_milli=700, seed=i, stop_token_ids=(2**31,)
            ),
            input_data=encode_text_input(p),
        )
        for i, p in prompts
    ]


if __name__ == "__main__":
    sys.exit(main())
