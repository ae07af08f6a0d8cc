"use strict";
async function refresh() {
  const r = await L.api("GET", "/api/v1/status");
  if (r.status !== 200) return;
  const s = r.data;
  const th = s.thermal;
  document.getElementById("summary").replaceChildren(L.table(
    ["device", "state", "health", "uptime", "fps", "config version", "thermal"],
    [[`${s.device} (${s.site})`, s.state, s.health.status + (s.health.problems.length ? ": " + s.health.problems.join("; ") : ""),
      (s.uptime_s / 60).toFixed(1) + " min", s.fps, s.config_version,
      (th.temp_c === null ? "no sensor" : th.temp_c.toFixed(1) + " °C") + (th.throttled ? `, throttled (level ${th.level})` : ", not throttled")]]));
  document.getElementById("pipelines").replaceChildren(L.table(
    ["stream", "state", "fps", "frames", "dropped", "source", "model", "version", "slot", "sha256"],
    s.pipelines.map(p => [p.stream, p.state + (p.reason ? ": " + p.reason : ""), p.fps,
      `${p.frames_captured} captured, ${p.frames_processed} processed`, p.frames_dropped,
      `${p.source.uri}: ${p.source.state}` + (p.source.last_error ? ` (${p.source.last_error})` : "") + (p.source.reconnects ? `, ${p.source.reconnects} reconnects` : ""),
      p.model.name, p.model.version || "", p.model.slot || "-", (p.model.sha256 || "").slice(0, 12)])));
  const o = s.ota;
  document.getElementById("ota").replaceChildren(L.table(
    ["running slot", "deployed model", "bundle version", "deployment", "last deployment", "clock skew"],
    [[o.slot || "none (configured model)", o.model || "-", o.version === null ? "-" : o.version,
      o.deployment ? `${o.deployment}: ${o.state}` : "none in progress",
      o.last_deployment ? `${o.last_deployment}: ${o.last_outcome}` + (o.last_reason ? ` (${o.last_reason})` : "") : "-",
      o.clock_skew_s === null ? "-" : o.clock_skew_s + " s" + (o.clock_skew_exceeds ? " (over the threshold)" : "")]]));
  const d = s.delivery;
  const ev = Object.entries(d.evictions).map(([k, v]) => `${k}: ${v.records}`).join(", ") || "none";
  document.getElementById("delivery").replaceChildren(L.table(
    ["outbox depth", "oldest unsent", "last PUBACK", "last ingest ack", "evictions", "broker", "delivery mode"],
    [[d.outbox_depth, d.oldest_unsent_s === null ? "-" : d.oldest_unsent_s.toFixed(1) + " s",
      d.last_puback ? L.age(d.last_puback.age_s) : "never", d.last_ingest_ack ? L.age(d.last_ingest_ack.age_s) : "never",
      ev, d.broker.connected ? "connected" : "not connected" + (d.broker.last_error ? ` (${d.broker.last_error})` : ""), d.mode]]));
}
L.start("/").then(() => { refresh(); setInterval(refresh, 2000); });
