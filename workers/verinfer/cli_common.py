"""What every chain command of the CLI shares: where the deployment is, the connection,
token amounts, and output for people (rich) or for programs (``--json``).

Deployment lookup, first found wins: ``--network`` / ``$VERINFER_NETWORK`` and ``--market`` /
``$VERINFER_MARKET``; else the dev chain recorded by ``verinfer dev up`` in
``$VERINFER_HOME/dev.json`` (default ``./.verinfer``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from verinfer.chain_errors import ClientError, first_line

DEV_STATE = "dev.json"


def verinfer_home() -> Path:
    """``$VERINFER_HOME`` or ``./.verinfer``."""
    return Path(os.environ.get("VERINFER_HOME") or ".verinfer").resolve()


def read_dev_state() -> dict[str, Any] | None:
    """The running dev chain's record, or None."""
    path = verinfer_home() / DEV_STATE
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def emit(as_json: bool, data: Any, human: Callable[[], None] | str) -> None:
    """Print ``data`` as one JSON line, or the human form (a string or a printer)."""
    if as_json:
        click.echo(json.dumps(data, default=str))
    elif isinstance(human, str):
        click.echo(human)
    else:
        human()


def console() -> Any:
    """A rich console on stdout."""
    from rich.console import Console

    return Console(highlight=False)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table."""
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    console().print(t)


@contextmanager
def spinner(as_json: bool, text: str) -> Iterator[None]:
    """A spinner on stderr while waiting (none with --json)."""
    if as_json:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


class Conn:
    """A connected client plus what the command needs to print amounts."""

    def __init__(self, client: Any, network: str, dev: dict[str, Any] | None) -> None:
        self.client = client
        self.network = network
        self.dev = dev
        self.decimals = int(client.token.decimals())
        self.symbol = str(client.token.symbol())

    def units(self, amount: str) -> int:
        """Token amount given in whole tokens (``"12.5"``) -> base units."""
        try:
            value = Decimal(amount) * (Decimal(10) ** self.decimals)
        except InvalidOperation:
            raise ClientError(f"not an amount: {amount!r}") from None
        if value != value.to_integral_value() or value <= 0:
            raise ClientError(f"not a positive amount of {self.symbol}: {amount!r}")
        return int(value)

    def fmt(self, base_units: int) -> str:
        """Base units -> ``"12.5 vUSD"``."""
        value = Decimal(base_units) / (Decimal(10) ** self.decimals)
        text = format(value.normalize(), "f") if value else "0"
        return f"{text} {self.symbol}"


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --network/--market/--account/--chain-id (each also read from $VERINFER_<NAME>), the
    arguments of ``connect``."""
    options = [
        click.option("--network", envvar="VERINFER_NETWORK", help="ape network choice."),
        click.option("--market", envvar="VERINFER_MARKET", help="Market contract address."),
        click.option(
            "--account",
            envvar="VERINFER_ACCOUNT",
            help="ape keystore alias (passphrase in $VERINFER_PASSPHRASE) or test:N on local.",
        ),
        click.option(
            "--chain-id", envvar="VERINFER_CHAIN_ID", type=int, help="Expected chain id (checked)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def chain_options(fn: Callable[..., Any] | None = None, *, default_account: str = "test:1") -> Any:
    """Add --network/--market/--account/--chain-id/--json; pass ``conn`` (connected).

    ``default_account`` is used on a dev chain when no account is given.
    """
    if fn is None:
        return functools.partial(chain_options, default_account=default_account)

    @click.option("--json", "as_json", is_flag=True, help="Print JSON (for agents and scripts).")
    @connection_options
    @functools.wraps(fn)
    def wrapper(
        network: str | None,
        market: str | None,
        account: str | None,
        chain_id: int | None,
        as_json: bool,
        **kwargs: Any,
    ) -> Any:
        with connect(network, market, account, chain_id, default_account) as c:
            return fn(conn=c, as_json=as_json, **kwargs)

    return wrapper


@contextmanager
def connect(
    network: str | None,
    market: str | None,
    account: str | None,
    chain_id: int | None,
    default_account: str | None = None,
) -> Iterator[Conn]:
    """Connect ape to the deployment's network and build the Client (one-line errors)."""
    dev = read_dev_state()
    if network is None and dev is not None:
        network = str(dev["network"])
        if chain_id is None:
            chain_id = int(dev["chain_id"])
    if market is None and dev is not None and network == dev["network"]:
        market = str(dev["market"])
    if network is None or market is None:
        raise ClientError(
            "no deployment: run `verinfer dev up`, or give --network and --market "
            "(or $VERINFER_NETWORK and $VERINFER_MARKET)"
        )

    from verinfer.client import Client

    ctx = enter_network(network)
    try:
        from_block = int(dev["from_block"]) if dev and market == dev["market"] else 0
        acct = account or default_account or "test:1"
        client = Client(market, acct, from_block=from_block, chain_id=chain_id)
        yield Conn(client, network, dev)
    finally:
        ctx.__exit__(None, None, None)


def enter_network(network: str) -> Any:
    """Connect ape to `network` (quiet); returns the entered context, to be exited by the
    caller. One-line ClientErrors for an unknown network or an unreachable chain."""
    from ape import networks
    from ape.logging import logger

    logger.set_level("WARNING")
    try:
        ctx = networks.parse_network_choice(network)
    except Exception as exc:  # ape's NetworkError lists every choice over many lines
        raise ClientError(f"unknown network {network!r}: {first_line(exc)}") from None
    try:
        ctx.__enter__()
    except Exception as exc:
        raise ClientError(f"no chain reachable at {network}: {first_line(exc)}") from None
    return ctx
