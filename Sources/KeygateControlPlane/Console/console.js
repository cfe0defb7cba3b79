// The Keygate console: a user's "API keys" page and the operator's view of users and their keys.
// It calls the admin API of the node that serves it, with the key in X-API-Key, kept in this tab's
// sessionStorage only. Every string from the API is set as text (textContent), never as HTML.
"use strict";

const state = { key: null, keyID: null, admin: false, scopes: [], user: null, keys: [], record: null,
                usersAfter: null, usersPrefix: "", auditQuery: null, auditAfter: null };
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
  for (const id of ["users", "keys", "key-page", "node", "audit", "sign-out"]) $(id).hidden = true;
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
  state.scopes = me.scopes;
  state.keyID = me.key_id;
  scopeChoices();
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
  $("key-page").hidden = true;
  $("created").hidden = true;
  $("keys-title").textContent = state.admin ? `Keys of ${user}` : "Your API keys";
  $("user-admin").hidden = !state.admin;
  $("console-link-out").textContent = "";
  if (!keys) {
    const path = state.admin ? `/v1/keys?user=${encodeURIComponent(user)}` : "/v1/keys";
    keys = (await api("GET", path)).data.keys;
  }
  state.keys = keys;
  const rows = $("key-rows");
  rows.replaceChildren();
  for (const key of keys) rows.append(keyRow(key));
  if (state.admin) await Promise.all([userUsage(user), userLimits(user)]);
}

/** The create form offers a self-service user the scopes their key may grant, as checkboxes. */
function scopeChoices() {
  const choices = $("create-scope-choices");
  choices.replaceChildren(element("legend", "Scopes"));
  const grantable = state.scopes.filter((scope) => scope !== "keygate:self");
  for (const scope of grantable) {
    const label = element("label");
    const box = element("input");
    box.type = "checkbox";
    box.value = scope;
    label.append(box, " ", scope);
    choices.append(label);
  }
  choices.hidden = state.admin || grantable.length === 0;
  $("create-scopes-label").hidden = !state.admin;
}

async function userUsage(user) {
  const usage = (await api("GET", `/v1/users/${encodeURIComponent(user)}/usage?days=7`)).data;
  const plural = (count, one, many) => `${count} ${count === 1 ? one : many}`;
  const text = `${plural(usage.total, "use", "uses")} in the last 7 days over ${plural(usage.keys.length, "key", "keys")}; last used ${when(usage.last_used_at)}. `;
  $("user-usage").replaceChildren(text, barChart(usage.hourly, { barWidth: 2, height: 24, label: "in the last 48 hours" }));
}

async function userLimits(user) {
  const limits = (await api("GET", `/v1/users/${encodeURIComponent(user)}/limits`)).data;
  $("user-rate-limits").value = rateLimitsText(limits.rate_limits);
  $("user-credits").value = limits.credits ? String(limits.credits.remaining) : "";
  $("user-refill").value = limits.credits && limits.credits.refill ? refillText(limits.credits.refill) : "";
}

async function saveUserLimits(event) {
  event.preventDefault();
  const body = { rate_limits: parseRateLimits($("user-rate-limits").value), credits: parseCredits($("user-credits").value, $("user-refill").value) };
  const reply = (await api("PUT", `/v1/users/${encodeURIComponent(state.user)}/limits`, body)).data;
  show(`Saved the limits of ${state.user}; ${reply.keys_updated} keys took them.`, true);
  await userLimits(state.user);
}

async function revokeUser() {
  const user = state.user;
  if (!confirm(`Revoke every key of "${user}"? Every request with them is refused from now on; this cannot be undone.`)) return;
  const reply = (await api("POST", `/v1/users/${encodeURIComponent(user)}/revoke`)).data;
  show(`Revoked ${reply.revoked} keys of ${user}.`, true);
  await openUser(user);
}

function keyRow(key) {
  const row = element("tr", null, `status-${key.status}`);
  row.dataset.keyId = key.id;
  const name = element("button", key.name || "(no name)", "link");
  name.type = "button";
  name.title = "Open this key's page";
  name.addEventListener("click", () => openKey(key).catch(ignoreShown));
  const nameCell = element("td");
  nameCell.append(name);
  row.append(nameCell, element("td", key.id), element("td", key.status),
             element("td", key.scopes.join(" ") || "-"), element("td", when(key.last_used_at)));
  const chart = element("td");
  row.append(chart);
  api("GET", `/v1/keys/${encodeURIComponent(key.id)}/usage?days=2`)
    .then((reply) => chart.append(barChart(reply.data.hourly, { barWidth: 2, height: 24, label: "in the last 48 hours" })))
    .catch(ignoreShown);
  row.append(keyActions(key, element("td")));
  return row;
}

/** The buttons for what may be done to a key now, into `container`. */
function keyActions(key, container) {
  const button = (text, handler, className) => {
    const node = element("button", text, className);
    node.type = "button";
    node.addEventListener("click", () => handler(key).catch(ignoreShown));
    container.append(node, " ");
  };
  if (key.id === state.keyID) {
    // The API refuses to let a key change itself (409): say so instead of offering buttons.
    container.append(element("span", "the key you are signed in with"));
    return container;
  }
  if (key.status === "active" && !key.rotated_to) button("Rotate", rotateKey);
  if (state.admin && key.status === "active") button("Disable", (k) => setEnabled(k, false));
  if (state.admin && key.status === "disabled") button("Enable", (k) => setEnabled(k, true));
  if (key.status === "active" || key.status === "disabled") button("Revoke", revokeKey, "danger");
  return container;
}

/**
 * Uses per period as an SVG bar chart, refusals stacked in red on top. `buckets` come from the
 * usage API (oldest first); a wide chart labels its first and last period and its peak.
 */
function barChart(buckets, { barWidth, height, label, axisLabels = false }) {
  const ns = "http://www.w3.org/2000/svg";
  const svgElement = (tag, attributes) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    return node;
  };
  const refused = (bucket) => bucket.rate_limited + bucket.usage_exceeded + bucket.forbidden;
  const uses = buckets.reduce((sum, bucket) => sum + bucket.count, 0);
  const refusals = buckets.reduce((sum, bucket) => sum + refused(bucket), 0);
  const caption = `${uses} ${uses === 1 ? "use" : "uses"} ${label}` + (refusals ? `, ${refusals} refused` : "");
  const top = axisLabels ? 12 : 0, bottom = axisLabels ? 14 : 0;
  const width = barWidth * buckets.length;
  const svg = svgElement("svg", { width, height: height + top + bottom, role: "img", "aria-label": caption });
  if (!axisLabels) svg.setAttribute("class", "spark");
  const title = svgElement("title", {});
  title.textContent = caption;
  svg.append(title, svgElement("rect", { class: "axis", y: top + height - 1, width, height: 1 })); // a quiet key shows an empty chart
  const peak = Math.max(1, ...buckets.map((bucket) => bucket.count + refused(bucket)));
  buckets.forEach((bucket, index) => {
    let y = top + height;
    const group = svgElement("g", {});
    const tip = svgElement("title", {});
    tip.textContent = `${bucket.period}: ${bucket.count} ${bucket.count === 1 ? "use" : "uses"}` + (refused(bucket) ? `, ${refused(bucket)} refused` : "");
    group.append(tip);
    for (const [value, className] of [[bucket.count, "used"], [refused(bucket), "refused"]]) {
      if (value <= 0) continue;
      const barHeight = Math.max(1, Math.round((value / peak) * height));
      y -= barHeight;
      group.append(svgElement("rect", { class: className, x: index * barWidth, y, width: Math.max(1, barWidth - 0.5), height: barHeight }));
    }
    svg.append(group);
  });
  if (axisLabels && buckets.length) {
    const text = (value, attributes) => { const node = svgElement("text", attributes); node.textContent = value; svg.append(node); };
    text(`peak ${peak}`, { x: 0, y: 9 });
    text(buckets[0].period, { x: 0, y: top + height + 11 });
    text(buckets[buckets.length - 1].period, { x: width, y: top + height + 11, "text-anchor": "end" });
  }
  return svg;
}

// --- one key's page --------------------------------------------------------------------------------

async function openKey(key) {
  state.record = key;
  $("keys").hidden = true;
  $("key-page").hidden = false;
  $("key-page").scrollIntoView();
  $("key-title").textContent = `${key.name || "(no name)"} (${key.id})`;
  const details = $("key-details");
  details.replaceChildren();
  const item = (term, value) => details.append(element("dt", term), typeof value === "object" && value ? value : element("dd", value));
  item("User", key.user);
  item("Status", key.status);
  item("Scopes", key.scopes.join(" ") || "none");
  item("Created", when(key.created_at));
  item("Expires", key.expires_at ? when(key.expires_at) : "never");
  item("Last used", when(key.last_used_at));
  if (key.revoked_at) item("Revoked", when(key.revoked_at));
  for (const [term, id] of [["Rotated from", key.rotated_from], ["Rotated to", key.rotated_to]]) {
    if (!id) continue;
    const link = element("button", id, "link");
    link.type = "button";
    link.addEventListener("click", () => openKeyById(id).catch(ignoreShown));
    const value = element("dd");
    value.append(link);
    item(term, value);
  }
  const metadata = Object.entries(key.metadata || {}).map(([name, value]) => `${name}=${value}`).join(", ");
  item("Metadata", metadata || "none");
  item("Rate limits", rateLimitsText(key.rate_limits) || "none");
  item("Credits", key.credits ? `${key.credits.remaining} left` + (key.credits.refill ? `, refilled to ${refillText(key.credits.refill)}` : "") : "unlimited");
  $("key-actions").replaceChildren();
  keyActions(key, $("key-actions"));
  $("edit-form").hidden = !state.admin || key.status === "revoked";
  if (state.admin) fillEditForm(key);
  const usage = (await api("GET", `/v1/keys/${encodeURIComponent(key.id)}/usage?days=90`)).data;
  $("chart-hourly").replaceChildren(barChart(usage.hourly, { barWidth: 12, height: 100, label: "in the last 48 hours", axisLabels: true }));
  $("chart-daily").replaceChildren(barChart(usage.daily, { barWidth: 7, height: 100, label: "in the last 90 days", axisLabels: true }));
}

async function openKeyById(id) {
  const known = state.keys.find((key) => key.id === id);
  if (known && !state.admin) return openKey(known);
  if (!state.admin) { show("That key is not one of yours."); return; }
  await openKey((await api("GET", `/v1/keys/${encodeURIComponent(id)}`)).data);
}

/** Reloads the open key's page after a change (`record`: the key as the API answered). */
async function refreshKey(record) {
  if (!$("key-page").hidden && state.record && state.record.id === record.id) {
    await openKey(record);
  } else {
    await openUser(state.user);
  }
}

function localInputTime(value) {
  if (!value) return "";
  const date = new Date(value);
  const pad = (number) => String(number).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function metadataText(metadata) {
  return Object.entries(metadata || {}).map(([name, value]) => `${name}=${value}`).join("\n");
}

function fillEditForm(key) {
  $("edit-name").value = key.name;
  $("edit-scopes").value = key.scopes.join(" ");
  $("edit-expires").value = localInputTime(key.expires_at);
  $("edit-metadata").value = metadataText(key.metadata);
  $("edit-rate-limits").value = rateLimitsText(key.rate_limits);
  $("edit-credits").value = key.credits ? String(key.credits.remaining) : "";
  $("edit-refill").value = key.credits && key.credits.refill ? refillText(key.credits.refill) : "";
}

/** PATCH with the fields the person changed only (credits set the balance anew, so they go only when edited). */
async function saveKey(event) {
  event.preventDefault();
  const key = state.record;
  const body = {};
  if ($("edit-name").value !== key.name) body.name = $("edit-name").value;
  const scopes = $("edit-scopes").value.split(/\s+/).filter(Boolean);
  if (scopes.join(" ") !== key.scopes.join(" ")) body.scopes = scopes;
  if ($("edit-expires").value !== localInputTime(key.expires_at)) {
    body.expires_at = $("edit-expires").value ? new Date($("edit-expires").value).toISOString() : null;
  }
  if ($("edit-metadata").value.trim() !== metadataText(key.metadata)) body.metadata = parseMetadata($("edit-metadata").value);
  if ($("edit-rate-limits").value.trim() !== rateLimitsText(key.rate_limits)) body.rate_limits = parseRateLimits($("edit-rate-limits").value);
  const creditsBefore = [key.credits ? String(key.credits.remaining) : "", key.credits && key.credits.refill ? refillText(key.credits.refill) : ""];
  if ($("edit-credits").value !== creditsBefore[0] || $("edit-refill").value.trim() !== creditsBefore[1]) {
    body.credits = parseCredits($("edit-credits").value, $("edit-refill").value);
  }
  if (Object.keys(body).length === 0) { show("Nothing changed."); return; }
  const record = (await api("PATCH", `/v1/keys/${encodeURIComponent(key.id)}`, body)).data;
  show(`Saved ${Object.keys(body).join(", ").replace("_", " ")} of ${key.id}.`, true);
  await refreshKey(record);
}

async function setEnabled(key, enabled) {
  const record = (await api("PATCH", `/v1/keys/${encodeURIComponent(key.id)}`, { enabled })).data;
  show(`${enabled ? "Enabled" : "Disabled"} ${key.id}.`, true);
  await refreshKey(record);
}

// --- the text forms of limits, credits and metadata (the CLI's syntax) -------------------------------

const durationUnits = [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000], ["ms", 1]];

function rateLimitsText(limits) {
  return (limits || []).map((limit) => {
    const [unit, factor] = durationUnits.find(([, factor]) => limit.duration_ms % factor === 0);
    return `${limit.name}=${limit.limit}/${limit.duration_ms / factor}${unit}${limit.exact ? ":exact" : ""}`;
  }).join(" ");
}

/** `[name=]limit/duration[:exact]`, space separated; the API checks the ranges and says which field. */
function parseRateLimits(text) {
  const items = text.split(/\s+/).filter(Boolean);
  return items.map((item) => {
    const match = item.match(/^(?:([a-z0-9_-]+)=)?(\d+)\/(\d*)(ms|s|m|h|d)(:exact)?$/);
    if (!match) {
      show(`A rate limit is [name=]limit/duration[:exact], such as 100/1m or hourly=5000/1h; got "${item}".`);
      throw new Shown();
    }
    const factor = durationUnits.find(([unit]) => unit === match[4])[1];
    const duration = Number(match[3] || "1") * factor;
    const name = match[1] || (items.length > 1 ? `${match[3] || "1"}${match[4]}` : "default");
    return { name, limit: Number(match[2]), duration_ms: duration, exact: Boolean(match[5]) };
  });
}

function refillText(refill) {
  return refill.interval === "daily" ? `${refill.amount}/day` : `${refill.amount}/month` + (refill.day ? `:${refill.day}` : "");
}

/** Credits from the balance and refill fields: null (unlimited) when the balance is empty. */
function parseCredits(remaining, refill) {
  refill = refill.trim();
  if (remaining === "") {
    if (refill) { show("A refill needs a balance: fill in the credits too."); throw new Shown(); }
    return null;
  }
  const credits = { remaining: Number(remaining) };
  if (refill) {
    const match = refill.match(/^(\d+)\/(day|month)(?::(\d+))?$/);
    if (!match || (match[2] === "day" && match[3])) {
      show(`A refill is amount/day or amount/month[:day], such as 1000/month; got "${refill}".`);
      throw new Shown();
    }
    credits.refill = { amount: Number(match[1]), interval: match[2] === "day" ? "daily" : "monthly" };
    if (match[3]) credits.refill.day = Number(match[3]);
  }
  return credits;
}

function parseMetadata(text) {
  const metadata = {};
  for (const line of text.split("\n").map((line) => line.trim()).filter(Boolean)) {
    const equals = line.indexOf("=");
    if (equals <= 0) { show(`Metadata is one name=value a line; got "${line}".`); throw new Shown(); }
    metadata[line.slice(0, equals)] = line.slice(equals + 1);
  }
  return metadata;
}

async function revokeKey(key) {
  if (!confirm(`Revoke "${key.name || key.id}"? Every request with it is refused from now on; this cannot be undone.`)) return;
  const record = (await api("POST", `/v1/keys/${encodeURIComponent(key.id)}/revoke`)).data;
  show(`Revoked ${key.id}.`, true);
  await refreshKey(record);
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
  await openUser(state.user); // the list shows the successor, and the key was shown above it
  showIssued(issued, `The successor of ${key.name || key.id}`);
  show(`Rotated ${key.id} to ${issued.id}; the old key stops working in ${hours} h.`, true);
}

async function createKey(event) {
  event.preventDefault();
  const body = { name: $("create-name").value };
  const scopes = state.admin ? $("create-scopes").value.split(/\s+/).filter(Boolean)
    : [...$("create-scope-choices").querySelectorAll("input:checked")].map((box) => box.value);
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

async function makeConsoleLink(event) {
  event.preventDefault();
  const scopes = $("link-scopes").value.split(/\s+/).filter(Boolean);
  const session = (await api("POST", `/v1/users/${encodeURIComponent(state.user)}/console-sessions`, { scopes })).data;
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
  $("console-link-form").addEventListener("submit", (event) => makeConsoleLink(event).catch(ignoreShown));
  $("user-limits-form").addEventListener("submit", (event) => saveUserLimits(event).catch(ignoreShown));
  $("revoke-user").addEventListener("click", () => revokeUser().catch(ignoreShown));
  $("edit-form").addEventListener("submit", (event) => saveKey(event).catch(ignoreShown));
  $("key-back").addEventListener("click", () => openUser(state.user).catch(ignoreShown));
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
