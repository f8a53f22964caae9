"""`verinfer.jobs.JobRecord` must mirror the contract's `IMarket.Job` struct field by field."""

from ape import project
from verinfer.jobs import JobRecord


def test_job_record__struct_fields__match_the_market_abi():
    (claim_abi,) = [
        a for a in project.Market.contract_type.abi if getattr(a, "name", "") == "claim"
    ]
    job_input = next(i for i in claim_abi.inputs if i.name == "job")
    assert [c.name for c in job_input.components] == JobRecord.STRUCT_FIELDS


def test_job_record__struct_hash__equals_the_markets_hash_job(accounts):
    from verinfer.deploy import deploy_all

    market = project.Market.at(deploy_all(accounts[0])["market"])
    record = JobRecord(
        client=accounts[1].address,
        model_id=b"\x11" * 32,
        input_hash=b"\x22" * 32,
        params_hash=b"\x33" * 32,
        max_tokens=64,
        max_payment=10**18 + 7,
        preferred_node=accounts[2].address,
        submitted_at=1_700_000_000,
        claim_deadline=1_700_000_600,
        result_deadline=1_700_001_200,
        node=accounts[3].address,
        price_per_token=12_345,
        collateral=25 * 10**18,
        output_tokens=63,
        finish_reason=1,
        result_digest=b"\x44" * 32,
        published_at=1_700_000_900,
        published_block=4_242,
    )
    first = record.struct_hash()
    assert bytes(market.hash_job(record.as_struct())) == first
    assert first[-1] == 0  # the low byte carries the status on chain
    record.output_tokens = 62
    assert record.struct_hash() != first
    assert bytes(market.hash_job(record.as_struct())) == record.struct_hash()
