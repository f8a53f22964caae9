"""Private jobs in the node (docs/privacy.md): small hooks the roles and the watcher call.

* **Serving** — a private job's input is an envelope sealed to this node's encryption key
  (``<account>.enc`` in the keystore, same passphrase as the transaction key). The node
  claims only what it can open (one ``skip`` line with the reason otherwise), runs the
  engine on the decrypted input, and publishes the output sealed under the job key with
  the salted digest.
* **Handing the key** — when a verifier (or an appeal panel) is drawn for one of this
  node's private jobs, the node hands it the job key wrapped to its registered key
  (``Court.hand_key``) at once: an audit whose key is not handed in time is fraud.
* **Verifying** — a drawn verifier or panel member waits for the key in ``KeyHanded``
  (until the hand deadline), checks it against the envelope's commitment, decrypts input
  and output, and re-executes as for a public job. No valid key: the result stands or
  falls by the rule the court applies (audit: invalid; dispute: valid).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from verinfer.digest import pack_tokens, unpack_tokens
from verinfer.jobs import JobRecord
from verinfer.privacy import (
    PRIVATE_FLAG,
    EncryptionKey,
    PrivacyError,
    check_handed_key,
    encryption_key_alias,
    handed_canonically,
    is_private_input,
    load_encryption_key,
    node_open_input,
    open_output,
    private_result_digest,
    seal_output,
    valid_pubkey,
    wrap_for,
)

log = logging.getLogger("verinfer.node")

KIND_AUDIT = 2
PHASE_APPEALED = 4
KEY_WAIT_POLL_S = 0.5
KEY_WAIT_MAX_S = 120.0  # an inference worker waits at most this long for a handed key


def is_private(record: JobRecord) -> bool:
    return record.submitted_at >= PRIVATE_FLAG or is_private_input(record.input)


def load_key(account: str, passphrase: str, keystore: Any) -> EncryptionKey | None:
    """The node's encryption key, or None (one warning line: private jobs are skipped)."""
    from verinfer.node.keys import keystore_dir

    try:
        return load_encryption_key(
            encryption_key_alias(account), passphrase, keystore_dir(keystore)
        )
    except PrivacyError as exc:
        log.warning("no encryption key (%s): private jobs are skipped", exc)
        return None


def claim_check(record: JobRecord, key: EncryptionKey | None) -> str | None:
    """Why this node must not claim a job (None: it may). Public jobs always may."""
    if not is_private(record):
        return None
    if key is None:
        return "private job and no encryption key"
    try:
        node_open_input(record.input, key.secret)
    except PrivacyError as exc:
        return f"private input cannot be opened: {exc}"
    return None


def open_for_serving(
    record: JobRecord, key: EncryptionKey | None
) -> tuple[JobRecord, bytes | None] | str:
    """``(record with the plaintext input, job key)`` (job key None for a public job), or the
    reason the job cannot be served."""
    if not is_private(record):
        return record, None
    why = claim_check(record, key)
    if why is not None or key is None:
        return why or "no encryption key"
    inner, job_key = node_open_input(record.input, key.secret)
    return replace(record, input=inner), job_key


def sealed_result(
    record: JobRecord, job_key: bytes, token_ids: list[int], finish: int
) -> dict[str, Any]:
    """The stored output of a private job: ciphertext and the salted digest."""
    return {
        "packed": seal_output(token_ids, job_key, record.job_id).hex(),
        "n": len(token_ids),
        "finish": int(finish),
        "digest": private_result_digest(
            record.job_id,
            record.model_id,
            record.input,
            record.params,
            token_ids,
            finish,
            job_key,
        ).hex(),
    }


# ---- chain side: handing the key ----
def pubkey_of(protocol: Any, node: str) -> bytes:
    info = protocol.market.functions.node_info(node).call()
    return bytes(info[6])  # NodeInfo.pubkey


def hand_key_call(protocol: Any, record: JobRecord, key: EncryptionKey | None) -> Any:
    """The ``Court.hand_key`` call that hands this node's job key to the current recipients,
    or a string saying why it cannot."""
    if key is None:
        return "no encryption key"
    d = protocol.dispute(record.job_id)
    recipients = list(d["panel"]) if d["phase"] == PHASE_APPEALED else [d["verifier"]]
    pubkeys = [pubkey_of(protocol, r) for r in recipients]
    for r, p in zip(recipients, pubkeys, strict=True):
        if not valid_pubkey(p):  # handed anyway (a placeholder): see privacy.wrap_for
            log.warning("job=%d recipient %s has no valid encryption key", record.job_id, r)
    try:
        _, job_key = node_open_input(record.input, key.secret)
    except PrivacyError as exc:
        return str(exc)
    return protocol.court.functions.hand_key(record.job_id, wrap_for(job_key, pubkeys))


# ---- verifier side ----
def handed_keys(protocol: Any, job_id: int, from_block: int = 0) -> list[Any]:
    """Every ``KeyHanded`` log of a job, in chain order (decoded by the shared decoder)."""
    query: Any = {
        "fromBlock": from_block,
        "toBlock": "latest",
        "address": protocol.court.address,
        "topics": [None, "0x" + job_id.to_bytes(32, "big").hex()],
    }
    out = []
    for entry in protocol.w3.eth.get_logs(query):
        decoded = protocol.decode(entry)
        if decoded is not None and decoded.event == "KeyHanded":
            out.append(decoded)
    return out


def find_key(
    protocol: Any, record: JobRecord, me: str, key: EncryptionKey, from_block: int = 0
) -> tuple[bytes, bytes] | None:
    """``(job key, plaintext input)`` from a hand-over addressed to ``me`` that opens and
    matches the commitment, or None. Every hand-over to ``me`` is checked (a refused one is
    logged once), so a wrong key handed next to the right one is on record."""
    found = None
    for item in handed_keys(protocol, record.job_id, from_block):
        recipients = [str(r) for r in item.args["recipients"]]
        if me not in recipients:
            continue
        try:
            opened = check_handed_key(
                bytes(item.args["wrapped"]), recipients.index(me), key.secret, record.input
            )
        except PrivacyError as exc:
            mark = (record.job_id, item.block_number, item.log_index)
            if mark not in _refused:
                _refused.add(mark)
                log.info(
                    "job=%d key hand-over refused holder=%s: %s",
                    record.job_id,
                    item.args["holder"],
                    exc,
                )
            continue
        found = found or opened
    return found


_refused: set[tuple[int, int, int]] = set()


def wait_for_key(
    protocol: Any, record: JobRecord, me: str, key: EncryptionKey | None, from_block: int = 0
) -> tuple[bytes, bytes] | None:
    """Poll for a valid hand-over until the court's hand deadline (at most KEY_WAIT_MAX_S)."""
    if key is None:
        return None
    start = time.monotonic()
    while True:
        found = find_key(protocol, record, me, key, from_block)
        if found is not None:
            return found
        _, _, _, deadline = protocol.court.functions.key_info(record.job_id).call()
        now = protocol.w3.eth.get_block("latest")["timestamp"]
        if now > deadline or time.monotonic() - start > KEY_WAIT_MAX_S:
            return None
        time.sleep(KEY_WAIT_POLL_S)


def open_for_verifying(
    protocol: Any,
    record: JobRecord,
    me: str,
    key: EncryptionKey | None,
    kind: str,
    from_block: int = 0,
) -> JobRecord | bool | None:
    """The record with plaintext input and output to re-execute, or the verdict to post
    without re-executing (no valid key: an audit is fraud, a dispute fails; a published
    output that does not open under the committed key is invalid), or None when this node
    has no encryption key of its own to open a hand-over with (it does not vote).

    ``kind``: ``verdict`` (drawn verifier), ``panel`` (appeal panel) or ``appeal`` (this
    node's own job)."""
    d = protocol.dispute(record.job_id)
    no_key_verdict = d["kind"] != KIND_AUDIT  # audit: fraud (False); dispute: fails (True)
    if kind == "appeal":
        if key is None:
            return False
        try:
            inner, job_key = node_open_input(record.input, key.secret)
        except PrivacyError:
            return False
    else:
        if key is None:  # no key of our own: we cannot judge; keepers replace a silent verifier
            return None
        found = wait_for_key(protocol, record, me, key, from_block)
        if found is None:
            log.info(
                "job=%d no valid key handed to %s: verdict %s", record.job_id, me, no_key_verdict
            )
            return no_key_verdict
        job_key, inner = found
        if kind == "panel" and not _verifier_had_key(protocol, record, d, job_key, from_block):
            log.info("job=%d the verifier was not handed the committed key", record.job_id)
            return bool(d["verdict_valid"])
    try:
        packed = open_output(record.output, job_key, record.job_id)
    except PrivacyError as exc:
        log.info("job=%d published output does not open: %s", record.job_id, exc)
        return False
    if len(packed) != 4 * record.output_tokens:
        return False
    if (
        private_result_digest(
            record.job_id,
            record.model_id,
            record.input,
            record.params,
            unpack_tokens(packed),
            record.finish_reason,
            job_key,
        )
        != record.result_digest
    ):
        log.info("job=%d salted digest does not match the output", record.job_id)
        return False
    return replace(record, input=inner, output=pack_tokens(unpack_tokens(packed)))


def _verifier_had_key(
    protocol: Any, record: JobRecord, d: dict[str, Any], job_key: bytes, from_block: int
) -> bool:
    """An appeal panel's first check: was the verifier handed the canonical wrap of the
    committed key (any hand-over addressed to it)?"""
    verifier = str(d["verifier"])
    pub = pubkey_of(protocol, verifier)
    if not valid_pubkey(pub):  # nobody could hand it a key: its verdict is judged on merits
        return True
    for item in handed_keys(protocol, record.job_id, from_block):
        recipients = [str(r) for r in item.args["recipients"]]
        if recipients == [verifier] and handed_canonically(
            bytes(item.args["wrapped"]), 0, job_key, pub
        ):
            return True
    return False
