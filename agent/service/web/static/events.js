"use strict";
L.start("/events").then(async () => {
  const r = await L.api("GET", "/api/v1/events?limit=200");
  const rows = (r.data ? r.data.events : []).map(e => [e.ts, e.source, e.type, e.rule, "#" + e.track_id, e.label, e.direction || (e.dwell_s !== null && e.dwell_s !== undefined ? e.dwell_s.toFixed(1) + " s" : ""),
    e.snapshot_available ? L.el("img", {class: "snap", alt: "snapshot", loading: "lazy", src: "/api/v1/snapshots/" + e.snapshot}) : (e.snapshot ? "delivered" : "-")]);
  document.getElementById("events").replaceChildren(rows.length ? L.table(["time", "pipeline", "event", "rule", "track", "class", "direction / dwell", "snapshot"], rows) : L.el("p", {class: "muted"}, "No events in the outbox."));
});
