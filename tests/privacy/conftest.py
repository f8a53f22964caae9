"""Private-job tests reuse the contract tests' roles, deploy factories and job helpers."""

from tests.contracts.conftest import *  # noqa: F403  (pytest fixtures: roles, deploys, jobs)
