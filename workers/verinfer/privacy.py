"""Private jobs (PROTOCOL.md §8, docs/privacy.md): the envelope and its keys.

Built only from well-kept primitives: secp256k1 ECDH from ``coincurve`` (libsecp256k1),
HKDF-SHA256 and ChaCha20-Poly1305 from ``pycryptodome``, keccak from ``eth-utils``.

* **Job key** ``K`` — ECIES key encapsulation to the serving node's registered encryption key
  ``P``: the client draws a fresh ephemeral secret ``e`` for every job and
  ``K = HKDF(x(e·P), salt=E‖P, info="verinfer/v1/job-key")`` with ``E = e·G``. Only the
  client (which knew ``e``) and the node (``x(d·E)``) can compute it.
* **Envelope** — the job's ``input`` on chain::

      0x02 ‖ E (33, compressed) ‖ keccak256(K) (32) ‖ nonce (12) ‖ ChaCha20-Poly1305 ciphertext

  under ``HKDF(K, "verinfer/v1/input")`` with the 78-byte header as associated data. The
  plaintext is the public input form (``0x00`` text / ``0x01`` chat, verinfer.inputs) padded
  to a multiple of 64 bytes (ISO/IEC 7816-4: ``0x80`` then zeros). The market stores
  ``keccak256(input)``, so the key commitment ``keccak256(K)`` is fixed at submission.
* **Output** — ``ChaCha20-Poly1305(HKDF(K, "verinfer/v1/output"), nonce 0, aad=job id)``
  of the packed token ids (one message per key, so a fixed nonce is safe).
* **Digest salt** — ``HKDF(K, "verinfer/v1/salt")``: the private result digest replaces
  ``keccak256(packed tokens)`` by ``keccak256(salt ‖ packed tokens)``, so outsiders cannot
  test guessed answers against it.
* **Key hand-over** — :func:`wrap_key` wraps ``K`` to a verifier's registered key with a
  *deterministic* ephemeral secret ``HKDF(K, "verinfer/v1/wrap" ‖ recipient)``: whoever
  learns ``K`` later (an appeal panel) recomputes the wrap and tells whether the verifier
  was really handed the committed key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coincurve import PrivateKey, PublicKey
from Crypto.Cipher import ChaCha20_Poly1305
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from eth_utils import keccak

from verinfer.digest import FinishReason, SamplingParams, pack_tokens, result_digest
from verinfer.jobs import PRIVATE_FLAG as PRIVATE_FLAG  # re-exported (Market.vy: the private flag)

FORMAT_PRIVATE = 0x02  # first input byte of a private job (Market.vy PRIVATE_FORMAT)
PUBKEY_BYTES = 64  # registered encryption key: uncompressed x‖y, as register_node takes it
EPHEMERAL_BYTES = 33
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + EPHEMERAL_BYTES + 32  # format byte, E, key commitment
ENVELOPE_OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES  # 94 bytes
PAD_TO = 64
WRAP_BYTES = EPHEMERAL_BYTES + 32 + TAG_BYTES  # 81 bytes per recipient
MAX_WRAPPED = 512  # Court.vy MAX_WRAPPED: room for a panel of 3 (243 bytes)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

LABEL_JOB_KEY = b"verinfer/v1/job-key"
LABEL_INPUT = b"verinfer/v1/input"
LABEL_OUTPUT = b"verinfer/v1/output"
LABEL_SALT = b"verinfer/v1/salt"
LABEL_WRAP = b"verinfer/v1/wrap"
LABEL_KEK = b"verinfer/v1/kek"
_ZERO_NONCE = b"\x00" * NONCE_BYTES


class PrivacyError(ValueError):
    """An envelope, key or ciphertext that does not open; ``str()`` is the one-line reason."""


# ---- primitives ----
def _hkdf(ikm: bytes, info: bytes, salt: bytes = b"") -> bytes:
    out = HKDF(ikm, 32, salt, SHA256, num_keys=1, context=info)
    assert isinstance(out, bytes)
    return out


def _seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(aad)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return bytes(ct) + bytes(tag)


def _open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
    if len(sealed) < TAG_BYTES:
        raise PrivacyError(f"truncated {what}")
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(aad)
    try:
        return bytes(cipher.decrypt_and_verify(sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]))
    except ValueError as exc:
        raise PrivacyError(f"{what} does not decrypt (wrong key or tampered)") from exc


def _public(pubkey: bytes) -> PublicKey:
    """A registered key (64-byte x‖y, or 33/65-byte SEC1) as a curve point."""
    raw = bytes(pubkey)
    if len(raw) == PUBKEY_BYTES:
        raw = b"\x04" + raw
    try:
        return PublicKey(raw)
    except (ValueError, TypeError) as exc:
        raise PrivacyError("not a valid secp256k1 encryption key") from exc


def _shared_x(secret: bytes, point: PublicKey) -> bytes:
    return point.multiply(secret).format(compressed=False)[1:33]


def valid_pubkey(pubkey: bytes) -> bool:
    """Whether a registered node key is a usable secp256k1 encryption key."""
    try:
        _public(pubkey)
    except PrivacyError:
        return False
    return True


# ---- node encryption keys ----
@dataclass(frozen=True)
class EncryptionKey:
    """A node's encryption key pair (separate from its transaction key)."""

    secret: bytes

    @classmethod
    def generate(cls) -> EncryptionKey:
        return cls(PrivateKey().secret)

    @property
    def pubkey(self) -> bytes:
        """The 64-byte x‖y public key to register with register_node / update_node."""
        return PrivateKey(self.secret).public_key.format(compressed=False)[1:]


def encryption_key_alias(account_alias: str) -> str:
    """The keystore alias of a node's encryption key: ``<account>.enc``."""
    return f"{account_alias}.enc"


def save_encryption_key(
    key: EncryptionKey, alias: str, passphrase: str, directory: Path, iterations: int = 2**18
) -> Path:
    """Encrypt the key at rest as an eth-keyfile JSON (scrypt), like the transaction key."""
    from eth_account import Account

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{alias}.json"
    data = Account.encrypt(key.secret, passphrase, kdf="scrypt", iterations=iterations)
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def load_encryption_key(alias: str, passphrase: str, directory: Path) -> EncryptionKey:
    """Decrypt ``<directory>/<alias>.json``; PrivacyError with the reason if it cannot."""
    from eth_account import Account

    path = Path(directory) / f"{alias}.json"
    if not path.is_file():
        raise PrivacyError(f"no encryption key at {path} (see docs/privacy.md)")
    try:
        return EncryptionKey(bytes(Account.decrypt(json.loads(path.read_text()), passphrase)))
    except ValueError as exc:
        raise PrivacyError(f"cannot decrypt {path}: {exc}") from exc


# ---- job key and envelope ----
def job_key_commitment(job_key: bytes) -> bytes:
    return keccak(job_key)


def _pad(data: bytes) -> bytes:
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % PAD_TO)


def _unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\x00")
    if not end or end[-1] != 0x80:
        raise PrivacyError("bad padding in the decrypted input")
    return end[:-1]


def is_private_input(input_data: bytes) -> bool:
    return len(input_data) > 0 and input_data[0] == FORMAT_PRIVATE


def seal_input(
    inner: bytes,
    node_pubkey: bytes,
    *,
    ephemeral: bytes | None = None,
    nonce: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Encrypt a public-form input (``0x00``/``0x01`` + body) to a node.

    Returns ``(envelope, job_key)``. ``ephemeral`` and ``nonce`` are drawn fresh unless given
    (only the pinned test vectors give them).
    """
    if not inner or inner[0] == FORMAT_PRIVATE:
        raise PrivacyError("the inner input must be a text or chat input")
    point = _public(node_pubkey)
    eph = PrivateKey(ephemeral) if ephemeral is not None else PrivateKey()
    e_pub = eph.public_key.format(compressed=True)
    job_key = _hkdf(
        _shared_x(eph.secret, point), LABEL_JOB_KEY, salt=e_pub + point.format(compressed=True)
    )
    header = bytes([FORMAT_PRIVATE]) + e_pub + job_key_commitment(job_key)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    body = _seal(_hkdf(job_key, LABEL_INPUT), nonce, _pad(inner), header)
    return header + nonce + body, job_key


@dataclass(frozen=True)
class Envelope:
    """A parsed private input."""

    ephemeral: bytes
    commitment: bytes
    nonce: bytes
    sealed: bytes

    @property
    def header(self) -> bytes:
        return bytes([FORMAT_PRIVATE]) + self.ephemeral + self.commitment


def parse_envelope(data: bytes) -> Envelope:
    if not is_private_input(data):
        raise PrivacyError("not a private input (format byte is not 0x02)")
    if len(data) < ENVELOPE_OVERHEAD + 1:
        raise PrivacyError(f"truncated envelope ({len(data)} bytes)")
    return Envelope(
        ephemeral=bytes(data[1 : 1 + EPHEMERAL_BYTES]),
        commitment=bytes(data[1 + EPHEMERAL_BYTES : HEADER_BYTES]),
        nonce=bytes(data[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]),
        sealed=bytes(data[HEADER_BYTES + NONCE_BYTES :]),
    )


def derive_job_key(envelope: bytes, node_secret: bytes) -> bytes:
    """The node's side of the key encapsulation; checks the key commitment."""
    env = parse_envelope(envelope)
    try:
        e_point = PublicKey(env.ephemeral)
    except (ValueError, TypeError) as exc:
        raise PrivacyError("bad ephemeral key in the envelope") from exc
    own = PrivateKey(node_secret).public_key.format(compressed=True)
    job_key = _hkdf(_shared_x(node_secret, e_point), LABEL_JOB_KEY, salt=env.ephemeral + own)
    if job_key_commitment(job_key) != env.commitment:
        raise PrivacyError("key commitment does not match (not encrypted to this node's key)")
    return job_key


def open_input(envelope: bytes, job_key: bytes) -> bytes:
    """The inner input, given a job key that matches the envelope's commitment."""
    env = parse_envelope(envelope)
    if len(job_key) != 32 or job_key_commitment(job_key) != env.commitment:
        raise PrivacyError("job key does not match the envelope's commitment")
    plain = _open(_hkdf(job_key, LABEL_INPUT), env.nonce, env.sealed, env.header, "input")
    return _unpad(plain)


def node_open_input(envelope: bytes, node_secret: bytes) -> tuple[bytes, bytes]:
    """The node's side: ``(inner input, job key)``."""
    job_key = derive_job_key(envelope, node_secret)
    return open_input(envelope, job_key), job_key


# ---- output and digest ----
def _job_aad(job_id: int) -> bytes:
    return int(job_id).to_bytes(32, "big")


def seal_output(token_ids: Sequence[int], job_key: bytes, job_id: int) -> bytes:
    return _seal(
        _hkdf(job_key, LABEL_OUTPUT), _ZERO_NONCE, pack_tokens(token_ids), _job_aad(job_id)
    )


def open_output(sealed: bytes, job_key: bytes, job_id: int) -> bytes:
    """The packed token ids of a published private output."""
    return _open(_hkdf(job_key, LABEL_OUTPUT), _ZERO_NONCE, sealed, _job_aad(job_id), "output")


def digest_salt(job_key: bytes) -> bytes:
    return _hkdf(job_key, LABEL_SALT)


def private_result_digest(
    job_id: int,
    model_id: bytes,
    input_data: bytes,
    params: SamplingParams | bytes,
    output_token_ids: Sequence[int],
    finish_reason: FinishReason | int,
    job_key: bytes,
) -> bytes:
    """§5's digest with ``keccak256(salt ‖ packed tokens)`` for the output commitment."""
    return result_digest(
        job_id,
        model_id,
        input_data,
        params,
        output_token_ids,
        finish_reason,
        salt=digest_salt(job_key),
    )


# ---- key hand-over to verifiers (Court.hand_key) ----
def wrap_key(job_key: bytes, recipient_pubkey: bytes) -> bytes:
    """The canonical (deterministic) wrap of a job key to one recipient: E' ‖ sealed key."""
    point = _public(recipient_pubkey)
    p_comp = point.format(compressed=True)
    scalar = int.from_bytes(_hkdf(job_key, LABEL_WRAP + p_comp), "big") % SECP256K1_N or 1
    eph = PrivateKey(scalar.to_bytes(32, "big"))
    e_pub = eph.public_key.format(compressed=True)
    kek = _hkdf(_shared_x(eph.secret, point), LABEL_KEK, salt=e_pub + p_comp)
    return e_pub + _seal(kek, _ZERO_NONCE, job_key, e_pub)


NO_KEY_WRAP = b"\x00" * WRAP_BYTES  # the slot of a recipient without a usable key


def wrap_for(job_key: bytes, recipient_pubkeys: Sequence[bytes]) -> bytes:
    """The ``wrapped`` argument of Court.hand_key: one wrap per recipient, in order. A
    recipient whose registered key is not a usable secp256k1 key gets ``NO_KEY_WRAP``: the
    holder still hands the key on chain (so the court does not count it as withheld, which
    would convict an honest node, or fail a client's dispute, because a drawn node registered
    a bad key), and the panel judges such a verdict on its merits (docs/privacy.md)."""
    out = b"".join(
        wrap_key(job_key, p) if valid_pubkey(p) else NO_KEY_WRAP for p in recipient_pubkeys
    )
    if len(out) > MAX_WRAPPED:
        raise PrivacyError("too many recipients for one hand-over")
    return out


def unwrap_key(wrapped: bytes, index: int, secret: bytes) -> bytes:
    """Recipient ``index``'s job key from a hand-over; PrivacyError if it does not open."""
    chunk = bytes(wrapped[index * WRAP_BYTES : (index + 1) * WRAP_BYTES])
    if len(chunk) != WRAP_BYTES:
        raise PrivacyError("truncated key hand-over")
    e_pub = chunk[:EPHEMERAL_BYTES]
    try:
        point = PublicKey(e_pub)
    except (ValueError, TypeError) as exc:
        raise PrivacyError("bad ephemeral key in the hand-over") from exc
    own = PrivateKey(secret).public_key.format(compressed=True)
    kek = _hkdf(_shared_x(secret, point), LABEL_KEK, salt=e_pub + own)
    return _open(kek, _ZERO_NONCE, chunk[EPHEMERAL_BYTES:], e_pub, "key hand-over")


def check_handed_key(
    wrapped: bytes, index: int, secret: bytes, envelope: bytes
) -> tuple[bytes, bytes]:
    """A verifier's check of a hand-over: ``(job key, inner input)``, or PrivacyError when
    the key does not open, does not match the commitment, or does not decrypt the input
    (all of which count as "not handed")."""
    job_key = unwrap_key(wrapped, index, secret)
    return job_key, open_input(envelope, job_key)


def handed_canonically(wrapped: bytes, index: int, job_key: bytes, recipient_pubkey: bytes) -> bool:
    """Whether recipient ``index`` was handed the canonical wrap of ``job_key`` (what an
    appeal panel checks once it knows the key)."""
    chunk = bytes(wrapped[index * WRAP_BYTES : (index + 1) * WRAP_BYTES])
    return chunk == wrap_key(job_key, recipient_pubkey)
