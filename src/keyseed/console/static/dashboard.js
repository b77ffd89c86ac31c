// keyseed admin dashboard.
//
// Every value from the server reaches the page through textContent or a form control's
// value, never through innerHTML: a device-reported string cannot become markup. Every
// request carries the session's CSRF token in a header; the session cookie is HttpOnly, so
// this script never sees it.
"use strict";

(function () {
  const meta = (name) => {
    const m = document.querySelector(`meta[name="${name}"]`);
    return m ? m.getAttribute("content") : "";
  };
  const CSRF = meta("csrf-token");
  const POLL_MS = Math.max(500, parseInt(meta("poll-ms"), 10) || 2000);

  let cook = { available: false, recipes: [] };
  const rows = new Map(); // device ID -> {tr, cells, controls}
  let auditKey = "";
  let lastDbNow = 0; // database clock of the last overview (window countdowns)

  // -- helpers ---------------------------------------------------------------------------

  function el(tag, opts, children) {
    const node = document.createElement(tag);
    const o = opts || {};
    if (o.cls) node.className = o.cls;
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.title) node.title = String(o.title);
    if (o.data) for (const [k, v] of Object.entries(o.data)) node.dataset[k] = String(v);
    if (o.attrs) for (const [k, v] of Object.entries(o.attrs)) node.setAttribute(k, String(v));
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function fill(node, children) {
    node.replaceChildren(...children.filter(Boolean));
  }

  function badge(text, tone) {
    return el("span", { cls: "badge" + (tone ? " " + tone : ""), text });
  }

  function sub(text) {
    return el("span", { cls: "sub", text });
  }

  function fmtAge(s) {
    if (s === null || s === undefined) return "—";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtTime(at) {
    const d = new Date(at * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function errorText(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((e) => `${(e.loc || []).slice(-1)[0] || "input"}: ${e.msg}`).join("; ");
    }
    return `request failed (HTTP ${status})`;
  }

  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": CSRF, "Accept": "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      window.location.assign("/");
      throw new Error("session expired");
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw new Error(errorText(data, r.status));
    return data;
  }

  let noticeTimer = null;
  function notice(text, tone) {
    const n = document.getElementById("notice");
    n.className = "notice" + (tone ? " " + tone : "");
    n.textContent = text;
    n.hidden = false;
    if (noticeTimer) clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, 15000);
  }

  // -- device table ----------------------------------------------------------------------

  function stateOf(d) {
    if (d.revoked) return ["revoked", "bad"];
    if (d.enrolled && !d.confirmed) return ["awaiting approval", "warn"];
    if (d.enrolled) {
      if (d.pending_exchange) return ["exchanging", "info"];
      if (d.order_epoch !== null && d.order_epoch !== undefined) return ["rekey ordered", "info"];
      return ["active", "ok"];
    }
    if (d.window_open) return ["enrolment open", "info"];
    return ["window closed", "warn"];
  }

  const RESULT_TONE = { ok: "ok", pending: "info", failed: "bad", cancelled: "warn", expired: "warn" };

  function exchangeCell(x) {
    if (!x) return [el("span", { cls: "muted", text: "—" })];
    const label = x.result === "ok" ? x.kind : (x.result === "failed" && x.cause ? `failed · ${x.cause}` : x.result);
    return [badge(label, RESULT_TONE[x.result] || ""), sub(`epoch ${x.epoch} · ${fmtAge(x.age_s)} ago`)];
  }

  function confirmationCell(c) {
    if (!c) return [el("span", { cls: "muted", text: "—" })];
    if (c.ok) {
      const rtt = c.rtt_ms === null ? "ok" : `${Number(c.rtt_ms).toFixed(1)} ms`;
      return [el("span", { cls: "rtt", text: rtt, data: { rtt: c.rtt_ms === null ? "" : c.rtt_ms } }),
        sub(`epoch ${c.epoch} · ${fmtAge(c.age_s)} ago`)];
    }
    return [badge(c.detail || "failed", "bad"), sub(`${fmtAge(c.age_s)} ago`)];
  }

  function ovenCell(app) {
    if (!app || !app.state) return [el("span", { cls: "muted", text: "—" })];
    const tone = app.state === "cooking" ? "info" : (app.state === "done" ? "ok" : "");
    const parts = [badge(app.state, tone)];
    const bits = [];
    if (app.recipe) bits.push(app.recipe);
    if (app.state === "cooking" && app.left_s !== null && app.left_s !== undefined) bits.push(`${Math.ceil(app.left_s)} s left`);
    if (bits.length) parts.push(sub(bits.join(" · ")));
    return parts;
  }

  function button(text, action, cls) {
    return el("button", { cls: "small" + (cls ? " " + cls : ""), text, attrs: { type: "button" }, data: { action } });
  }

  function makeRow(id) {
    const cells = {};
    const tr = el("tr", { data: { device: id } });
    for (const col of ["device", "state", "epoch", "keyage", "exchange", "confirmation", "online", "oven", "actions"]) {
      cells[col] = el("td", { data: { col } });
      tr.appendChild(cells[col]);
    }
    cells.epoch.className = "num";
    const controls = {
      rekey: button("Rekey", "rekey"),
      confirm: button("Confirm", "confirm"),
      approve: button("Approve", "approve"),
      revoke: button("Revoke", "revoke", "danger"),
      recipe: el("select", { cls: "recipe", attrs: { "aria-label": `Recipe for ${id}` }, data: { role: "recipe" } }),
      cook: button("Cook", "cook"),
    };
    for (const r of cook.recipes) controls.recipe.appendChild(el("option", { text: r.name, title: r.title, attrs: { value: r.name } }));
    if (!cook.available) {
      controls.cook.disabled = true;
      controls.recipe.disabled = true;
      controls.cook.title = "The server app is not the microwave recipe service";
    }
    const box = el("div", { cls: "actions" }, [controls.rekey, controls.confirm, controls.approve, controls.revoke]);
    if (cook.available) { box.appendChild(controls.recipe); box.appendChild(controls.cook); }
    cells.actions.appendChild(box);
    for (const name of ["rekey", "confirm", "approve", "revoke", "cook"]) {
      controls[name].addEventListener("click", () => runAction(id, name, controls));
    }
    return { tr, cells, controls, busy: false };
  }

  function updateRow(row, d) {
    const c = row.cells;
    const [state, tone] = stateOf(d);
    fill(c.device, [el("span", { cls: "device-id", text: d.device_id }), sub(profileText(d))]);
    const flags = [];
    if (d.window_open && !d.enrolled) flags.push(`window closes in ${fmtAge(d.window_expires_at - (lastDbNow || 0))}`);
    if (d.owed_206) flags.push("206 owed");
    fill(c.state, [badge(state, tone), flags.length ? sub(flags.join(" · ")) : null]);
    c.epoch.textContent = String(d.epoch);
    c.keyage.textContent = d.key_age_s === null ? "—" : fmtAge(d.key_age_s);
    fill(c.exchange, exchangeCell(d.last_exchange));
    fill(c.confirmation, confirmationCell(d.last_confirmation));
    fill(c.online, [el("span", { cls: "online" + (d.online ? " yes" : ""), text: d.online ? "online" : "offline" })]);
    fill(c.oven, ovenCell(d.app));
    const live = d.enrolled && !d.revoked;
    const k = row.controls;
    k.rekey.disabled = row.busy || !live;
    k.confirm.disabled = row.busy || !live;
    k.approve.hidden = !(live && !d.confirmed);
    k.approve.disabled = row.busy;
    k.revoke.disabled = row.busy || d.revoked;
    if (cook.available) {
      k.cook.disabled = row.busy || d.revoked;
      k.recipe.disabled = d.revoked;
    }
    row.device = d;
  }

  // The suite of the device's key, the one it moves to, and the TLS setting in force.
  function profileText(d) {
    const parts = [d.suite];
    const next = d.profile ? d.profile.suite : d.suite;
    if (d.suite_in_force && d.suite_in_force !== d.suite) parts.push(`→ ${d.suite_in_force}`);
    else if (next !== d.suite) parts.push(`→ ${next} (next 206)`);
    if (d.tls_reduced) parts.push("TLS-reduced");
    return parts.join(" ");
  }

  function renderDevices(devices) {
    const body = document.getElementById("devices-body");
    const seen = new Set();
    for (const d of devices) {
      seen.add(d.device_id);
      let row = rows.get(d.device_id);
      if (!row) {
        row = makeRow(d.device_id);
        rows.set(d.device_id, row);
      }
      updateRow(row, d);
      body.appendChild(row.tr); // keeps the server's order; moving a node keeps its state
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    document.getElementById("devices-empty").hidden = devices.length > 0;
    renderProfileChoices(devices);
    const online = devices.filter((d) => d.online).length;
    document.getElementById("device-count").textContent =
      `${devices.length} registered · ${online} online`;
  }

  function renderAudit(audit) {
    const key = audit.length ? `${audit[0].id}:${audit.length}` : "empty";
    if (key === auditKey) return;
    auditKey = key;
    const body = document.getElementById("audit-body");
    fill(body, audit.map((a) => {
      const tone = a.cause ? "bad" : (["enrolled", "rekeyed", "confirmed", "approved"].includes(a.kind) ? "ok" : "");
      return el("tr", { data: { auditId: a.id } }, [
        el("td", { cls: "num", text: a.id }),
        el("td", { text: fmtTime(a.at), attrs: { title: new Date(a.at * 1000).toISOString() } }),
        el("td", {}, [badge(a.kind, tone)]),
        el("td", { cls: "device-id", text: a.device_id }),
        el("td", { cls: "num", text: a.epoch }),
        el("td", { text: a.cause || "" }),
        el("td", { cls: "detail", text: a.detail }),
      ]);
    }));
  }

  // -- actions ---------------------------------------------------------------------------

  async function runAction(id, action, controls) {
    const row = rows.get(id);
    const path = `/ui/api/devices/${encodeURIComponent(id)}/${action}`;
    let body;
    if (action === "revoke" && !window.confirm(`Revoke ${id}? Its keys and seeds are retired; it must be registered again.`)) return;
    if (action === "approve") {
      const sas = window.prompt(`The 6-digit SAS that ${id} shows:`);
      if (sas === null) return;
      body = { sas: sas.trim() };
    }
    if (action === "cook") body = { recipe: controls.recipe.value };
    if (row) { row.busy = true; updateRow(row, row.device); }
    try {
      const r = await api("POST", path, body === undefined ? undefined : body);
      if (action === "rekey") {
        notice(r.delivered
          ? `Rekey ordered for ${id}: the order reached the device; epoch ${r.order_epoch} is being replaced.`
          : `Rekey ordered for ${id}: it waits for the device's next connection.`, "ok");
      } else if (action === "confirm") {
        if (r.ok) notice(`${id} confirmed: round trip ${Number(r.rtt_ms).toFixed(1)} ms under epoch ${r.epoch}.`, "ok");
        else notice(`${id} did not confirm: ${r.detail || "failed"}.`, "bad");
      } else if (action === "cook") {
        notice(r.pushed ? `${id} starts cooking ${r.recipe}.`
          : `Order for ${r.recipe} waits for ${id}'s next status report.`, "ok");
      } else if (action === "revoke") {
        notice(`${id} is revoked.`, "ok");
      } else if (action === "approve") {
        notice(`${id} is approved.`, "ok");
      }
    } catch (e) {
      notice(`${action} ${id}: ${e.message}`, "bad");
    } finally {
      if (row) { row.busy = false; updateRow(row, row.device); }
      refresh();
    }
  }

  function setupRegister(suites) {
    const form = document.getElementById("register-form");
    const suite = document.getElementById("reg-suite");
    for (const s of suites) suite.appendChild(el("option", { text: s, attrs: { value: s } }));
    const code = document.getElementById("reg-code");
    const nocode = document.getElementById("reg-nocode");
    nocode.addEventListener("change", () => {
      code.disabled = nocode.checked;
      if (nocode.checked) code.value = "";
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const id = document.getElementById("reg-id").value.trim();
      const minutes = parseFloat(document.getElementById("reg-window").value) || 10;
      const body = { device_id: id, suite: suite.value, window_s: minutes * 60 };
      if (nocode.checked) body.allow_no_code = true;
      else if (code.value) body.setup_code = code.value.trim();
      if (document.getElementById("reg-tls").checked) body.tls_reduced = true;
      const submit = document.getElementById("register");
      submit.disabled = true;
      try {
        await api("POST", "/ui/api/devices", body);
        notice(`Registered ${id}: its enrolment window is open for ${minutes} min. ` +
          (nocode.checked ? "Approve it by its SAS once it has enrolled." : "Start the device with its setup code."), "ok");
        form.reset();
        code.disabled = false;
      } catch (e) {
        notice(`Register ${id}: ${e.message}`, "bad");
      } finally {
        submit.disabled = false;
        code.value = "";
        refresh();
      }
    });
  }

  // -- profile ---------------------------------------------------------------------------

  const PROFILE_LIMITS = [
    ["soft_messages", "prof-soft-messages"],
    ["hard_messages", "prof-hard-messages"],
    ["soft_age_s", "prof-soft-age"],
    ["hard_age_s", "prof-hard-age"],
  ];
  let profileShown = ""; // the device whose profile the form holds

  function showProfile(d) {
    profileShown = d ? d.device_id : "";
    const state = document.getElementById("prof-state");
    if (!d) { state.textContent = ""; return; }
    document.getElementById("prof-suite").value = d.profile.suite;
    for (const [k, id] of PROFILE_LIMITS) document.getElementById(id).value = d.profile.policy[k];
    document.getElementById("prof-tls").checked = d.profile.tls_reduced;
    const pending = d.profile.suite !== d.suite_in_force || d.profile.tls_reduced !== d.tls_reduced ||
      d.policy_next !== null;
    if (!d.enrolled) {
      state.textContent = "Reaches the device with its enrolment (its first 206).";
      return;
    }
    state.textContent = pending
      ? "Changes wait for the device's next exchange (206)."
      : `In force: ${d.suite_in_force}${d.tls_reduced ? ", reduced over TLS" : ""}.`;
  }

  function renderProfileChoices(devices) {
    const select = document.getElementById("prof-id");
    const chosen = select.value;
    const ids = devices.map((d) => d.device_id);
    const have = Array.from(select.options).map((o) => o.value);
    if (ids.join("\n") !== have.join("\n")) {
      fill(select, ids.map((id) => el("option", { text: id, attrs: { value: id } })));
      if (ids.includes(chosen)) select.value = chosen;
    }
    const d = devices.find((x) => x.device_id === select.value);
    if (d && d.device_id !== profileShown) showProfile(d);
    if (!d) showProfile(null);
  }

  function setupProfile(suites) {
    const form = document.getElementById("profile-form");
    const select = document.getElementById("prof-id");
    const suite = document.getElementById("prof-suite");
    for (const s of suites) suite.appendChild(el("option", { text: s, attrs: { value: s } }));
    select.addEventListener("change", () => {
      const row = rows.get(select.value);
      showProfile(row ? row.device : null);
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const id = select.value;
      if (!id) return;
      const policy = {};
      for (const [k, elId] of PROFILE_LIMITS) policy[k] = parseInt(document.getElementById(elId).value, 10);
      const body = { suite: suite.value, policy, tls_reduced: document.getElementById("prof-tls").checked };
      const submit = document.getElementById("profile-save");
      submit.disabled = true;
      try {
        const d = await api("POST", `/ui/api/devices/${encodeURIComponent(id)}/profile`, body);
        showProfile(d);
        notice(`Profile of ${id} saved: it reaches the device with its next 206 (Rekey applies it now).`, "ok");
      } catch (e) {
        notice(`Profile ${id}: ${e.message}`, "bad");
      } finally {
        submit.disabled = false;
        refresh();
      }
    });
  }

  // -- device pairs ----------------------------------------------------------------------

  const PAIR_TONE = { established: "ok", offered: "info", closed: "warn", none: "" };

  function renderPairs(pairs) {
    const body = document.getElementById("pairs-body");
    fill(body, pairs.map((p) => {
      const online = [[p.a, p.online_a], [p.b, p.online_b]].filter((x) => x[1]).map((x) => x[0]);
      const revoke = button("Revoke", "deny-pair", "danger");
      revoke.disabled = !p.allowed && p.status !== "established" && p.status !== "offered";
      revoke.addEventListener("click", () => pairAction("deny", p.a, p.b));
      const allow = button("Allow", "allow-pair");
      allow.hidden = p.allowed;
      allow.addEventListener("click", () => pairAction("allow", p.a, p.b));
      return el("tr", { data: { pair: `${p.a} ${p.b}` } }, [
        el("td", {}, [el("span", { cls: "device-id", text: `${p.a} ↔ ${p.b}` }),
          p.pair_id ? sub(`pair ID ${p.pair_id.slice(0, 8)}…`) : null]),
        el("td", {}, [badge(p.allowed ? "allowed" : "denied", p.allowed ? "ok" : "bad")]),
        el("td", {}, [badge(p.status, PAIR_TONE[p.status] || ""),
          p.chained ? sub("chained to the previous seed") : null]),
        el("td", { text: p.mode || "—" }),
        el("td", { cls: "num", text: p.epoch }),
        el("td", { cls: "device-id", text: p.initiator || "—" }),
        el("td", { text: online.join(", ") || "—" }),
        el("td", { text: p.updated_at ? fmtTime(p.updated_at) : "—" }),
        el("td", {}, [el("div", { cls: "actions" }, [allow, revoke])]),
      ]);
    }));
    document.getElementById("pairs-empty").hidden = pairs.length > 0;
  }

  function refreshPairs() {
    return api("GET", "/ui/api/pairs").then(renderPairs).catch(() => {});
  }

  async function pairAction(kind, a, b) {
    if (kind === "deny" && !window.confirm(`Revoke the pair ${a} ↔ ${b}? Its key is closed at once.`)) return;
    try {
      const p = await api("POST", `/ui/api/pairs/${kind}`, { a, b });
      notice(kind === "allow"
        ? `${p.a} and ${p.b} may now obtain a pair key.`
        : `${p.a} ↔ ${p.b} revoked${p.status === "closed" ? ": its pair key is closed" : ""}.`, "ok");
    } catch (e) {
      notice(`${kind === "allow" ? "Allow" : "Revoke"} ${a} ↔ ${b}: ${e.message}`, "bad");
    } finally {
      refreshPairs();
      refresh();
    }
  }

  function setupPairs() {
    const form = document.getElementById("pair-form");
    const value = (id) => document.getElementById(id).value.trim();
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      pairAction("allow", value("pair-a"), value("pair-b"));
    });
    document.getElementById("pair-deny").addEventListener("click", () => {
      if (form.reportValidity()) pairAction("deny", value("pair-a"), value("pair-b"));
    });
  }

  function renderServer(m) {
    document.getElementById("server-app").textContent =
      m.cook.available ? `${m.app} (recipes: ${m.cook.recipes.length})` : m.app;
    document.getElementById("server-poll").textContent = `every ${POLL_MS / 1000} s`;
    const keys = document.getElementById("server-keys");
    fill(keys, Object.entries(m.fingerprints).flatMap(([suite, fp]) => [
      el("dt", { text: suite }), el("dd", { text: fp }),
    ]));
  }

  // -- polling ---------------------------------------------------------------------------

  let inflight = null;
  function refresh() {
    if (inflight) return inflight;
    const live = document.getElementById("live");
    const liveText = document.getElementById("live-text");
    inflight = api("GET", "/ui/api/overview")
      .then((o) => {
        lastDbNow = o.db_now;
        renderDevices(o.devices);
        renderAudit(o.audit);
        live.className = "live ok";
        liveText.textContent = `live · ${fmtTime(Date.now() / 1000).slice(11)}`;
      })
      .catch((e) => {
        live.className = "live bad";
        liveText.textContent = `disconnected: ${e.message}`;
      })
      .finally(() => { inflight = null; });
    return inflight;
  }

  async function loop() {
    await Promise.all([refresh(), refreshPairs()]);
    setTimeout(loop, POLL_MS);
  }

  async function start() {
    try {
      const m = await api("GET", "/ui/api/meta");
      cook = m.cook;
      setupRegister(m.suites);
      setupProfile(m.suites);
      setupPairs();
      renderServer(m);
    } catch (e) {
      notice(`Cannot load the dashboard: ${e.message}`, "bad");
    }
    loop();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
