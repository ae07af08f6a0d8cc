"use strict";
(async () => {
  const s = await L.session();
  document.getElementById("device").textContent = "device " + s.device;
  const next = new URLSearchParams(location.search).get("next") || "/";
  document.getElementById("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await L.api("POST", "/api/v1/login", {user: document.getElementById("user").value, password: document.getElementById("password").value});
    const msg = document.getElementById("msg");
    if (r.status === 200) { location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/"; return; }
    msg.className = "fail";
    msg.textContent = (r.data && r.data.reason) || ("login failed (" + r.status + ")");
    if (r.status !== 429) await L.session();
  });
})();
