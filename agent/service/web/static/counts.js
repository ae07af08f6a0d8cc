"use strict";
const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) { const e = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
L.start("/counts").then(async () => {
  const r = await L.api("GET", "/api/v1/counts?hours=24");
  const buckets = r.data ? r.data.buckets : [];
  const series = new Map();  // "source / rule" -> Map(start ms -> count)
  const totals = new Map();
  for (const b of buckets) {
    const t = Date.parse(b.start);
    for (const c of b.counts) {
      const key = `${b.source} / ${c.rule}`;
      if (!series.has(key)) series.set(key, new Map());
      const m = series.get(key); m.set(t, (m.get(t) || 0) + c.count);
      const tk = `${b.source}|${c.rule}|${c.label}|${c.direction}`;
      totals.set(tk, (totals.get(tk) || 0) + c.count);
    }
  }
  const charts = document.getElementById("charts");
  if (!series.size) charts.append(L.el("p", {class: "muted"}, "No count buckets in the last 24 h."));
  const end = Date.now(), start = end - 24 * 3600e3, W = 960, H = 160;
  for (const [key, m] of series) {
    const max = Math.max(1, ...m.values());
    const chart = svg("svg", {class: "chart", width: W, height: H + 20, viewBox: `0 0 ${W} ${H + 20}`});
    for (const [t, n] of m) {
      const x = (t - start) / (end - start) * W, h = n / max * H;
      chart.append(svg("rect", {x: Math.max(0, x).toFixed(1), y: (H - h).toFixed(1), width: 3, height: h.toFixed(1), fill: "#1f6feb"}));
    }
    for (let i = 0; i <= 24; i += 6) {
      const lbl = svg("text", {x: i / 24 * (W - 30), y: H + 15, "font-size": 11, fill: "#555"});
      lbl.textContent = i === 24 ? "now" : `-${24 - i} h`; chart.append(lbl);
    }
    charts.append(L.el("h2", {}, `${key} (max ${max} per bucket)`), chart);
  }
  const rows = [...totals].map(([k, n]) => [...k.split("|"), n]);
  if (rows.length) document.getElementById("totals").replaceChildren(L.el("h2", {}, "Totals"), L.table(["pipeline", "rule", "class", "direction", "count"], rows));
});
