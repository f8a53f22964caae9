"""Node settings: pydantic-settings with the ``VERINFER_`` prefix, validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class NodeSettings(BaseSettings):
    """Everything a node needs; each field is read from ``VERINFER_<NAME>`` (list/dict as JSON)."""

    model_config = SettingsConfigDict(env_prefix="VERINFER_", extra="ignore")

    # chain
    rpc_url: str = "http://127.0.0.1:8545"
    market: str = Field(description="Market contract address")
    court: str = Field(description="Court contract address")
    start_block: int = 0  # first block the watcher reads when it has no cursor yet
    # blocks the watcher waits before acting on a log; None: per network (``auto_confirmations``:
    # 0 on a dev chain, 2 elsewhere). A deeper reorg is still caught: rewind, records rebuilt
    confirmations: int | None = Field(default=None, ge=0)
    # when the sender counts a transaction as done (and stops following it): "auto" uses the
    # chain's "safe" block tag when the endpoint has it, else "latest" (with ``confirmations``)
    finality: Literal["auto", "latest", "safe", "finalized"] = "auto"
    poll_interval_s: float = 0.25
    max_log_range: int = 2_000  # blocks per eth_getLogs call
    reorg_window: int = 64  # block hashes kept to detect reorgs
    rpc_timeout_s: float = 10.0  # per JSON-RPC request (a hanging endpoint fails after it)
    rpc_max_backoff_s: float = 10.0  # longest wait of the watcher between failed polls

    # key: ape's encrypted keystore (``ape accounts generate/import <alias>``)
    account: str = Field(description="alias of the key in ape's keystore")
    keystore_dir: Path | None = None  # default: $APE_DATA_FOLDER/accounts or ~/.ape/accounts
    passphrase: SecretStr = SecretStr("")

    # models served: paths of model directories (each checked against its manifest)
    models: list[Path] = Field(default_factory=list)

    # policy (economics): claim a job only if its escrow (max_payment) covers
    # max_tokens x max(price_floor, price_fraction x own on-chain price) + its expected gas
    price_floor: int = Field(default=0, ge=0)  # token base units per output token, at least
    price_fraction: float = Field(default=1.0, gt=0)  # of the node's own price (1: all of it)
    gas_per_job: int = Field(default=150_000, ge=0)  # gas units a job costs the node
    # payment-token base units per wei of gas (a price the node cannot read from the chain);
    # 0: gas not counted (the node says so at start)
    gas_token_rate: float = Field(default=0.0, ge=0)
    capacity: int = 64  # jobs claimed and not yet published, at most
    est_job_s: float = 2.0  # expected engine seconds per job, used for deadline checks
    deadline_margin_s: float = 10.0
    claim_mode: Literal["claim-first", "run-first"] = "claim-first"

    # pipeline
    redis_url: str = "redis://127.0.0.1:6379/0"
    batch_size: int = 16  # jobs per engine call at most
    batch_wait_s: float = 0.05  # a batch goes when no job came for this long (or it is full)
    batch_max_wait_s: float = 0.25  # ... or when its first job has waited this long
    visibility_timeout_s: int = 3_600  # must exceed the longest job (Celery redelivers after it)
    # intra-op threads of each inference worker; 0: auto (see ``engine_threads``)
    torch_threads: int = Field(default=0, ge=0)
    # inference worker processes `verinfer node run` starts. Each loads the models and forms
    # its own batches; two take turns, one decoding while the other hands its results on and
    # fetches its next batch (docs/operations.md, bench-node). On a GPU host: one per GPU with
    # CUDA_VISIBLE_DEVICES, or extra hosts.
    infer_workers: int = 2
    # niceness added to the supervisor (watcher, keeper) and the chain worker: on a CPU host
    # the engine's threads then get the cores first (0: off)
    support_nice: int = Field(default=10, ge=0, le=19)

    # transactions
    tx_retries: int = 5
    tx_backoff_s: float = 0.5
    tx_stuck_after_s: float = 15.0
    tx_fee_bump: float = 1.125
    tx_priority_fee_wei: int = 1_000_000_000
    # the sender lease in Redis (one signer per key): expires this long after its last renewal
    sender_lease_ttl_s: float = Field(default=10.0, gt=0.5)

    # keeper
    keeper_interval_s: float = 1.0
    finalize_batch: int = 32
    withdraw_min: int = 0  # withdraw claimable earnings above this (wei)
    withdraw_every_s: float = 30.0  # how often the keeper checks for earnings to withdraw
    audits: bool = True  # start audits that the randomness selects
    # `Court.draw` of a dispute of a served model that this node is no party to waits this many
    # blocks more than the parties' (who draw as soon as a later block exists)
    draw_delay_blocks: int = Field(default=2, ge=0)
    expire_others: bool = True  # expire/cancel dead jobs of any node

    # operations
    metrics_port: int = 0  # 0: no HTTP endpoint
    log_level: str = "INFO"

    # DEV/TEST ONLY. A cheating node, for the demo and the dispute tests: the inference workers
    # load the weights of this model directory (checked against its own manifest) and serve
    # them under the id of every model in ``models``. Its results fail any dispute or audit and
    # cost the node its stake. Never set on a real node (the node logs a warning when it is).
    dev_cheat_weights: Path | None = None

    @field_validator("market", "court")
    @classmethod
    def _checksum(cls, value: str) -> str:
        from eth_utils import to_checksum_address

        return str(to_checksum_address(value))

    @field_validator("capacity", "batch_size", "finalize_batch", "infer_workers")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    def depth(self) -> int:
        """``confirmations`` as set (call ``resolve_network`` first when it is None)."""
        return self.confirmations or 0

    def resolve_network(self, chain_id: int, has_safe_tag: bool) -> NodeSettings:
        """Fill the per-network defaults: ``confirmations`` (``auto_confirmations``) and
        ``finality`` ("safe" where the endpoint knows the tag, else "latest")."""
        if self.confirmations is None:
            self.confirmations = auto_confirmations(chain_id)
        if self.finality == "auto":
            self.finality = "safe" if has_safe_tag else "latest"
        return self

    def engine_threads(self) -> int:
        """Torch threads of one inference worker: ``torch_threads``, or when it is 0
        ``auto_engine_threads(infer_workers)``."""
        return self.torch_threads or auto_engine_threads(self.infer_workers)

    @property
    def namespace(self) -> str:
        """Prefix of this node's Redis keys and Celery queues (one node per market and key)."""
        return f"verinfer:{self.market[-8:].lower()}:{self.account}"

    def queue(self, role: Literal["chain", "infer"]) -> str:
        """Name of the node's Celery queue for ``role``."""
        return f"{self.namespace}:{role}"


def auto_engine_threads(workers: int) -> int:
    """Torch threads of each of ``workers`` inference workers when the node picks them: the
    usable CPU cores minus one, split among the workers and rounded up (at least 1). One
    worker leaves a core to the watcher, keeper and sender; two workers, which decode in
    turns, share all of them (2 cores: 1 thread each). On a small CPU host a torch thread per
    core for one worker stalls whenever the node's other processes run: every decode step
    waits for its slowest thread (docs/operations.md, bench-node)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    cores = cores or os.cpu_count() or 1
    return max(1, -(-(cores - 1) // workers))


DEV_CHAIN_IDS = (31337, 1337)  # Anvil and Hardhat, a Geth --dev


def auto_confirmations(chain_id: int) -> int:
    """The watcher's default depth: 0 on a dev chain (it mines on demand), 2 elsewhere
    (docs/operations.md, "Reorgs and finality")."""
    return 0 if chain_id in DEV_CHAIN_IDS else 2
