"use strict";
// Draw lines (P1 -> P2; 'in' is the side the arrow points to) and zone polygons over the
// current frame, in normalized coordinates; validate and save through the agent's config apply.
const SVGNS = "http://www.w3.org/2000/svg";
const E = {stream: null, version: null, lines: [], zones: [], classes: [], pending: [], tool: "line"};
function node(tag, attrs) { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
function msg(text, cls) { const m = document.getElementById("msg"); m.className = cls || ""; m.textContent = text; }
function unique(prefix) { const names = new Set([...E.lines, ...E.zones].map(r => r.name)); let i = 1; while (names.has(prefix + i)) i++; return prefix + i; }
function rule(r) { const o = {name: r.name, points: r.points}; if (r.classes && r.classes.length) o.classes = r.classes; if (r.anchor) o.anchor = r.anchor; if (r.band !== undefined) o.band = r.band; if (r.loiter_s !== undefined && r.loiter_s !== null) o.loiter_s = r.loiter_s; if (r.max_occupancy !== undefined && r.max_occupancy !== null) o.max_occupancy = r.max_occupancy; return o; }
function body() { return {version: E.version, lines: E.lines.map(rule), zones: E.zones.map(rule)}; }

function draw() {
  const s = document.getElementById("draw");
  s.replaceChildren();
  for (const z of E.zones) s.append(node("polygon", {points: z.points.map(p => p.join(",")).join(" "), fill: "rgba(255,160,0,0.15)", stroke: "#ffa000", "stroke-width": 0.004}));
  for (const l of E.lines) {
    const [a, b] = l.points;
    s.append(node("line", {x1: a[0], y1: a[1], x2: b[0], y2: b[1], stroke: "#ffc800", "stroke-width": 0.006}));
    const mx = (a[0] + b[0]) / 2, my = (a[1] + b[1]) / 2, dx = b[0] - a[0], dy = b[1] - a[1], n = Math.hypot(dx, dy) || 1;
    s.append(node("line", {x1: mx, y1: my, x2: mx - dy / n * 0.06, y2: my + dx / n * 0.06, stroke: "#ffc800", "stroke-width": 0.005}));
  }
  if (E.pending.length) s.append(node("polyline", {points: E.pending.map(p => p.join(",")).join(" "), fill: "none", stroke: "#00e0ff", "stroke-width": 0.004}));
  for (const p of E.pending) s.append(node("circle", {cx: p[0], cy: p[1], r: 0.008, fill: "#00e0ff"}));
  renderRules();
}

function classBoxes(r) {
  const span = L.el("span", {});
  for (const c of E.classes) {
    const box = L.el("input", {type: "checkbox"});
    box.checked = !!(r.classes && r.classes.includes(c));
    box.addEventListener("change", () => { const set = new Set(r.classes || []); if (box.checked) set.add(c); else set.delete(c); r.classes = [...set]; });
    span.append(L.el("label", {}, box, c + " "));
  }
  return span;
}

function renderRules() {
  const rows = [];
  for (const [kind, list] of [["line", E.lines], ["zone", E.zones]]) {
    for (const r of list) {
      const name = L.el("input", {type: "text", value: r.name, "data-rule": r.name});
      name.addEventListener("change", () => { r.name = name.value.trim(); });
      const acts = L.el("span", {});
      if (kind === "line") acts.append(L.el("button", {onclick: () => { r.points.reverse(); draw(); }}, "Flip direction"));
      acts.append(L.el("button", {onclick: () => { list.splice(list.indexOf(r), 1); draw(); }}, "Delete"));
      rows.push([kind, name, r.points.map(p => `(${p[0].toFixed(3)}, ${p[1].toFixed(3)})`).join(" "), classBoxes(r), acts]);
    }
  }
  document.getElementById("rules").replaceChildren(rows.length ? L.table(["kind", "name", "points", "classes (none ticked: all)", ""], rows) : L.el("p", {class: "muted"}, "No lines or zones: click on the frame to draw."));
}

function point(ev) {
  const r = document.getElementById("draw").getBoundingClientRect();
  const clamp = v => Math.min(1, Math.max(0, v));
  return [clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height)].map(v => Math.round(v * 10000) / 10000);
}

function onClick(ev) {
  E.pending.push(point(ev));
  if (E.tool === "line" && E.pending.length === 2) {
    E.lines.push({name: unique("line-"), points: E.pending, classes: []});
    E.pending = [];
  }
  draw();
}

function closeZone() {
  if (E.pending.length < 3) { msg("a zone needs at least 3 points", "fail"); return; }
  E.zones.push({name: unique("zone-"), points: E.pending, classes: []});
  E.pending = []; draw();
}

async function load() {
  const r = await L.api("GET", `/api/v1/pipelines/${encodeURIComponent(E.stream)}/rules`);
  if (r.status !== 200) { msg((r.data && r.data.reason) || "cannot load the rules", "fail"); return; }
  E.version = r.data.version; E.classes = r.data.classes;
  E.lines = r.data.lines.map(x => ({...x, classes: x.classes || []}));
  E.zones = r.data.zones.map(x => ({...x, classes: x.classes || []}));
  E.pending = [];
  document.getElementById("version").textContent = "config version " + E.version;
  draw();
}

async function validate() {
  const r = await L.api("POST", `/api/v1/pipelines/${encodeURIComponent(E.stream)}/rules/validate`, body());
  if (r.status === 200) msg("valid", "ok"); else msg((r.data && r.data.reason) + (r.data && r.data.fix ? " (" + r.data.fix + ")" : ""), "fail");
}

async function save() {
  msg("saving...");
  const r = await L.api("PUT", `/api/v1/pipelines/${encodeURIComponent(E.stream)}/rules`, body());
  if (r.status === 200) { msg(`saved: config version ${r.data.version}` + (r.data.restarted && r.data.restarted.length ? `, restarted ${r.data.restarted.join(", ")}` : ""), "ok"); await load(); }
  else msg("not saved: " + ((r.data && r.data.reason) || r.status) + (r.data && r.data.fix ? " (" + r.data.fix + ")" : ""), "fail");
}

async function counts() {
  if (!E.stream) return;
  const r = await L.api("GET", `/api/v1/pipelines/${encodeURIComponent(E.stream)}/counts`);
  if (r.status !== 200) return;
  const rows = r.data.counts.map(c => [c.rule, c.kind, c.label, c.direction, c.count]);
  document.getElementById("counts").replaceChildren(rows.length ? L.table(["rule", "kind", "class", "direction", "count"], rows) : L.el("p", {class: "muted", id: "nocounts"}, "Nothing counted yet."));
}

function background() {
  if (!E.stream) return;
  const next = new Image();
  next.onload = () => { document.getElementById("bg").src = next.src; };
  next.src = `/api/v1/pipelines/${encodeURIComponent(E.stream)}/frame.jpg?t=${Date.now()}`;
}

L.start("/editor").then(async (s) => {
  const st = await L.api("GET", "/api/v1/status");
  const sel = document.getElementById("stream");
  for (const p of st.data.pipelines) sel.append(L.el("option", {value: p.stream}, p.stream));
  E.stream = sel.value;
  sel.addEventListener("change", () => { E.stream = sel.value; load(); background(); });
  for (const radio of document.querySelectorAll("input[name=tool]")) radio.addEventListener("change", () => { E.tool = radio.value; E.pending = []; draw(); });
  document.getElementById("draw").addEventListener("click", onClick);
  document.getElementById("closezone").addEventListener("click", closeZone);
  document.getElementById("validate").addEventListener("click", validate);
  document.getElementById("save").addEventListener("click", save);
  if (s.role !== "admin") { document.getElementById("save").disabled = true; msg("viewer: you can draw and validate, not save", "warn"); }
  await load(); background(); counts();
  setInterval(background, 1500); setInterval(counts, 1000);
});
