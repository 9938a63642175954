// The cserve dashboard: polls the admin listener's JSON (/api/cserve/*, /api/serve/applications/)
// and draws tables and small SVG charts. No library: the charts are a few lines and polylines,
// which is all a time series of a few hundred points needs, and the page must work offline.
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "cserve-api-key";
const COLORS = { "2xx": "var(--ok)", "4xx": "var(--warn)", "5xx": "var(--bad)", other: "var(--grey)",
  p50: "var(--accent)", p99: "var(--warn)", tokens: "var(--ok)", queued: "var(--bad)", ongoing: "var(--accent)",
  batch: "var(--accent)" };
const state = { overview: null, live: true, logAfter: 0, pg: null };

// ------------------------------------------------------------------ fetch

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, opts) {
  opts = opts || {};
  const r = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers) }));
  if (r.status === 401) {
    $("#key-form").classList.remove("hidden");
    throw new Error("401: an API key is needed");
  }
  return r;
}

async function getJSON(path) {
  const r = await api(path);
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function showError(msg) {
  const bar = $("#error-bar");
  bar.textContent = msg || "";
  bar.classList.toggle("hidden", !msg);
}

// ------------------------------------------------------------------ formatting

function fmtNum(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (digits === undefined) digits = Number.isInteger(v) ? 0 : a < 10 ? 2 : 1;
  return v.toFixed(digits);
}

function fmtDur(s) {
  if (!(s >= 0)) return "-";
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function pillClass(status) {
  if (/^(RUNNING|HEALTHY)$/.test(status)) return "ok";
  if (/FAILED|UNHEALTHY/.test(status)) return "bad";
  if (/STARTING|DEPLOYING|UPDATING|UPSCALING|DOWNSCALING|DELETING|STOPPING/.test(status)) return "info";
  return "";
}

function pill(status) {
  const s = document.createElement("span");
  s.className = "pill " + pillClass(status);
  s.textContent = status;
  return s;
}

// A table cell; numbers keep their raw value in data-value so that nothing is lost to formatting.
function cell(tr, content, cls, raw) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content;
  if (raw !== undefined) td.dataset.value = String(raw);
  tr.appendChild(td);
  return td;
}

function numCell(tr, v, cls, digits) { return cell(tr, fmtNum(v, digits), "n " + cls, v); }

function fillBody(table, rows) {
  const body = $(table + " tbody");
  body.replaceChildren(...rows);
}

// ------------------------------------------------------------------ overview

function renderOverview(o) {
  state.overview = o;
  const srv = o.server;
  const st = $("#srv-state");
  st.textContent = srv.draining ? "DRAINING" : "HEALTHY";
  st.className = "pill " + (srv.draining ? "warn" : "ok");
  $("#srv-uptime").textContent = fmtDur(srv.uptime_s);
  let running = 0, tokps = 0;
  const appRows = [], depRows = [], repRows = [];
  for (const a of o.applications) {
    let appTokens = 0;
    for (const d of a.deployments) {
      running += d.running_replicas;
      tokps += d.tokens_per_s;
      appTokens += d.tokens;
      const tr = document.createElement("tr");
      tr.dataset.app = a.name;
      tr.dataset.dep = d.name;
      cell(tr, a.name);
      cell(tr, d.name + (d.role === "generator" ? "" : " (" + d.role + ")"));
      cell(tr, pill(d.status), "c-status").title = d.message || "";
      numCell(tr, d.target_replicas, "c-target");
      numCell(tr, d.running_replicas, "c-running");
      numCell(tr, d.queued, "c-queued");
      numCell(tr, d.ongoing, "c-ongoing");
      const as = d.autoscaling;
      cell(tr, as ? `${as.state.toLowerCase()} · ${as.min_replicas}..${as.max_replicas}, target ${as.target_ongoing_requests}` +
        (as.last_desired >= 0 ? `, wants ${as.last_desired}` : "") + (as.cpu_limited ? " (CPU-limited)" : "") : "off",
        "c-autoscaling", as ? as.state : "off");
      numCell(tr, d.starts, "c-starts");
      numCell(tr, d.restarts, "c-restarts");
      numCell(tr, d.tokens_per_s, "c-tokps", 1);
      depRows.push(tr);
      for (const r of d.replicas) {
        const rr = document.createElement("tr");
        rr.dataset.replica = r.id;
        rr.dataset.app = a.name;
        cell(rr, r.id, "mono");
        cell(rr, a.name + " / " + d.name);
        cell(rr, pill(r.state), "c-state", r.state);
        cell(rr, String(r.pid), "n mono c-pid", r.pid);
        numCell(rr, r.ongoing, "c-ongoing");
        numCell(rr, r.batch, "c-batch", 1);
        numCell(rr, r.tokens_per_s, "c-tokps", 1);
        numCell(rr, r.tokens, "c-tokens");
        numCell(rr, r.requests, "c-requests");
        numCell(rr, r.errors, "c-errors");
        cell(rr, fmtDur(r.uptime_s), "n c-uptime", r.uptime_s);
        numCell(rr, d.restarts, "c-restarts");
        repRows.push(rr);
      }
    }
    const tr = document.createElement("tr");
    tr.dataset.app = a.name;
    cell(tr, a.name, "c-name");
    cell(tr, a.route_prefix === null ? "(none)" : a.route_prefix, "mono c-prefix");
    cell(tr, pill(a.status), "c-status", a.status);
    cell(tr, a.model, "mono");
    numCell(tr, a.requests.total, "c-requests");
    numCell(tr, a.requests["2xx"], "c-2xx s2");
    numCell(tr, a.requests["4xx"], "c-4xx s4");
    numCell(tr, a.requests["5xx"], "c-5xx s5");
    numCell(tr, appTokens, "c-tokens");
    cell(tr, a.message || "", "msg");
    appRows.push(tr);
  }
  fillBody("#apps-table", appRows);
  fillBody("#deps-table", depRows);
  fillBody("#reps-table", repRows);
  const set = (id, v, raw) => { const e = $(id); e.textContent = v; e.dataset.value = String(raw); };
  set("#card-apps", o.applications.length, o.applications.length);
  set("#card-replicas", running, running);
  set("#card-requests", fmtNum(o.requests.total), o.requests.total);
  set("#card-errors", fmtNum(o.requests["5xx"]), o.requests["5xx"]);
  set("#card-inflight", srv.proxy_ongoing, srv.proxy_ongoing);
  set("#card-tokps", fmtNum(tokps, 1), tokps);
  syncSelects(o.applications);
  const up = $("#updated");
  up.textContent = "Updated " + new Date(srv.time_s * 1000).toLocaleTimeString() + ".";
  up.dataset.ts = String(srv.time_s);
}

// Application pickers follow the running applications, keeping the user's choice.
function syncSelects(apps) {
  const names = apps.map((a) => a.name);
  for (const [sel, keepAll] of [["#chart-app", true], ["#log-app", true], ["#pg-app", false]]) {
    const s = $(sel);
    const have = Array.from(s.options).map((o) => o.value).filter((v) => v !== "" || !keepAll);
    if (have.join("\n") === names.join("\n")) continue;
    const cur = s.value;
    for (const o of Array.from(s.options)) if (o.value !== "" || !keepAll) o.remove();
    for (const n of names) s.add(new Option(n, n));
    if (names.includes(cur) || (keepAll && cur === "")) s.value = cur;
  }
}

// ------------------------------------------------------------------ charts

const SVGNS = "http://www.w3.org/2000/svg";
function svgEl(name, attrs, text) {
  const e = document.createElementNS(SVGNS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// lines: [{name, color, values}], t: seconds (same length as values; null values leave gaps).
function drawChart(fig, t, lines, unit) {
  const svg = fig.querySelector("svg");
  const W = svg.clientWidth || 400, H = svg.clientHeight || 150;
  const L = 40, R = 8, T = 8, B = 18;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  let max = 0;
  for (const l of lines) for (const v of l.values) if (v !== null && v > max) max = v;
  max = niceMax(max);
  // the x axis spans the chosen range, or less while the server is younger than that
  const t1 = t.length ? t[t.length - 1] : 0, t0 = t.length ? Math.max(t1 - state.range, t[0]) : t1 - state.range;
  const x = (tt) => L + ((tt - t0) / (t1 - t0 || 1)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  for (let i = 0; i <= 2; i++) {
    const v = (max * i) / 2;
    svg.appendChild(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
    svg.appendChild(svgEl("text", { x: L - 5, y: y(v) + 3, "text-anchor": "end", class: "axis" }, fmtNum(v)));
  }
  svg.appendChild(svgEl("text", { x: L, y: H - 4, class: "axis" }, "-" + fmtDur(t1 - t0)));
  svg.appendChild(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "axis" }, "now"));
  let points = 0;
  for (const l of lines) {
    let d = "", pen = false;
    l.values.forEach((v, i) => {
      if (v === null || t[i] < t0) { pen = false; return; }
      d += (pen ? "L" : "M") + x(t[i]).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
      points++;
    });
    if (d) svg.appendChild(svgEl("path", { d, fill: "none", stroke: l.color, "stroke-width": 1.6,
      "stroke-linejoin": "round" }));
  }
  if (!points) svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
  fig.dataset.points = String(points);
  const legend = fig.querySelector(".legend");
  legend.replaceChildren();
  for (const l of lines) {
    let last = null;
    for (let i = l.values.length - 1; i >= 0 && last === null; i--) last = l.values[i];
    const item = document.createElement("span");
    item.dataset.series = l.name;
    item.dataset.value = last === null ? "" : String(last);
    item.dataset.max = String(Math.max(0, ...l.values.filter((v) => v !== null)));
    const sw = document.createElement("span");
    sw.className = "sw";
    sw.style.background = l.color;
    const b = document.createElement("b");
    b.textContent = last === null ? "-" : fmtNum(last) + (unit ? " " + unit : "");
    item.append(sw, l.name + " ", b);
    legend.appendChild(item);
  }
}

async function refreshCharts() {
  state.range = Number($("#chart-range").value);
  const app = $("#chart-app").value;
  const h = await getJSON(`/api/cserve/history?app=${encodeURIComponent(app)}&seconds=${state.range}`);
  const s = h.series, t = s.t;
  const fig = (name) => document.querySelector(`.chart[data-chart="${name}"]`);
  const line = (name, key) => ({ name, color: COLORS[name] || COLORS[key], values: s[key] });
  drawChart(fig("rps"), t, ["2xx", "4xx", "5xx", "other"].map((k) => line(k, k)), "/s");
  drawChart(fig("latency"), t, [line("p50", "p50_ms"), line("p99", "p99_ms")], "ms");
  drawChart(fig("ttft"), t, [line("p50", "ttft_p50_ms"), line("p99", "ttft_p99_ms")], "ms");
  drawChart(fig("tokens"), t, [line("tokens", "tokens_s")], "/s");
  drawChart(fig("queue"), t, [line("queued", "queued"), line("ongoing", "ongoing")], "");
  drawChart(fig("batch"), t, [line("batch", "batch")], "");
}

// ------------------------------------------------------------------ logs

async function refreshLogs() {
  const q = new URLSearchParams({ app: $("#log-app").value, status: $("#log-status").value.trim(),
    path: $("#log-path").value.trim(), limit: "200" });
  const j = await getJSON("/api/cserve/logs?" + q);
  const rows = j.records.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.seq = String(r.seq);
    tr.dataset.app = r.application;
    tr.dataset.status = String(r.status);
    cell(tr, new Date(r.ts * 1000).toLocaleTimeString(), "mono");
    cell(tr, r.method, "mono");
    cell(tr, r.path, "mono c-path");
    cell(tr, String(r.status), "n mono s" + String(r.status)[0], r.status);
    numCell(tr, r.latency_ms, "c-latency", 1);
    cell(tr, r.application || "-");
    cell(tr, r.replica || "-", "mono");
    cell(tr, r.request_id, "mono muted");
    return tr;
  });
  fillBody("#log-table", rows);
  $("#log-count").textContent = `${rows.length} shown (newest first; the ring keeps the last 1000)`;
}

// ------------------------------------------------------------------ config

async function loadConfig() {
  const st = await getJSON("/api/serve/applications/");
  const apps = Object.values(st.applications || {}).map((a) => a.deployed_app_config).filter((c) => c);
  $("#config-text").value = JSON.stringify({ applications: apps }, null, 2);
  $("#config-result").textContent = "Loaded the config of " + apps.length + " application(s).";
}

async function applyConfig() {
  const text = $("#config-text").value;
  const json = /^\s*[{[]/.test(text);
  const res = $("#config-result");
  res.textContent = "Applying...";
  const r = await api("/api/serve/applications/", { method: "PUT", body: text,
    headers: { "Content-Type": json ? "application/json" : "application/yaml" } });
  const body = await r.text();
  res.textContent = r.ok ? "Applied: the controller is rolling it out." : "Refused (HTTP " + r.status + "): " + body;
  res.className = r.ok ? "s2" : "s5";
}

// ------------------------------------------------------------------ playground

// The request goes to the admin listener (/api/cserve/proxy + the application's route), which
// hands it to the router in-process: same origin, same API key, no CORS on the proxy.
async function runPlayground() {
  const o = state.overview;
  const app = o && o.applications.find((a) => a.name === $("#pg-app").value);
  if (!app || app.route_prefix === null) return;
  const prefix = app.route_prefix === "/" ? "" : app.route_prefix;
  const body = { model: app.model, prompt: $("#pg-prompt").value, stream: true,
    max_tokens: Number($("#pg-max-tokens").value) || 16,
    temperature: Number($("#pg-temperature").value), top_p: Number($("#pg-top-p").value),
    top_k: Number($("#pg-top-k").value) };
  const seed = $("#pg-seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  const out = $("#pg-output"), stats = $("#pg-stats");
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = body.prompt;
  const gen = document.createElement("span");
  gen.id = "pg-generated";
  out.replaceChildren(promptSpan, gen);
  const ctl = new AbortController();
  state.pg = ctl;
  $("#pg-run").disabled = true;
  $("#pg-stop").disabled = false;
  const t0 = performance.now();
  let chunks = 0, first = 0, finish = "";
  stats.dataset.chunks = "0";
  stats.textContent = "waiting for the first token...";
  try {
    const r = await api(CP_PROXY + prefix + "/v1/completions", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" }, signal: ctl.signal });
    if (!r.ok || !r.body) throw new Error("HTTP " + r.status + ": " + (await r.text()));
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        for (const ln of ev.split("\n")) {
          if (!ln.startsWith("data: ")) continue;
          const data = ln.slice(6);
          if (data === "[DONE]") continue;
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message);
          const c = j.choices && j.choices[0];
          if (!c) continue;
          if (c.text) {
            if (!first) first = performance.now();
            chunks++;
            gen.textContent += c.text;
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
      const dt = (performance.now() - (first || t0)) / 1000;
      stats.dataset.chunks = String(chunks);
      stats.textContent = `${chunks} chunks · first token ${first ? Math.round(first - t0) + " ms" : "-"}` +
        (chunks > 1 && dt > 0 ? ` · ${fmtNum((chunks - 1) / dt, 1)} chunks/s` : "");
    }
    stats.textContent += finish ? ` · finished (${finish})` : "";
    stats.dataset.done = "1";
  } catch (e) {
    stats.textContent = e.name === "AbortError" ? "stopped" : "error: " + e.message;
    stats.dataset.done = "1";
  } finally {
    state.pg = null;
    $("#pg-run").disabled = false;
    $("#pg-stop").disabled = true;
  }
}
const CP_PROXY = "/api/cserve/proxy";

// ------------------------------------------------------------------ loop

async function tick(n) {
  if (!state.live) return;
  try {
    renderOverview(await getJSON("/api/cserve/replicas"));
    if (n % 2 === 0) await Promise.all([refreshCharts(), refreshLogs()]);
    showError("");
  } catch (e) {
    showError("Cannot read the server: " + e.message);
  }
}

function start() {
  let n = 0;
  const loop = async () => { await tick(n++); setTimeout(loop, 1000); };
  loop();
  $("#live").addEventListener("change", (e) => { state.live = e.target.checked; });
  $("#chart-app").addEventListener("change", () => refreshCharts().catch((e) => showError(e.message)));
  $("#chart-range").addEventListener("change", () => refreshCharts().catch((e) => showError(e.message)));
  for (const id of ["#log-app", "#log-status", "#log-path"])
    $(id).addEventListener(id === "#log-app" ? "change" : "input", () => refreshLogs().catch((e) => showError(e.message)));
  $("#config-load").addEventListener("click", () => loadConfig().catch((e) => showError(e.message)));
  $("#config-apply").addEventListener("click", () => applyConfig().catch((e) => showError(e.message)));
  $("#pg-run").addEventListener("click", runPlayground);
  $("#pg-stop").addEventListener("click", () => state.pg && state.pg.abort());
  $("#key-btn").addEventListener("click", () => $("#key-form").classList.toggle("hidden"));
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("#key-input").value);
    $("#key-form").classList.add("hidden");
    tick(0);
  });
  loadConfig().catch(() => {});
}

start();
