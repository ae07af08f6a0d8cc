"use strict";
L.start("/diagnostics").then((s) => {
  if (s.role !== "admin") document.getElementById("bundle").remove();
  document.getElementById("run").addEventListener("click", async () => {
    const msg = document.getElementById("msg");
    msg.className = ""; msg.textContent = "running the checks (up to two minutes)...";
    const r = await L.api("GET", "/api/v1/diag");
    if (r.status !== 200) { msg.className = "fail"; msg.textContent = (r.data && r.data.reason) || "diag failed"; return; }
    msg.textContent = "exit code " + r.data.exit_code;
    document.getElementById("checks").replaceChildren(L.table(["check", "status", "reason", "fix"],
      r.data.checks.map(c => [c.name, L.el("span", {class: c.status}, c.status), c.reason, c.fix || ""])));
  });
});
