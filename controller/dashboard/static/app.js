// Ambit topology view: polls /api/graph, lays the graph out in layers (sources on the left) and
// draws it in SVG. No framework and no CDN: the controller serves this file as it is.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COL = 290, ROW = 110, PAD_X = 90, PAD_Y = 60;
let selected = null;
let lastGraph = null;
let refreshMs = 3000;

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function fmtRate(r, protocol) {
  const unit = protocol === "http" ? "req/s" : "conn/s";
  return (r >= 10 ? r.toFixed(1) : r.toFixed(2)) + " " + unit;
}
function fmtBytes(b) {
  if (b >= 1048576) return (b / 1048576).toFixed(1) + " MB/s";
  if (b >= 1024) return (b / 1024).toFixed(1) + " kB/s";
  return b.toFixed(0) + " B/s";
}
function fmtPct(x) { return (x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 0) + "%"; }
function fmtMs(x) { return x === null || x === undefined ? "–" : (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + " ms"; }

// Longest-path layering from the nodes nobody calls; a cycle is cut where it closes.
function layers(nodes, edges) {
  const out = {}, incoming = {};
  for (const n of nodes) { out[n.id] = []; incoming[n.id] = 0; }
  for (const e of edges) { out[e.source].push(e.target); incoming[e.target]++; }
  const layer = {};
  const visit = (id, depth, onPath) => {
    if (onPath.has(id)) return;
    if (layer[id] !== undefined && layer[id] >= depth) return;
    layer[id] = depth;
    onPath.add(id);
    for (const t of out[id]) visit(t, depth + 1, onPath);
    onPath.delete(id);
  };
  const connected = nodes.filter(n => out[n.id].length || incoming[n.id]);
  for (const n of connected) if (!incoming[n.id]) visit(n.id, 0, new Set());
  for (const n of connected) if (layer[n.id] === undefined) visit(n.id, 0, new Set());
  return layer;
}

function layout(g) {
  const layer = layers(g.nodes, g.edges);
  const cols = {};
  let maxLayer = 0;
  for (const n of g.nodes) {
    const l = layer[n.id];
    if (l === undefined) continue;
    maxLayer = Math.max(maxLayer, l);
    (cols[l] = cols[l] || []).push(n);
  }
  const idle = g.nodes.filter(n => layer[n.id] === undefined);
  const pos = {};
  let rows = 0;
  for (const ns of Object.values(cols)) rows = Math.max(rows, ns.length);
  // Order each column by the mean row of its neighbours in the previous column (barycenter), a
  // few sweeps left to right: fewer crossings, stable between refreshes (ties by id).
  const preds = {};
  for (const e of g.edges) (preds[e.target] = preds[e.target] || []).push(e.source);
  const row = {};
  for (let sweep = 0; sweep < 3; sweep++) {
    for (let l = 0; l <= maxLayer; l++) {
      const ns = cols[l] || [];
      const key = n => {
        const ps = (preds[n.id] || []).filter(p => row[p] !== undefined && layer[p] < l);
        return ps.length ? ps.reduce((s, p) => s + row[p], 0) / ps.length : (row[n.id] !== undefined ? row[n.id] : 1e9);
      };
      ns.sort((a, b) => (key(a) - key(b)) || a.id.localeCompare(b.id));
      const off = (rows - ns.length) / 2;   // centre short columns
      ns.forEach((n, i) => { row[n.id] = i + off; });
    }
  }
  for (const [l, ns] of Object.entries(cols)) {
    for (const n of ns) pos[n.id] = { x: PAD_X + l * COL, y: PAD_Y + row[n.id] * ROW };
  }
  // Nodes without traffic in the window: a row of their own underneath.
  idle.forEach((n, i) => { pos[n.id] = { x: PAD_X + i * 130, y: PAD_Y + rows * ROW + 30, idle: true }; });
  const width = Math.max(PAD_X * 2 + maxLayer * COL, PAD_X + idle.length * 130) + 40;
  const height = PAD_Y + rows * ROW + (idle.length ? 110 : 20);
  return { pos, width, height };
}

function lockIcon(parent, x, y) {
  const g = el("g", { class: "lock lock-icon", transform: `translate(${x - 6},${y - 7})` }, parent);
  el("title", {}, g).textContent = "mutual TLS";
  el("path", { d: "M3 6 V4 a3 3 0 0 1 6 0 V6", fill: "none" }, g);
  el("rect", { x: 1.5, y: 6, width: 9, height: 7, rx: 1 }, g);
  return g;
}

function drawNode(svg, n, p) {
  const g = el("g", { class: `node kind-${n.kind}` + (p.idle ? " idle" : "") + (n.id === selected ? " selected" : ""),
                      "data-id": n.id, "data-kind": n.kind, "data-name": n.name, "data-namespace": n.namespace,
                      transform: `translate(${p.x},${p.y})` }, svg);
  el("title", {}, g).textContent = `${n.kind} ${n.namespace}/${n.name}`;
  if (n.kind === "workload") el("circle", { r: 16, class: "shape-workload" }, g);
  else if (n.kind === "service") el("polygon", { points: "0,-18 17,13 -17,13", class: "shape-service" }, g);
  else el("rect", { x: -24, y: -14, width: 48, height: 28, rx: 7, class: "shape-waypoint" }, g);
  const t = el("text", { y: 32, class: "name" }, g); t.textContent = n.name;
  const s = el("text", { y: 44, class: "ns" }, g); s.textContent = n.namespace + (n.kind === "waypoint" ? " · waypoint" : "");
  if (n.policies && n.policies.length) {
    const b = el("text", { y: 56, class: "ns policy-count" }, g);
    b.textContent = `${n.policies.length} polic${n.policies.length === 1 ? "y" : "ies"}`;
  }
  g.addEventListener("click", () => select(n.id));
}

function drawEdge(svg, e, a, b) {
  const active = e.rate > 0 || e.bytesPerSecond > 0;
  const cls = ["edge", e.protocol];
  if (e.errorRate > 0) cls.push("errors");
  if (!active) cls.push("idle");
  const g = el("g", { class: cls.join(" "), "data-source": e.source, "data-target": e.target,
                      "data-protocol": e.protocol, "data-rate": e.rate, "data-error-rate": e.errorRate,
                      "data-p99-ms": e.p99Ms === null ? "" : e.p99Ms, "data-bytes-per-second": e.bytesPerSecond,
                      "data-mtls": e.mtls ? "true" : "false" }, svg);
  const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
  const x1 = a.x + dx / len * 24, y1 = a.y + dy / len * 24, x2 = b.x - dx / len * 26, y2 = b.y - dy / len * 26;
  // An edge that skips a column bends away from the nodes in between.
  const skips = Math.abs(dx) > COL * 1.5;
  const bend = skips ? ROW * 0.45 : 0;
  const cx = (x1 + x2) / 2 + (dy / len) * bend, cy = (y1 + y2) / 2 - (dx / len) * bend;
  el("path", { class: "line", d: skips ? `M${x1},${y1} Q${cx},${cy} ${x2},${y2}` : `M${x1},${y1} L${x2},${y2}` }, g);
  const mx = skips ? (x1 + 2 * cx + x2) / 4 : cx, my = skips ? (y1 + 2 * cy + y2) / 4 : cy;
  const parts = [fmtRate(e.rate, e.protocol), fmtPct(e.errorRate) + " err"];
  if (e.protocol === "http") parts.push("p99 " + fmtMs(e.p99Ms));
  parts.push(fmtBytes(e.bytesPerSecond));
  const text = parts.join(" · ");
  el("title", {}, g).textContent = `${e.source} → ${e.target}: ${text}` + (e.mtls ? " · mutual TLS" : "");
  // Idle edges (traffic earlier in the window, none now) keep their lock but not a label.
  const label = el("text", { x: mx, y: my - 8, class: "label" }, g);
  label.textContent = active ? text : "";
  if (e.mtls) lockIcon(g, mx, my + 8);
}

function render(g) {
  lastGraph = g;
  const svg = document.getElementById("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const defs = el("defs", {}, svg);
  const m = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
                           orient: "auto-start-reverse" }, defs);
  el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a94a6" }, m);
  const { pos, width, height } = layout(g);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  for (const e of g.edges) if (pos[e.source] && pos[e.target]) drawEdge(svg, e, pos[e.source], pos[e.target]);
  for (const n of g.nodes) drawNode(svg, n, pos[n.id]);

  const name = id => { const n = g.nodes.find(x => x.id === id); return n ? `${n.namespace}/${n.name} (${n.kind})` : id; };
  const tbody = document.querySelector("#edges tbody");
  tbody.textContent = "";
  for (const e of g.edges) {
    const tr = document.createElement("tr");
    tr.className = "edge-row";
    tr.dataset.source = e.source; tr.dataset.target = e.target;
    for (const v of [name(e.source), name(e.target), e.protocol, fmtRate(e.rate, e.protocol), fmtPct(e.errorRate),
                     e.protocol === "http" ? fmtMs(e.p99Ms) : "–", fmtBytes(e.bytesPerSecond), e.mtls ? "locked (mutual_tls)" : "none"]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  const meta = g.meta || {};
  const errs = Object.keys(meta.errors || {}).length;
  const src = meta.source === "prometheus" ? `Prometheus ${meta.prometheus} (rate over ${meta.window})`
    : `components, scraped directly (rates over the last ${meta.windowSeconds || 0}s)`;
  const st = document.getElementById("status");
  st.textContent = `${g.nodes.length} nodes · ${g.edges.length} edges · from ${src} · updated ${new Date().toLocaleTimeString()}`
    + (errs ? ` · ${errs} source error(s)` : "");
  st.title = errs ? JSON.stringify(meta.errors, null, 1) : "";
  st.dataset.source = meta.source || "";
  st.dataset.updated = String(meta.generatedAt || "");
  if (selected) fillPanelMeta(selected);
}

function fillPanelMeta(id) {
  const n = lastGraph && lastGraph.nodes.find(x => x.id === id);
  document.getElementById("panel-title").textContent = n ? `${n.kind}: ${n.namespace}/${n.name}` : id;
  const meta = [];
  if (n && n.node) meta.push(`node ${n.node}`);
  if (n && n.waypoint) meta.push(`waypoint ${n.waypoint}`);
  if (n && n.kind === "workload") meta.push(n.inMesh ? "in the mesh (ambient)" : "not captured by the mesh");
  document.getElementById("panel-meta").textContent = meta.join(" · ");
  const ul = document.getElementById("panel-policies");
  ul.textContent = "";
  for (const p of (n && n.policies) || []) {
    const li = document.createElement("li");
    li.className = "policy";
    li.textContent = `${p.kind} ${p.name}: ${p.action} (${p.scope})`;
    ul.appendChild(li);
  }
  if (!ul.childNodes.length) { const li = document.createElement("li"); li.className = "note"; li.textContent = "none"; ul.appendChild(li); }
}

async function select(id) {
  selected = id;
  document.querySelectorAll(".node").forEach(n => n.classList.toggle("selected", n.dataset.id === id));
  const panel = document.getElementById("panel");
  panel.hidden = false;
  panel.dataset.node = id;
  fillPanelMeta(id);
  const logs = document.getElementById("panel-logs");
  logs.textContent = "loading…";
  try {
    const r = await fetch("api/node?id=" + encodeURIComponent(id));
    const d = await r.json();
    if (selected !== id) return;
    logs.textContent = "";
    document.getElementById("panel-logs-note").textContent = d.accessLogs.available
      ? `${d.accessLogs.lines.length} recent line(s), ${d.accessLogs.message}` : d.accessLogs.message;
    for (const l of d.accessLogs.lines.slice().reverse()) {
      const div = document.createElement("div");
      div.className = "log-line";
      const c = document.createElement("span"); c.className = "comp"; c.textContent = l.component + " ";
      div.appendChild(c);
      div.appendChild(document.createTextNode(l.line));
      logs.appendChild(div);
    }
    showTraces(d.traces);
    panel.dataset.loaded = "true";
  } catch (err) {
    logs.textContent = "could not load: " + err;
  }
}

// The node's recent traces (one row each: root span, duration, status, spans, services); a click
// on a row lists that trace's spans, indented under their parents, with their offsets and durations.
function showTraces(t) {
  const note = document.getElementById("panel-traces");
  const list = document.getElementById("panel-trace-list");
  const spans = document.getElementById("panel-spans");
  list.textContent = ""; spans.textContent = "";
  note.textContent = !t.available ? t.message
    : `${t.traces.length} recent trace(s) from the ${t.message}` + (t.traces.length ? "" : ": none yet");
  for (const tr of t.traces) {
    const row = document.createElement("div");
    row.className = "trace-row" + (tr.status === "error" ? " errors" : "");
    Object.assign(row.dataset, { traceId: tr.traceId, spanCount: tr.spanCount, status: tr.status });
    row.textContent = `${tr.traceId.slice(0, 12)}… ${tr.rootService}: ${tr.root} · ${fmtMs(tr.durationMs)} · `
      + `${tr.status} · ${tr.spanCount} span(s) · ${tr.services.join(", ")}`;
    row.addEventListener("click", () => showSpans(tr));
    list.appendChild(row);
  }
}

function showSpans(tr) {
  const box = document.getElementById("panel-spans");
  box.textContent = "";
  box.dataset.traceId = tr.traceId;
  const h = document.createElement("div");
  h.className = "note"; h.textContent = `trace ${tr.traceId}: ${tr.spanCount} span(s), ${fmtMs(tr.durationMs)}`;
  box.appendChild(h);
  for (const s of tr.spans) {
    const div = document.createElement("div");
    div.className = "span-row" + (s.error ? " errors" : "");
    Object.assign(div.dataset, { spanId: s.spanId, parentId: s.parentId, depth: s.depth });
    div.style.paddingLeft = (s.depth * 14) + "px";
    div.textContent = `${s.service}: ${s.name}` + (s.kind ? ` [${s.kind}]` : "") + ` · +${fmtMs(s.offsetMs)}`
      + ` · ${fmtMs(s.durationMs)}` + (s.status ? ` · ${s.status}` : "")
      + (s.parentId ? ` · parent ${s.parentId.slice(0, 8)}…` : " · root");
    box.appendChild(div);
  }
}

document.getElementById("close").addEventListener("click", () => {
  selected = null;
  document.getElementById("panel").hidden = true;
  document.querySelectorAll(".node.selected").forEach(n => n.classList.remove("selected"));
});

async function poll() {
  try {
    const r = await fetch("api/graph", { cache: "no-store" });
    if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
    const g = await r.json();
    refreshMs = Math.max(1000, ((g.meta && g.meta.refreshSeconds) || 3) * 1000);
    render(g);
  } catch (err) {
    document.getElementById("status").textContent = "cannot reach the controller: " + err;
  }
  setTimeout(poll, refreshMs);
}
poll();
