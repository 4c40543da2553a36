// weft's web UI: every page reads and changes the fleet through the HTTP
// API, with the token the API keeps in its cookie.

const main = document.getElementById("main");
let stopPage = () => {}; // ends the current page's polls and streams

// api calls the HTTP API; a change carries X-Weft-UI, which the API asks
// of changes made with its cookie. A 401 sends the user to the login.
async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") opts.headers["X-Weft-UI"] = "1";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = null;
  if (resp.status !== 204) data = await resp.json().catch(() => null);
  if (resp.status === 401 && path !== "/api/session") {
    navigate("/login");
    throw new Error("log in first");
  }
  if (!resp.ok) throw new Error((data && data.error) || resp.statusText);
  return data;
}

// el makes an element: el("td", {class: "x"}, "text", child, ...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const stateBadge = (s) => el("span", { class: "state " + s, "data-state": s }, s);
const ago = (t) => {
  if (!t) return "";
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 60) return Math.round(s) + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
};
const seconds = (s) => (s < 60 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min");
const link = (href, text) => el("a", { href, "data-link": true }, text);

// poll calls f now and every ms until the page changes; errors show.
function poll(ms, f) {
  let live = true;
  let timer = null;
  const tick = async () => {
    try {
      await f();
    } catch (e) {
      showError(e);
    }
    if (live) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    live = false;
    clearTimeout(timer);
  };
}

function showError(e) {
  let box = document.getElementById("error");
  if (!box) {
    box = el("p", { id: "error", class: "error" });
    main.prepend(box);
  }
  box.textContent = e.message;
}

// --- runs list ---------------------------------------------------------

function runsPage() {
  const params = new URLSearchParams(location.search);
  const repo = el("input", { name: "repo", placeholder: "repository", value: params.get("repo") || "" });
  const branch = el("input", { name: "branch", placeholder: "branch", value: params.get("branch") || "" });
  const state = el("select", { name: "state" }, ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) =>
    el("option", { value: s, selected: s === (params.get("state") || "") }, s || "any state")));
  const form = el("form", { class: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const f of [repo, branch, state]) if (f.value) q.set(f.name, f.value);
    navigate("/" + (q.toString() ? "?" + q : ""));
  } }, repo, branch, state, el("button", { type: "submit" }, "Filter"));
  const body = el("tbody");
  main.replaceChildren(el("h1", {}, "Runs"), form,
    el("table", { id: "runs" }, el("thead", {}, el("tr", {}, ["Run", "Pipeline", "Repository", "Branch", "State", "Tier", "Created"].map((h) => el("th", {}, h)))), body));
  const q = new URLSearchParams();
  for (const k of ["repo", "branch", "state"]) if (params.get(k)) q.set(k, params.get(k));
  return poll(2000, async () => {
    const list = await api("GET", "/api/runs?" + q);
    body.replaceChildren(...list.runs.map((r) => el("tr", { "data-run": r.id },
      el("td", {}, link("/runs/" + r.id, r.id)), el("td", {}, r.pipeline), el("td", {}, r.repo || ""),
      el("td", {}, r.branch || ""), el("td", {}, stateBadge(r.state)), el("td", {}, r.tier), el("td", {}, ago(r.created)))));
    if (list.runs.length === 0) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No runs yet.")));
  });
}

// --- one run -----------------------------------------------------------

// layout places the stages of a pipeline in columns by depth.
function layout(stages) {
  const depth = {};
  const of = (s) => {
    if (depth[s.key] !== undefined) return depth[s.key];
    depth[s.key] = 0;
    let d = 0;
    for (const dep of s.depends_on || []) {
      const up = stages.find((x) => x.key === dep);
      if (up) d = Math.max(d, of(up) + 1);
    }
    return (depth[s.key] = d);
  };
  stages.forEach(of);
  const cols = [];
  for (const s of stages) (cols[depth[s.key]] ||= []).push(s.key);
  const pos = {};
  cols.forEach((keys, c) => keys.forEach((k, r) => (pos[k] = { x: 20 + c * 190, y: 20 + r * 60 })));
  return { pos, width: 40 + cols.length * 190, height: 40 + Math.max(...cols.map((c) => c.length)) * 60 };
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

// drawDAG draws the stage graph; states are updated in place later.
function drawDAG(spec) {
  const stages = spec.stages || [];
  const { pos, width, height } = layout(stages);
  const g = svg("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, id: "dag" });
  for (const s of stages) for (const dep of s.depends_on || []) {
    const a = pos[dep], b = pos[s.key];
    if (!a) continue;
    g.append(svg("path", { d: `M${a.x + 150},${a.y + 18} C${a.x + 170},${a.y + 18} ${b.x - 20},${b.y + 18} ${b.x},${b.y + 18}` }));
  }
  for (const s of stages) {
    const p = pos[s.key];
    const t = svg("text", { x: p.x + 10, y: p.y + 23 });
    t.textContent = s.name || s.key;
    g.append(svg("g", { class: "stage pending", "data-stage": s.key, "data-state": "pending" },
      svg("rect", { x: p.x, y: p.y, width: 150, height: 36 }), t));
  }
  return g;
}

// ansi renders a line with SGR colour codes as spans.
function ansi(text) {
  const out = [];
  let cls = [];
  const re = /\x1b\[([0-9;]*)m/g;
  let last = 0, m;
  const push = (s) => { if (s) out.push(cls.length ? el("span", { class: cls.join(" ") }, s) : document.createTextNode(s)); };
  while ((m = re.exec(text))) {
    push(text.slice(last, m.index));
    last = re.lastIndex;
    for (const code of (m[1] || "0").split(";").map(Number)) {
      if (code === 0) cls = [];
      else if (code === 1) cls = [...cls.filter((c) => c !== "ansi-bold"), "ansi-bold"];
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) cls = [...cls.filter((c) => !/^ansi-\d/.test(c)), "ansi-" + code];
      else if (code === 39) cls = cls.filter((c) => !/^ansi-\d/.test(c));
    }
  }
  push(text.slice(last));
  return out;
}

function runPage(id) {
  const title = el("h1", {}, "Run ", id);
  const info = el("p", { class: "muted", id: "run-info" });
  const cancel = el("button", { class: "danger", id: "cancel", onclick: async () => {
    cancel.disabled = true;
    try { await api("POST", `/api/runs/${id}/cancel`, {}); } catch (e) { showError(e); cancel.disabled = false; }
  } }, "Cancel");
  // Retry runs a failed or cancelled run again from the stages that did
  // not succeed; the page starts over once the dispatcher has reopened it.
  const retry = el("button", { id: "retry", disabled: true, onclick: async () => {
    retry.disabled = true;
    try {
      const before = await api("GET", "/api/runs/" + id);
      await api("POST", `/api/runs/${id}/retry`, {});
      for (let i = 0; i < 60; i++) {
        const r = await api("GET", "/api/runs/" + id);
        if ((r.replays || 0) > (before.replays || 0)) break;
        await new Promise((ok) => setTimeout(ok, 500));
      }
      route();
    } catch (e) { showError(e); retry.disabled = false; }
  } }, "Retry");
  const badge = el("span", { id: "run-state" });
  const stagesBody = el("tbody");
  const artifacts = el("ul", { id: "artifacts" });
  const log = el("pre", { class: "log", id: "log" });
  main.replaceChildren(title, el("div", { class: "toolbar" }, badge, cancel, retry), info, el("div", { id: "dag-box" }),
    el("h2", {}, "Stages"),
    el("table", { id: "stages" }, el("thead", {}, el("tr", {}, ["Stage", "State", "Attempt", "Agent", "Message"].map((h) => el("th", {}, h)))), stagesBody),
    el("h2", {}, "Artifacts"), artifacts, el("h2", {}, "Log"), log);
  let drawn = false, ended = false, listed = false;
  // The log follows over Server-Sent Events; EventSource reconnects by
  // itself, sending Last-Event-ID.
  const es = new EventSource(`/api/runs/${id}/logs?follow=true`);
  es.addEventListener("line", (ev) => {
    const l = JSON.parse(ev.data);
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(el("span", { class: "stage" }, l.stage + " | "), el("span", { class: l.stream === "system" ? "system" : "" }, ansi(l.text)), "\n");
    if (stick) log.scrollTop = log.scrollHeight;
  });
  es.addEventListener("end", () => { es.close(); log.dataset.ended = "true"; });
  es.addEventListener("error", (ev) => { if (ev.data) { showError(new Error(JSON.parse(ev.data).error)); es.close(); } });
  const stop = poll(1000, async () => {
    if (ended) return;
    const r = await api("GET", "/api/runs/" + id);
    if (!drawn && r.pipeline_spec) {
      document.getElementById("dag-box").replaceChildren(drawDAG(r.pipeline_spec));
      drawn = true;
    }
    badge.replaceChildren(stateBadge(r.state));
    info.textContent = `${r.pipeline} · ${r.repo || "local"} · ${r.branch || ""} ${r.commit ? "@ " + r.commit.slice(0, 12) : ""} · ${r.tier} · created ${ago(r.created)}`;
    for (const s of r.stages || []) {
      const g = document.querySelector(`g.stage[data-stage="${CSS.escape(s.key)}"]`);
      if (g) { g.setAttribute("class", "stage " + s.state); g.setAttribute("data-state", s.state); }
    }
    stagesBody.replaceChildren(...(r.stages || []).map((s) => el("tr", { "data-stage": s.key },
      el("td", {}, s.key), el("td", {}, stateBadge(s.state)), el("td", {}, s.attempt || ""), el("td", {}, s.agent || ""), el("td", {}, s.message || ""))));
    const terminal = ["succeeded", "failed", "cancelled"].includes(r.state);
    cancel.disabled = terminal || !!r.cancel_reason;
    retry.disabled = !["failed", "cancelled"].includes(r.state);
    if (terminal && !listed) {
      listed = true;
      const a = await api("GET", `/api/runs/${id}/artifacts`);
      artifacts.replaceChildren(...a.artifacts.map((x) => el("li", {}, el("a", { href: x.url, download: true }, `${x.stage}/${x.path}`), ` (${x.size} bytes)`)));
      if (a.artifacts.length === 0) artifacts.append(el("li", { class: "muted" }, "none"));
      ended = true;
    }
  });
  return () => { stop(); es.close(); };
}

// --- queues ------------------------------------------------------------

function queuesPage() {
  const queues = el("tbody"), stages = el("tbody"), runs = el("tbody");
  const intake = el("p", { id: "intake" });
  main.replaceChildren(el("h1", {}, "Queues"), intake,
    el("table", { id: "queues" }, el("thead", {}, el("tr", {}, ["Queue", "Waiting by tier", "Running", "Paused", ""].map((h) => el("th", {}, h)))), queues),
    el("h2", {}, "Waiting stages"),
    el("table", { id: "waiting-stages" }, el("thead", {}, el("tr", {}, ["Run", "Stage", "Queue", "Tier", "Why", "Waited"].map((h) => el("th", {}, h)))), stages),
    el("h2", {}, "Runs waiting for admission"),
    el("table", { id: "waiting-runs" }, el("thead", {}, el("tr", {}, ["Run", "Repository", "Pipeline", "Why", "Waited"].map((h) => el("th", {}, h)))), runs));
  return poll(1000, async () => {
    const q = await api("GET", "/api/queues");
    intake.textContent = q.intake.paused ? `Intake paused: ${q.intake.waiting} triggers held` : "Intake open";
    queues.replaceChildren(...q.queues.map((x) => el("tr", { "data-queue": x.queue },
      el("td", {}, x.queue),
      el("td", {}, x.tiers.filter((t) => t.waiting > 0).map((t) => `${t.tier} ${t.waiting}`).join(", ") || "0"),
      el("td", {}, x.running),
      el("td", {}, x.paused ? "paused" + (x.paused_reason ? ": " + x.paused_reason : "") : ""),
      el("td", {}, el("button", { onclick: async (ev) => {
        ev.target.disabled = true;
        try { await api("POST", `/api/queues/${encodeURIComponent(x.queue)}/${x.paused ? "resume" : "pause"}`, x.paused ? undefined : {}); } catch (e) { showError(e); }
      } }, x.paused ? "Resume" : "Pause")))));
    stages.replaceChildren(...q.waiting_stages.map((s) => el("tr", {},
      el("td", {}, link("/runs/" + s.run_id, s.run_id)), el("td", {}, s.stage), el("td", {}, s.queue), el("td", {}, s.tier),
      el("td", {}, [s.reason, s.detail].filter(Boolean).join(": ")), el("td", {}, seconds(s.waited_seconds)))));
    runs.replaceChildren(...q.waiting_runs.map((r) => el("tr", {},
      el("td", {}, link("/runs/" + r.run_id, r.run_id)), el("td", {}, r.repo || ""), el("td", {}, r.pipeline),
      el("td", {}, [r.reason, r.detail].filter(Boolean).join(": ")), el("td", {}, seconds(r.waited_seconds)))));
  });
}

// --- agents ------------------------------------------------------------

function agentsPage() {
  const body = el("tbody");
  main.replaceChildren(el("h1", {}, "Agents"),
    el("table", { id: "agents" }, el("thead", {}, el("tr", {}, ["Agent", "Host", "Queues", "State", "Slots", "Running", ""].map((h) => el("th", {}, h)))), body));
  return poll(2000, async () => {
    const a = await api("GET", "/api/agents");
    body.replaceChildren(...a.agents.map((x) => el("tr", { "data-agent": x.id },
      el("td", {}, x.id), el("td", {}, x.hostname || ""), el("td", {}, (x.queues || []).join(", ")),
      el("td", {}, stateBadge(x.draining ? "draining" : x.busy > 0 ? "busy" : "idle")),
      el("td", {}, `${x.busy}/${x.slots}`),
      el("td", {}, (x.stages || []).map((s) => link("/runs/" + s.split("/")[0], s))),
      el("td", {}, el("button", { disabled: !!x.draining, onclick: async (ev) => {
        ev.target.disabled = true;
        try { await api("POST", `/api/agents/${encodeURIComponent(x.id)}/drain`); } catch (e) { showError(e); }
      } }, "Drain")))));
    if (a.agents.length === 0) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No agents.")));
  });
}

// --- login -------------------------------------------------------------

function loginPage() {
  const input = el("input", { type: "password", id: "token", placeholder: "weft_…", autocomplete: "off" });
  const msg = el("p", { class: "error" });
  main.replaceChildren(el("form", { class: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", "/api/session", { token: input.value });
      await whoami();
      navigate("/");
    } catch (e) { msg.textContent = e.message; }
  } }, el("h1", {}, "Log in"), el("p", { class: "muted" }, "Paste an API token (weft up prints one; weft token create makes more)."), input, el("button", { type: "submit" }, "Log in"), msg));
  return () => {};
}

async function whoami() {
  const who = document.getElementById("who");
  try {
    const w = await api("GET", "/api/whoami");
    who.textContent = `${w.name} (${w.role})`;
  } catch { who.textContent = ""; }
}

// --- routing -----------------------------------------------------------

function route() {
  stopPage();
  const path = location.pathname;
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active",
    a.dataset.nav === (path.startsWith("/queues") ? "queues" : path.startsWith("/agents") ? "agents" : "runs")));
  let m;
  if (path === "/login") stopPage = loginPage();
  else if ((m = path.match(/^\/runs\/([0-9A-Za-z]+)$/))) stopPage = runPage(m[1]);
  else if (path === "/queues") stopPage = queuesPage();
  else if (path === "/agents") stopPage = agentsPage();
  else stopPage = runsPage();
}

function navigate(to) {
  history.pushState(null, "", to);
  route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a");
  if (!a || a.target || a.hasAttribute("download") || a.origin !== location.origin || a.pathname.startsWith("/api/") || a.pathname.startsWith("/artifacts/")) return;
  ev.preventDefault();
  navigate(a.pathname + a.search);
});
window.addEventListener("popstate", route);
whoami();
route();
