// verinfer's page: a wallet, the market, a chat paid per message. No server holds a key or a
// token: reads go to the configured RPC, every transaction is signed by the injected wallet.
import { BaseError, ContractFunctionRevertedError, UserRejectedRequestError, formatUnits,
  parseUnits, getAddress } from "viem";
import { Tokenizer } from "@huggingface/tokenizers";
import { Market, encodeChatInput, encodeParams, unpackTokens, asStruct, decodeInput,
  MAX_INPUT_BYTES, ZERO_ADDRESS, isPrivate, PRIVATE_JOBS } from "./chain.js";
import { sealInput, openOutput, usableKey, saveJobKey, loadJobKey } from "./private.js";
import { loadProviders, rankedNodes, recordCells, isNew } from "./providers.js";

const $ = (id) => document.getElementById(id);
const state = {
  config: null, market: null, account: null, rightChain: false, models: [], balances: null,
  conversation: [], followed: new Map(), tokenizers: new Map(), busy: false, dispute: new Map(),
  providers: null, // providers.json: the nodes' track record (providers.js), null when unavailable
  picked: new Map(), // model id -> the node the person chose ("" for any node)
};
const POLL_MS = 1000;

// ---- small helpers ----
function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
function short(addr) {
  return addr ? `${addr.slice(0, 8)}…${addr.slice(-4)}` : "";
}
function fmt(v) {
  if (v === undefined || v === null || !state.market) return "—";
  return `${formatUnits(v, state.market.decimals)} ${state.market.symbol}`;
}
function amount(v) { // in token units, the symbol in the column's header
  return formatUnits(v, state.market.decimals);
}
function nodeName(addr) {
  return `<code title="${esc(addr)}">${esc(short(addr))}</code>`;
}
function banner(text, kind = "error") {
  const el = $("banner");
  el.hidden = !text;
  el.className = `banner ${kind === "info" ? "info" : ""}`;
  el.innerHTML = text || "";
}
function step(id, text, { spin = true, error = false } = {}) {
  const el = $(id);
  el.hidden = !text;
  el.className = `step${error ? " error" : ""}`;
  el.innerHTML = text ? `${spin && !error ? '<span class="spinner"></span>' : ""}${text}` : "";
}

/** One line a person can act on, from whatever the wallet, the RPC or the contract threw. */
export function errorText(err) {
  if (err instanceof BaseError) {
    if (err.walk((e) => e instanceof UserRejectedRequestError || e?.code === 4001)) {
      return "You rejected the signature: nothing was sent.";
    }
    const revert = err.walk((e) => e instanceof ContractFunctionRevertedError);
    if (revert) return `The contract refused: ${revert.reason || revert.shortMessage}`;
    if (err.walk((e) => e?.name === "HttpRequestError" || e?.name === "TimeoutError")) {
      return `The RPC does not answer (${esc(state.config?.rpc_url || "wallet")}): check your connection; the page retries.`;
    }
    return err.shortMessage;
  }
  if (err?.code === 4001) return "You rejected the signature: nothing was sent.";
  return err?.message || String(err);
}

// ---- start: configuration and the market ----
async function loadConfig() {
  let config = {};
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    if (res.ok) config = await res.json();
  } catch {
    // a static host without config.json: the query string must say where the market is
  }
  const q = new URLSearchParams(location.search);
  for (const key of ["rpc_url", "market", "chain_id", "from_block", "claim_window"]) {
    if (q.get(key)) config[key] = q.get(key);
  }
  if (config.chain_id) config.chain_id = Number(config.chain_id);
  return config;
}

async function start() {
  state.config = await loadConfig();
  if (!state.config.market) {
    banner("No market configured: open the page with <code>?market=0x…&amp;rpc_url=…&amp;chain_id=…</code> or serve a config.json beside it.");
    return;
  }
  $("connect").onclick = connect;
  $("deposit").onclick = deposit;
  $("withdraw").onclick = withdraw;
  $("collect").onclick = collect;
  $("send").onclick = send;
  $("new-chat").onclick = () => { state.conversation = []; $("conversation").innerHTML = ""; estimate(); };
  $("model").onchange = () => { fillNodes(); estimate(); };
  $("node").onchange = () => { state.picked.set($("model").value, $("node").value); estimate(); };
  $("max-tokens").oninput = estimate;
  $("private-label").hidden = !PRIVATE_JOBS;
  $("message").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
  await loadMarket();
  setInterval(poll, POLL_MS);
}

async function loadMarket() {
  try {
    state.market = await new Market(state.config, window.ethereum).load();
    banner("");
    renderNetwork();
    $("connect").disabled = false;
    await refreshModels();
  } catch (err) {
    state.market = null;
    banner(`Cannot reach the market: ${errorText(err)}`);
    setTimeout(loadMarket, 3000);
  }
}

function renderNetwork() {
  const m = state.market;
  const wallet = state.account
    ? `${nodeName(state.account)} ${state.rightChain ? '<span class="ok">right network</span>' : '<span class="bad">wrong network</span>'}`
    : "not connected";
  $("network").innerHTML = `
    <dt>wallet</dt><dd id="net-status">${wallet}</dd>
    <dt>chain</dt><dd id="net-chain">${m.chainId}${state.config.rpc_url ? ` via <code>${esc(state.config.rpc_url)}</code>` : ""}</dd>
    <dt>market</dt><dd><code id="net-market">${esc(m.address)}</code></dd>
    <dt>token</dt><dd id="net-token">${esc(m.symbol)} <code>${esc(short(m.token))}</code></dd>`;
}

// ---- wallet ----
async function connect() {
  if (!window.ethereum) {
    banner("No wallet found in this browser: install one (MetaMask, Rabby, Frame…) and reload.");
    return;
  }
  try {
    const [account] = await window.ethereum.request({ method: "eth_requestAccounts" });
    state.account = getAddress(account);
    window.ethereum.on?.("accountsChanged", (a) => { state.account = a[0] ? getAddress(a[0]) : null; checkChain(); });
    window.ethereum.on?.("chainChanged", () => checkChain());
    $("connect").textContent = short(state.account);
    await checkChain();
  } catch (err) {
    banner(errorText(err));
  }
}

async function checkChain() {
  const id = Number(await window.ethereum.request({ method: "eth_chainId" }));
  state.rightChain = id === state.market.chainId;
  if (!state.rightChain) {
    banner(`Wrong network: your wallet is on chain ${id}, this market is on chain ${state.market.chainId}. <button id="switch">Switch network</button>`);
    $("switch").onclick = async () => {
      try {
        await window.ethereum.request({ method: "wallet_switchEthereumChain",
          params: [{ chainId: `0x${state.market.chainId.toString(16)}` }] });
        await checkChain();
      } catch (err) { banner(errorText(err)); }
    };
  } else {
    banner("");
  }
  renderNetwork();
  enable();
  await refreshBalances();
  await refreshJobs();
}

function enable() {
  const ok = Boolean(state.account && state.rightChain && !state.busy);
  for (const id of ["deposit", "withdraw", "collect", "send"]) $(id).disabled = !ok;
}

// ---- balances ----
async function refreshBalances() {
  if (!state.account || !state.market) return;
  state.balances = await state.market.balances(state.account);
  const b = state.balances;
  $("balances").innerHTML = `
    <dt>wallet</dt><dd id="bal-wallet">${fmt(b.wallet)}</dd>
    <dt>prepaid</dt><dd id="bal-prepaid">${fmt(b.prepaid)}</dd>
    <dt>credits</dt><dd id="bal-claimable">${fmt(b.claimable)}</dd>
    <dt>approved</dt><dd id="bal-allowance">${fmt(b.allowance)}</dd>`;
  estimate();
}

function amountInput() {
  const text = $("amount").value.trim();
  let v;
  try { v = parseUnits(text, state.market.decimals); } catch { v = -1n; }
  if (!text || v <= 0n) throw new Error(`Enter an amount of ${state.market.symbol} above 0.`);
  return v;
}

async function guarded(stepId, fn) {
  if (state.busy) return;
  state.busy = true;
  enable();
  try {
    await fn();
  } catch (err) {
    step(stepId, errorText(err), { error: true });
  } finally {
    state.busy = false;
    enable();
    await refreshBalances().catch(() => {});
  }
}

async function deposit() {
  await guarded("balance-step", async () => {
    const amount = amountInput();
    const b = await state.market.balances(state.account);
    if (b.wallet < amount) {
      throw new Error(`Balance too small: your wallet holds ${fmt(b.wallet)}, the deposit needs ${fmt(amount)}.`);
    }
    if (b.allowance < amount) {
      step("balance-step", `Approve ${fmt(amount)} for the market: sign in your wallet…`);
      await state.market.sendToken(state.account, "approve", [state.market.address, amount]);
    }
    step("balance-step", `Deposit ${fmt(amount)}: sign in your wallet…`);
    await state.market.sendMarket(state.account, "deposit", [amount]);
    step("balance-step", `Deposited ${fmt(amount)}.`, { spin: false });
  });
}

async function withdraw() {
  await guarded("balance-step", async () => {
    const amount = amountInput();
    const b = await state.market.balances(state.account);
    if (b.prepaid < amount) {
      throw new Error(`Balance too small: your prepaid balance is ${fmt(b.prepaid)}, you asked for ${fmt(amount)}.`);
    }
    step("balance-step", `Withdraw ${fmt(amount)}: sign in your wallet…`);
    await state.market.sendMarket(state.account, "withdraw_deposit", [amount]);
    step("balance-step", `Withdrew ${fmt(amount)} to your wallet.`, { spin: false });
  });
}

async function collect() {
  await guarded("balance-step", async () => {
    const b = await state.market.balances(state.account);
    if (b.claimable === 0n) throw new Error("No credits to collect.");
    step("balance-step", `Collect ${fmt(b.claimable)} of credits: sign in your wallet…`);
    await state.market.sendMarket(state.account, "withdraw", []);
    step("balance-step", `Collected ${fmt(b.claimable)} to your wallet.`, { spin: false });
  });
}

// ---- models ----
async function refreshModels() {
  const [models, providers] = await Promise.all([
    state.market.models(), loadProviders(state.market.address)]);
  state.models = models;
  state.providers = providers.ok ? providers : null;
  if (!state.models.length) {
    $("models").textContent = "No model is registered in this market yet.";
    return;
  }
  const snap = providers.ok ? providers.snapshot : null;
  const status = snap
    ? `<div id="record-status" class="muted">track record at block ${snap.indexed_block}${snap.stale ? ` <span class="bad" title="${esc(snap.error)}">(stale: the server cannot reach the chain)</span>` : ""}</div>`
    : `<div id="record-status" class="muted" title="${esc(providers.reason)}">track record unavailable</div>`;
  $("models").innerHTML = status + state.models.map((m) => `
    <div class="model" data-model="${esc(m.id)}"><strong>${esc(m.name)}</strong> <span class="muted">@${esc(m.revision)}</span>
      <code class="muted" title="${esc(m.id)}">${esc(m.id.slice(0, 10))}</code>
      <table class="record"><tr><th>node</th><th>score</th><th>served</th><th>p50</th><th>price<span class="unit">${esc(state.market.symbol)} / token</span></th><th>stake<span class="unit">${esc(state.market.symbol)}</span></th><th>seen</th><th></th></tr>
      ${rankedNodes(m, state.providers).map((n) => {
        const c = recordCells(n.rec, snap);
        return `<tr><td>${nodeName(n.address)}</td><td class="score">${c.score}</td><td class="served">${c.served}</td>
        <td class="p50">${c.p50}</td><td>${amount(n.price)}</td><td>${amount(n.stake)}</td><td class="seen">${c.seen}</td>
        <td>${n.eligible ? '<span class="ok">active</span>' : '<span class="muted">inactive</span>'}</td></tr>`;
      }).join("")}
      </table></div>`).join("");
  const current = $("model").value;
  $("model").innerHTML = state.models.map((m) =>
    `<option value="${m.id}">${esc(m.name)}@${esc(m.revision)}</option>`).join("");
  if (current) $("model").value = current;
  fillNodes();
}

/** The node picker: the model's active nodes in the record's order (best first); the one the
 * person chose for this model stays chosen, else the first node with a record of its own is
 * pre-selected (a person is offered a proven node; an untried one, which the routing order
 * lists first to give it its warm-up, is there to choose), else the record's first. */
function fillNodes() {
  const m = selectedModel();
  const nodes = m ? rankedNodes(m, state.providers).filter((n) => n.eligible) : [];
  const current = $("node").value;
  $("node").innerHTML = `<option value="">any node</option>` + nodes.map((n) => {
    const rec = n.rec ? ` · ${isNew(n.rec) ? "new" : `score ${n.rec.score.toFixed(3)}`}` : "";
    return `<option value="${n.address}">${short(n.address)} (${fmt(n.price)}/token${rec})</option>`;
  }).join("");
  const chosen = m ? state.picked.get(m.id) : undefined;
  const best = (nodes.find((n) => n.rec && !isNew(n.rec)) ?? nodes.find((n) => n.rec))?.address;
  const want = chosen !== undefined ? chosen : (best ?? current);
  if ([...$("node").options].some((o) => o.value === want)) $("node").value = want;
}

function selectedModel() {
  return state.models.find((m) => m.id === $("model").value);
}

/** Price per token of the chosen node, or the highest of the active ones (what the market
 * may charge when any node can claim). */
function priceOf(model, node) {
  const nodes = model.nodes.filter((n) => n.eligible && (!node || n.address === node));
  if (!nodes.length) return null;
  return nodes.reduce((p, n) => (n.price > p ? n.price : p), 0n);
}

function estimate() {
  const m = selectedModel();
  if (!m || !state.market) return;
  const price = priceOf(m, $("node").value);
  const maxTokens = BigInt(Number($("max-tokens").value) || 0);
  if (price === null) {
    $("estimate").textContent = "No active node serves this model: nothing can answer now.";
    return;
  }
  const b = state.balances;
  $("estimate").innerHTML = `Estimated cost: at most <strong id="est-cost">${fmt(price * maxTokens)}</strong>
    (${maxTokens} tokens × ${fmt(price)}); you pay for the tokens written, the rest comes back.
    ${b ? `Prepaid: ${fmt(b.prepaid)}.` : ""}`;
}

// ---- answers: tokenizer in the page ----
async function tokenizerFor(modelId) {
  if (!state.tokenizers.has(modelId)) {
    const load = (async () => {
      const base = `${state.config.tokenizers || "tokenizers"}/${modelId}`;
      const [json, cfg] = await Promise.all([
        fetch(`${base}/tokenizer.json`).then((r) => (r.ok ? r.json() : null)),
        fetch(`${base}/tokenizer_config.json`).then((r) => (r.ok ? r.json() : {})),
      ]);
      return json ? new Tokenizer(json, cfg) : null;
    })().catch(() => null);
    state.tokenizers.set(modelId, load);
  }
  return state.tokenizers.get(modelId);
}

async function answerText(job) {
  let packed = job.output;
  if (isPrivate(job)) {
    const key = loadJobKey(state.market.address, job.job_id);
    if (!key) return { text: null, ids: [], note: "private job: its key is not in this browser" };
    try {
      packed = openOutput(job.output, key, job.job_id);
    } catch {
      return { text: null, ids: [], note: "private job: the output does not decrypt with its key" };
    }
  }
  const ids = unpackTokens(packed);
  const tok = await tokenizerFor(job.model_id);
  if (!tok) return { text: null, ids };
  return { text: tok.decode(ids, { skip_special_tokens: true }), ids };
}

// ---- chat ----
async function send() {
  const text = $("message").value.trim();
  if (!text || state.busy) return;
  await guarded("chat-step", async () => {
    const m = selectedModel();
    if (!m) throw new Error("Pick a model first.");
    const node = $("node").value || ZERO_ADDRESS;
    const price = priceOf(m, node === ZERO_ADDRESS ? "" : node);
    if (price === null) throw new Error("No active node serves this model: nothing can answer now.");
    const maxTokens = Number($("max-tokens").value);
    if (!(maxTokens >= 1)) throw new Error("max tokens must be at least 1.");
    const messages = [...state.conversation, { role: "user", content: text }];
    let input = encodeChatInput(messages);
    let jobKey = null;
    if ($("private").checked) {
      if (node === ZERO_ADDRESS) throw new Error("A private job names its node: pick one.");
      const pubkey = m.nodes.find((n) => n.address === node)?.pubkey;
      if (!pubkey || !usableKey(pubkey)) {
        throw new Error("This node has no usable encryption key: it cannot take private jobs.");
      }
      ({ envelope: input, jobKey } = sealInput(input, pubkey));
    }
    if ((input.length - 2) / 2 > MAX_INPUT_BYTES) {
      throw new Error(`This conversation is too long for one job (${(input.length - 2) / 2} bytes, at most ${MAX_INPUT_BYTES}): start a new conversation.`);
    }
    const payment = BigInt(maxTokens) * price;
    const b = await state.market.balances(state.account);
    const need = payment > b.prepaid ? payment - b.prepaid : 0n;
    if (need > b.wallet) {
      throw new Error(`Balance too small: this message escrows ${fmt(payment)}; prepaid ${fmt(b.prepaid)} + wallet ${fmt(b.wallet)} is short.`);
    }
    if (need > 0n && b.allowance < need) {
      step("chat-step", `Approve ${fmt(need)} for the market: sign in your wallet…`);
      await state.market.sendToken(state.account, "approve", [state.market.address, need]);
    }
    const block = await state.market.public.getBlock();
    const now = block.timestamp;
    const claimWindow = BigInt(state.config.claim_window || 120);
    const params = encodeParams({ maxTokens,
      seed: BigInt(Math.floor(Math.random() * 2 ** 32)) });
    const args = [m.id, input, params, payment, node, now + claimWindow, now + claimWindow + 600n];
    step("chat-step", `Signing: escrow up to ${fmt(payment)}${need ? ` (depositing ${fmt(need)})` : ""}…`);
    const receipt = need > 0n
      ? await state.market.sendMarket(state.account, "deposit_and_submit", [need, ...args])
      : await state.market.sendMarket(state.account, "submit", args);
    const jobId = state.market.submittedId(receipt);
    if (jobKey) saveJobKey(state.market.address, jobId, jobKey);
    state.conversation = messages;
    $("message").value = "";
    const el = document.createElement("div");
    el.className = "msg user";
    el.textContent = text;
    $("conversation").appendChild(el);
    const answer = document.createElement("div");
    answer.className = "msg assistant";
    answer.dataset.job = String(jobId);
    answer.id = `answer-${jobId}`;
    $("conversation").appendChild(answer);
    state.followed.set(jobId, { el: answer, conversation: true, receipt: receipt.transactionHash });
    step("chat-step", "");
    await follow(jobId);
  });
}

const STEPS = {
  OPEN: "submitted: waiting for a node to claim the job",
  CLAIMED: "claimed: the node is running the model",
  PUBLISHED: "published: checking the digest",
};

async function follow(jobId) {
  const f = state.followed.get(jobId);
  if (!f) return;
  const [job] = await state.market.jobs({ ids: [jobId] });
  if (!job) return;
  f.job = job;
  const head = await state.market.public.getBlock();
  const parts = [];
  if (job.published_block > 0n) {
    if (f.text === undefined) {
      const { text, ids, note } = await answerText(job);
      f.text = text;
      f.ids = ids;
      f.note = note;
    }
    f.held = await state.market.digestOk(job, isPrivate(job) ? loadJobKey(state.market.address, jobId) : null);
    if (f.conversation && f.held && !f.added) {
      f.added = true;
      if (f.text) state.conversation = [...state.conversation, { role: "assistant", content: f.text }];
    }
    parts.push(f.text !== null
      ? `<div class="answer-text">${esc(f.text)}</div>`
      : `<div class="answer-text muted">${esc(f.note || `no tokenizer for this model here: token ids ${f.ids.join(" ")}`)}</div>`);
  } else if (job.status === "OPEN") {
    // the client may cancel an unclaimed job at any time; after the claim deadline anyone may
    parts.push(head.timestamp > job.claim_deadline
      ? `<div class="bad">No node claimed this job in time.</div>`
      : `<div class="step"><span class="spinner"></span>${STEPS.OPEN}…</div>`);
    parts.push(`<button class="secondary cancel">Cancel and refund ${fmt(job.max_payment)}</button>`);
  } else if (job.status === "CLAIMED") {
    parts.push(`<div class="step"><span class="spinner"></span>${STEPS.CLAIMED}…</div>`);
  } else if (job.status === "CANCELLED") {
    parts.push(`<div class="bad">Cancelled before any node claimed it.</div>`);
  } else if (job.status === "EXPIRED") {
    parts.push(`<div class="bad">The node did not deliver in time: the job expired and the node was penalised.</div>`);
  }
  const held = job.published_block > 0n
    ? (f.held ? '<span class="ok">held (digest checked)</span>' : '<span class="bad">digest mismatch: not held</span>')
    : "";
  const final = ["FINALIZED", "SLASHED", "CANCELLED", "EXPIRED"].includes(job.status);
  const cost = final ? job.max_payment - job.refund : job.price_per_token * BigInt(job.output_tokens);
  const refund = final ? job.refund : job.max_payment - cost;
  const money = job.published_block > 0n || final
    ? `<span>cost <strong class="cost">${fmt(cost)}</strong></span><span>refund <strong class="refund">${fmt(refund)}</strong></span>`
    : `<span>escrowed ${fmt(job.max_payment)}</span>`;
  const txs = Object.entries(job.txs).map(([k, h]) => `<code title="${h}">${k} ${h.slice(0, 10)}</code>`).join(" ");
  parts.push(`<div class="details"><span>job <strong class="job-id">${job.job_id}</strong>${isPrivate(job) ? " (private)" : ""}</span>
    <span>status <strong class="status">${job.status}</strong></span>
    ${job.node !== ZERO_ADDRESS ? `<span>node ${nodeName(job.node)}</span>` : ""}
    ${job.published_block > 0n ? `<span>${job.output_tokens} tokens</span>` : ""}
    ${money} ${held}<br>transactions: ${txs}</div>`);
  if (job.status === "PUBLISHED" && !state.dispute.has(jobId)) {
    parts.push(isPrivate(job)
      ? `<div class="muted">A private job's dispute hands its key to the verifier: not from this page yet.</div>`
      : `<button class="secondary dispute-open">Dispute this answer</button>`);
  }
  parts.push(`<div class="dispute-box"></div>`);
  const box = f.el.querySelector(".dispute-box");
  const keep = box && box.dataset.keep ? box.outerHTML : null;
  f.el.innerHTML = parts.join("");
  if (keep) f.el.querySelector(".dispute-box").outerHTML = keep;
  f.el.querySelector(".cancel")?.addEventListener("click", () => cancel(job));
  f.el.querySelector(".dispute-open")?.addEventListener("click", () => offerDispute(job));
  if (state.dispute.has(jobId)) await followDispute(jobId);
  if (final && !state.dispute.has(jobId)) state.followed.delete(jobId);
}

async function cancel(job) {
  await guarded("chat-step", async () => {
    step("chat-step", `Cancel job ${job.job_id}: sign in your wallet…`);
    await state.market.sendMarket(state.account, "cancel", [job.job_id, asStruct(job)]);
    step("chat-step", `Job ${job.job_id} cancelled: ${fmt(job.max_payment)} back in your prepaid balance.`, { spin: false });
    await follow(job.job_id);
  });
}

// ---- disputes ----
async function offerDispute(job) {
  const f = state.followed.get(job.job_id);
  const bond = await state.market.readCourt("dispute_bond");
  const box = f.el.querySelector(".dispute-box");
  box.dataset.keep = "1";
  box.className = "dispute-box dispute";
  box.innerHTML = `Disputing puts up a bond of <strong class="bond">${fmt(bond)}</strong> from your prepaid balance.
    A randomly drawn staked node re-executes the job: if the answer is wrong, the node is slashed,
    you are refunded and get the bond back with a reward; if it is right, you lose the bond.
    <div class="row"><button class="dispute-sign">Sign the dispute</button><button class="secondary dispute-keep">Keep the answer</button></div>`;
  box.querySelector(".dispute-keep").onclick = () => { box.dataset.keep = ""; box.innerHTML = ""; box.className = "dispute-box"; };
  box.querySelector(".dispute-sign").onclick = () => guarded("chat-step", async () => {
    const b = await state.market.balances(state.account);
    if (b.prepaid < bond) {
      const need = bond - b.prepaid;
      if (need > b.wallet) throw new Error(`Balance too small: the bond is ${fmt(bond)}, prepaid ${fmt(b.prepaid)} + wallet ${fmt(b.wallet)} is short.`);
      if (b.allowance < need) {
        step("chat-step", `Approve ${fmt(need)}: sign in your wallet…`);
        await state.market.sendToken(state.account, "approve", [state.market.address, need]);
      }
      step("chat-step", `Deposit ${fmt(need)} for the bond: sign in your wallet…`);
      await state.market.sendMarket(state.account, "deposit", [need]);
    }
    step("chat-step", `Dispute job ${job.job_id}: sign in your wallet…`);
    await state.market.sendCourt(state.account, "dispute", [job.job_id, asStruct(job)]);
    step("chat-step", "");
    state.dispute.set(job.job_id, { since: Date.now() });
    box.innerHTML = `<span class="spinner"></span>dispute opened: drawing a verifier…`;
    await follow(job.job_id);
  });
}

const PHASE_TEXT = {
  DRAWING: "dispute opened: a verifier is drawn from a block after the dispute…",
  ASSIGNED: "verifier drawn: waiting for it to accept…",
  ACCEPTED: "the verifier is re-executing the job…",
  APPEALED: "appealed: a panel of three nodes votes…",
  PANEL_DRAWING: "appealed: drawing the panel…",
};

async function followDispute(jobId) {
  const f = state.followed.get(jobId);
  const d = await state.market.dispute(jobId);
  const box = f.el.querySelector(".dispute-box");
  box.dataset.keep = "1";
  box.className = "dispute-box dispute";
  const verdict = d.events.filter((e) => e.eventName === "VerdictPosted").pop();
  const settled = d.events.find((e) => e.eventName === "DisputeSettled");
  const lines = [`<div>dispute: <strong class="phase">${d.phaseName}</strong>, bond ${fmt(d.bond)}</div>`];
  if (d.verifier !== ZERO_ADDRESS) lines.push(`<div>verifier ${nodeName(d.verifier)}</div>`);
  if (verdict) {
    lines.push(`<div class="verdict">verdict: the answer is <strong class="${verdict.args.valid ? "ok" : "bad"}">${verdict.args.valid ? "valid" : "invalid"}</strong>${settled ? "" : " (appeal window open; then it settles)"}</div>`);
  }
  const job = f.job;
  const final = ["FINALIZED", "SLASHED"].includes(job.status);
  if (settled && final) {
    lines.push(settled.args.valid
      ? `<div class="settled">settled: the answer stands${d.phaseName === "UNRESOLVED" ? " (no verifier could be drawn: your bond comes back as credits)" : "; your bond is lost"}.</div>`
      : `<div class="settled">settled: node ${nodeName(settled.args.node)} <strong class="bad">slashed ${fmt(job.slashed)}</strong>; you were refunded ${fmt(job.refund)} and your bond comes back with a reward as credits: collect them above.</div>`);
    state.dispute.delete(jobId);
    state.followed.delete(jobId);
  } else if (PHASE_TEXT[d.phaseName]) {
    lines.push(`<div class="step"><span class="spinner"></span>${PHASE_TEXT[d.phaseName]}</div>`);
    const head = await state.market.public.getBlockNumber();
    const waited = Date.now() - state.dispute.get(jobId).since;
    if (d.phaseName === "DRAWING" && head > d.seed_block && waited > 15000) {
      lines.push(`<button class="secondary draw">Draw the verifier yourself</button>`);
    }
  }
  box.innerHTML = lines.join("");
  box.querySelector(".draw")?.addEventListener("click", () => guarded("chat-step", async () => {
    step("chat-step", "Draw the verifier: sign in your wallet…");
    await state.market.sendCourt(state.account, "draw", [jobId]);
    step("chat-step", "");
  }));
}

// ---- past jobs ----
async function refreshJobs() {
  if (!state.account || !state.market) return;
  const jobs = await state.market.jobs({ client: state.account });
  if (!jobs.length) {
    $("jobs").textContent = "No jobs from this account yet.";
    return;
  }
  const rows = await Promise.all(jobs.slice(-20).reverse().map(async (job) => {
    const final = ["FINALIZED", "SLASHED", "CANCELLED", "EXPIRED"].includes(job.status);
    const cost = final ? job.max_payment - job.refund : job.price_per_token * BigInt(job.output_tokens);
    const after = await state.market.read("balance_of", [state.account], job.lastBlock).catch(() => null);
    const prompt = decodeInput(job.input);
    const asked = Array.isArray(prompt) ? prompt.filter((p) => p.role === "user").pop()?.content : prompt;
    return `<tr data-job="${job.job_id}"><td>${job.job_id}</td><td>${esc(String(asked ?? "").slice(0, 40))}</td>
      <td class="status">${job.status}</td><td>${job.node !== ZERO_ADDRESS ? nodeName(job.node) : "—"}</td>
      <td>${final || job.published_block > 0n ? fmt(cost) : "—"}</td><td>${after === null ? "—" : fmt(after)}</td></tr>`;
  }));
  $("jobs").innerHTML = `<table id="jobs-table"><tr><th>job</th><th>asked</th><th>status</th><th>node</th><th>cost</th><th>prepaid after</th></tr>${rows.join("")}</table>`;
}

// ---- polling ----
let polling = false;
let ticks = 0;
async function poll() {
  if (polling || !state.market) return;
  polling = true;
  try {
    for (const jobId of [...state.followed.keys()]) await follow(jobId);
    if (state.account && state.rightChain) {
      await refreshBalances();
      if (ticks % 3 === 0) await refreshJobs();
    }
    if (ticks % 10 === 0) await refreshModels();
    ticks += 1;
    if ($("banner").dataset.rpc) { banner(""); delete $("banner").dataset.rpc; }
  } catch (err) {
    banner(`${errorText(err)}`);
    $("banner").dataset.rpc = "1";
  } finally {
    polling = false;
  }
}

start();
