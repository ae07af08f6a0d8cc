"use strict";
L.start("/live").then(async () => {
  const r = await L.api("GET", "/api/v1/status");
  const views = document.getElementById("views");
  for (const p of (r.data ? r.data.pipelines : [])) {
    const img = L.el("img", {alt: "live " + p.stream, class: "live", "data-stream": p.stream, src: `/api/v1/pipelines/${encodeURIComponent(p.stream)}/live.mjpeg`});
    views.append(L.el("figure", {}, img, L.el("figcaption", {}, `${p.stream}: ${p.model.name}, ${p.fps} fps`)));
  }
});
