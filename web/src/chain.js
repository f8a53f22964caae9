// The page's door to the chain: viem clients, the ABIs compiled from contracts/ (the same
// files the node ships, workers/verinfer/abi, written by scripts/export_abi.py), the market's
// events decoded with viem, and a job rebuilt from them as workers/verinfer/jobs.py does.
import {
  createPublicClient,
  createWalletClient,
  custom,
  http,
  encodeAbiParameters,
  keccak256,
  parseEventLogs,
  toHex,
  concat,
  stringToBytes,
  erc20Abi,
  pad,
  hexToBigInt,
} from "viem";
import marketAbi from "../../workers/verinfer/abi/Market.json";
import courtAbi from "../../workers/verinfer/abi/Court.json";
import { FORMAT_PRIVATE, openOutput, privateDigest } from "./private.js";

export { marketAbi, courtAbi, erc20Abi };

export const ZERO_ADDRESS = "0x0000000000000000000000000000000000000000";
export const ZERO_BYTES32 = `0x${"00".repeat(32)}`;
export const FORMAT_CHAT = 0x01; // workers/verinfer/inputs.py
export const MAX_INPUT_BYTES = 8000; // Market.vy MAX_INPUT_BYTES
export const STATUS = ["NONE", "OPEN", "CLAIMED", "PUBLISHED", "VERIFYING", "FINALIZED",
  "CANCELLED", "EXPIRED", "SLASHED"];
export const PHASE = ["NONE", "ASSIGNED", "ACCEPTED", "VERDICT", "APPEALED", "UNRESOLVED",
  "SETTLED", "DRAWING", "PANEL_DRAWING"];
const MAX_LOG_RANGE = 10_000n; // blocks per eth_getLogs, as the Python client

const JOB_EVENTS = ["JobSubmitted", "JobClaimed", "ResultPublished", "JobFinalized",
  "JobCancelled", "JobExpired", "JobVerifying", "JobSlashed"];
const COURT_EVENTS = ["DisputeOpened", "DrawRequested", "VerifierAssigned", "VerifierAccepted",
  "VerdictPosted", "VerifierReplaced", "AppealOpened", "PanelDrawn", "DisputeSettled"];

function eventTopic(abi, name) {
  const item = abi.find((e) => e.type === "event" && e.name === name);
  const sig = `${name}(${item.inputs.map((i) => i.type).join(",")})`;
  return keccak256(stringToBytes(sig));
}

// ---- canonical encodings (workers/verinfer/digest.py, inputs.py) ----

/** Input bytes of a chat: 0x01 + compact JSON of [{role, content}, ...]. */
export function encodeChatInput(messages) {
  if (!messages.length) throw new Error("a chat needs at least one message");
  for (const m of messages) {
    if (!["system", "user", "assistant"].includes(m.role) || !m.content) {
      throw new Error("every chat message needs a role and some text");
    }
  }
  const body = JSON.stringify(messages.map((m) => ({ role: m.role, content: m.content })));
  return concat([toHex(FORMAT_CHAT, { size: 1 }), toHex(stringToBytes(body))]);
}

/** Decode input bytes back into a prompt or chat messages (for past jobs). */
export function decodeInput(hex) {
  const bytes = hexToBytesLocal(hex);
  if (bytes[0] === FORMAT_PRIVATE) return "(private)";
  const text = new TextDecoder().decode(bytes.slice(1));
  if (bytes[0] === FORMAT_CHAT) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

function hexToBytesLocal(hex) {
  const h = hex.slice(2);
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const PARAMS_ABI = [
  { type: "uint32" }, { type: "uint32" }, { type: "uint32" }, { type: "uint64" },
  { type: "uint32[]" },
];

/** abi_encode(max_tokens, temperature_milli, top_k, seed, stop_token_ids). */
export function encodeParams({ maxTokens, temperatureMilli = 0, topK = 0, seed = 0n }) {
  return encodeAbiParameters(PARAMS_ABI, [maxTokens, temperatureMilli, topK, BigInt(seed), []]);
}

/** Output token ids from the packed big-endian uint32 words. */
export function unpackTokens(hex) {
  const bytes = hexToBytesLocal(hex);
  const ids = [];
  for (let i = 0; i + 4 <= bytes.length; i += 4) {
    ids.push(((bytes[i] << 24) >>> 0) + (bytes[i + 1] << 16) + (bytes[i + 2] << 8) + bytes[i + 3]);
  }
  return ids;
}

/** The §5 result digest, recomputed from what the chain carried (the rule of `job wait`). */
export function expectedDigest(job) {
  return keccak256(
    encodeAbiParameters(
      [{ type: "uint256" }, { type: "bytes32" }, { type: "bytes32" }, { type: "bytes32" },
        { type: "bytes32" }, { type: "uint8" }],
      [job.job_id, job.model_id, keccak256(job.input), keccak256(job.params),
        keccak256(job.output), job.finish_reason],
    ),
  );
}

const REST_TYPES = [
  ["model_id", "bytes32"], ["input_hash", "bytes32"], ["params_hash", "bytes32"],
  ["max_tokens", "uint32"], ["preferred_node", "address"], ["submitted_at", "uint64"],
  ["claim_deadline", "uint64"], ["result_deadline", "uint64"], ["finish_reason", "uint8"],
  ["result_digest", "bytes32"], ["published_block", "uint64"],
];
const SETTLEMENT_TYPES = [
  ["client", "address"], ["max_payment", "uint256"], ["node", "address"],
  ["price_per_token", "uint256"], ["collateral", "uint256"], ["output_tokens", "uint32"],
  ["published_at", "uint64"],
];

/** Market.hash_job, computed locally: keccak of the Settlement words, low byte cleared. */
export function structHash(job) {
  const rest = keccak256(
    encodeAbiParameters(REST_TYPES.map(([, t]) => ({ type: t })), REST_TYPES.map(([f]) => job[f])),
  );
  const words = encodeAbiParameters(
    [...SETTLEMENT_TYPES.map(([, t]) => ({ type: t })), { type: "bytes32" }],
    [...SETTLEMENT_TYPES.map(([f]) => job[f]), rest],
  );
  return keccak256(words);
}

const STRUCT_FIELDS = ["client", "model_id", "input_hash", "params_hash", "max_tokens",
  "max_payment", "preferred_node", "submitted_at", "claim_deadline", "result_deadline", "node",
  "price_per_token", "collateral", "output_tokens", "finish_reason", "result_digest",
  "published_at", "published_block"];

/** The IMarket.Job struct that cancel/dispute take back as calldata. */
export function asStruct(job) {
  return Object.fromEntries(STRUCT_FIELDS.map((f) => [f, job[f]]));
}

/** A private job: its input is an envelope (format byte 0x02). */
export function isPrivate(job) {
  return job.input.slice(0, 4) === "0x02";
}

/** Whether this market takes private jobs (its court has the key hand-over). */
export const PRIVATE_JOBS = courtAbi.some((f) => f.type === "function" && f.name === "hand_key");

// ---- the market ----

export class Market {
  /** config: {rpc_url, chain_id, market, from_block}; reads go through rpc_url (or the
   * wallet when none is given), writes through the wallet. */
  constructor(config, provider) {
    this.config = config;
    this.address = config.market;
    this.fromBlock = BigInt(config.from_block || 0);
    const transport = config.rpc_url ? http(config.rpc_url, { retryCount: 1 }) : custom(provider);
    // no block-number cache: a job's events must show up at the next poll
    this.public = createPublicClient({ transport, pollingInterval: 500, cacheTime: 0 });
    this.provider = provider;
    this.wallet = provider ? createWalletClient({ transport: custom(provider) }) : null;
    this.topics = Object.fromEntries(JOB_EVENTS.map((n) => [eventTopic(marketAbi, n), n]));
    this.courtTopics = Object.fromEntries(COURT_EVENTS.map((n) => [eventTopic(courtAbi, n), n]));
  }

  read(functionName, args = [], blockNumber = undefined) {
    return this.public.readContract({ address: this.address, abi: marketAbi, functionName, args,
      blockNumber });
  }

  readCourt(functionName, args = []) {
    return this.public.readContract({ address: this.court, abi: courtAbi, functionName, args });
  }

  readToken(functionName, args = []) {
    return this.public.readContract({ address: this.token, abi: erc20Abi, functionName, args });
  }

  /** Court, token and the token's units; throws when no market is deployed there. */
  async load() {
    const code = await this.public.getCode({ address: this.address });
    if (!code || code === "0x") throw new Error(`no market deployed at ${this.address}`);
    this.chainId = await this.public.getChainId();
    [this.court, this.token] = await Promise.all([this.read("court"), this.read("token")]);
    [this.symbol, this.decimals] = await Promise.all([
      this.readToken("symbol"), this.readToken("decimals"),
    ]);
    return this;
  }

  async logs(address, topics, abi, fromBlock = this.fromBlock) {
    const head = await this.public.getBlockNumber();
    let raw = [];
    for (let first = fromBlock; first <= head; first += MAX_LOG_RANGE) {
      const last = first + MAX_LOG_RANGE - 1n < head ? first + MAX_LOG_RANGE - 1n : head;
      raw = raw.concat(
        await this.public.request({
          method: "eth_getLogs",
          params: [{ address, topics, fromBlock: toHex(first), toBlock: toHex(last) }],
        }),
      );
    }
    return parseEventLogs({ abi, logs: raw });
  }

  /** Registered models with their serving nodes: price per token, stake, eligibility. */
  async models() {
    const regs = await this.logs(this.address, [eventTopic(marketAbi, "ModelRegistered")], marketAbi);
    return Promise.all(
      regs.map(async (log) => {
        const id = log.args.model_id;
        const addrs = await this.read("model_nodes", [id]);
        const nodes = await Promise.all(
          addrs.map(async (node) => {
            const [price, info, eligible] = await Promise.all([
              this.read("serve_price", [node, id]), this.read("node_info", [node]),
              this.read("is_eligible", [node, id]),
            ]);
            return { address: node, price, stake: info.stake, eligible, slashed: info.slashed,
              pubkey: info.pubkey };
          }),
        );
        return { id, name: log.args.name, revision: log.args.revision, nodes };
      }),
    );
  }

  /** Jobs rebuilt from the market's events: by ids, or every job of `client`. */
  async jobs({ ids = null, client = null } = {}) {
    const topics = [Object.keys(this.topics)];
    if (ids) topics.push(ids.map((i) => pad(toHex(i), { size: 32 })));
    let logs = await this.logs(this.address, topics, marketAbi);
    if (client) {
      const mine = new Set(
        logs.filter((l) => l.eventName === "JobSubmitted" && l.args.client.toLowerCase() ===
          client.toLowerCase()).map((l) => l.args.job_id),
      );
      logs = logs.filter((l) => mine.has(l.args.job_id));
    }
    const jobs = new Map();
    for (const log of logs) {
      const a = log.args;
      if (log.eventName === "JobSubmitted") {
        jobs.set(a.job_id, {
          job_id: a.job_id, client: a.client, model_id: a.model_id, input: a.input,
          params: a.params, input_hash: keccak256(a.input), params_hash: keccak256(a.params),
          max_tokens: a.max_tokens, max_payment: a.max_payment, preferred_node: a.preferred_node,
          submitted_at: a.submitted_at, claim_deadline: a.claim_deadline,
          result_deadline: a.result_deadline, node: ZERO_ADDRESS, price_per_token: 0n,
          collateral: 0n, output_tokens: 0, finish_reason: 0, result_digest: ZERO_BYTES32,
          published_at: 0n, published_block: 0n, output: "0x", status: "OPEN",
          txs: { submitted: log.transactionHash }, lastBlock: log.blockNumber,
        });
        continue;
      }
      const job = jobs.get(a.job_id);
      if (!job) continue;
      job.lastBlock = log.blockNumber;
      if (log.eventName === "JobClaimed") {
        Object.assign(job, { node: a.node, price_per_token: a.price_per_token,
          collateral: a.collateral, status: "CLAIMED" });
        job.txs.claimed = log.transactionHash;
      } else if (log.eventName === "ResultPublished") {
        Object.assign(job, { node: a.node, output: a.output, output_tokens: a.output_tokens,
          finish_reason: a.finish_reason, result_digest: a.result_digest,
          published_at: a.published_at, published_block: a.published_block,
          status: "PUBLISHED" });
        job.txs.published = log.transactionHash;
      } else if (log.eventName === "JobVerifying") {
        job.status = "VERIFYING";
        job.txs.disputed = log.transactionHash;
      } else if (log.eventName === "JobFinalized") {
        Object.assign(job, { status: "FINALIZED", refund: a.refund });
        job.txs.finalized = log.transactionHash;
      } else if (log.eventName === "JobCancelled" || log.eventName === "JobExpired") {
        Object.assign(job, { status: log.eventName === "JobCancelled" ? "CANCELLED" : "EXPIRED",
          refund: a.refund });
        job.txs.closed = log.transactionHash;
      } else if (log.eventName === "JobSlashed") {
        Object.assign(job, { status: "SLASHED", refund: a.refund, slashed: a.slashed });
        job.txs.slashed = log.transactionHash;
      }
    }
    return [...jobs.values()].sort((x, y) => (x.job_id < y.job_id ? -1 : 1));
  }

  /** Whether the published output is held: the digest recomputed here equals the one the
   * node published, and the market's stored job hash matches the job rebuilt from events
   * (a finalized job's hash is deleted: its record rests on the market's own events). */
  async digestOk(job, jobKey = null) {
    if (job.published_block === 0n) return false;
    if (isPrivate(job)) {
      if (!jobKey) return false;
      let packed;
      try {
        packed = openOutput(job.output, jobKey, job.job_id);
      } catch {
        return false;
      }
      if (privateDigest(job, packed, jobKey) !== job.result_digest) return false;
    } else if (expectedDigest(job) !== job.result_digest) {
      return false;
    }
    if (job.status === "FINALIZED") return true;
    const stored = await this.read("job_hash", [job.job_id]);
    if (stored === ZERO_BYTES32) {
      // finalized since its events were read (the market deletes a finalized job's hash):
      // its JobFinalized event vouches for the record; anything else is not held
      return Number(await this.read("job_status", [job.job_id])) === STATUS.indexOf("FINALIZED");
    }
    return stored.slice(0, 64) === structHash(job).slice(0, 64);
  }

  /** The court's record of a job's dispute, plus its events. */
  async dispute(jobId) {
    const info = await this.readCourt("dispute_info", [jobId]);
    const events = await this.logs(
      this.court, [Object.keys(this.courtTopics), pad(toHex(jobId), { size: 32 })], courtAbi,
    );
    return { ...info, phaseName: PHASE[info.phase], events };
  }

  async balances(account) {
    const [wallet, prepaid, claimable, allowance] = await Promise.all([
      this.readToken("balanceOf", [account]), this.read("balance_of", [account]),
      this.read("claimable", [account]), this.readToken("allowance", [account, this.address]),
    ]);
    return { wallet, prepaid, claimable, allowance };
  }

  /** Simulate, then send through the wallet, then wait for the receipt. */
  async send(account, { address, abi, functionName, args }) {
    const { request } = await this.public.simulateContract({ account, address, abi,
      functionName, args });
    const hash = await this.wallet.writeContract({ ...request, account, chain: null });
    const receipt = await this.public.waitForTransactionReceipt({ hash, pollingInterval: 250 });
    if (receipt.status !== "success") throw new Error(`${functionName} reverted (tx ${hash})`);
    return receipt;
  }

  sendMarket(account, functionName, args) {
    return this.send(account, { address: this.address, abi: marketAbi, functionName, args });
  }

  sendCourt(account, functionName, args) {
    return this.send(account, { address: this.court, abi: courtAbi, functionName, args });
  }

  sendToken(account, functionName, args) {
    return this.send(account, { address: this.token, abi: erc20Abi, functionName, args });
  }

  /** JobSubmitted's job id from a receipt. */
  submittedId(receipt) {
    const [log] = parseEventLogs({ abi: marketAbi, eventName: "JobSubmitted", logs: receipt.logs });
    return log.args.job_id;
  }
}

export { hexToBigInt };
