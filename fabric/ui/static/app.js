// FoA console: one page, hash routes, live over server-sent events (/api/stream). No dependencies.
"use strict";

const state = { agents: new Map(), jobs: new Map(), health: null, routed: new Set(), lastRoute: null, colour: "status" };
const view = document.getElementById("view");
const tooltip = document.getElementById("tooltip");

// ---- helpers ------------------------------------------------------------------------------
function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function num(value, digits = 3) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }
function age(seconds) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  } catch (err) {
    throw new Error("the console server is not answering: is `foa ui` still running?");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.detail || `HTTP ${resp.status}`);
  return body;
}
function errorBox(message) { return `<div class="error" data-testid="error">${esc(message)}</div>`; }
function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}
function list(text) { return String(text || "").split(",").map((s) => s.trim()).filter(Boolean); }
function optNum(value) { return value === "" || value === null || value === undefined ? null : Number(value); }

// ---- live updates -------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("health", (e) => setHealth(JSON.parse(e.data)));
  source.addEventListener("agent", (e) => {
    const row = JSON.parse(e.data);
    if (row.removed) state.agents.delete(row.agent_id); else state.agents.set(row.agent_id, row);
    if (route().page === "agents" && !route().id) renderAgentRows();
    if (route().page === "map") refreshMap();
  });
  source.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    state.jobs.set(job.job_id, job);
    const r = route();
    if (r.page === "jobs" && !r.id) renderJobRows();
    if (r.page === "jobs" && r.id === job.job_id) refreshJob();
  });
  source.addEventListener("resync", () => render());
  source.onerror = () => setHealth({ connected: false, error: "lost the console server; retrying" });
  source.onopen = () => { if (state.health && state.health.error && state.health.error.startsWith("lost the console")) render(); };
}
function setHealth(h) {
  state.health = { ...(state.health || {}), ...h };
  const badge = document.getElementById("health");
  const banner = document.getElementById("banner");
  badge.textContent = h.connected ? `broker ${h.broker || ""} · connected` : "broker disconnected";
  badge.className = "badge " + (h.connected ? "ok" : "bad");
  banner.hidden = !!h.connected;
  banner.textContent = h.connected ? "" : (h.error || "not connected to the broker");
}

// ---- routing ------------------------------------------------------------------------------
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "agents", id: parts.slice(1).join("/") || null };
}
function render() {
  const r = route();
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === r.page));
  tooltip.hidden = true;
  ({ agents: r.id ? renderAgent : renderAgents, map: renderMap, route: renderRoute, jobs: r.id ? renderJob : renderJobs }[r.page]
    || renderAgents)(r.id);
}
window.addEventListener("hashchange", render);

// ---- agents -------------------------------------------------------------------------------
async function renderAgents() {
  view.innerHTML = `<h2>Agents</h2>
    <div class="toolbar"><input type="text" id="filter" placeholder="filter: id, name, skill, policy, status" size="40">
    <span class="muted" id="count"></span></div>
    <table id="agents"><thead><tr><th>id</th><th>name</th><th>v</th><th>status</th><th>skills</th>
    <th>$/1k in</th><th>$/1k out</th><th>latency ms</th><th>reputation</th><th>signed</th></tr></thead><tbody></tbody></table>`;
  document.getElementById("filter").addEventListener("input", renderAgentRows);
  try {
    for (const row of await api("/api/agents")) state.agents.set(row.agent_id, row);
  } catch (err) { view.insertAdjacentHTML("beforeend", errorBox(err.message)); }
  renderAgentRows();
}
function renderAgentRows() {
  const body = document.querySelector("#agents tbody");
  if (!body) return;
  const needle = (document.getElementById("filter")?.value || "").toLowerCase();
  const rows = [...state.agents.values()].sort((a, b) => a.agent_id.localeCompare(b.agent_id))
    .filter((a) => !needle || [a.agent_id, a.name, a.status, ...a.skills, ...a.policies].join(" ").toLowerCase().includes(needle));
  body.innerHTML = rows.map((a) => `<tr class="click" data-agent="${esc(a.agent_id)}">
    <td>${esc(a.agent_id)}</td><td>${esc(a.name)}</td><td class="num">${a.version}</td>
    <td><span class="badge ${esc(a.status)}" data-testid="status">${esc(a.status)}</span></td>
    <td>${a.skills.map((s) => `<span class="tag">${esc(s)}</span>`).join("")}</td>
    <td class="num">${num(a.cost_per_1k_input, 4)}</td><td class="num">${num(a.cost_per_1k_output, 4)}</td>
    <td class="num">${num(a.latency_ms, 0)}</td><td class="num">${num(a.reputation, 2)}</td>
    <td>${a.signed ? "✔ signed" : "unsigned"}</td></tr>`).join("")
    || `<tr><td colspan="10" class="muted">no agents${needle ? " match the filter" : " yet"}</td></tr>`;
  body.querySelectorAll("tr[data-agent]").forEach((tr) => tr.addEventListener("click", () => {
    location.hash = `#/agents/${encodeURIComponent(tr.dataset.agent)}`;
  }));
  const count = document.getElementById("count");
  if (count) count.textContent = `${rows.length} of ${state.agents.size} agents`;
}
async function renderAgent(id) {
  view.innerHTML = `<p><a href="#/agents">← agents</a></p><h2>Agent ${esc(id)}</h2><div id="detail">loading…</div>`;
  try {
    const d = await api(`/api/agents/${encodeURIComponent(id)}`);
    const v = d.vcv, r = v.resources || {};
    document.getElementById("detail").innerHTML = `
      <div class="card kv">
        <div>name</div><div>${esc(v.name)}</div><div>version</div><div>${v.version}</div>
        <div>status</div><div><span class="badge ${esc(d.row.status)}">${esc(d.row.status)}</span></div>
        <div>description</div><div>${esc(v.description)}</div>
        <div>skills</div><div>${(v.skills || []).map((s) => `<span class="tag">${esc(s)}</span>`).join("") || "–"}</div>
        <div>policies</div><div>${(v.policies || []).map((s) => `<span class="tag">${esc(s)}</span>`).join("") || "–"}</div>
        <div>reputation</div><div>${num(d.row.reputation, 3)} (${d.row.reputation_jobs} jobs)</div>
        <div>replicas seen</div><div>${esc(d.row.replicas.join(", ") || "–")}</div>
        <div>LLM</div><div>${esc(v.llm_model || "–")}</div><div>embedding model</div><div>${esc(v.embedding_model)}</div>
        <div>vectors</div><div>capability ${d.dims.capability}-d, spec ${d.dims.spec_embedding}-d</div>
        <div>signature</div><div>${v.signature ? "signed (ed25519)" : "unsigned"}</div>
      </div>
      <h3>Resources</h3><div class="card kv">${Object.entries(r).map(([k, x]) => `<div>${esc(k)}</div><div>${esc(x)}</div>`).join("")}</div>
      <h3>VCV (JSON, vectors left out)</h3><pre>${esc(JSON.stringify(v, null, 2))}</pre>`;
  } catch (err) { document.getElementById("detail").innerHTML = errorBox(err.message); }
}

// ---- capability map -----------------------------------------------------------------------
const MAP_W = 760, MAP_H = 460, PAD = 40;
async function renderMap() {
  view.innerHTML = `<h2>Capability map</h2>
    <div class="toolbar">colour by <select id="colour"><option value="status">status</option><option value="reputation">reputation</option></select>
    <input type="text" id="mapquery" size="40" placeholder="highlight the agents routed for a task">
    <button id="maproute">Route</button><span class="muted" id="mapnote"></span></div>
    <div class="legend" id="legend"></div>
    <svg id="map" width="${MAP_W}" height="${MAP_H}" style="background:#fff;border:1px solid var(--line)"></svg>
    <div id="maperror"></div>`;
  const colour = document.getElementById("colour");
  colour.value = state.colour;
  colour.addEventListener("change", () => { state.colour = colour.value; refreshMap(); });
  document.getElementById("mapquery").value = state.lastRoute?.text || "";
  document.getElementById("maproute").addEventListener("click", async () => {
    const text = document.getElementById("mapquery").value;
    try {
      const res = await api("/api/route", { method: "POST", body: JSON.stringify({ text }) });
      state.lastRoute = { text, res };
      state.routed = new Set(res.response.matches.map((m) => m.agent_id));
      document.getElementById("maperror").innerHTML = "";
    } catch (err) { document.getElementById("maperror").innerHTML = errorBox(err.message); }
    refreshMap();
  });
  await refreshMapNow();
}
const refreshMap = debounce(() => refreshMapNow(), 200);
function repColour(rep) {
  if (rep === null || rep === undefined) return "#9aa6bb";
  const t = Math.max(0, Math.min(1, rep));
  return `rgb(${Math.round(214 - 183 * t)},${Math.round(69 + 88 * t)},${Math.round(69 + 16 * t)})`;
}
async function refreshMapNow() {
  const svg = document.getElementById("map");
  if (!svg) return;
  let data;
  try { data = await api("/api/map"); } catch (err) { document.getElementById("maperror").innerHTML = errorBox(err.message); return; }
  const pts = data.points;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs, -1e-6), Math.max(...xs, 1e-6)], [y0, y1] = [Math.min(...ys, -1e-6), Math.max(...ys, 1e-6)];
  const sx = (x) => PAD + ((x - x0) / (x1 - x0)) * (MAP_W - 2 * PAD), sy = (y) => MAP_H - PAD - ((y - y0) / (y1 - y0)) * (MAP_H - 2 * PAD);
  const fill = (p) => state.colour === "reputation" ? repColour(p.reputation) : p.status === "offline" ? "#d64545" : p.status === "online" ? "#1f9d55" : "#c98a00";
  // the points and the label boxes placed so far: a label moves down until it covers neither
  const placed = pts.map((p) => ({ x0: sx(p.x) - 16, x1: sx(p.x) + 16, y: sy(p.y) + 4 }));
  const label = (p) => {
    const right = sx(p.x) > MAP_W / 2, w = 7 * p.agent_id.length;
    const x = sx(p.x) + (right ? -18 : 18), x0 = right ? x - w : x, x1 = right ? x : x + w;
    let y = sy(p.y) + 4;
    while (placed.some((b) => Math.abs(b.y - y) < 14 && b.x0 < x1 && x0 < b.x1)) y += 14;
    placed.push({ x0, x1, y });
    return `<text x="${x}" y="${y}" text-anchor="${right ? "end" : "start"}" fill="#444">${esc(p.agent_id)}</text>`;
  };
  svg.innerHTML = pts.map((p) => {
    const hit = state.routed.has(p.agent_id);
    return `<g class="pt" data-agent="${esc(p.agent_id)}">
      ${hit ? `<circle cx="${sx(p.x)}" cy="${sy(p.y)}" r="14" fill="none" stroke="#2d6cdf" stroke-width="3" class="routed"></circle>` : ""}
      <circle cx="${sx(p.x)}" cy="${sy(p.y)}" r="8" fill="${fill(p)}" stroke="#fff" stroke-width="1.5"></circle>
      ${label(p)}</g>`;
  }).join("");
  svg.querySelectorAll("g.pt").forEach((g) => {
    const p = pts.find((q) => q.agent_id === g.dataset.agent);
    g.addEventListener("mousemove", (e) => {
      const a = state.agents.get(p.agent_id);
      tooltip.hidden = false;
      tooltip.style.left = `${e.clientX + 14}px`; tooltip.style.top = `${e.clientY + 10}px`;
      tooltip.innerHTML = `<b>${esc(p.agent_id)}</b> ${esc(p.name)}<br>${esc(p.status)} · reputation ${num(p.reputation, 2)}`
        + (a ? `<br>${esc(a.description).slice(0, 160)}` : "");
    });
    g.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    g.addEventListener("click", () => { location.hash = `#/agents/${encodeURIComponent(p.agent_id)}`; });
  });
  document.getElementById("legend").innerHTML = state.colour === "status"
    ? `<span><i class="dot" style="background:#1f9d55"></i>online</span><span><i class="dot" style="background:#d64545"></i>offline</span><span><i class="dot" style="background:#c98a00"></i>unknown</span><span><i class="dot" style="border:2px solid #2d6cdf"></i>routed for the query</span>`
    : `<span><i class="dot" style="background:${repColour(0)}"></i>0</span><span><i class="dot" style="background:${repColour(0.5)}"></i>0.5</span><span><i class="dot" style="background:${repColour(1)}"></i>1</span><span><i class="dot" style="background:#9aa6bb"></i>no record</span>`;
  document.getElementById("mapnote").textContent = `${pts.length} agents, PCA of ${data.dim}-d capability vectors`
    + (data.explained.length ? ` (axes explain ${data.explained.map((v) => Math.round(v * 100) + "%").join(" + ")})` : "")
    + (data.note ? ` · ${data.note}` : "");
}

// ---- route playground ---------------------------------------------------------------------
function renderRoute() {
  view.innerHTML = `<h2>Route playground</h2>
    <form class="grid" id="routeform">
      <label class="wide">task<textarea name="text" placeholder="e.g. my father has chest pain, what should we do?"></textarea></label>
      <label>policies (comma-separated)<input type="text" name="policies" placeholder="hipaa, clinical"></label>
      <label>skills (comma-separated)<input type="text" name="skills"></label>
      <label>max cost<input type="number" name="max_cost" step="any" min="0"></label>
      <label>deadline (ms)<input type="number" name="deadline_ms" step="any" min="0"></label>
      <label>top k<input type="number" name="top_k" value="5" min="1" max="50"></label>
      <label><span><input type="checkbox" name="abstain" checked> abstain below threshold</span></label>
      <div><button type="submit">Route</button></div>
    </form><div id="routeout"></div>`;
  const form = document.getElementById("routeform");
  if (state.lastRoute) { form.text.value = state.lastRoute.text; showRoute(state.lastRoute.res); }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = document.getElementById("routeout");
    out.innerHTML = `<p class="muted">asking the router…</p>`;
    const body = { text: form.text.value, policies: list(form.policies.value), skills: list(form.skills.value),
      max_cost: optNum(form.max_cost.value), deadline_ms: optNum(form.deadline_ms.value), top_k: Number(form.top_k.value || 5),
      abstain: form.abstain.checked };
    try {
      const res = await api("/api/route", { method: "POST", body: JSON.stringify(body) });
      state.lastRoute = { text: body.text, res };
      state.routed = new Set(res.response.matches.map((m) => m.agent_id));
      showRoute(res);
    } catch (err) { out.innerHTML = errorBox(err.message); }
  });
}
const GATES = new Set(["policy", "skills", "budget", "deadline"]);
function factorBars(factors) {
  return Object.entries(factors).map(([name, v]) => {
    const width = Math.max(0, Math.min(1, name === "reputation" ? v / 1.25 : v)) * 110;
    return `<div class="factor" data-factor="${esc(name)}"><span class="name">${esc(name)}</span>
      <span class="barwrap"><span class="bar ${GATES.has(name) ? "gate" : ""}" style="width:${width}px"></span></span>${num(v, 3)}</div>`;
  }).join("");
}
function showRoute(res) {
  const r = res.response, out = document.getElementById("routeout");
  let html = `<p class="muted">${r.candidates_considered} candidates re-scored, ${r.blocked} blocked by gates,
    threshold ${r.threshold === null ? "none (not calibrated)" : num(r.threshold, 3)} · ${num(res.elapsed_ms, 1)} ms</p>`;
  if (r.abstained) {
    html += `<div class="card" data-testid="abstained"><b>No capable agent:</b> the best score is below the calibrated abstention threshold ${num(r.threshold, 3)}.</div>`;
  } else if (!r.matches.length) {
    html += `<div class="card">No agent passes the gates.</div>`;
  } else {
    html += `<table id="matches"><thead><tr><th>#</th><th>agent</th><th class="nocase">score α</th><th class="nocase">factors of α</th><th>expected cost</th><th>expected latency</th></tr></thead><tbody>`
      + r.matches.map((m, i) => `<tr data-agent="${esc(m.agent_id)}"><td>${i + 1}</td><td><a href="#/agents/${encodeURIComponent(m.agent_id)}">${esc(m.agent_id)}</a> v${m.version}</td>
        <td class="num"><b>${num(m.score, 4)}</b></td><td>${factorBars(m.factors)}</td>
        <td class="num">${Number(m.expected_cost).toPrecision(3)}</td><td class="num">${num(m.expected_latency_ms, 0)} ms</td></tr>`).join("")
      + `</tbody></table>`;
  }
  if (res.gated.length) {
    html += `<h3>Removed by a gate</h3><table id="gated"><thead><tr><th>agent</th><th class="nocase">α without the gate</th><th>why</th></tr></thead><tbody>`
      + res.gated.map((g) => `<tr><td>${esc(g.agent_id)}</td><td class="num">${Number(g.score_without_gate).toPrecision(3)}</td><td>${g.reasons.map(esc).join("; ")}</td></tr>`).join("")
      + `</tbody></table>`;
  }
  out.innerHTML = html;
}

// ---- jobs ---------------------------------------------------------------------------------
async function renderJobs() {
  const allow = state.health?.allow_submit;
  view.innerHTML = `<h2>Jobs</h2>
    ${allow ? `<form class="grid" id="submitform"><label class="wide">question<textarea name="question" placeholder="ask the federation"></textarea></label>
      <label>policies<input type="text" name="policies"></label><label>token budget<input type="number" name="max_tokens" min="1"></label>
      <label>cost budget<input type="number" name="max_cost" step="any" min="0"></label><label>deadline (s)<input type="number" name="deadline_s" step="any" min="0"></label>
      <div><button type="submit">Submit</button></div></form><div id="submiterror"></div>`
      : `<p class="muted">Read-only console: start it with <code>foa ui --allow-submit</code> to submit and cancel jobs.</p>`}
    <table id="jobs"><thead><tr><th>job</th><th>state</th><th>phase</th><th>question</th><th>age</th><th>tokens</th><th>cost</th></tr></thead><tbody></tbody></table>`;
  const form = document.getElementById("submitform");
  if (form) form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { question: form.question.value, policies: list(form.policies.value), max_tokens: optNum(form.max_tokens.value),
      max_cost: optNum(form.max_cost.value), deadline_s: optNum(form.deadline_s.value) };
    try {
      const res = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
      location.hash = `#/jobs/${encodeURIComponent(res.job_id)}`;
    } catch (err) { document.getElementById("submiterror").innerHTML = errorBox(err.message); }
  });
  try { for (const job of await api("/api/jobs")) state.jobs.set(job.job_id, job); }
  catch (err) { view.insertAdjacentHTML("beforeend", errorBox(err.message)); }
  renderJobRows();
}
function renderJobRows() {
  const body = document.querySelector("#jobs tbody");
  if (!body) return;
  const jobs = [...state.jobs.values()].sort((a, b) => b.created_at - a.created_at);
  body.innerHTML = jobs.map((j) => `<tr class="click" data-job="${esc(j.job_id)}"><td>${esc(j.job_id)}</td>
    <td><span class="badge ${esc(j.state)}">${esc(j.state)}</span>${j.cancel_requested && !["completed", "failed", "canceled"].includes(j.state) ? " <span class='muted'>cancel sent</span>" : ""}</td>
    <td>${esc(j.phase)}</td><td>${esc((j.question || "–").slice(0, 90))}</td><td>${age(j.created_at)}</td>
    <td class="num">${j.tokens}</td><td class="num">${num(j.cost, 4)}</td></tr>`).join("")
    || `<tr><td colspan="7" class="muted">no jobs seen yet</td></tr>`;
  body.querySelectorAll("tr[data-job]").forEach((tr) => tr.addEventListener("click", () => {
    location.hash = `#/jobs/${encodeURIComponent(tr.dataset.job)}`;
  }));
}
async function renderJob(id) {
  view.innerHTML = `<p><a href="#/jobs">← jobs</a></p><div id="job" data-job="${esc(id)}">loading…</div>`;
  await refreshJobNow();
}
const refreshJob = debounce(() => refreshJobNow(), 150);
async function refreshJobNow() {
  const box = document.getElementById("job");
  const id = route().id;
  if (!box || !id) return;
  let d;
  try { d = await api(`/api/jobs/${encodeURIComponent(id)}`); }
  catch (err) { box.innerHTML = `<h2>Job ${esc(id)}</h2>` + errorBox(err.message); return; }
  const s = d.summary, finished = ["completed", "failed", "canceled"].includes(s.state);
  const canCancel = state.health?.allow_submit && !finished;
  box.innerHTML = `<h2>Job ${esc(s.job_id)} <span class="badge ${esc(s.state)}" data-testid="jobstate">${esc(s.state)}</span>
      ${canCancel ? `<button class="danger" id="cancel">${s.cancel_requested ? "Cancel sent" : "Cancel"}</button>` : ""}</h2>
    <p>${esc(s.question || "(question not seen by this console)")}</p>${threadBlock(d)}
    ${s.error ? errorBox(s.error) : ""}${d.failure_reason ? errorBox(`${s.state}: ${d.failure_reason}`) : ""}
    <div class="muted">phase ${esc(s.phase || "–")} · ${s.events} events · ${s.tokens} tokens · cost ${num(s.cost, 4)}</div>
    <h3>DAG</h3>${d.plan_note ? `<p class="muted" data-testid="plan-note">${esc(d.plan_note)}</p>` : ""}${d.nodes.length || !finished ? dagSvg(d) : "<p class='muted'>none: the job ended before it had a plan</p>"}
    <h3>Nodes</h3><div class="cards">${d.nodes.map(nodeCard).join("") || `<p class='muted'>${finished ? "none" : "no plan yet"}</p>`}</div>
    <h3>Synthesis</h3>${d.answer ? `<div class="card" data-testid="answer"><div class="muted">${esc(d.synthesis.mode || d.usage.synth_mode || "")}</div><pre>${esc(d.answer)}</pre></div>` : `<p class='muted'>${finished ? "none" : "not yet"}</p>`}
    ${state.health?.allow_submit && finished ? `<form class="grid" id="followup"><label class="wide">follow-up in this conversation<textarea name="question" placeholder="and for a child?"></textarea></label><div><button type="submit">Ask</button></div></form><div id="followuperror"></div>` : ""}
    <h3>Usage and timings</h3>${usageBlock(d)}${timelineSvg(d)}`;
  const follow = document.getElementById("followup");
  if (follow) follow.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { question: follow.question.value, conversation_id: s.conversation_id || s.job_id };
    try {
      const res = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
      location.hash = `#/jobs/${encodeURIComponent(res.job_id)}`;
    } catch (err) { document.getElementById("followuperror").innerHTML = errorBox(err.message); }
  });
  const btn = document.getElementById("cancel");
  if (btn) btn.addEventListener("click", async () => {
    try { await api(`/api/jobs/${encodeURIComponent(s.job_id)}/cancel`, { method: "POST" }); refreshJob(); }
    catch (err) { box.insertAdjacentHTML("afterbegin", errorBox(err.message)); }
  });
}
function threadBlock(d) {
  if (!d.thread || d.thread.length < 2) return "";
  const here = d.summary.job_id;
  return `<h3>Conversation <span class="muted">${esc(d.summary.conversation_id || "")}</span></h3>
    <ol class="thread" data-testid="thread">${d.thread.map((t) => `<li class="${t.job_id === here ? "here" : ""}">
      <a href="#/jobs/${encodeURIComponent(t.job_id)}">${esc(t.question || t.job_id)}</a> <span class="badge ${esc(t.state)}">${esc(t.state)}</span>
      ${t.answer ? `<div class="muted">${esc(t.answer)}</div>` : ""}</li>`).join("")}</ol>`;
}
function layers(d) {
  const depth = new Map(), byId = new Map(d.nodes.map((n) => [n.node_id, n]));
  const walk = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const n = byId.get(id);
    const v = n && n.depends_on.length ? 1 + Math.max(...n.depends_on.map((p) => walk(p, seen))) : 0;
    depth.set(id, v);
    return v;
  };
  d.nodes.forEach((n) => walk(n.node_id));
  return depth;
}
function dagSvg(d) {
  if (!d.nodes.length) return "<p class='muted'>waiting for the plan</p>";
  const depth = layers(d), cols = new Map(), pos = new Map();
  const W = 250, H = 92, GX = 60, GY = 22;
  d.nodes.forEach((n) => { const c = depth.get(n.node_id) || 0; cols.set(c, [...(cols.get(c) || []), n]); });
  cols.forEach((nodes, c) => nodes.forEach((n, i) => pos.set(n.node_id, { x: 10 + c * (W + GX), y: 10 + i * (H + GY) })));
  const width = 20 + cols.size * (W + GX), height = 20 + Math.max(...[...cols.values()].map((v) => v.length)) * (H + GY);
  const edges = d.edges.filter(([a, b]) => pos.has(a) && pos.has(b)).map(([a, b]) => {
    const p = pos.get(a), q = pos.get(b);
    const x1 = p.x + W, y1 = p.y + H / 2, x2 = q.x - 4, y2 = q.y + H / 2;
    return `<path class="edge" d="M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}"></path>`;
  }).join("");
  const nodes = d.nodes.map((n) => {
    const p = pos.get(n.node_id);
    const who = n.assigned.map((m) => `${m.agent_id} ${num(m.score, 2)}`).join(", ");
    return `<g class="node ${esc(n.state)}" data-node="${esc(n.node_id)}" transform="translate(${p.x},${p.y})">
      <rect width="${W}" height="${H}"></rect>
      <text x="10" y="18" font-weight="600">${esc(n.node_id)} · ${esc(n.state)}</text>
      <text x="10" y="36">${esc(n.text.slice(0, 38))}${n.text.length > 38 ? "…" : ""}</text>
      <text x="10" y="56" fill="#1d4fa8">${esc(who.slice(0, 40))}${who.length > 40 ? "…" : ""}</text>
      <text x="10" y="76" fill="#136c3a">${n.representative ? "→ " + esc(n.representative) : ""}</text></g>`;
  }).join("");
  return `<svg id="dag" width="${width}" height="${height}" style="background:#fff;border:1px solid var(--line)">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#9aa6bb"></path></marker></defs>
    ${edges}${nodes}</svg>`;
}
function nodeCard(n) {
  const shown = ["sim", "learned_lift", "lexical", "learned_words", "spec", "resources", "reputation"];
  const assigned = n.assigned.map((m) => `<div title="${esc(JSON.stringify(m.factors || {}))}"><b>${esc(m.agent_id)}</b> α ${num(m.score, 3)}
    <span class="muted">${shown.filter((k) => m.factors && k in m.factors).map((k) => `${k} ${num(m.factors[k], 2)}`).join(" · ")}</span></div>`).join("");
  const leftOut = (n.left_out || []).map((o) => `<div class="muted" data-testid="left-out"><b>${esc(o.agent_id)}</b> left out: α ${num(o.score, 3)} &lt; floor ${num(o.floor, 3)}</div>`).join("");
  const failed = (n.exact_failed || []).map((f) => errorBox(`exact call failed: ${f}`)).join("");
  const drafts = Object.entries(n.drafts).map(([a, t]) => `<div><b>${esc(a)}</b><pre>${esc(t)}</pre></div>`).join("");
  const clusters = n.clusters.map((c, i) => `<span class="tag">c${i + 1}: ${c.map(esc).join(", ")}</span>`).join("");
  const rounds = Object.entries(n.rounds).map(([cid, info]) => {
    const members = info.members.length ? info.members : [...new Set(info.rounds.flatMap((r) => Object.keys(r.votes)))];
    return `<div class="roundbox" data-cluster="${esc(cid)}"><div class="muted">${esc(cid)} · ${info.rounds.length} round(s)
      ${info.stopped ? `· stopped: ${esc(info.stopped)}` : ""} ${info.representative ? `· representative <b>${esc(info.representative)}</b>` : ""}</div>
      <table class="votes"><thead><tr><th>round</th>${members.map((m) => `<th>${esc(m)}</th>`).join("")}</tr></thead><tbody>
      ${info.rounds.map((r) => `<tr><td>${esc(r.round)}</td>${members.map((m) => `<td>${r.votes[m] === true ? "✔ done" : r.votes[m] === false ? "… more" : "–"}</td>`).join("")}</tr>`).join("")}
      </tbody></table></div>`;
  }).join("");
  return `<div class="card node" data-node="${esc(n.node_id)}"><div><b>${esc(n.node_id)}</b> <span class="badge ${esc(n.state)}">${esc(n.state)}</span>
    ${n.depends_on.length ? `<span class="muted">after ${n.depends_on.map(esc).join(", ")}</span>` : ""}</div>
    <p>${esc(n.text)}</p>
    ${clusters ? `<h4>Clusters</h4>${clusters}` : ""}${rounds ? `<h4>Channel rounds</h4>${rounds}` : ""}
    ${assigned ? `<h4>Assigned (α and its factors)</h4>${assigned}` : ""}${leftOut}${failed}
    ${drafts ? `<h4>Drafts</h4>${drafts}` : ""}
    ${n.representative ? `<p>answer by <b>${esc(n.representative)}</b></p>` : ""}</div>`;
}
function usageBlock(d) {
  const u = d.usage;
  if (!Object.keys(u).length) return "<p class='muted'>usage arrives with the result</p>";
  return `<div class="card kv"><div>tokens</div><div>${u.tokens} (${u.input_tokens} in, ${u.output_tokens} out)</div>
    <div>cost</div><div>${num(u.cost, 6)}</div><div>LLM calls</div><div>${u.calls}</div>
    <div>phase times</div><div>${Object.entries(d.timings).map(([k, v]) => `${esc(k)} ${num(v, 2)} s`).join(" · ")}</div>
    ${(u.failures || []).length ? `<div>failures</div><div>${u.failures.map(esc).join("<br>")}</div>` : ""}</div>`;
}
const PHASE_COLOURS = { decompose: "#7b61ff", assign: "#2d6cdf", draft: "#00a3a3", cluster: "#c98a00", refine: "#e07b00", node_done: "#1f9d55", synthesise: "#a23b72", done: "#1d2330" };
function timelineSvg(d) {
  if (!d.timeline.length) return "";
  const W = 1100, AX0 = 100, AX1 = 520, rowH = 18, end = Math.max(0.001, ...d.timeline.map((t) => t.t));
  const x = (t) => AX0 + (t / end) * (AX1 - AX0);
  const h = d.timeline.length * rowH + 30;
  return `<svg id="timeline" width="${W}" height="${h}" style="background:#fff;border:1px solid var(--line)">
    <line x1="${AX0}" y1="${h - 22}" x2="${AX1}" y2="${h - 22}" stroke="#bbb"></line>
    <text x="${AX0}" y="${h - 8}" fill="#666">0 s</text><text x="${AX1}" y="${h - 8}" text-anchor="end" fill="#666">${num(end, 2)} s</text>
    ${d.timeline.map((t, i) => `<g><line x1="${AX0}" x2="${AX1}" y1="${i * rowH + 12}" y2="${i * rowH + 12}" stroke="#f0f2f5"></line>
      <text x="6" y="${i * rowH + 16}" fill="#444">${esc(t.phase)}</text>
      <circle cx="${x(t.t)}" cy="${i * rowH + 12}" r="5" fill="${PHASE_COLOURS[t.phase] || "#666"}"><title>${esc(t.message)}</title></circle>
      <text x="${AX1 + 14}" y="${i * rowH + 16}" fill="#555">${num(t.t, 2)} s · ${esc(t.message.slice(0, 80))}</text></g>`).join("")}
  </svg>`;
}

// ---- start --------------------------------------------------------------------------------
(async () => {
  try { setHealth(await api("/api/health")); } catch (err) { setHealth({ connected: false, error: err.message }); }
  connect();
  render();
  setInterval(() => { if (route().page === "jobs" && !route().id) renderJobRows(); }, 5000);
})();
