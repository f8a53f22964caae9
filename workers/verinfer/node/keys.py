"""Node keys from ape's encrypted keystore (standard eth-keyfile JSON), never plain text."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount


class KeystoreError(RuntimeError):
    """The key cannot be loaded (missing file, wrong passphrase)."""


def keystore_dir(explicit: Path | None = None) -> Path:
    """``explicit``, else ``$APE_DATA_FOLDER/accounts``, else ``~/.ape/accounts``."""
    if explicit is not None:
        return Path(explicit)
    data = os.environ.get("APE_DATA_FOLDER")
    return (Path(data) if data else Path.home() / ".ape") / "accounts"


def load_account(alias: str, passphrase: str, directory: Path | None = None) -> LocalAccount:
    """Decrypt ``<directory>/<alias>.json`` with ``passphrase`` (from the environment)."""
    path = keystore_dir(directory) / f"{alias}.json"
    if not path.is_file():
        raise KeystoreError(f"no keystore for account {alias!r} at {path} (ape accounts list)")
    try:
        key = Account.decrypt(json.loads(path.read_text()), passphrase)
    except ValueError as exc:
        raise KeystoreError(f"cannot decrypt {path}: {exc}") from exc
    return Account.from_key(key)


def write_keystore(
    alias: str, private_key: bytes | str, passphrase: str, directory: Path, iterations: int = 2**10
) -> Path:
    """Write an ape-compatible keystore file (tests, dev chains). Returns its path.

    ``iterations`` is scrypt's n; dev keys use a small one, ape writes the default (2**18).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = (
        private_key
        if isinstance(private_key, bytes)
        else bytes.fromhex(private_key.removeprefix("0x"))
    )
    data = Account.encrypt(key, passphrase, kdf="scrypt", iterations=iterations)
    path = directory / f"{alias}.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path
