"""`verinfer.jobs.JobRecord` must mirror the contract's `IMarket.Job` struct field by field."""

from ape import project
from verinfer.jobs import JobRecord


def test_job_record__struct_fields__match_the_market_abi():
    (claim_abi,) = [
        a for a in project.Market.contract_type.abi if getattr(a, "name", "") == "claim"
    ]
    job_input = next(i for i in claim_abi.inputs if i.name == "job")
    assert [c.name for c in job_input.components] == JobRecord.STRUCT_FIELDS
