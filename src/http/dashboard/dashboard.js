// acctor dashboard: polls the introspection API about once a second and redraws.
// The admin token comes from the URL fragment (#token=...), never from the server.
"use strict";

const POLL_MS = 1000;
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token");
let selected = params.get("account");
let selectedOp = params.get("operation");
let incidentsAvailable = true;
let lastActors = [];

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 404) return { notFound: true };
  if (response.status === 401 || response.status === 403) {
    throw new Error("unauthorized: open the dashboard as /dashboard#token=YOUR_ADMIN_TOKEN");
  }
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

// Builds an element; strings become text nodes (never HTML), so API data cannot inject markup.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function pill(state) {
  return h("span", { class: "pill s-" + state, "data-state": state }, state);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return "0s";
  if (seconds < 60) return Math.round(seconds) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m " + Math.round(seconds % 60) + "s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h " + Math.floor((seconds % 3600) / 60) + "m";
  return Math.floor(seconds / 86400) + "d " + Math.floor((seconds % 86400) / 3600) + "h";
}

function ago(iso) {
  if (!iso) return "never";
  return duration((Date.now() - Date.parse(iso)) / 1000) + " ago";
}

function clock(iso) {
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false });
}

function shortId(id) {
  return id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-4) : id;
}

function setConn(ok, text) {
  document.getElementById("conn-dot").className = "dot " + (ok ? "ok" : "err");
  document.getElementById("conn-text").textContent = text;
}

function banner(message) {
  const el = document.getElementById("banner");
  el.hidden = !message;
  el.textContent = message || "";
}

function setText(id, text, cls) {
  const el = document.getElementById(id);
  el.textContent = text;
  if (cls !== undefined) el.className = "value" + (cls ? " " + cls : "");
}

function renderOverview(o) {
  setText("m-inbox", o.inbox_depth.toLocaleString(), o.inbox_depth > 1000 ? "warn" : "");
  setText("m-retry", o.retry_backlog.toLocaleString(), o.retry_backlog > 0 ? "warn" : "");
  document.getElementById("m-retry-due").textContent = o.retries_due + " due now";
  setText("m-active", o.actors_active.toLocaleString());
  document.getElementById("m-activations").textContent =
    o.activations + " activations · " + o.passivations + " passivations";
}

function renderAccounts(page) {
  lastActors = page.actors;
  const body = document.getElementById("accounts-body");
  const rows = page.actors.map((a) => {
    const outcome = a.last_sync_outcome;
    const lastSync = a.last_sync_finished_at
      ? ago(a.last_sync_finished_at) + (outcome && outcome.outcome === "committed" ? "" : " ✕")
      : a.current ? "running" : "never";
    const error = a.last_error ? a.last_error.code : "";
    return h("tr", {
        class: a.account_id === selected ? "selected" : "",
        "data-account": a.account_id,
        onclick: () => select(a.account_id),
      },
      h("td", { class: "id", title: a.account_id }, shortId(a.account_id)),
      h("td", { title: a.owner_id }, a.aliases[0] || a.owner_id),
      h("td", {}, pill(a.state)),
      h("td", { class: "num" }, a.lag_seconds > 0 ? duration(a.lag_seconds) : "–"),
      h("td", { class: "num" }, a.pending_inbox),
      h("td", { class: "num" }, a.mailbox_depth === null ? "–" : a.mailbox_depth),
      h("td", {}, lastSync),
      h("td", { class: error ? "err" : "", title: a.last_error ? a.last_error.message : "" }, error || "–"),
    );
  });
  body.replaceChildren(...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colspan: 8 }, "no accounts match"))]));
  const syncing = page.actors.filter((a) => a.state === "syncing").length;
  setText("m-syncing", String(syncing));
  document.getElementById("m-listed").textContent =
    page.actors.length + " accounts listed" + (page.next ? " (more: narrow the filter)" : "");
}

function progressBlock(a) {
  const c = a.current;
  if (!c) {
    return h("div", { class: "progress" },
      h("div", { class: "row" }, h("span", { class: "muted" }, "no sync running"),
        h("span", { class: "muted" }, a.next_retry_at ? "next sync " + clock(a.next_retry_at) : "")),
      h("div", { class: "bar" }, h("span", { style: "width:0%" })));
  }
  // The previous committed sync's page count is the best guess of this one's size.
  const prev = a.last_sync_outcome && a.last_sync_outcome.outcome === "committed" ? a.last_sync_outcome.pages : 0;
  const known = prev > 1 && c.pages <= prev;
  const pct = known ? Math.min(100, Math.round((100 * c.pages) / prev)) : null;
  return h("div", { class: "progress", id: "d-progress" },
    h("div", { class: "row" },
      h("span", {}, h("b", {}, "syncing"), " · ", c.reason || "", c.again ? " · another queued" : ""),
      h("span", { class: "mono", id: "d-progress-counts" },
        c.pages + " pages · " + c.rows.toLocaleString() + " rows · " + duration((c.elapsed_ms || 0) / 1000))),
    h("div", { class: "bar" + (known ? "" : " indeterminate") }, h("span", { style: known ? "width:" + pct + "%" : "" })));
}

function kv(pairs) {
  return h("div", { class: "kv" }, pairs.filter(Boolean).flatMap(([k, v, mono]) => [
    h("div", { class: "k" }, k), h("div", { class: "v" + (mono ? " mono" : "") }, v),
  ]));
}

// The push queue of local changes: depth, oldest age, what waits for a human.
function pushes(p, echoes) {
  if (!p) return "none";
  const parts = [p.pending + " pending"];
  if (p.oldest_pending_age_seconds != null) parts.push("oldest " + duration(p.oldest_pending_age_seconds));
  if (p.retrying) parts.push(p.retrying + " retrying");
  if (p.conflicts) parts.push(p.conflicts + " conflict" + (p.conflicts > 1 ? "s" : ""));
  if (p.failed) parts.push(p.failed + " failed");
  parts.push(p.pushed + " pushed", echoes + " echoes");
  return parts.join(" · ") + (p.last_error ? " — " + p.last_error : "");
}

function stripeBlock(m) {
  if (!m || m.notFound) return null;
  const sum = (o) => Object.values(o || {}).reduce((x, y) => x + y, 0);
  const drift = m.drift
    ? sum(m.drift.repaired) + " repaired · " + sum(m.drift.removed) + " removed of " +
      m.drift.checked.toLocaleString() + " checked, " + ago(m.drift.finished_at) +
      (m.drift.ids.length ? " (" + m.drift.ids.slice(0, 5).join(", ") + (m.drift.ids.length > 5 ? ", …" : "") + ")" : "")
    : "none yet";
  return h("div", { class: "stripe" },
    h("h3", {}, "Stripe mirror"),
    h("table", { class: "mini" },
      h("thead", {}, h("tr", {}, h("th", {}, "type"), h("th", {}, "backfill"), h("th", { class: "num" }, "held"), h("th", { class: "num" }, "pages"))),
      h("tbody", {}, m.types.map((t) => h("tr", { "data-type": t.object_type },
        h("td", { class: "mono" }, t.object_type),
        h("td", {}, t.visible ? (t.done ? "done" : "refreshing") : "running"),
        h("td", { class: "num" }, t.held.toLocaleString()),
        h("td", { class: "num" }, String(t.pages)))))),
    kv([
      ["account", m.stripe_account + (m.livemode ? " · live" : " · test") + (m.connect ? " · connect" : ""), true],
      ["events", m.events_applied.toLocaleString() + " applied · " + m.events_stale.toLocaleString() + " stale · " + m.refetches + " re-fetched"],
      ["catch-ups", String(m.catch_ups) + (m.events_checked_through ? " · through " + clock(new Date(m.events_checked_through * 1000).toISOString()) : "")],
      ["pushes", pushes(m.pushes, m.echoes)],
      ["last drift check", drift],
      m.next_drift_check && ["next drift check", "in " + duration(Math.max(0, (Date.parse(m.next_drift_check) - Date.now()) / 1000))],
    ]));
}

function renderDetail(a, mirror) {
  document.getElementById("d-id").textContent = a.account_id;
  const err = a.last_error;
  const events = a.events
    ? h("ol", {}, a.events.slice().reverse().map((e) =>
        h("li", { class: "ev-" + e.kind },
          h("span", { class: "t" }, clock(e.at)),
          h("span", { class: "kind" }, e.kind, e.count > 1 ? h("span", { class: "count" }, "×" + e.count) : null),
          h("span", { class: "muted" }, e.detail))))
    : h("p", { class: "muted" }, a.events_note || "no events");
  const body = h("div", { class: "d-body" },
    h("div", { class: "d-title" }, h("span", { class: "owner" }, a.aliases[0] || a.owner_id), pill(a.state),
      h("span", { class: "muted" }, a.active ? "active since " + clock(a.active_since || new Date().toISOString()) : "passivated")),
    progressBlock(a),
    kv([
      ["provider", a.provider + " · " + a.item_id, true],
      ["mailbox", a.mailbox_depth === null ? "– (no live actor)" : a.mailbox_depth + " waiting"],
      ["pending inbox", a.pending_inbox + (a.oldest_pending_at ? " (oldest " + ago(a.oldest_pending_at) + ")" : "")],
      ["lag", a.lag_seconds > 0 ? duration(a.lag_seconds) : a.pending_inbox > 0 ? "< 1s" : "up to date"],
      ["cursor age", a.cursor_age_seconds === null ? "never synced" : duration(a.cursor_age_seconds)],
      ["last sync", a.last_sync_finished_at ? ago(a.last_sync_finished_at) : "never"],
      ["syncs", a.sync_count + " committed" + (a.transactions !== undefined ? " · " + a.transactions.toLocaleString() + " rows held" : "")],
      err && ["last error", err.code + " — " + err.message],
      a.last_request_id && ["request id", a.last_request_id, true],
      (a.retry || a.next_retry_at) && ["next retry", (a.next_retry_at ? clock(a.next_retry_at) : "–") + " · attempt " + a.attempt],
      ["restarts", String(a.restarts) + (a.quarantine ? " · quarantined: " + a.quarantine.reason : "")],
      a.failed && ["failed", a.failed.reason],
      a.actor_error && ["actor", a.actor_error],
    ]),
    stripeBlock(mirror),
    h("div", { class: "events" }, h("h3", {}, "Recent events"), events));
  document.getElementById("d-body").replaceWith(Object.assign(body, { id: "d-body" }));
}

function renderIncidents(result) {
  const el = document.getElementById("incidents-body");
  if (result.notFound) {
    incidentsAvailable = false;
    setText("m-incidents", "–");
    document.getElementById("m-incidents-hint").textContent = "not available on this server";
    el.replaceChildren(h("span", { class: "muted" }, "Incidents are not available on this server."));
    return;
  }
  const list = Array.isArray(result) ? result : result.incidents || [];
  const open = list.filter((i) => !i.resolved_at);
  setText("m-incidents", String(open.length), open.length ? "err" : "");
  document.getElementById("m-incidents-hint").textContent = open.length ? "needs attention" : "all clear";
  if (!open.length) {
    el.replaceChildren(h("span", { class: "muted" }, "No open incidents."));
    return;
  }
  el.replaceChildren(h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Kind"), h("th", {}, "About"), h("th", {}, "Opened"), h("th", {}, "Details"))),
    // An incident is about an account (click: its actor) or an operation (click: its history).
    h("tbody", {}, open.map((i) => h("tr", { onclick: () => (i.account_id ? select(i.account_id) : i.operation_id && selectOperation(i.operation_id)) },
      h("td", {}, i.kind || "–"),
      h("td", { class: "id", title: i.account_id || i.operation_id || "" },
        i.account_id ? shortId(i.account_id) : i.operation_id ? shortId(i.operation_id) : "–"),
      h("td", {}, i.opened_at ? ago(i.opened_at) : "–"),
      h("td", {}, typeof i.details === "string" ? i.details : JSON.stringify(i.details || i.message || "")))))));
}

function renderOperations(page) {
  const body = document.getElementById("ops-body");
  if (page.notFound) {
    body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: 9 }, "Operations are not available on this server.")));
    return;
  }
  const ops = page.operations || [];
  if (!ops.length) {
    body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: 9 }, "No account openings.")));
    return;
  }
  body.replaceChildren(...ops.map((op) => h("tr", {
    "data-operation": op.id,
    class: op.id === selectedOp ? "selected" : "",
    onclick: () => selectOperation(op.id),
  },
    h("td", { class: "id" }, shortId(op.id)),
    h("td", {}, op.customer_id),
    h("td", {}, op.market + " · " + op.segment),
    h("td", {}, op.path),
    h("td", {}, pill(op.state)),
    h("td", {}, op.bank_status || "–"),
    h("td", { class: "id" }, op.iban || "–"),
    h("td", { class: "num" }, String(op.polls)),
    h("td", {}, ago(op.created_at)))));
}

function renderOperationDetail(op) {
  const el = document.getElementById("op-detail");
  if (!op || op.notFound) {
    el.hidden = true;
    return;
  }
  el.hidden = false;
  el.replaceChildren(
    h("h3", {}, "Operation " + op.id + " · " + op.state),
    h("p", { class: "muted" }, "customer " + op.customer_id + " · tracking " + (op.tracking_id || "–") +
      " · request " + op.request_id + " · card step " + (op.next_step && op.next_step.state)),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Source"), h("th", {}, "Status"), h("th", {}, "State"), h("th", {}, "Note"))),
      h("tbody", {}, (op.history || []).map((t) => h("tr", {},
        h("td", {}, clock(t.at)),
        h("td", {}, t.source),
        h("td", {}, t.status || "–"),
        h("td", {}, pill(t.state)),
        h("td", {}, t.note))))));
}

function selectOperation(id) {
  selectedOp = id;
  const p = new URLSearchParams(location.hash.slice(1));
  p.set("operation", id);
  history.replaceState(null, "", "#" + p.toString());
  refreshOperations();
}

async function refreshOperations() {
  const state = document.getElementById("f-op-state").value;
  const query = new URLSearchParams({ limit: "50" });
  if (state) query.set("state", state);
  renderOperations(await api("/v1/operations?" + query));
  renderOperationDetail(selectedOp ? await api("/v1/operations/" + encodeURIComponent(selectedOp)) : null);
}

function select(id) {
  selected = id;
  const p = new URLSearchParams(location.hash.slice(1));
  p.set("account", id);
  history.replaceState(null, "", "#" + p.toString());
  for (const tr of document.querySelectorAll("#accounts-body tr")) {
    tr.classList.toggle("selected", tr.dataset.account === id);
  }
  refreshDetail();
}

async function refreshDetail() {
  if (!selected) return;
  const a = await api("/debug/actors/" + encodeURIComponent(selected));
  if (a.notFound) {
    document.getElementById("d-id").textContent = "account not found";
    return;
  }
  // A Stripe account's mirror report is another module's: a failure there must not
  // blank the actor's view.
  let mirror = null;
  if (a.provider === "stripe") {
    try {
      mirror = await api("/v1/accounts/" + encodeURIComponent(selected) + "/stripe");
    } catch (error) {
      mirror = null;
    }
  }
  renderDetail(a, mirror);
}

async function refresh() {
  try {
    const state = document.getElementById("f-state").value;
    const sort = document.getElementById("f-sort").value;
    const query = new URLSearchParams({ limit: "200", sort });
    if (state) query.set("state", state);
    const [overview, page] = await Promise.all([api("/debug/overview"), api("/debug/actors?" + query)]);
    renderOverview(overview);
    renderAccounts(page);
    await refreshDetail();
    try {
      await refreshOperations();
    } catch (error) {
      document.getElementById("ops-body").textContent = "operations unavailable: " + error.message;
    }
    if (incidentsAvailable) {
      // Incidents are another module's: a failure there must not blank the rest.
      try {
        renderIncidents(await api("/v1/incidents"));
      } catch (error) {
        document.getElementById("incidents-body").textContent = "incidents unavailable: " + error.message;
      }
    }
    banner(null);
    setConn(true, "live · updated " + new Date().toLocaleTimeString([], { hour12: false }));
    document.body.dataset.ready = "1";
  } catch (error) {
    setConn(false, "disconnected");
    banner(error.message);
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, POLL_MS);
}

document.getElementById("f-state").addEventListener("change", refresh);
document.getElementById("f-sort").addEventListener("change", refresh);
document.getElementById("f-op-state").addEventListener("change", refresh);
loop();
