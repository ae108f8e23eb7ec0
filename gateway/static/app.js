// firegrid duty-room dashboard.  Plain JS, no build step, no CDN.
//
// * The token lives in sessionStorage and travels only in the Authorization header — never in a URL, so it cannot
//   end up in access logs, history or Referer headers.  That is why the live stream is read with fetch() streaming
//   instead of EventSource (which cannot send headers).
// * Every live event triggers a (debounced) reload of the affected views: the server is the single source of truth,
//   so a missed or reordered event can never leave a stale alert on screen.  On every (re)connect everything is
//   reloaded, and a 30 s safety poll covers a stream that is silently stuck.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "firegrid.token";
const LANG_KEY = "firegrid.lang";
const SEV_RANK = { fire: 4, supervisory: 3, trouble: 2, warning: 1 };

const I18N = {
  zh: {
    "title": "社区微型消防站 · 值班大屏",
    "conn.up": "实时连接", "conn.down": "重新连接中…",
    "logout": "退出", "buildings": "楼栋状态", "alerts": "告警明细（单个探测器）", "alerts.none": "当前没有未处置的告警",
    "devices.attention": "需关注的设备", "devices.offline": "离线设备", "devices.battery": "低电量",
    "devices.oos": "灭火器不可用", "trend": "设备趋势",
    "sev.fire": "火警", "sev.supervisory": "监管", "sev.trouble": "故障", "sev.warning": "预警", "sev.ok": "正常",
    "state.raised": "待确认", "state.acknowledged": "已确认", "state.dispatched": "已派遣", "state.resolved": "已处置",
    "act.ack": "确认", "act.dispatch": "派遣", "act.resolve": "处置完成",
    "form.to": "派往（队员或队伍）", "form.note": "备注（可选）", "form.ok": "提交", "form.cancel": "取消",
    "cause.real_fire": "真实火情", "cause.false_alarm": "误报", "cause.test": "测试", "cause.device_fault": "设备故障",
    "cause.other": "其他",
    "login.title": "请输入访问令牌", "login.hint": "令牌只保存在本标签页（sessionStorage），关闭即清除。",
    "login.placeholder": "访问令牌", "login.submit": "进入", "login.bad": "令牌无效，请重新输入。",
    "floor": "层", "online": "在线", "offline": "离线", "alerts.short": "告警", "oos.short": "灭火器异常",
    "battery.short": "低电", "cleared": "现场信号已恢复", "test": "测试/维护", "by": "处理人", "to": "派往",
    "no.data": "暂无数据", "points": "个数据点", "none": "无", "err.action": "操作失败：",
    "role.viewer": "只读", "role.operator": "操作员", "role.admin": "管理员",
  },
  en: {
    "title": "Community micro fire station · duty room",
    "conn.up": "live", "conn.down": "reconnecting…",
    "logout": "Log out", "buildings": "Buildings", "alerts": "Alerts (single detectors)", "alerts.none": "No open alerts",
    "devices.attention": "Devices needing attention", "devices.offline": "Offline", "devices.battery": "Low battery",
    "devices.oos": "Extinguishers out of service", "trend": "Device trend",
    "sev.fire": "Fire", "sev.supervisory": "Supervisory", "sev.trouble": "Trouble", "sev.warning": "Warning",
    "sev.ok": "Normal",
    "state.raised": "Raised", "state.acknowledged": "Acknowledged", "state.dispatched": "Dispatched",
    "state.resolved": "Resolved",
    "act.ack": "Acknowledge", "act.dispatch": "Dispatch", "act.resolve": "Resolve",
    "form.to": "Send to (member or team)", "form.note": "Note (optional)", "form.ok": "Submit", "form.cancel": "Cancel",
    "cause.real_fire": "Real fire", "cause.false_alarm": "False alarm", "cause.test": "Test",
    "cause.device_fault": "Device fault", "cause.other": "Other",
    "login.title": "Enter your access token", "login.hint": "The token is kept in this tab only (sessionStorage).",
    "login.placeholder": "Access token", "login.submit": "Enter", "login.bad": "Invalid token, try again.",
    "floor": "F", "online": "online", "offline": "offline", "alerts.short": "alerts", "oos.short": "extinguishers",
    "battery.short": "low batt.", "cleared": "signal back to normal", "test": "test/maintenance", "by": "by",
    "to": "to", "no.data": "no data", "points": "points", "none": "none", "err.action": "Action failed: ",
    "role.viewer": "viewer", "role.operator": "operator", "role.admin": "admin",
  },
};

const state = {
  lang: localStorage.getItem(LANG_KEY) || "zh",
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  me: null,
  buildings: [],
  alerts: [],
  selectedBuilding: null,
  selectedDevice: null,
  selectedMetric: null,
  lastEventId: null,
  streamAbort: null,
  refreshTimer: null,
  openForm: null, // alert id whose inline form is open: keep it open across re-renders
};

const $ = (id) => document.getElementById(id);
const t = (key) => (I18N[state.lang] && I18N[state.lang][key]) || I18N.zh[key] || key;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmtTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  const today = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return d.toDateString() === today.toDateString() ? hms : `${d.getMonth() + 1}-${pad(d.getDate())} ${hms}`;
}

function floorText(floor) {
  if (floor === null || floor === undefined) return "";
  if (state.lang === "en") return floor < 0 ? `B${-floor}` : `${floor}F`;
  return floor < 0 ? `地下${-floor}层` : `${floor}层`;
}

// --- i18n --------------------------------------------------------------------------------------------------------

function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = state.lang === "zh" ? "firegrid 值班大屏" : "firegrid duty room";
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  $("lang").textContent = state.lang === "zh" ? "EN" : "中文";
  setConn(state.connected);
  renderWho();
  renderAll();
  if (state.trendDetail) drawSparkline(state.trendDetail);
}

// --- HTTP --------------------------------------------------------------------------------------------------------

class AuthFailed extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
    credentials: "omit",
  });
  if (res.status === 401) throw new AuthFailed("unauthorized");
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error((body && (body.detail || body.title)) || `HTTP ${res.status}`);
  return body;
}

// --- login -------------------------------------------------------------------------------------------------------

function showLogin(message) {
  stopStream();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function start() {
  try {
    state.me = await api("/whoami");
  } catch (err) {
    if (err instanceof AuthFailed) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = "";
      showLogin(t("login.bad"));
      return;
    }
    showLogin(String(err.message || err));
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  renderWho();
  await refreshAll();
  startStream();
}

function renderWho() {
  if (!state.me) return;
  const scope = state.me.grids || state.me.buildings ? ` · ${[...(state.me.grids || []), ...(state.me.buildings || [])].join(",")}` : "";
  $("who").textContent = `${state.me.name} (${t("role." + state.me.role)})${scope}`;
}

function canOperate() {
  return state.me && (state.me.role === "operator" || state.me.role === "admin");
}

// --- data --------------------------------------------------------------------------------------------------------

async function refreshAll() {
  const started = performance.now();
  state.refreshStarted = started;
  try {
    const [buildings, alerts, offline, battery, oos] = await Promise.all([
      api("/buildings"),
      api("/alerts?active=true&limit=500"),
      api("/devices?status=offline&limit=1000"),
      api("/devices?low_battery=true&limit=1000"),
      api("/devices?out_of_service=true&limit=1000"),
      refreshIncidents(), // incidents.js: incidents, their details and the stations
    ]);
    state.buildings = buildings.items;
    state.alerts = alerts.items;
    state.offline = offline;
    state.battery = battery;
    state.oos = oos;
    renderAll();
    if (state.selectedDevice) loadTrend();
  } catch (err) {
    if (err instanceof AuthFailed) showLogin(t("login.bad"));
  } finally {
    state.refreshCost = performance.now() - started;
  }
}

// Live events are coalesced: one refresh 150 ms after the first of a burst, and refreshes spaced by at least 1 s or
// four times what the last one took, whichever is longer.  A refresh reads every device of the scope on the server
// (100,000 devices: about half a second of the gateway's event loop), so during a storm of events an open dashboard
// must not keep the gateway busy: it takes at most about a quarter of it, and what it shows is at most a few seconds old.
function scheduleRefresh() {
  if (state.refreshTimer) return;
  const spacing = Math.max(1000, 4 * (state.refreshCost || 0));
  const due = Math.max(150, (state.refreshStarted || 0) + spacing - performance.now());
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refreshAll();
  }, due);
}

// --- rendering ---------------------------------------------------------------------------------------------------

function renderAll() {
  if (!state.me) return;
  renderIncidents();
  renderStations();
  renderMap();
  renderBuildings();
  renderAlerts();
  renderDevices();
  renderTrendControls();
}

function buildingName(id) {
  const b = state.buildings.find((x) => x.id === id);
  return b ? b.name : id;
}

function renderBuildings() {
  const root = $("buildings");
  root.replaceChildren();
  for (const b of state.buildings) {
    const s = b.status;
    const card = el("div", "building" + (s.worst_severity ? ` b-${s.worst_severity}` : ""));
    card.dataset.building = b.id;
    card.dataset.severity = s.worst_severity || "ok";
    if (state.selectedBuilding === b.id) card.classList.add("selected");
    card.append(el("div", "name", b.name));
    card.append(el("div", "sub", `${b.grid} · ${b.id}` + (s.worst_severity ? ` · ${t("sev." + s.worst_severity)}` : "")));
    const stats = el("div", "stats");
    stats.append(el("span", "", `${t("online")} ${s.devices_online}/${s.devices_total}`));
    if (s.devices_offline) stats.append(el("span", "", `${t("offline")} ${s.devices_offline}`));
    if (s.active_alerts) stats.append(el("span", "", `${t("alerts.short")} ${s.active_alerts}`));
    if (s.extinguishers_out_of_service) stats.append(el("span", "", `${t("oos.short")} ${s.extinguishers_out_of_service}`));
    if (s.low_battery) stats.append(el("span", "", `${t("battery.short")} ${s.low_battery}`));
    card.append(stats);
    card.addEventListener("click", () => selectBuilding(b.id));
    root.append(card);
  }
}

function sortAlerts(alerts) {
  // Newest fire first: severity, then most recent.
  return [...alerts].sort(
    (a, b) =>
      (SEV_RANK[b.severity] || 0) - (SEV_RANK[a.severity] || 0) ||
      (b.raised_ms || 0) - (a.raised_ms || 0) ||
      (b.id > a.id ? 1 : -1),
  );
}

function renderAlerts() {
  const list = $("alerts");
  list.replaceChildren();
  const alerts = sortAlerts(state.alerts);
  $("alert-count").textContent = alerts.length ? `(${alerts.length})` : "";
  $("no-alerts").hidden = alerts.length > 0;
  const template = $("alert-template");
  for (const a of alerts) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.classList.add(`a-${a.severity}`);
    if (a.test || a.drill) node.classList.add("is-test");
    node.dataset.alertId = a.id;
    node.dataset.state = a.state;
    node.dataset.severity = a.severity;
    const chip = node.querySelector(".sev-chip");
    chip.classList.add(`sev-${a.severity}`);
    chip.textContent = t("sev." + a.severity);
    node.querySelector(".alert-where").textContent = [a.building_name || buildingName(a.building), floorText(a.floor), a.device || ""]
      .filter(Boolean)
      .join(" · ");
    const st = node.querySelector(".alert-state");
    st.textContent = t("state." + a.state);
    st.classList.add(`s-${a.state}`);
    node.querySelector(".alert-time").textContent = fmtTime(a.raised_ms);
    node.querySelector(".alert-reason").textContent = reasonText(a); // the reason in the page's language
    const meta = [];
    if (a.acknowledged_by) meta.push(`${t("by")} ${a.acknowledged_by}`);
    if (a.dispatched_to) meta.push(`${t("to")} ${a.dispatched_to}`);
    if (a.condition_cleared) meta.push(t("cleared"));
    if (a.test || a.drill) meta.push(t("test"));
    node.querySelector(".alert-meta").textContent = meta.join(" · ");
    const actions = node.querySelector(".alert-actions");
    if (!canOperate()) {
      actions.remove();
    } else {
      const ack = node.querySelector(".act-ack");
      ack.textContent = t("act.ack");
      ack.hidden = a.state !== "raised";
      ack.addEventListener("click", () => act(a.id, "ack", {}));
      const dispatch = node.querySelector(".act-dispatch");
      dispatch.textContent = t("act.dispatch");
      dispatch.addEventListener("click", () => openForm(node, a.id, "dispatch"));
      const resolve = node.querySelector(".act-resolve");
      resolve.textContent = t("act.resolve");
      resolve.addEventListener("click", () => openForm(node, a.id, "resolve"));
      if (state.openForm && state.openForm.id === a.id) openForm(node, a.id, state.openForm.kind, state.openForm.values);
    }
    list.append(node);
  }
}

function openForm(node, id, kind, values) {
  const form = node.querySelector(".alert-form");
  const to = form.querySelector(".form-to");
  const cause = form.querySelector(".form-cause");
  const note = form.querySelector(".form-note");
  cause.replaceChildren();
  for (const c of ["real_fire", "false_alarm", "test", "device_fault", "other"]) {
    const opt = el("option", "", t("cause." + c));
    opt.value = c;
    cause.append(opt);
  }
  to.placeholder = t("form.to");
  note.placeholder = t("form.note");
  form.querySelector(".form-ok").textContent = t("form.ok");
  form.querySelector(".form-cancel").textContent = t("form.cancel");
  to.hidden = kind !== "dispatch";
  to.required = kind === "dispatch";
  cause.hidden = kind !== "resolve";
  if (values) {
    to.value = values.to || "";
    cause.value = values.cause || "false_alarm";
    note.value = values.note || "";
  }
  form.hidden = false;
  state.openForm = { id, kind, values: values || {} };
  const remember = () => (state.openForm = { id, kind, values: { to: to.value, cause: cause.value, note: note.value } });
  to.oninput = cause.onchange = note.oninput = remember;
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const body = { note: note.value || undefined };
    if (kind === "dispatch") body.to = to.value;
    if (kind === "resolve") body.cause = cause.value;
    state.openForm = null;
    act(id, kind, body);
  };
  form.querySelector(".form-cancel").onclick = () => {
    state.openForm = null;
    form.hidden = true;
  };
  (kind === "dispatch" ? to : note).focus();
}

async function act(id, kind, body) {
  try {
    await api(`/alerts/${encodeURIComponent(id)}/${kind}`, { method: "POST", body });
  } catch (err) {
    if (err instanceof AuthFailed) return showLogin(t("login.bad"));
    alert(t("err.action") + (err.message || err));
  }
  scheduleRefresh();
}

function deviceLine(d, extra) {
  const li = el("li", "", `${buildingName(d.building)} · ${floorText(d.floor)} · ${d.id}${extra ? " · " + extra : ""}`);
  li.dataset.device = d.id;
  li.addEventListener("click", () => {
    state.selectedBuilding = d.building;
    state.selectedDevice = d.id;
    state.selectedMetric = null;
    renderBuildings();
    renderTrendControls();
    loadTrend();
  });
  return li;
}

function renderDevices() {
  const fill = (id, countId, page, extra) => {
    const ul = $(id);
    ul.replaceChildren();
    const items = (page && page.items) || [];
    $(countId).textContent = page ? `(${page.total})` : "";
    if (!items.length) ul.append(el("li", "empty", t("none")));
    for (const d of items) ul.append(deviceLine(d, extra(d)));
  };
  fill("offline", "offline-count", state.offline, (d) => (d.last_seen_ms ? fmtTime(d.last_seen_ms) : ""));
  fill("battery", "battery-count", state.battery, (d) => (d.battery !== null ? `${Math.round(d.battery)}%` : ""));
  fill("oos", "oos-count", state.oos, (d) => {
    const v = d.values || {};
    if (v.present === false) return state.lang === "zh" ? "不在位" : "missing";
    if (v.obstructed === true) return state.lang === "zh" ? "被遮挡" : "obstructed";
    if (typeof v.pressure_mpa === "number") return `${v.pressure_mpa} MPa`;
    return "";
  });
}

// --- trend / sparkline -------------------------------------------------------------------------------------------

async function selectBuilding(id) {
  state.selectedBuilding = id;
  state.selectedDevice = null;
  state.selectedMetric = null;
  renderBuildings();
  await renderTrendControls();
}

let deviceCache = { building: null, items: [] };

async function renderTrendControls() {
  const bSel = $("trend-building");
  bSel.replaceChildren();
  for (const b of state.buildings) {
    const opt = el("option", "", b.name);
    opt.value = b.id;
    bSel.append(opt);
  }
  if (!state.selectedBuilding && state.buildings.length) state.selectedBuilding = state.buildings[0].id;
  bSel.value = state.selectedBuilding || "";
  bSel.onchange = () => selectBuilding(bSel.value);
  if (!state.selectedBuilding) return;
  if (deviceCache.building !== state.selectedBuilding) {
    try {
      const page = await api(`/devices?building=${encodeURIComponent(state.selectedBuilding)}&limit=1000`);
      deviceCache = { building: state.selectedBuilding, items: page.items };
    } catch {
      return;
    }
  }
  const dSel = $("trend-device");
  dSel.replaceChildren();
  for (const d of deviceCache.items) {
    const opt = el("option", "", `${floorText(d.floor)} ${d.id} (${d.kind})`);
    opt.value = d.id;
    dSel.append(opt);
  }
  if (!state.selectedDevice && deviceCache.items.length) {
    const numeric = deviceCache.items.find((d) => d.kind === "smoke" || d.kind === "heat") || deviceCache.items[0];
    state.selectedDevice = numeric.id;
    loadTrend();
  }
  dSel.value = state.selectedDevice || "";
  dSel.onchange = () => {
    state.selectedDevice = dSel.value;
    state.selectedMetric = null;
    loadTrend();
  };
}

let trendSeq = 0;

async function loadTrend() {
  const id = state.selectedDevice;
  if (!id) return;
  const seq = ++trendSeq;
  let detail;
  try {
    detail = await api(`/devices/${encodeURIComponent(id)}?minutes=120&points=300`);
  } catch {
    return;
  }
  if (seq !== trendSeq) return; // a newer selection won
  const metrics = new Set();
  for (const p of detail.history) {
    for (const [k, v] of Object.entries(p.values)) if (typeof v === "number") metrics.add(k);
  }
  const preferred = ["celsius", "obscuration", "pressure_mpa", "battery", "rssi"];
  const list = [...metrics].sort((a, b) => (preferred.indexOf(a) + 99) % 99 - (preferred.indexOf(b) + 99) % 99);
  if (!state.selectedMetric || !metrics.has(state.selectedMetric)) state.selectedMetric = list[0] || null;
  const mSel = $("trend-metric");
  mSel.replaceChildren();
  for (const k of list) {
    const opt = el("option", "", k);
    opt.value = k;
    mSel.append(opt);
  }
  mSel.value = state.selectedMetric || "";
  mSel.onchange = () => {
    state.selectedMetric = mSel.value;
    drawSparkline(detail);
  };
  state.trendDetail = detail;
  drawSparkline(detail);
}

function drawSparkline(detail) {
  const svg = $("sparkline");
  svg.replaceChildren();
  const metric = state.selectedMetric;
  const points = detail.history
    .filter((p) => typeof p.values[metric] === "number")
    .map((p) => [p.ts_ms, p.values[metric]]);
  $("trend-title").textContent = `${detail.id}${metric ? " · " + metric : ""}`;
  const ns = "http://www.w3.org/2000/svg";
  if (points.length < 2) {
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", "10");
    text.setAttribute("y", "60");
    text.textContent = t("no.data");
    svg.append(text);
    $("trend-info").textContent = "";
    return;
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const W = 600, H = 120, pad = 8;
  const coords = points
    .map(([x, y]) => {
      const px = pad + ((x - x0) / Math.max(1, x1 - x0)) * (W - 2 * pad);
      const py = H - pad - ((y - y0) / (y1 - y0)) * (H - 2 * pad);
      return `${px.toFixed(1)},${py.toFixed(1)}`;
    })
    .join(" ");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", coords);
  svg.append(line);
  const last = ys[ys.length - 1];
  $("trend-info").textContent =
    `${metric}: ${last} (min ${Math.min(...ys)}, max ${Math.max(...ys)}) · ${points.length} ${t("points")} · ` +
    `${fmtTime(x0)} – ${fmtTime(x1)} · ${detail.history_source}`;
}

// --- live stream (fetch-based SSE: the token stays in a header) -----------------------------------------------

function setConn(up) {
  state.connected = up;
  const node = $("conn");
  node.textContent = t(up ? "conn.up" : "conn.down");
  node.className = "conn " + (up ? "conn-up" : "conn-down");
  node.dataset.connected = up ? "true" : "false";
}

function stopStream() {
  if (state.streamAbort) state.streamAbort.abort();
  state.streamAbort = null;
}

async function startStream() {
  stopStream();
  const controller = new AbortController();
  state.streamAbort = controller;
  let backoff = 500;
  while (!controller.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const res = await fetch(API + "/stream", { headers, signal: controller.signal, cache: "no-store", credentials: "omit" });
      if (res.status === 401) return showLogin(t("login.bad"));
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setConn(true);
      backoff = 500;
      scheduleRefresh(); // whatever happened while we were away
      document.dispatchEvent(new CustomEvent("firegrid:live", { detail: { type: "connected", data: "" } }));
      await readEvents(res.body, controller.signal);
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    setConn(false);
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 5000);
  }
}

async function readEvents(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      handleFrame(frame);
    }
  }
}

function handleFrame(frame) {
  let type = "message", data = "", id = null;
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
    else if (field === "id") id = value;
  }
  if (id) state.lastEventId = id;
  // the page's other panels (inspections.js) follow the same stream: one connection, every event handed on
  document.dispatchEvent(new CustomEvent("firegrid:live", { detail: { type, data } }));
  if (type === "incident") incidentEvent(data); // on screen at once; the refresh below brings the rest
  if (type === "alert" || type === "device" || type === "incident" || type === "reset") {
    scheduleRefresh();
    if (type === "device" && state.selectedDevice) {
      try {
        const d = JSON.parse(data);
        if ((d.id || d.device) === state.selectedDevice) loadTrend();
      } catch { /* not JSON: ignore */ }
    }
  }
}

// --- boot --------------------------------------------------------------------------------------------------------

function boot() {
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, state.lang);
    applyLang();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = "";
    state.me = null;
    showLogin("");
  });
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, state.token);
    start();
  });
  setInterval(() => state.me && refreshAll(), 30000); // safety net under the live stream
  setInterval(tickClocks, 1000); // elapsed times and station clocks (incidents.js)
  applyLang();
  if (state.token) start();
  else showLogin("");
}

document.addEventListener("DOMContentLoaded", boot);
