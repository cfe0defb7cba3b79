// The Keygate console: a user's "API keys" page and the operator's view of users and their keys.
// It calls the admin API of the node that serves it, with the key in X-API-Key, kept in this tab's
// sessionStorage only. Every string from the API is set as text (textContent), never as HTML.
"use strict";

const state = { key: null, admin: false, user: null, usersAfter: null, usersPrefix: "", auditQuery: null, auditAfter: null };
const $ = (id) => document.getElementById(id);

/** An error already shown to the person; callers stop quietly. */
class Shown extends Error {}

function show(message, ok = false) {
  const notice = $("notice");
  notice.textContent = message;
  notice.className = ok ? "ok" : "";
  notice.hidden = false;
}

function problemText(data, status) {
  if (data && (data.title || data.detail)) {
    return [data.title, data.detail].filter(Boolean).join(": ") + (data.field ? ` (field ${data.field})` : "");
  }
  return `The request failed (HTTP ${status}).`;
}

/** One admin API call; 401 signs out, 503 asks to try again, any other refusal is shown. */
async function api(method, path, body, { allow = [] } = {}) {
  const headers = {};
  if (state.key) headers["X-API-Key"] = state.key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    show("Keygate cannot be reached. Check the connection and try again.");
    throw new Shown();
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (error) { data = null; }
  if (allow.includes(response.status)) return { status: response.status, data };
  if (response.status === 401 && state.key) {
    signOut("Your key was refused (revoked, expired or unknown). Sign in again.");
    throw new Shown();
  }
  if (response.status === 503) {
    show("Keygate cannot check keys right now (Redis is unavailable). Try again in a moment.");
    throw new Shown();
  }
  if (!response.ok) {
    show(problemText(data, response.status));
    throw new Shown();
  }
  return { status: response.status, data };
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(value) {
  return value ? new Date(value).toLocaleString() : "never";
}

// --- signing in and out ------------------------------------------------------------------------

function signOut(message) {
  state.key = null;
  sessionStorage.removeItem("keygate.key");
  for (const id of ["users", "keys", "node", "audit", "sign-out"]) $(id).hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  if (message) show(message);
}

async function signIn(key) {
  state.key = key;
  sessionStorage.setItem("keygate.key", key);
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  const me = (await api("GET", "/v1/me")).data;
  state.admin = me.admin;
  if (state.admin) {
    $("who").textContent = `Operator (${me.user})`;
    $("users").hidden = false;
    $("node").hidden = false;
    $("audit").hidden = false;
    await Promise.all([searchUsers(false), nodeStatus(), searchEvents(false)]);
  } else {
    state.user = me.user;
    $("who").textContent = `Signed in as ${me.user}`;
    await openUser(me.user);
  }
}

/** A console link (`#session=kgs_...`): exchanged once for a short-lived key of its user. */
async function redeemLink(secret) {
  history.replaceState(null, "", location.pathname); // the secret leaves the address bar at once
  const reply = await api("POST", "/console/session", { session: secret }, { allow: [404] });
  if (reply.status === 404) {
    show("This console link is not valid, was used already, or has expired. Ask for a new one.");
    return null;
  }
  return reply.data.key;
}

// --- the operator's users ------------------------------------------------------------------------

function renderUsers(page, append) {
  const list = $("user-list");
  if (!append) list.replaceChildren();
  for (const user of page.users) {
    const item = element("li");
    const button = element("button", user);
    button.type = "button";
    button.addEventListener("click", () => openUser(user).catch(ignoreShown));
    item.append(button);
    list.append(item);
  }
  state.usersAfter = page.next_after;
  $("more-users").hidden = !page.next_after;
}

async function searchUsers(append) {
  const query = new URLSearchParams({ prefix: state.usersPrefix, limit: "50" });
  if (append && state.usersAfter) query.set("after", state.usersAfter);
  const reply = await api("GET", `/v1/users?${query}`);
  renderUsers(reply.data, append);
}

// --- the operator's node health and audit log ---------------------------------------------------

async function nodeStatus() {
  const node = (await api("GET", "/v1/node")).data;
  const parts = [`Keygate ${node.version} on node ${node.node_id}:`, node.ready ? "ready" : `not ready (${node.reason || "unknown"})`,
                 `Redis ${node.redis_connected ? "reachable" : "unreachable"}`,
                 `invalidation channel ${node.invalidation_trusted ? "confirmed" : "not confirmed"}`,
                 `${node.cached_keys} cached keys`];
  $("node-status").textContent = parts.join(", ").replace(":,", ":");
}

async function searchEvents(append) {
  if (!append) {
    const query = new URLSearchParams({ limit: "50" });
    for (const [name, id] of [["user", "audit-user"], ["key_id", "audit-key"], ["type", "audit-type"]]) {
      if ($(id).value) query.set(name, $(id).value);
    }
    state.auditQuery = query;
    $("audit-rows").replaceChildren();
  }
  const query = new URLSearchParams(state.auditQuery);
  if (append && state.auditAfter) query.set("after", state.auditAfter);
  const page = (await api("GET", `/v1/events?${query}`)).data;
  for (const event of page.events) {
    const details = [event.successor_id ? `successor ${event.successor_id}` : "", event.fields ? `changed ${event.fields}` : ""];
    const row = element("tr");
    row.append(element("td", when(event.time)), element("td", event.type), element("td", event.key_id), element("td", event.user),
               element("td", event.actor), element("td", details.filter(Boolean).join("; ") || "-"));
    $("audit-rows").append(row);
  }
  state.auditAfter = page.next_after;
  $("more-events").hidden = !page.next_after;
}

// --- one user's keys -----------------------------------------------------------------------------

async function openUser(user, keys) {
  state.user = user;
  $("keys").hidden = false;
  $("created").hidden = true;
  $("keys-title").textContent = state.admin ? `Keys of ${user}` : "Your API keys";
  $("user-actions").hidden = !state.admin;
  $("console-link-out").textContent = "";
  if (!keys) {
    const path = state.admin ? `/v1/keys?user=${encodeURIComponent(user)}` : "/v1/keys";
    keys = (await api("GET", path)).data.keys;
  }
  const rows = $("key-rows");
  rows.replaceChildren();
  for (const key of keys) rows.append(keyRow(key));
}

function keyRow(key) {
  const row = element("tr", null, `status-${key.status}`);
  row.dataset.keyId = key.id;
  row.append(element("td", key.name || "(no name)"), element("td", key.id), element("td", key.status),
             element("td", key.scopes.join(" ") || "-"), element("td", when(key.last_used_at)));
  const chart = element("td");
  row.append(chart);
  usageChart(key.id).then((svg) => chart.append(svg)).catch(ignoreShown);
  const actions = element("td");
  if (key.status === "active" && !key.rotated_to) {
    const rotate = element("button", "Rotate");
    rotate.type = "button";
    rotate.addEventListener("click", () => rotateKey(key).catch(ignoreShown));
    actions.append(rotate, " ");
  }
  if (key.status === "active" || key.status === "disabled") {
    const revoke = element("button", "Revoke", "danger");
    revoke.type = "button";
    revoke.addEventListener("click", () => revokeKey(key).catch(ignoreShown));
    actions.append(revoke);
  }
  row.append(actions);
  return row;
}

/** Uses per hour over the last 48 hours (refusals stacked in red), as a small SVG bar chart. */
async function usageChart(id) {
  const usage = (await api("GET", `/v1/keys/${encodeURIComponent(id)}/usage?days=2`)).data;
  const hours = usage.hourly;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 2 * hours.length, height = 24;
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("role", "img");
  const total = hours.reduce((sum, hour) => sum + hour.count, 0);
  svg.setAttribute("aria-label", `${total} uses in the last 48 hours`);
  const title = document.createElementNS(ns, "title");
  title.textContent = `${total} uses in the last 48 hours`;
  svg.append(title);
  const baseline = document.createElementNS(ns, "rect"); // an axis, so a quiet key shows an empty chart
  baseline.setAttribute("class", "axis");
  baseline.setAttribute("y", String(height - 1));
  baseline.setAttribute("width", String(width));
  baseline.setAttribute("height", "1");
  svg.append(baseline);
  const refused = (hour) => hour.rate_limited + hour.usage_exceeded + hour.forbidden;
  const peak = Math.max(1, ...hours.map((hour) => hour.count + refused(hour)));
  hours.forEach((hour, index) => {
    let y = height;
    for (const [value, className] of [[hour.count, ""], [refused(hour), "refused"]]) {
      if (value <= 0) continue;
      const barHeight = Math.max(1, Math.round((value / peak) * height));
      y -= barHeight;
      const bar = document.createElementNS(ns, "rect");
      bar.setAttribute("x", String(index * 2));
      bar.setAttribute("y", String(y));
      bar.setAttribute("width", "1.5");
      bar.setAttribute("height", String(barHeight));
      if (className) bar.setAttribute("class", className);
      svg.append(bar);
    }
  });
  return svg;
}

async function revokeKey(key) {
  if (!confirm(`Revoke "${key.name || key.id}"? Every request with it is refused from now on; this cannot be undone.`)) return;
  await api("POST", `/v1/keys/${encodeURIComponent(key.id)}/revoke`);
  show(`Revoked ${key.id}.`, true);
  await openUser(state.user);
}

/** Shows a key that was just issued (created or rotated): once, with the seed's examples. */
function showIssued(issued, title) {
  $("created-title").textContent = title;
  $("created-key").textContent = issued.key;
  $("example-curl").textContent = `curl -X GET "https://api.example.com/resource" -H "X-API-Key: ${issued.key}"`;
  $("example-python").textContent = [
    "import requests",
    "",
    `api_key = '${issued.key}'`,
    "api_url = 'https://api.example.com/resource'",
    "headers = {'X-API-Key': api_key}",
    "response = requests.get(api_url, headers=headers)",
  ].join("\n");
  $("created").hidden = false;
}

async function rotateKey(key) {
  const answer = prompt(`Rotate "${key.name || key.id}": a new key replaces it, and the old one keeps working for how many hours?`, "24");
  if (answer === null) return;
  const hours = Number(answer);
  if (!Number.isFinite(hours) || hours < 0) { show("The grace period is a number of hours, 0 or more."); return; }
  const issued = (await api("POST", `/v1/keys/${encodeURIComponent(key.id)}/rotate`, { grace_seconds: Math.round(hours * 3600) })).data;
  await openUser(state.user);
  showIssued(issued, `The successor of ${key.name || key.id}`);
  show(`Rotated ${key.id} to ${issued.id}; the old key stops working in ${hours} h.`, true);
}

async function createKey(event) {
  event.preventDefault();
  const body = { name: $("create-name").value };
  const scopes = $("create-scopes").value.split(/\s+/).filter(Boolean);
  if (scopes.length) body.scopes = scopes;
  const days = $("create-days").value;
  if (days) body.expires_at = new Date(Date.now() + Number(days) * 86400000).toISOString();
  if (state.admin) body.user = state.user;
  const issued = (await api("POST", "/v1/keys", body)).data;
  $("create-form").reset();
  await openUser(state.user);
  showIssued(issued, "Your new key");
  show(`Created ${issued.id}.`, true);
}

async function makeConsoleLink() {
  const session = (await api("POST", `/v1/users/${encodeURIComponent(state.user)}/console-sessions`, {})).data;
  const url = new URL(session.url, location.origin).toString();
  $("console-link-out").textContent = `${url} (single use, until ${when(session.expires_at)})`;
}

function ignoreShown(error) {
  if (!(error instanceof Shown)) {
    show("Something went wrong in the page; reload it.");
    throw error;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("notice").hidden = true;
    signIn($("sign-in-key").value.trim()).catch(ignoreShown);
    $("sign-in-form").reset();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("user-search").addEventListener("submit", (event) => {
    event.preventDefault();
    state.usersPrefix = $("user-prefix").value;
    searchUsers(false).catch(ignoreShown);
  });
  $("more-users").addEventListener("click", () => searchUsers(true).catch(ignoreShown));
  $("create-form").addEventListener("submit", (event) => createKey(event).catch(ignoreShown));
  $("copy-key").addEventListener("click", () => {
    navigator.clipboard.writeText($("created-key").textContent).then(() => show("Copied.", true), () => show("Select the key and copy it."));
  });
  $("console-link").addEventListener("click", () => makeConsoleLink().catch(ignoreShown));
  $("audit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchEvents(false).catch(ignoreShown);
  });
  $("more-events").addEventListener("click", () => searchEvents(true).catch(ignoreShown));

  (async () => {
    const match = location.hash.match(/^#session=(kgs_[0-9A-Za-z]+)$/);
    const fromLink = match ? await redeemLink(match[1]) : null;
    const key = fromLink || sessionStorage.getItem("keygate.key");
    if (key) await signIn(key); else signOut();
  })().catch(ignoreShown);
});
