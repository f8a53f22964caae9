"""The private-job envelope (verinfer.privacy): pinned vectors, round trips, tampering."""

from __future__ import annotations

import pytest
from verinfer import privacy as P
from verinfer.digest import result_digest
from verinfer.inputs import encode_chat_input, encode_text_input

NODE = P.EncryptionKey(bytes.fromhex("11" * 32))
VERIFIER = P.EncryptionKey(bytes.fromhex("44" * 32))
EPHEMERAL = bytes.fromhex("22" * 32)
NONCE = bytes.fromhex("33" * 12)
INNER = encode_text_input("What is 2+2?")

# Pinned vectors: any change to a label, the KDF, the AEAD or the layout breaks these.
VECTOR_NODE_PUBKEY = (
    "4f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa"
    "385b6b1b8ead809ca67454d9683fcf2ba03456d6fe2c4abe2b07f0fbdbb2f1c1"
)
VECTOR_ENVELOPE = (
    "0202466d7fcae563e5cb09a0d1870bb580344804617879a14949cf22285f1bae3f27"
    "ed118f09ca02a47de45cece261e9b692bb39e9363c1e78ce3797869cc0f0c682"
    "333333333333333333333333"
    "3a66016cfdbba1af78be8b93afe36c3956b84386623a58e362f5ba8edf79c7fae88cc9fea3805b3b6d2e3fc98"
    "09b20e277a677cd434d7ec5b3412e6d10d81baa3fd0f4148d039be2a09ce90c4c9392f5"
)
VECTOR_JOB_KEY = "08162b1310db442d9443c06a96fc049f0b4a8f434f5fd06a93442e005d3898e7"
VECTOR_COMMITMENT = "ed118f09ca02a47de45cece261e9b692bb39e9363c1e78ce3797869cc0f0c682"
VECTOR_OUTPUT_JOB7 = "b78d611077e849c750c256798210f311595674fd3039a4f6db946b8f"  # tokens 1, 2, 3
VECTOR_SALT = "e8a8f8b1369cb30498953e1160be6abc01f3a487bb3bed403c7b97056d461bfc"
VECTOR_WRAP = (
    "02a92e432e7160947dfa2d3bf106de989d3afd75d8da3a27dac719467c15d29365"
    "665625984da822dd12a7d27974bff75b820c4f50ed9eed90849a9b2b6792c3d22784b08d89e0f4da937502ca37cc9a21"
)
VECTOR_DIGEST = "785c37a8927a7d6eaa059527c66e4ce664a30fc13877dcbbc32d47069ecb050d"


@pytest.fixture(scope="module")
def sealed():
    return P.seal_input(INNER, NODE.pubkey, ephemeral=EPHEMERAL, nonce=NONCE)


def test_vectors__pinned(sealed):
    envelope, job_key = sealed
    assert NODE.pubkey.hex() == VECTOR_NODE_PUBKEY
    assert envelope.hex() == VECTOR_ENVELOPE
    assert len(envelope) == P.ENVELOPE_OVERHEAD + 64  # 13 bytes padded to one 64-byte block
    assert job_key.hex() == VECTOR_JOB_KEY
    assert P.job_key_commitment(job_key).hex() == VECTOR_COMMITMENT == envelope[34:66].hex()
    assert P.seal_output([1, 2, 3], job_key, 7).hex() == VECTOR_OUTPUT_JOB7
    assert P.digest_salt(job_key).hex() == VECTOR_SALT
    assert P.wrap_key(job_key, VERIFIER.pubkey).hex() == VECTOR_WRAP
    digest = P.private_result_digest(7, b"\x01" * 32, envelope, b"\x02" * 10, [1, 2, 3], 1, job_key)
    assert digest.hex() == VECTOR_DIGEST


def test_round_trip__text_and_chat__node_and_client_agree():
    for inner in (INNER, encode_chat_input([{"role": "user", "content": "héllo " * 40}])):
        envelope, job_key = P.seal_input(inner, NODE.pubkey)
        assert envelope[0] == P.FORMAT_PRIVATE and (len(envelope) - P.ENVELOPE_OVERHEAD) % 64 == 0
        assert inner not in envelope
        opened, node_key = P.node_open_input(envelope, NODE.secret)
        assert (opened, node_key) == (inner, job_key)
        out = P.seal_output([5, 6, 70_000], job_key, 42)
        assert P.open_output(out, node_key, 42) == bytes.fromhex("000000050000000600011170")


def test_fresh_key_per_job():
    a, ka = P.seal_input(INNER, NODE.pubkey)
    b, kb = P.seal_input(INNER, NODE.pubkey)
    assert ka != kb and a != b and a[1:34] != b[1:34]


def test_wrong_node_key__commitment_mismatch():
    envelope, _ = P.seal_input(INNER, NODE.pubkey)
    with pytest.raises(P.PrivacyError, match="key commitment does not match"):
        P.node_open_input(envelope, VERIFIER.secret)


@pytest.mark.parametrize("where", [0, 1, 40, 70, 100, -1])
def test_tampered_envelope__refused(sealed, where):
    envelope, _ = sealed
    bad = bytearray(envelope)
    bad[where] ^= 0x01
    with pytest.raises(P.PrivacyError):
        P.node_open_input(bytes(bad), NODE.secret)


def test_truncated_envelope__refused(sealed):
    envelope, job_key = sealed
    with pytest.raises(P.PrivacyError, match="truncated envelope"):
        P.node_open_input(envelope[:60], NODE.secret)
    with pytest.raises(P.PrivacyError, match="does not decrypt"):
        P.open_input(envelope[:-1], job_key)


def test_wrong_job_key__refused_before_decrypting(sealed):
    envelope, job_key = sealed
    with pytest.raises(P.PrivacyError, match="does not match the envelope's commitment"):
        P.open_input(envelope, bytes(32))
    out = P.seal_output([1], job_key, 1)
    with pytest.raises(P.PrivacyError, match="output does not decrypt"):
        P.open_output(out, bytes(32), 1)
    with pytest.raises(P.PrivacyError, match="output does not decrypt"):
        P.open_output(out, job_key, 2)  # bound to its job id


def test_wrap__canonical_unwraps_and_panel_can_recheck(sealed):
    envelope, job_key = sealed
    panel = [P.EncryptionKey.generate() for _ in range(3)]
    wrapped = P.wrap_for(job_key, [m.pubkey for m in panel])
    assert len(wrapped) == 3 * P.WRAP_BYTES <= P.MAX_WRAPPED
    for i, member in enumerate(panel):
        assert P.check_handed_key(wrapped, i, member.secret, envelope) == (job_key, INNER)
        assert P.handed_canonically(wrapped, i, job_key, member.pubkey)
    with pytest.raises(P.PrivacyError, match="key hand-over does not decrypt"):
        P.unwrap_key(wrapped, 0, panel[1].secret)
    # a wrong key, wrapped properly, opens but fails the commitment: counts as not handed
    wrong = P.wrap_key(bytes(32), panel[0].pubkey)
    with pytest.raises(P.PrivacyError, match="does not match the envelope's commitment"):
        P.check_handed_key(wrong, 0, panel[0].secret, envelope)
    assert not P.handed_canonically(wrong, 0, job_key, panel[0].pubkey)


def test_wrap__recipient_without_a_usable_key__placeholder_slot__others_unwrap(sealed):
    """A drawn node that registered a bad key still gets its slot (so the holder can hand the
    key on time and is not convicted for it); the other recipients open theirs."""
    envelope, job_key = sealed
    good = [P.EncryptionKey.generate() for _ in range(2)]
    bad_key = b"\x01" * 64  # not a point on secp256k1
    assert not P.valid_pubkey(bad_key)
    wrapped = P.wrap_for(job_key, [good[0].pubkey, bad_key, good[1].pubkey])
    assert len(wrapped) == 3 * P.WRAP_BYTES
    assert wrapped[P.WRAP_BYTES : 2 * P.WRAP_BYTES] == P.NO_KEY_WRAP
    assert P.check_handed_key(wrapped, 0, good[0].secret, envelope) == (job_key, INNER)
    assert P.check_handed_key(wrapped, 2, good[1].secret, envelope) == (job_key, INNER)
    with pytest.raises(P.PrivacyError):
        P.unwrap_key(wrapped, 1, good[0].secret)


def test_salted_digest__differs_from_public_and_hides_guesses(sealed):
    envelope, job_key = sealed
    args = (3, b"\x01" * 32, envelope, b"\x02" * 10, [1, 2, 3], 0)
    private = P.private_result_digest(*args, job_key)
    assert private != result_digest(*args)  # an outsider's guess of the tokens does not match
    other_key = P.seal_input(INNER, NODE.pubkey)[1]
    assert private != P.private_result_digest(*args, other_key)


def test_bad_inputs__one_line_reasons():
    with pytest.raises(P.PrivacyError, match="not a valid secp256k1 encryption key"):
        P.seal_input(INNER, b"\x04" * 64)
    with pytest.raises(P.PrivacyError, match="inner input must be a text or chat input"):
        P.seal_input(b"\x02abc", NODE.pubkey)
    with pytest.raises(P.PrivacyError, match="not a private input"):
        P.parse_envelope(INNER)
    assert not P.valid_pubkey(bytes(64)) and P.valid_pubkey(NODE.pubkey)


def test_encryption_key__encrypted_at_rest(tmp_path):
    key = P.EncryptionKey.generate()
    path = P.save_encryption_key(key, "node.enc", "pw", tmp_path, iterations=2**4)
    assert key.secret.hex() not in path.read_text() and oct(path.stat().st_mode)[-3:] == "600"
    assert P.load_encryption_key("node.enc", "pw", tmp_path) == key
    with pytest.raises(P.PrivacyError, match="cannot decrypt"):
        P.load_encryption_key("node.enc", "wrong", tmp_path)
