"""The node's part, played in-test with the real engine (as scripts/demo.py does)."""

from __future__ import annotations

from typing import Any

from verinfer.digest import pack_tokens, result_digest
from verinfer.jobs import JobRecord


def publish(market: Any, node: Any, record: JobRecord, token_ids: list[int], finish: int) -> Any:
    """Claim ``record`` as ``node`` and publish ``token_ids`` with their §5 digest."""
    import copy

    receipt = market.claim(record.job_id, record.as_struct(), sender=node)
    claimed = copy.deepcopy(record)  # the client's own record must learn this from the logs
    claimed.apply_claimed(market.JobClaimed.from_receipt(receipt)[0])
    digest = result_digest(
        record.job_id, record.model_id, record.input, record.params, token_ids, finish
    )
    return market.publish(
        record.job_id,
        claimed.as_struct(),
        pack_tokens(token_ids),
        len(token_ids),
        finish,
        digest,
        sender=node,
    )


def run_engine(engine: Any, model: Any, record: JobRecord) -> tuple[list[int], int]:
    """Token ids and finish reason of ``record`` under ``engine``."""
    from verinfer.engines.base import Job

    (out,) = engine.generate([Job(model.model_id, record.sampling_params, input_data=record.input)])
    assert out.ok, out.error
    return list(out.token_ids), int(out.finish_reason)
