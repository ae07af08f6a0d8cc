"use strict";
// Shared by every page: the session (CSRF token, role), the API helper and the navigation.
const L = {
  csrf: null, role: null, user: null,
  async session() {
    const r = await fetch("/api/v1/session", {credentials: "same-origin"});
    const s = await r.json();
    L.csrf = s.csrf; L.role = s.role; L.user = s.user; L.loginRequired = s.login_required;
    return s;
  },
  async api(method, path, body) {
    const opts = {method, credentials: "same-origin", headers: {}};
    if (method !== "GET") opts.headers["X-CSRF-Token"] = L.csrf || "";
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const r = await fetch(path, opts);
    if (r.status === 401 && location.pathname !== "/login") { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return {status: r.status, data};
  },
  el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k === null || k === undefined ? "" : String(k)));
    return e;
  },
  age(s) {
    if (s === null || s === undefined) return "never";
    if (s < 90) return s.toFixed(1) + " s ago";
    if (s < 5400) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  },
  table(head, rows) {
    const t = L.el("table", {}, L.el("tr", {}, ...head.map(h => L.el("th", {}, h))));
    for (const r of rows) t.append(L.el("tr", {}, ...r.map(c => L.el("td", {}, c))));
    return t;
  },
  async start(page) {
    const s = await L.session();
    const nav = document.getElementById("nav");
    const pages = [["/", "Overview"], ["/live", "Live"], ["/editor", "Editor"], ["/counts", "Counts"], ["/events", "Events"], ["/diagnostics", "Diagnostics"]];
    for (const [href, name] of pages) nav.append(L.el("a", {href, class: href === page ? "on" : ""}, name));
    nav.append(L.el("span", {class: "who", id: "who"}, s.user ? `${s.user} (${s.role})` : ""));
    if (s.login_required && s.user) {
      nav.append(L.el("button", {id: "logout", onclick: async () => { await L.api("POST", "/api/v1/logout"); location.href = "/login"; }}, "Log out"));
    }
    return s;
  },
};
