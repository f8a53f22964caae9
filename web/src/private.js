// Private jobs in the page (PROTOCOL.md §8; the same envelope as workers/verinfer/privacy.py):
// the input is encrypted to the chosen node's registered secp256k1 key (ECIES: ECDH, then
// HKDF-SHA256), sealed with ChaCha20-Poly1305; the output is opened and its salted digest
// checked here, with the job key that only this browser (and the node) holds.
import { secp256k1 } from "@noble/curves/secp256k1";
import { hkdf } from "@noble/hashes/hkdf";
import { sha256 } from "@noble/hashes/sha2";
import { chacha20poly1305 } from "@noble/ciphers/chacha";
import { bytesToHex, concat, encodeAbiParameters, hexToBytes, keccak256, toBytes } from "viem";

export const FORMAT_PRIVATE = 0x02;
const PAD_TO = 64;
const ZERO_NONCE = new Uint8Array(12);
const label = (name) => new TextEncoder().encode(`verinfer/v1/${name}`);
const derive = (ikm, name, salt = new Uint8Array(0)) => hkdf(sha256, ikm, salt, label(name), 32);

/** The node's registered key (64-byte x‖y) as a curve point; throws when it is not one. */
function nodePoint(pubkeyHex) {
  const raw = hexToBytes(pubkeyHex);
  if (raw.length !== 64) throw new Error("not a secp256k1 encryption key");
  return secp256k1.ProjectivePoint.fromHex(concat([new Uint8Array([4]), raw]));
}

/** Whether a node's registered key can take private jobs. */
export function usableKey(pubkeyHex) {
  try {
    nodePoint(pubkeyHex).assertValidity();
    return true;
  } catch {
    return false;
  }
}

function pad(data) {
  const len = data.length + 1 + ((PAD_TO - ((data.length + 1) % PAD_TO)) % PAD_TO);
  const out = new Uint8Array(len);
  out.set(data);
  out[data.length] = 0x80;
  return out;
}

/** Encrypt a public-form input (hex: 0x00/0x01 + body) to a node: {envelope, jobKey} (hex).
 * `ephemeral` and `nonce` only for pinned test vectors. */
export function sealInput(innerHex, nodePubkeyHex, { ephemeral, nonce } = {}) {
  const point = nodePoint(nodePubkeyHex);
  const eph = ephemeral ? hexToBytes(ephemeral) : secp256k1.utils.randomPrivateKey();
  const ePub = secp256k1.getPublicKey(eph, true);
  const shared = secp256k1.getSharedSecret(eph, point.toRawBytes(true), true).slice(1);
  const jobKey = derive(shared, "job-key", concat([ePub, point.toRawBytes(true)]));
  const header = concat([new Uint8Array([FORMAT_PRIVATE]), ePub, toBytes(keccak256(jobKey))]);
  const n = nonce ? hexToBytes(nonce) : crypto.getRandomValues(new Uint8Array(12));
  const body = chacha20poly1305(derive(jobKey, "input"), n, header).encrypt(pad(hexToBytes(innerHex)));
  return { envelope: bytesToHex(concat([header, n, body])), jobKey: bytesToHex(jobKey) };
}

/** The packed output token ids of a published private job (hex); throws on a wrong key. */
export function openOutput(sealedHex, jobKeyHex, jobId) {
  const aad = hexToBytes(encodeAbiParameters([{ type: "uint256" }], [jobId]));
  const key = derive(hexToBytes(jobKeyHex), "output");
  return bytesToHex(chacha20poly1305(key, ZERO_NONCE, aad).decrypt(hexToBytes(sealedHex)));
}

/** §5's digest with keccak256(salt ‖ packed tokens) as the output commitment. */
export function privateDigest(job, packedHex, jobKeyHex) {
  const salt = derive(hexToBytes(jobKeyHex), "salt");
  return keccak256(
    encodeAbiParameters(
      [{ type: "uint256" }, { type: "bytes32" }, { type: "bytes32" }, { type: "bytes32" },
        { type: "bytes32" }, { type: "uint8" }],
      [job.job_id, job.model_id, keccak256(job.input), keccak256(job.params),
        keccak256(concat([salt, hexToBytes(packedHex)])), job.finish_reason],
    ),
  );
}

/** Job keys live in this browser only (localStorage), per market and job. */
export function saveJobKey(market, jobId, jobKeyHex) {
  localStorage.setItem(`verinfer:job-key:${market.toLowerCase()}:${jobId}`, jobKeyHex);
}
export function loadJobKey(market, jobId) {
  return localStorage.getItem(`verinfer:job-key:${market.toLowerCase()}:${jobId}`);
}
