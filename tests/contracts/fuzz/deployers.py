"""Fuzz harness settings and contract deployers (each contract compiled once per process)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import boa
from hypothesis import HealthCheck, Phase, settings

ROOT = Path(__file__).resolve().parents[3]

# Examples per token variant; steps per example. `make fuzz` raises the examples.
EXAMPLES = int(os.environ.get("VERINFER_FUZZ_EXAMPLES", "8"))
STEPS = int(os.environ.get("VERINFER_FUZZ_STEPS", "100"))

settings.register_profile(
    "verinfer-fuzz",
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # VERINFER_FUZZ_SHRINK=0 reports the first failure unshrunk (faster while debugging).
    phases=[p for p in Phase if p != Phase.shrink or os.environ.get("VERINFER_FUZZ_SHRINK") != "0"],
)


@functools.cache
def deployer(relpath: str):
    """A boa deployer for the contract at `relpath` (compiled once)."""
    return boa.load_partial(str(ROOT / relpath))
