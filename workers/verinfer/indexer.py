"""Every node's track record, from the market's events alone, kept in an embedded SQLite file.

The indexer reads the market's logs with batched ``eth_getLogs`` over bounded block ranges
(``max_range`` blocks a call; a range the endpoint refuses, too large or too many results,
is split in halves down to one block), decodes them with the node's shared decoder
(``verinfer.node.contracts.Protocol.decode``) and stores the facts a record needs. It follows
the node's canonical-chain rule: a block counts only at confirmation depth (it indexes up to
``head - confirmations``), it keeps the hash of every block it took logs from and of the last
block of every range, and when the stored hash of a block no longer matches the chain it rolls
back to the last block that still matches and reads again from there. It resumes from its
stored cursor after a restart.

Records (per node and model): jobs offered to it as preferred node and missed, claimed,
published, finalized, expired, disputed, slashed; claim and publish latency (median and p95,
seconds from submission); price per token; bonded stake; last seen. ``verinfer.routing``
turns them into a score.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

from verinfer.jobs import submitted_time

log = logging.getLogger("verinfer.indexer")

SCHEMA_VERSION = 1
ZERO = "0x" + "00" * 20
# market events the records are made of, and the fields kept of each (inputs and outputs are
# not: a record needs none of their bytes)
KEPT: dict[str, tuple[str, ...]] = {
    "JobSubmitted": (
        "job_id", "client", "model_id", "max_tokens", "max_payment", "preferred_node",
        "submitted_at", "claim_deadline", "result_deadline",
    ),
    "JobClaimed": ("job_id", "node", "price_per_token", "collateral"),
    "ResultPublished": ("job_id", "node", "output_tokens", "published_at"),
    "JobFinalized": ("job_id", "node", "payment", "refund"),
    "JobCancelled": ("job_id", "refund"),
    "JobExpired": ("job_id", "node", "refund", "penalty"),
    "JobVerifying": ("job_id", "payer", "bond"),
    "JobSlashed": ("job_id", "node", "refund", "slashed"),
    "NodeSlashed": ("node", "job_id", "amount", "whole_stake"),
    "Staked": ("node", "amount", "stake"),
    "UnbondRequested": ("node", "amount"),
    "ModelServed": ("node", "model_id", "price_per_token"),
    "ModelUnserved": ("node", "model_id"),
    "ModelRegistered": ("model_id", "name", "revision"),
}  # fmt: skip


class RangeRefused(Exception):
    """The endpoint refused one ``eth_getLogs`` call (range too large, too many results,
    a timeout): the indexer splits the range."""


class LogSource(TypingProtocol):
    """Where the indexer reads the chain: the head, a block's hash and time, and the market's
    raw logs over a block range (web3's form: HexBytes topics and data, int numbers)."""

    def head(self) -> int: ...

    def blocks(self, numbers: Sequence[int]) -> dict[int, tuple[bytes, int]]: ...

    def get_logs(self, first: int, last: int) -> list[Any]: ...


class Web3Source:
    """A ``LogSource`` on a web3 endpoint (block headers fetched in one JSON-RPC batch)."""

    def __init__(self, w3: Any, addresses: Sequence[str]) -> None:
        self.w3 = w3
        self.addresses = list(addresses)

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def blocks(self, numbers: Sequence[int]) -> dict[int, tuple[bytes, int]]:
        out: dict[int, tuple[bytes, int]] = {}
        todo = sorted(set(numbers))
        for start in range(0, len(todo), 100):
            part = todo[start : start + 100]
            with self.w3.batch_requests() as batch:
                for n in part:
                    batch.add(self.w3.eth.get_block(n))
                found = batch.execute()
            for n, block in zip(part, found, strict=True):
                out[n] = (bytes(block["hash"]), int(block["timestamp"]))
        return out

    def get_logs(self, first: int, last: int) -> list[Any]:
        from requests.exceptions import RequestException
        from web3.exceptions import Web3Exception

        flt = {"fromBlock": first, "toBlock": last, "address": self.addresses}
        try:
            return list(self.w3.eth.get_logs(flt))
        except (Web3Exception, ValueError, RequestException) as exc:
            raise RangeRefused(
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ) from exc


@dataclass
class NodeRecord:
    """One node's record for one model (amounts in token base units, times in seconds)."""

    node: str
    model_id: str
    serving: bool = False
    slashed_out: bool = False  # its whole stake was slashed: out of the active set
    price_per_token: int = 0
    stake: int = 0
    offered: int = 0  # jobs that named it as preferred node
    missed: int = 0  # of those, claimed by another node or by nobody
    claimed: int = 0
    published: int = 0
    finalized: int = 0
    expired: int = 0
    disputed: int = 0
    slashed: int = 0
    claim_p50_s: float | None = None
    claim_p95_s: float | None = None
    publish_p50_s: float | None = None
    publish_p95_s: float | None = None
    last_seen: int = 0  # chain time of its last claim, publish, stake or serve
    # outcomes of its jobs, oldest first: (chain time, 1.0 served / 0.0 failed or missed)
    outcomes: list[tuple[int, float]] = field(default_factory=list, repr=False)
    publish_latencies: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, without the per-job lists."""
        d = asdict(self)
        d.pop("outcomes")
        d.pop("publish_latencies")
        return d


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1])


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return value


class Indexer:
    """The track-record indexer of one market, in the SQLite file ``db_path``.

    ``protocol``: a ``verinfer.node.contracts.Protocol`` (its ``decode`` is the shared log
    decoder); ``source``: where logs come from (default: a ``Web3Source`` on ``protocol.w3``).
    """

    def __init__(
        self,
        db_path: str | Path,
        protocol: Any,
        source: LogSource | None = None,
        confirmations: int = 2,
        max_range: int = 2_000,
        from_block: int = 0,
    ) -> None:
        self.p = protocol
        self.source: LogSource = source or Web3Source(protocol.w3, [protocol.market.address])
        self.confirmations = confirmations
        self.max_range = max_range
        self.from_block = from_block
        self.calls = 0  # eth_getLogs calls made (refused ones included)
        self._writes = 0  # writes by this instance (a roll-back and re-read keeps the cursor)
        self._memo: tuple[tuple[int, int, int | None], list[NodeRecord]] | None = None
        self.db = sqlite3.connect(str(db_path), check_same_thread=False)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS blocks (
                number INTEGER PRIMARY KEY, hash TEXT NOT NULL, time INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS events (
                block INTEGER NOT NULL, log_index INTEGER NOT NULL, event TEXT NOT NULL,
                args TEXT NOT NULL, PRIMARY KEY (block, log_index));
            """
        )
        market = str(protocol.market.address)
        stored = self._meta("market")
        if stored is None:
            with self.db:
                self._set_meta("market", market)
                self._set_meta("schema", str(SCHEMA_VERSION))
        elif stored != market:
            raise ValueError(f"index {db_path} belongs to market {stored}, not {market}")

    # ---- state ----
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def cursor(self) -> int:
        """The first block not indexed yet."""
        value = self._meta("cursor")
        return self.from_block if value is None else int(value)

    # ---- following the chain ----
    def sync(self) -> int:
        """Index every confirmed block since the cursor (after a reorg check); returns the
        number of new events."""
        head = self.source.head()
        safe = head - self.confirmations
        self._check_reorg(head)
        added = 0
        first = self.cursor
        while first <= safe:
            last = min(safe, first + self.max_range - 1)
            added += self._index_range(first, last)
            first = last + 1
        return added

    def _check_reorg(self, head: int) -> None:
        """Roll back to the newest stored block whose hash the chain still has (the newest
        alone is checked when it matches: the chain of hashes vouches for the ones below)."""
        rows = [
            (int(n), str(h))
            for n, h in self.db.execute("SELECT number, hash FROM blocks ORDER BY number DESC")
        ]
        if not rows:
            return
        chunks = [rows[:1]] + [rows[i : i + 64] for i in range(1, len(rows), 64)]
        for n_chunk, part in enumerate(chunks):
            known = self.source.blocks([n for n, _ in part if n <= head])
            for n, h in part:
                if n in known and "0x" + known[n][0].hex() == h:
                    if n_chunk or n != rows[0][0]:
                        self._roll_back(n)
                    return
        self._roll_back(self.from_block - 1)

    def _roll_back(self, keep_upto: int) -> None:
        """Forget every block after ``keep_upto`` and its events; read again from there."""
        log.warning("indexer: reorg, rolling back to block %d", keep_upto)
        self._writes += 1
        with self.db:
            self.db.execute("DELETE FROM events WHERE block > ?", (keep_upto,))
            self.db.execute("DELETE FROM blocks WHERE number > ?", (keep_upto,))
            self._set_meta("cursor", str(keep_upto + 1))

    def _fetch(self, first: int, last: int) -> list[Any]:
        """The logs of ``first..last``, split in halves while the endpoint refuses."""
        self.calls += 1
        try:
            return self.source.get_logs(first, last)
        except RangeRefused as exc:
            if first == last:
                raise
            mid = (first + last) // 2
            log.info("indexer: eth_getLogs %d..%d refused (%s): split", first, last, exc)
            return self._fetch(first, mid) + self._fetch(mid + 1, last)

    def _index_range(self, first: int, last: int) -> int:
        raw = self._fetch(first, last)
        decoded = [d for d in (self.p.decode(entry) for entry in raw) if d is not None]
        decoded = [d for d in decoded if d.contract == "market" and d.event in KEPT]
        numbers = {d.block_number for d in decoded} | {last}
        blocks = self.source.blocks(sorted(numbers))
        rows = []
        for d in decoded:
            args = {k: _plain(d.args[k]) for k in KEPT[d.event]}
            if "0x" + blocks[d.block_number][0].hex() != "0x" + bytes(d.block_hash).hex():
                raise RangeRefused(f"block {d.block_number} changed while reading: retry")
            rows.append((d.block_number, d.log_index, d.event, json.dumps(args)))
        self._writes += 1
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)", rows)
            self.db.executemany(
                "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?)",
                [(n, "0x" + h.hex(), t) for n, (h, t) in blocks.items()],
            )
            self._set_meta("cursor", str(last + 1))
        return len(rows)

    # ---- reading ----
    def events(self) -> list[tuple[int, int, str, dict[str, Any]]]:
        """Every stored event in chain order: (block, chain time, event, args)."""
        rows = self.db.execute(
            "SELECT e.block, b.time, e.event, e.args FROM events e "
            "JOIN blocks b ON b.number = e.block ORDER BY e.block, e.log_index"
        ).fetchall()
        return [(int(b), int(t), str(e), json.loads(a)) for b, t, e, a in rows]

    def models(self) -> dict[str, tuple[str, str]]:
        """Registered models: 0x id -> (name, revision)."""
        return {
            a["model_id"]: (a["name"], a["revision"])
            for _, _, e, a in self.events()
            if e == "ModelRegistered"
        }

    def records(
        self, model_id: str | bytes | None = None, now: int | None = None
    ) -> list[NodeRecord]:
        """Each node's record per model (only ``model_id``'s when given), from the stored
        events. ``now``: chain time that decides whether an unpublished claim has run past its
        result deadline (default: the newest indexed block's time). Computed again only when
        the index moved (its cursor) or ``now`` differs; the records are shared: read only."""
        key = (self.cursor, self._writes, now)
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, self._compute(now))
        found = self._memo[1]
        if model_id is None:
            return list(found)
        want = model_id if isinstance(model_id, str) else "0x" + model_id.hex()
        return [r for r in found if r.model_id.lower() == want.lower()]

    def _compute(self, now: int | None) -> list[NodeRecord]:
        events = self.events()
        if now is None:  # the newest indexed block's time (each range stores its last block)
            row = self.db.execute("SELECT time FROM blocks ORDER BY number DESC LIMIT 1").fetchone()
            now = int(row[0]) if row else (events[-1][1] if events else 0)
        recs: dict[tuple[str, str], NodeRecord] = {}
        stake: dict[str, int] = {}
        out_nodes: set[str] = set()
        jobs: dict[int, dict[str, Any]] = {}

        def rec(node: str, mid: str) -> NodeRecord:
            key = (node, mid)
            if key not in recs:
                recs[key] = NodeRecord(node=node, model_id=mid)
            return recs[key]

        def seen(node: str, t: int) -> None:
            for (n, _), r in recs.items():
                if n == node:
                    r.last_seen = max(r.last_seen, t)

        for _, t, ev, a in events:
            if ev == "Staked":
                stake[a["node"]] = int(a["stake"])
                seen(a["node"], t)
            elif ev == "UnbondRequested":
                stake[a["node"]] = max(0, stake.get(a["node"], 0) - int(a["amount"]))
            elif ev == "NodeSlashed":
                stake[a["node"]] = max(0, stake.get(a["node"], 0) - int(a["amount"]))
                if a["whole_stake"]:
                    out_nodes.add(a["node"])
            elif ev == "ModelServed":
                r = rec(a["node"], a["model_id"])
                r.serving, r.price_per_token = True, int(a["price_per_token"])
                r.last_seen = max(r.last_seen, t)
            elif ev == "ModelUnserved":
                rec(a["node"], a["model_id"]).serving = False
            elif ev == "JobSubmitted":
                jobs[int(a["job_id"])] = {**a, "claimed_by": None, "published": False}
            elif (job := jobs.get(int(a.get("job_id", -1)))) is not None:
                self._apply_job(ev, a, t, job, rec)
        for job in jobs.values():  # offered to a preferred node that never took it
            pref = job["preferred_node"]
            if pref != ZERO:
                rec(pref, job["model_id"]).offered += 1
            if pref != ZERO and job["claimed_by"] != pref:
                done = (
                    job["claimed_by"] is not None
                    or job.get("ended")
                    or now > int(job["claim_deadline"])
                )
                if done:
                    r = rec(pref, job["model_id"])
                    r.missed += 1
                    r.outcomes.append((submitted_time(job["submitted_at"]), 0.0))
            node = job["claimed_by"]
            late = node is not None and now > int(job["result_deadline"])
            if late and not job["published"] and "failed" not in job:  # claimed, never published
                rec(node, job["model_id"]).outcomes.append((int(job["claimed_at"]), 0.0))
        claim_lat: dict[tuple[str, str], list[float]] = {}
        for job in jobs.values():
            if job["claimed_by"] is not None:
                key = (job["claimed_by"], job["model_id"])
                claim_lat.setdefault(key, []).append(float(job["claim_lat"]))
        out = []
        for key, r in recs.items():
            r.stake = stake.get(r.node, 0)
            r.slashed_out = r.node in out_nodes
            r.outcomes.sort()
            lat = claim_lat.get(key, [])
            r.claim_p50_s, r.claim_p95_s = _pct(lat, 0.5), _pct(lat, 0.95)
            pub = r.publish_latencies
            r.publish_p50_s, r.publish_p95_s = _pct(pub, 0.5), _pct(pub, 0.95)
            out.append(r)
        return sorted(out, key=lambda r: (r.model_id, r.node))

    @staticmethod
    def _apply_job(ev: str, a: dict[str, Any], t: int, job: dict[str, Any], rec: Any) -> None:
        """Fold one job event (``t``: its block's time) into the job and its node's record."""
        mid = job["model_id"]
        if ev == "JobClaimed":
            job["claimed_by"], job["claimed_at"] = a["node"], t
            job["claim_lat"] = max(0, t - submitted_time(job["submitted_at"]))
            r = rec(a["node"], mid)
            r.claimed += 1
            r.last_seen = max(r.last_seen, t)
            return
        node = job["claimed_by"]
        if ev == "ResultPublished" and node is not None:
            job["published"] = True
            r = rec(node, mid)
            r.published += 1
            r.publish_latencies.append(
                float(max(0, int(a["published_at"]) - submitted_time(job["submitted_at"])))
            )
            r.outcomes.append((int(job["claimed_at"]), 1.0))
            r.last_seen = max(r.last_seen, t)
        elif ev == "JobFinalized" and node is not None:
            rec(node, mid).finalized += 1
            job["ended"] = True
        elif ev == "JobExpired" and node is not None:
            r = rec(node, mid)
            r.expired += 1
            job["ended"] = True
            if not job["published"]:
                job["failed"] = True
                r.outcomes.append((int(job["claimed_at"]), 0.0))
        elif ev == "JobVerifying" and node is not None:
            rec(node, mid).disputed += 1
        elif ev == "JobSlashed" and node is not None:
            r = rec(node, mid)
            r.slashed += 1
            job["ended"] = True
            # a slashed result was no service: its earlier "served" mark is undone
            r.outcomes = [o for o in r.outcomes if o != (int(job["claimed_at"]), 1.0)] + [
                (int(job["claimed_at"]), 0.0)
            ]
        elif ev == "JobCancelled":
            job["ended"] = True

    def close(self) -> None:
        self.db.close()


def open_indexer(
    rpc_url: str,
    market: str,
    db_path: str | Path,
    confirmations: int = 2,
    max_range: int = 2_000,
    from_block: int = 0,
) -> Indexer:
    """An indexer of ``market`` on ``rpc_url`` (web3), its state in ``db_path``."""
    from verinfer.node.contracts import Protocol, connect, load_abi

    w3 = connect(rpc_url, timeout_s=30)
    court = w3.eth.contract(address=w3.to_checksum_address(market), abi=load_abi("Market"))
    protocol = Protocol(w3, market, court.functions.court().call())
    return Indexer(db_path, protocol, None, confirmations, max_range, from_block)
