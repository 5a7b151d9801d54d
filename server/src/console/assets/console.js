// Tollgate console: polls the node's JSON calls under /ui/api every second and redraws.
// The key the user pastes stays in this tab (sessionStorage) and goes out only as
// `Authorization: Bearer <key>`. Everything from the server is put in the page as text.
"use strict";

const POLL_MS = 1000;
const TENANTS_EVERY_POLLS = 10;
const AUDIT_KEPT_MAX = 200;
const AUDIT_SHOWN_MAX = 60;
const REFUSALS_SHOWN_MAX = 15;
const AGENTS_SEEN_MAX = 8;

const state = {
  key: sessionStorage.getItem("tollgate.key") || "",
  tenant: sessionStorage.getItem("tollgate.tenant") || "",
  me: null,
  polls: 0,
  audit: [],
  afterSeq: null,
  busy: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (state.key) headers.Authorization = "Bearer " + state.key;
  let response;
  try {
    response = await fetch("/ui/api/" + path, { ...options, headers });
  } catch (error) {
    throw new ApiError(0, "the node did not answer: " + error.message);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, body.error || response.statusText);
  }
  return body;
}

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : "-";
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- cluster -------------------------------------------------------------------------

function nodeRow(n) {
  return el("tr", { "data-node": n.id },
    el("td", {}, n.id), el("td", {}, n.addr),
    el("td", { class: "role-" + n.role, title: n.error }, n.role),
    el("td", {}, n.error ? "-" : n.term), el("td", {}, n.leader_id ?? "-"),
    el("td", {}, n.commit_index), el("td", {}, n.applied_index), el("td", {}, n.lag),
    el("td", {}, n.error ? "-" : n.quorum ? "yes" : "no"),
    el("td", {}, n.reservations_in_flight));
}

async function pollCluster() {
  if (!state.me || !state.me.admin) {
    $("cluster-note").textContent = "cluster health needs the admin key";
    fill($("nodes").tBodies[0], []);
    return;
  }
  try {
    const nodes = await api("cluster");
    fill($("nodes").tBodies[0], nodes.map(nodeRow));
    const leader = nodes.find((n) => n.role === "leader");
    $("cluster-note").textContent = leader ? `leader: node ${leader.id}, term ${leader.term}` : "no leader";
  } catch (error) {
    if (error.status === 401) throw error;
    $("cluster-note").textContent = error.message;
  }
}

// --- tenants and limits --------------------------------------------------------------

async function pollTenants() {
  const tenants = await api("tenants");
  const select = $("tenant");
  const current = state.tenant && tenants.includes(state.tenant) ? state.tenant : tenants[0] || "";
  select.replaceChildren(...tenants.map((t) => el("option", { value: t }, t)));
  select.value = current;
  if (current !== state.tenant) selectTenant(current);
}

function selectTenant(tenant) {
  state.tenant = tenant;
  sessionStorage.setItem("tollgate.tenant", tenant);
  state.audit = [];
  state.afterSeq = null;
}

function percent(part, whole) {
  if (!whole) return 0;
  return Math.max(0, Math.min(100, (100 * part) / whole));
}

// Through the CSSOM: the page's Content-Security-Policy allows no inline style attribute.
function width(node, percentage) {
  node.style.width = `${percentage}%`;
  return node;
}

function limitRow(l) {
  const used = percent(l.used, l.amount);
  const held = Math.min(100 - used, percent(l.held, l.amount));
  const level = used + held >= 100 ? "full" : used + held >= 80 ? "warn" : "";
  const who = l.agent ? `${l.scope} · ${l.agent}` : l.scope;
  const figures = l.amount_text === null
    ? `${l.used_text} used`
    : `${l.used_text} + ${l.held_text} held of ${l.amount_text}`;
  return el("div", { class: "limit", "data-limit": l.id, "data-agent": l.agent || "" },
    el("div", { class: "name" }, l.id, el("small", {}, `${who} · ${l.dimension} · ${l.kind}`)),
    el("div", {
      class: "bar " + level, role: "meter", "data-used": l.used, "data-held": l.held,
      "data-amount": l.amount ?? "", "aria-valuenow": Math.round(used + held),
    },
    width(el("span", { class: "used" }), used),
    width(el("span", { class: "held" }), held)),
    el("div", { class: "figures" }, figures));
}

function agentState(view) {
  if (!view) return el("span", { class: "muted" }, "Pick an agent to see its state.");
  if (view.error) return el("span", { class: "muted" }, view.error);
  const a = view.data;
  const status = a.frozen
    ? el("span", { class: "state-frozen", id: "agent-status" }, "frozen")
    : a.tripped
      ? el("span", { class: "state-frozen", id: "agent-status" }, "tripped: " + a.tripped)
      : el("span", { class: "state-ok", id: "agent-status" }, "may reserve");
  return el("span", {}, `agent ${a.agent}: `, status);
}

function reservationRow(r) {
  return el("tr", {}, el("td", {}, r.id), el("td", {}, r.agent), el("td", {}, r.tool),
    el("td", {}, r.tokens), el("td", {}, r.cost_text),
    el("td", {}, time(r.granted_at_ms)), el("td", {}, time(r.expires_at_ms)));
}

async function pollTenant() {
  if (!state.tenant) return;
  const agent = $("agent").value.trim();
  const query = new URLSearchParams({ tenant: state.tenant });
  if (agent) query.set("agent", agent);
  const view = await api("tenant?" + query);
  const agentLimits = view.agent && view.agent.data ? view.agent.data.limits : [];
  const shown = [...view.limits, ...agentLimits.filter((l) => l.scope === "each-agent")];
  $("limits").replaceChildren(...shown.map(limitRow));
  if (!shown.length) $("limits").append(el("p", { class: "muted" }, "no limits"));
  $("agent-state").replaceChildren(agentState(view.agent));
  const reservations = view.reservations;
  fill($("reservations").tBodies[0], (reservations.data || []).map(reservationRow));
  $("reservations-note").textContent = reservations.error
    || `${(reservations.data || []).length} in flight`;
}

// --- audit trail, denials and trips --------------------------------------------------

async function pollAudit() {
  const query = new URLSearchParams();
  if (state.tenant) query.set("tenant", state.tenant);
  if (state.afterSeq !== null) query.set("after_seq", state.afterSeq);
  let page;
  try {
    page = await api("audit?" + query);
  } catch (error) {
    if (error.status === 401) throw error;
    $("audit-note").textContent = error.message;
    return;
  }
  state.audit = state.audit.concat(page.records).slice(-AUDIT_KEPT_MAX);
  if (page.next_after_seq !== null) state.afterSeq = page.next_after_seq;
  $("audit-note").textContent = page.caught_up ? "" : "catching up…";
  drawAudit();
}

function auditRow(r) {
  return el("tr", { "data-seq": r.seq, "data-kind": r.kind },
    el("td", {}, r.seq), el("td", {}, time(r.at_ms)), el("td", {}, r.agent),
    el("td", {}, r.tool), el("td", { class: "kind-" + r.kind, title: r.event }, r.event),
    el("td", {}, r.tokens || ""), el("td", {}, r.cost_text === "$0.00" ? "" : r.cost_text));
}

function drawAudit() {
  const kinds = [...new Set(state.audit.map((r) => r.kind))].sort();
  const select = $("audit-kind");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all events"),
    ...kinds.map((k) => el("option", { value: k }, k)));
  select.value = kinds.includes(chosen) ? chosen : "";
  const agentFilter = $("audit-agent").value.trim();
  const shown = state.audit
    .filter((r) => !select.value || r.kind === select.value)
    .filter((r) => !agentFilter || r.agent.includes(agentFilter))
    .slice(-AUDIT_SHOWN_MAX).reverse();
  fill($("audit").tBodies[0], shown.map(auditRow));
  const refusals = state.audit.filter((r) => r.kind === "deny" || r.kind === "trip")
    .slice(-REFUSALS_SHOWN_MAX).reverse();
  $("refusals").replaceChildren(...refusals.map((r) => el("li", { "data-seq": r.seq },
    el("span", { class: "kind" }, r.kind), `${time(r.at_ms)} ${r.agent} · ${r.tool}: ${r.event}`)));
  if (!refusals.length) $("refusals").append(el("li", { class: "muted" }, "none recently"));
  const agents = [...new Set(state.audit.map((r) => r.agent).filter(Boolean))].slice(-AGENTS_SEEN_MAX);
  $("agents-seen").replaceChildren(...agents.map((a) => el("span", { class: "chip", "data-agent": a }, a)));
}

// --- kill switch ---------------------------------------------------------------------

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function killSwitch(frozen, wholeTenant) {
  const agent = wholeTenant ? "" : $("agent").value.trim();
  if (!state.tenant) return;
  if (!wholeTenant && !agent) {
    $("action-result").textContent = "Type or pick an agent first.";
    return;
  }
  const what = wholeTenant ? `the whole tenant ${state.tenant}` : `agent ${agent} of ${state.tenant}`;
  const text = frozen
    ? `Freeze ${what}? Every new reservation will be denied until it is unfrozen.`
    : `Unfreeze ${what}? New reservations will be admitted again.`;
  if (!(await confirmAction(text))) return;
  try {
    const done = await api("freeze", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ tenant: state.tenant, agent, frozen }),
    });
    $("action-result").textContent = `${frozen ? "Frozen" : "Unfrozen"}: ${what} (log index ${done.log_index}).`;
  } catch (error) {
    $("action-result").textContent = `Refused (${error.status}): ${error.message}`;
  }
  refresh();
}

// --- the loop ------------------------------------------------------------------------

function showKeyForm(show) {
  $("key-form").hidden = !show;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    if (!state.me) {
      state.me = await api("whoami");
      showKeyForm(state.me.auth);
      $("who").textContent = !state.me.auth ? "authentication off (dev): admin"
        : state.me.admin ? "admin key" : `key of tenant ${state.me.tenant}`;
    }
    if (state.polls % TENANTS_EVERY_POLLS === 0 || !state.tenant) await pollTenants();
    await Promise.all([pollCluster(), pollTenant(), pollAudit()]);
    banner("");
    state.polls += 1;
  } catch (error) {
    if (error.status === 401) {
      state.me = null;
      showKeyForm(true);
      $("who").textContent = "not signed in";
      banner(`401 Unauthorized: ${error.message}. Paste a valid API key above.`);
    } else {
      banner(`${error.status || "error"}: ${error.message}`);
    }
  } finally {
    state.busy = false;
  }
}

function start() {
  $("key").value = state.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("tollgate.key", state.key);
    state.me = null;
    state.polls = 0;
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem("tollgate.key");
    state.key = "";
    $("key").value = "";
    state.me = null;
    refresh();
  });
  $("tenant").addEventListener("change", (event) => { selectTenant(event.target.value); refresh(); });
  $("agent").addEventListener("change", refresh);
  $("agents-seen").addEventListener("click", (event) => {
    const agent = event.target.dataset && event.target.dataset.agent;
    if (agent) { $("agent").value = agent; refresh(); }
  });
  $("audit-kind").addEventListener("change", drawAudit);
  $("audit-agent").addEventListener("input", drawAudit);
  $("freeze-agent").addEventListener("click", () => killSwitch(true, false));
  $("unfreeze-agent").addEventListener("click", () => killSwitch(false, false));
  $("freeze-tenant").addEventListener("click", () => killSwitch(true, true));
  $("unfreeze-tenant").addEventListener("click", () => killSwitch(false, true));
  refresh();
  setInterval(refresh, POLL_MS);
}

start();
