// The nodes' track record, as `verinfer web` serves it in providers.json (same origin): per
// registered model, its nodes ranked by `verinfer.routing.rank` on the records of
// `verinfer.indexer`, best first (the data of the gateway's GET /v1/providers). The page decodes
// no event for it: the record is computed once, in Python.

const TIMEOUT_MS = 5000;

// integers beyond 2^53 (stakes and prices in base units) parsed exactly, as BigInt
function exact(_key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && /^-?\d+$/.test(context?.source ?? "")) {
    return BigInt(context.source);
  }
  return value;
}

/** providers.json for `market`: `{ ok: true, snapshot, byModel }` (byModel: lower-case model
 * id -> its providers, best first), or `{ ok: false, reason }` when it is missing, fails,
 * belongs to another market or has no data yet. */
export async function loadProviders(market) {
  let snapshot;
  try {
    const res = await fetch("providers.json", { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (!res.ok) return { ok: false, reason: `providers.json: HTTP ${res.status}` };
    snapshot = JSON.parse(await res.text(), exact);
  } catch (err) {
    return { ok: false, reason: `providers.json: ${err?.message || err}` };
  }
  if (!snapshot || !Array.isArray(snapshot.data)) return { ok: false, reason: "providers.json: not a providers list" };
  if (String(snapshot.market || "").toLowerCase() !== market.toLowerCase()) {
    return { ok: false, reason: "providers.json is for another market" };
  }
  if (!snapshot.data.length && snapshot.error) return { ok: false, reason: snapshot.error };
  const byModel = new Map(snapshot.data.map((m) => [m.model_id.toLowerCase(), m.providers]));
  return { ok: true, snapshot, byModel };
}

/** A model's chain nodes in the record's order (ranked ones first, best first; then the
 * others as the chain lists them), each with its record (`rec`, or null) and rank (or null). */
export function rankedNodes(model, providers) {
  const ranked = providers?.byModel.get(model.id.toLowerCase()) || [];
  const order = new Map(ranked.map((p, i) => [p.node.toLowerCase(), i]));
  return model.nodes
    .map((n) => {
      const i = order.get(n.address.toLowerCase());
      return { ...n, rank: i ?? null, rec: i === undefined ? null : ranked[i] };
    })
    .sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity));
}

/** Whether a record holds no job yet: a new node, tried first by the router (warm-up). */
export function isNew(rec) {
  return !rec || (rec.claimed === 0 && rec.offered === 0);
}

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago": `then` seen from `now` (chain seconds). */
export function ago(then, now) {
  const s = Math.max(0, Number(now) - Number(then));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** The record's cells: score, served (success rate, published of claimed), publish p50 and
 * last seen, as HTML (a node with no record: "new"). */
export function recordCells(rec, snapshot) {
  if (!rec) return { score: "—", served: "—", p50: "—", seen: "—" };
  const score = isNew(rec)
    ? '<span class="new" title="no record yet: the router tries it first (warm-up)">new</span>'
    : `<strong>${rec.score.toFixed(3)}</strong>${rec.warming_up ? ' <span class="tag" title="fewer than 2 outcomes: tried first">warm-up</span>' : ""}`;
  const served = rec.claimed > 0
    ? `${Math.round((100 * rec.published) / rec.claimed)}% <span class="tag" title="published of claimed">${rec.published}/${rec.claimed}</span>`
    : "—";
  const p50 = rec.publish_p50_s === null || rec.publish_p50_s === undefined ? "—" : `${rec.publish_p50_s} s`;
  const seen = rec.last_seen > 0 ? ago(rec.last_seen, snapshot.indexed_time) : "—";
  return { score, served, p50, seen };
}
