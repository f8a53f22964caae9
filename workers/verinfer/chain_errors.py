"""One-line errors of the client and the CLI, and the guard that turns ape's into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ClientError(Exception):
    """An expected failure, with a one-line message for people and agents."""


class JobNotFound(ClientError):
    """No such job in this market."""


class JobTimeout(ClientError):
    """A wait ran out of time."""


def first_line(text: object) -> str:
    """The first non-empty line of ``text``."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip() or "unknown error"


@contextmanager
def guard(action: str) -> Iterator[None]:
    """Re-raise ape / RPC failures inside the block as a one-line ClientError.

    A revert names its reason (``submit reverted: market: unknown model``); a refused
    connection becomes ``no chain reachable``.
    """
    from ape.exceptions import ApeException, ContractLogicError, ProviderNotConnectedError
    from requests.exceptions import ConnectionError as RequestsConnectionError

    try:
        yield
    except ClientError:
        raise
    except ContractLogicError as exc:
        reason = exc.message if exc.message else "no reason given"
        raise ClientError(f"{action} reverted: {first_line(reason)}") from None
    except (ProviderNotConnectedError, RequestsConnectionError, ConnectionError) as exc:
        raise ClientError(f"no chain reachable ({first_line(exc)})") from None
    except ApeException as exc:
        raise ClientError(f"{action} failed: {first_line(exc)}") from None
