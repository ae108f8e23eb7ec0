// firegrid duty screen, the incident half (一屏知晓 / 一屏跟踪): one card per incident, the stations panel and the
// district map.  Loaded after app.js (a classic script: it shares app.js's globals: state, t, api, el, fmtTime ...).
//
// * The incident is the unit of work: its card carries the four steps (确认/派遣/到场/处置完成) and acts on all its
//   alerts at once; the per-detector list below stays for the single-detector case.
// * Clocks tick from the page's clock (Date.now(), one 1 s interval), never from a server push, so a test drives them
//   with Playwright's page.clock and a duty room sees them move even when nothing else happens.
// * Every field beyond today's incident list (state, station, floors, device_count, confirmed, the detail with its
//   timeline and clock, /stations) is optional: a gateway without them shows what it has, never an error.
// * The map is an inline SVG drawn from the configured coordinates: no tiles, no network, works offline.
"use strict";

Object.assign(I18N.zh, {
  "incidents": "事件", "incidents.none": "当前没有未处置的事件",
  "istate.open": "待确认", "istate.acknowledged": "已确认", "istate.dispatched": "已派遣", "istate.on_scene": "已到场",
  "istate.resolved": "已处置",
  "confirmed.yes": "已确认火警", "confirmed.no": "未经复核",
  "elapsed": "已持续", "devices.n": "个设备", "alerts.n": "条告警", "floors.none": "楼层未知",
  "en_route": "出动", "on_scene_in": "到场用时", "target": "目标", "overdue": "已超时",
  "act.arrive": "到场", "act.more": "详情", "act.less": "收起",
  "dispatch.auto": "自动：最近的值守消防站", "dispatch.station": "派往消防站",
  "detail.alerts": "告警", "detail.evidence": "证据", "detail.timeline": "处置时间线", "detail.pages": "已通知",
  "detail.none": "暂无记录",
  "tl.opened": "事件发起", "tl.acknowledged": "确认", "tl.dispatched": "派遣", "tl.paged": "通知",
  "tl.on_scene": "到场", "tl.escalated": "升级通知", "tl.on_scene_breach": "超时未到场", "tl.resolved": "处置完成",
  "tl.external_ref": "关联工单", "tl.reopened": "重新打开",
  "via.api": "值班台", "via.sms": "短信回复", "via.link": "链接",
  "stations": "微型消防站", "stations.none": "未配置消防站", "station.committed": "出警中", "station.free": "待命",
  "station.on_duty": "在岗", "station.off_duty": "不在岗", "station.target": "到场目标",
  "map": "辖区地图", "map.none": "楼栋和消防站尚未配置坐标", "map.unplaced": "未标注位置：",
  "map.station": "消防站", "map.rescue": "15分钟救援圈", "map.rescue.legend": "虚线圈：各消防站15分钟救援圈",
  "code": "回复码", "code.hint": "短信回复「{code} 到」标记到场", "drill": "演练", "m": "米", "eta": "预计", "tier": "级", "sec": "秒", "min": "分",
});
Object.assign(I18N.en, {
  "incidents": "Incidents", "incidents.none": "No open incidents",
  "istate.open": "Open", "istate.acknowledged": "Acknowledged", "istate.dispatched": "Dispatched",
  "istate.on_scene": "On scene", "istate.resolved": "Resolved",
  "confirmed.yes": "Confirmed fire", "confirmed.no": "Unconfirmed",
  "elapsed": "for", "devices.n": "devices", "alerts.n": "alerts", "floors.none": "floor unknown",
  "en_route": "En route", "on_scene_in": "On scene after", "target": "target", "overdue": "overdue",
  "act.arrive": "On scene", "act.more": "Details", "act.less": "Less",
  "dispatch.auto": "Auto: nearest on-duty station", "dispatch.station": "Station",
  "detail.alerts": "Alerts", "detail.evidence": "Evidence", "detail.timeline": "Timeline", "detail.pages": "Paged",
  "detail.none": "nothing yet",
  "tl.opened": "Opened", "tl.acknowledged": "Acknowledged", "tl.dispatched": "Dispatched", "tl.paged": "Paged",
  "tl.on_scene": "On scene", "tl.escalated": "Escalated", "tl.on_scene_breach": "Not on scene in time",
  "tl.resolved": "Resolved", "tl.external_ref": "Work order", "tl.reopened": "Reopened",
  "via.api": "duty desk", "via.sms": "SMS reply", "via.link": "link",
  "stations": "Micro fire stations", "stations.none": "No stations configured", "station.committed": "Committed",
  "station.free": "Available", "station.on_duty": "on duty", "station.off_duty": "off duty",
  "station.target": "on-scene target",
  "map": "District map", "map.none": "No coordinates configured for buildings or stations",
  "map.unplaced": "Not on the map: ", "map.station": "station", "map.rescue": "15-minute rescue circle",
  "map.rescue.legend": "Dashed: each station's 15-minute rescue circle", "code": "code",
  "code.hint": "an SMS reply \"{code} 到\" marks it on scene", "drill": "drill", "m": "m", "eta": "ETA", "tier": "tier",
  "sec": "s", "min": "min",
});

const INCIDENT_STATES = ["open", "acknowledged", "dispatched", "on_scene", "resolved"];
const DETAIL_MAX = 30; // details fetched per refresh: a storm of incidents must not turn into a storm of requests
const RECENT_MS = 10 * 60 * 1000; // resolved incidents stay on screen this long (结果反馈), dimmed

Object.assign(state, {
  incidents: [],
  incidentDetails: {}, // id -> detail (GET /incidents/{id}) or null when the gateway has none
  stations: null, // null: the gateway serves no /stations
  expanded: new Set(),
  incidentForm: null, // {id, kind, values}: kept open across re-renders
});

// --- data --------------------------------------------------------------------------------------------------------

// Which routes this gateway serves, from its OpenAPI document (read once): a route it lacks is not asked for, so an
// older gateway costs no failed request (and no error in the browser's console).
let routesPromise = null;

function routes() {
  if (!routesPromise) {
    routesPromise = fetch("/openapi.json", { cache: "no-store", credentials: "omit" })
      .then((res) => (res.ok ? res.json() : null))
      .then((spec) => new Set(Object.keys((spec && spec.paths) || {}).map((p) => p.replace(/^\/api\/v1/, ""))))
      .catch(() => new Set());
  }
  return routesPromise;
}

async function optional(path, route) {
  if (route && !(await routes()).has(route)) return null;
  try {
    return await api(path);
  } catch (err) {
    if (err instanceof AuthFailed) throw err;
    return null; // a transient failure: show what there is, the next refresh asks again
  }
}

async function refreshIncidents() {
  const since = Date.now() - RECENT_MS;
  const [active, recent, stations] = await Promise.all([
    optional("/incidents?active=true&limit=200", "/incidents"),
    optional(`/incidents?active=false&since=${since}&limit=20`, "/incidents"),
    optional("/stations", "/stations"),
  ]);
  const seen = new Set();
  const items = [];
  for (const item of [...((active && active.items) || []), ...((recent && recent.items) || [])]) {
    if (seen.has(String(item.id))) continue;
    seen.add(String(item.id));
    items.push(item);
  }
  state.incidents = items;
  state.stations = stations ? stations.items : null;
  const wanted = sortIncidents(items).slice(0, DETAIL_MAX);
  const details = await Promise.all(
    wanted.map((i) => optional(`/incidents/${encodeURIComponent(i.id)}`, "/incidents/{id}")),
  );
  const byId = {};
  wanted.forEach((i, n) => (byId[i.id] = details[n]));
  state.incidentDetails = byId;
}

// A live `incident` event carries the incident's list item: show it at once (the refresh that follows brings the
// detail), so a new fire is on screen as soon as the gateway knows it.
function incidentEvent(data) {
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return;
  }
  const item = event && event.incident;
  if (!item || item.id === undefined) return;
  const at = state.incidents.findIndex((i) => String(i.id) === String(item.id));
  if (at >= 0) state.incidents[at] = Object.assign({}, state.incidents[at], item);
  else state.incidents.push(item);
  renderIncidents();
  renderMap();
}

// --- facts of one incident (list item, detail, or the alerts on screen) -------------------------------------------

function incidentAlerts(inc) {
  const detail = state.incidentDetails[inc.id];
  if (detail && Array.isArray(detail.alerts)) return detail.alerts;
  return state.alerts.filter((a) => String(a.incident_id) === String(inc.id));
}

function incidentFacts(inc) {
  const detail = state.incidentDetails[inc.id] || {};
  const merged = Object.assign({}, inc, detail);
  const alerts = incidentAlerts(inc);
  const floors = Array.isArray(merged.floors)
    ? merged.floors
    : [...new Set(alerts.map((a) => a.floor).filter((f) => f !== null && f !== undefined))].sort((a, b) => a - b);
  const devices = new Set(alerts.map((a) => a.device).filter(Boolean));
  const confirmed =
    typeof merged.confirmed === "boolean" ? merged.confirmed : alerts.some((a) => a.confirmed === true);
  let st = merged.state || "open";
  if (!INCIDENT_STATES.includes(st)) st = "open";
  return {
    merged,
    alerts,
    floors,
    deviceCount: typeof merged.device_count === "number" ? merged.device_count : devices.size,
    confirmed,
    state: st,
    station: merged.station || null,
    clock: merged.clock || null,
    timeline: Array.isArray(merged.timeline) ? merged.timeline : null,
    evidence: Array.isArray(merged.evidence) ? merged.evidence : null,
    pages: Array.isArray(merged.pages) ? merged.pages : null,
  };
}

function sortIncidents(items) {
  // open work first, then the worst severity, then the newest
  return [...items].sort(
    (a, b) =>
      (a.state === "resolved") - (b.state === "resolved") ||
      (SEV_RANK[b.severity] || 0) - (SEV_RANK[a.severity] || 0) ||
      (b.opened_ms || 0) - (a.opened_ms || 0),
  );
}

function stationName(id) {
  const s = (state.stations || []).find((x) => x.id === id);
  return s ? s.name : id;
}

function floorsText(floors) {
  if (!floors.length) return t("floors.none");
  return floors.map(floorText).join(state.lang === "zh" ? "、" : ", ");
}

function mmss(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s)}` : `${pad(m)}:${pad(s)}`;
}

// --- cards -------------------------------------------------------------------------------------------------------

function renderIncidents() {
  const list = $("incidents");
  if (!list || !state.me) return;
  const items = sortIncidents(state.incidents);
  const open = items.filter((i) => i.state !== "resolved");
  $("incident-count").textContent = open.length ? `(${open.length})` : "";
  $("no-incidents").hidden = items.length > 0;
  list.replaceChildren(...items.map(incidentCard));
  tickClocks();
}

function incidentCard(inc) {
  const f = incidentFacts(inc);
  const sev = inc.severity || "warning";
  const li = el("li", `incident i-${sev}` + (f.state === "resolved" ? " is-resolved" : ""));
  if (inc.drill) li.classList.add("is-test");
  li.dataset.incidentId = inc.id;
  li.dataset.state = f.state;
  li.dataset.severity = sev;
  li.dataset.confirmed = String(f.confirmed);

  const head = el("div", "inc-head");
  const chip = el("span", `sev-chip sev-${sev}`, t("sev." + sev));
  const where = el("span", "inc-where", [inc.building_name || buildingName(inc.building), floorsText(f.floors)].join(" · "));
  const st = el("span", `inc-state s-${f.state}`, t("istate." + f.state));
  const conf = el("span", "inc-confirmed " + (f.confirmed ? "yes" : "no"), t(f.confirmed ? "confirmed.yes" : "confirmed.no"));
  const elapsed = el("span", "inc-elapsed");
  elapsed.dataset.since = inc.opened_ms || "";
  if (f.state === "resolved") elapsed.dataset.until = inc.closed_ms || (f.clock && f.clock.resolved_ms) || "";
  head.append(chip, where, st);
  if (sev === "fire") head.append(conf);
  if (inc.drill) head.append(el("span", "inc-drill", t("drill")));
  head.append(elapsed);
  li.append(head);

  const facts = el("div", "inc-facts muted");
  facts.append(el("span", "inc-devices", `${f.deviceCount} ${t("devices.n")}`));
  facts.append(el("span", "inc-alert-count", `${inc.open_count ?? inc.alert_count ?? f.alerts.length} ${t("alerts.n")}`));
  // the code members reply with by SMS ("<code> 到": on scene), so the duty room can read it out over the phone
  const code = el("span", "inc-code", inc.ack_code ? `${t("code")} ${inc.ack_code}` : `#${inc.id}`);
  if (inc.ack_code) code.title = t("code.hint").replace("{code}", inc.ack_code);
  facts.append(code);
  li.append(facts);

  if (f.station || (f.clock && f.clock.dispatched_ms)) li.append(stationClock(f));
  li.append(incidentActions(li, inc, f, canOperate() && f.state !== "resolved"));
  if (state.incidentForm && String(state.incidentForm.id) === String(inc.id)) {
    openIncidentForm(li, inc, state.incidentForm.kind, state.incidentForm.values);
  }
  if (state.expanded.has(String(inc.id))) li.append(incidentDetail(f));
  return li;
}

function stationClock(f) {
  const row = el("div", "inc-station");
  const clock = f.clock || {};
  const target = (clock.on_scene_target_s || 180) * 1000;
  row.append(el("span", "inc-station-name", `${t("en_route")} ${f.station ? stationName(f.station) : ""}`));
  const ticker = el("span", "inc-clock");
  ticker.dataset.since = clock.dispatched_ms || "";
  ticker.dataset.target = String(target);
  if (clock.on_scene_ms) ticker.dataset.until = clock.on_scene_ms;
  row.append(ticker);
  return row;
}

// The four steps for an operator on an open incident; 详情 (expand) for everyone, resolved incidents included.
function incidentActions(li, inc, f, steps) {
  const bar = el("div", "inc-actions");
  const add = (cls, key, show, onClick) => {
    if (!show || !steps) return;
    const b = el("button", cls, t(key));
    b.type = "button";
    b.addEventListener("click", onClick);
    bar.append(b);
  };
  add("inc-ack act-ack", "act.ack", f.state === "open", () => actIncident(inc.id, "ack", {}));
  add("inc-dispatch act-dispatch", "act.dispatch", f.state === "open" || f.state === "acknowledged", () =>
    openIncidentForm(li, inc, "dispatch"),
  );
  add("inc-arrive act-arrive", "act.arrive", f.state === "dispatched", () => actIncident(inc.id, "arrive", {}));
  add("inc-resolve act-resolve", "act.resolve", true, () => openIncidentForm(li, inc, "resolve"));
  const more = el("button", "inc-more ghost", t(state.expanded.has(String(inc.id)) ? "act.less" : "act.more"));
  more.type = "button";
  more.addEventListener("click", () => {
    const id = String(inc.id);
    if (state.expanded.has(id)) state.expanded.delete(id);
    else state.expanded.add(id);
    renderIncidents();
  });
  bar.append(more);
  return bar;
}

function openIncidentForm(li, inc, kind, values) {
  li.querySelector(".inc-form")?.remove();
  const form = el("form", "inc-form alert-form");
  form.dataset.kind = kind;
  values = values || {};
  const station = el("select", "form-station");
  const cause = el("select", "form-cause");
  const note = el("input", "form-note");
  note.placeholder = t("form.note");
  if (kind === "dispatch") {
    const auto = el("option", "", t("dispatch.auto"));
    auto.value = "";
    station.append(auto);
    for (const s of state.stations || []) {
      const opt = el("option", "", `${s.name}${s.committed_to ? " · " + t("station.committed") : ""}`);
      opt.value = s.id;
      station.append(opt);
    }
    station.value = values.station || "";
    form.append(station);
  } else {
    for (const c of ["real_fire", "false_alarm", "test", "device_fault", "other"]) {
      const opt = el("option", "", t("cause." + c));
      opt.value = c;
      cause.append(opt);
    }
    cause.value = values.cause || "false_alarm";
    form.append(cause);
  }
  note.value = values.note || "";
  const ok = el("button", "form-ok", t("form.ok"));
  ok.type = "submit";
  const cancel = el("button", "form-cancel ghost", t("form.cancel"));
  cancel.type = "button";
  form.append(note, ok, cancel);
  const remember = () =>
    (state.incidentForm = { id: inc.id, kind, values: { station: station.value, cause: cause.value, note: note.value } });
  station.onchange = cause.onchange = note.oninput = remember;
  remember();
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const body = {};
    if (note.value) body.note = note.value;
    if (kind === "dispatch" && station.value) body.station = station.value;
    if (kind === "resolve") body.cause = cause.value;
    state.incidentForm = null;
    actIncident(inc.id, kind, body);
  };
  cancel.onclick = () => {
    state.incidentForm = null;
    form.remove();
  };
  const actions = li.querySelector(".inc-actions");
  if (actions) actions.after(form);
  else li.append(form);
}

async function actIncident(id, kind, body) {
  try {
    await api(`/incidents/${encodeURIComponent(id)}/${kind}`, { method: "POST", body });
  } catch (err) {
    if (err instanceof AuthFailed) return showLogin(t("login.bad"));
    alert(t("err.action") + (err.message || err));
  }
  scheduleRefresh();
}

// --- the expanded card: alerts, evidence, timeline ---------------------------------------------------------------

function incidentDetail(f) {
  const box = el("div", "inc-detail");
  box.append(el("h4", "", t("detail.alerts")));
  const alerts = el("ul", "inc-alerts");
  for (const a of sortAlerts(f.alerts)) {
    const li = el("li", `inc-alert a-${a.severity}`);
    li.dataset.alertId = a.id;
    li.dataset.state = a.state;
    li.append(el("span", `sev-chip sev-${a.severity}`, t("sev." + a.severity)));
    li.append(el("span", "inc-alert-where", [floorText(a.floor), a.device || ""].filter(Boolean).join(" · ")));
    li.append(el("span", "inc-alert-reason", reasonText(a)));
    li.append(el("span", "inc-alert-state muted", t("state." + a.state)));
    alerts.append(li);
  }
  if (!f.alerts.length) alerts.append(el("li", "empty", t("detail.none")));
  box.append(alerts);

  if (f.evidence && f.evidence.length) {
    box.append(el("h4", "", t("detail.evidence")));
    const ev = el("ul", "inc-evidence muted");
    for (const e of f.evidence.slice(0, 20)) {
      ev.append(el("li", "", `${fmtTime(e.ts_ms)} · ${e.device} · ${evidenceText(e, f.alerts)}`));
    }
    box.append(ev);
  }

  box.append(el("h4", "", t("detail.timeline")));
  const tl = el("ol", "timeline");
  for (const step of f.timeline || []) {
    const li = el("li", `tl-${step.action}`);
    li.dataset.action = step.action;
    li.append(el("time", "tl-time", fmtTime(step.ts_ms)));
    li.append(el("span", "tl-action", t("tl." + step.action)));
    li.append(el("span", "tl-by", step.by || step.actor || ""));
    const said = timelineDetail(step);
    if (said) li.append(el("span", "tl-detail muted", said));
    tl.append(li);
  }
  if (!f.timeline || !f.timeline.length) tl.append(el("li", "empty", t("detail.none")));
  box.append(tl);
  return box;
}

function timelineDetail(step) {
  const d = step.detail || {};
  const parts = [];
  switch (step.action) {
    case "dispatched":
      if (d.station) parts.push(stationName(d.station));
      if (Array.isArray(d.members) && d.members.length) parts.push(d.members.join(state.lang === "zh" ? "、" : ", "));
      if (typeof d.distance_m === "number") parts.push(`${Math.round(d.distance_m)} ${t("m")}`);
      if (typeof d.eta_s === "number") parts.push(`${t("eta")} ${mmss(d.eta_s * 1000)}`);
      break;
    case "paged":
      parts.push([d.channel, d.recipient].filter(Boolean).join(" → "));
      break;
    case "on_scene":
      if (d.via) parts.push(t("via." + d.via));
      break;
    case "escalated":
      if (d.tier !== undefined) parts.push(state.lang === "zh" ? `第 ${d.tier} ${t("tier")}` : `${t("tier")} ${d.tier}`);
      break;
    case "on_scene_breach":
      if (typeof d.elapsed_s === "number") parts.push(mmss(d.elapsed_s * 1000));
      if (typeof d.target_s === "number") parts.push(`${t("target")} ${mmss(d.target_s * 1000)}`);
      break;
    case "resolved":
      if (d.cause) parts.push(t("cause." + d.cause));
      if (d.note) parts.push(String(d.note));
      break;
    case "external_ref":
      parts.push([d.system, d.ref].filter(Boolean).join(" "));
      break;
    default:
      if (d.note) parts.push(String(d.note));
  }
  return parts.filter(Boolean).join(" · ");
}

const METRIC_NAMES = {
  zh: { alarm: "报警", obscuration: "烟雾浓度", celsius: "温度", pressure_mpa: "压力", battery: "电量",
        present: "在位", obstructed: "遮挡", tamper: "防拆", presence: "在线状态", last_seen: "最后上报", raised: "报警" },
  en: { alarm: "alarm", obscuration: "obscuration", celsius: "temperature", pressure_mpa: "pressure", battery: "battery",
        present: "present", obstructed: "obstructed", tamper: "tamper", presence: "presence", last_seen: "last seen",
        raised: "raised" },
};
const VALUE_NAMES = { zh: { true: "是", false: "否" }, en: { true: "yes", false: "no" } };

// One evidence sample in the page's language: a metric by its name; a rule (a confirmed fire's evidence is the
// alerts that made it) by the name its alert's localized reason starts with.
function evidenceText(e, alerts) {
  let what = (METRIC_NAMES[state.lang] || {})[e.metric];
  let value = typeof e.value === "boolean" ? VALUE_NAMES[state.lang][e.value] : e.value ?? "";
  if (!what) {
    const a = alerts.find((x) => x.rule === e.metric && x.reason_i18n);
    what = a ? reasonText(a).split(/[：:]/)[0] : e.metric;
    if (a && typeof e.value === "boolean") value = ""; // "smoke detector in alarm", not "... yes"
  }
  return `${what} ${value}`.trim();
}

function reasonText(a) {
  const localized = a.reason_i18n && a.reason_i18n[state.lang];
  return localized || a.reason || a.rule;
}

// --- clocks: one interval for every ticking number on the page ----------------------------------------------------

function tickClocks() {
  const now = Date.now();
  for (const node of document.querySelectorAll(".inc-elapsed")) {
    const since = Number(node.dataset.since);
    if (!since) continue;
    const until = Number(node.dataset.until) || now;
    node.textContent = `${t("elapsed")} ${mmss(until - since)}`;
    node.dataset.elapsedS = String(Math.max(0, Math.floor((until - since) / 1000)));
  }
  for (const node of document.querySelectorAll(".inc-clock")) {
    const since = Number(node.dataset.since);
    const target = Number(node.dataset.target) || 180000;
    if (!since) {
      node.textContent = `${t("target")} ${mmss(target)}`;
      continue;
    }
    const arrived = Number(node.dataset.until);
    const spent = (arrived || now) - since;
    const over = spent > target;
    node.classList.toggle("over", over);
    node.classList.toggle("arrived", Boolean(arrived));
    node.dataset.overdue = String(over);
    const label = arrived ? t("on_scene_in") : over ? t("overdue") : "";
    node.textContent = `${label ? label + " " : ""}${mmss(spent)} / ${t("target")} ${mmss(target)}`;
  }
}

// --- stations ----------------------------------------------------------------------------------------------------

function renderStations() {
  const list = $("stations");
  if (!list || !state.me) return;
  list.replaceChildren();
  const stations = state.stations || [];
  if (!stations.length) {
    list.append(el("li", "empty", t("stations.none")));
    return;
  }
  for (const s of stations) {
    const li = el("li", "station" + (s.committed_to ? " committed" : ""));
    li.dataset.station = s.id;
    li.dataset.committed = String(Boolean(s.committed_to));
    const head = el("div", "station-head");
    head.append(el("span", "station-name", s.name || s.id));
    const badge = el("span", "station-badge", s.committed_to ? `${t("station.committed")} #${s.committed_to}` : t("station.free"));
    head.append(badge);
    li.append(head);
    const members = el("div", "station-members");
    const roster = Array.isArray(s.members) ? s.members : (s.on_duty || []).map((name) => ({ name, on_duty: true }));
    for (const mbr of roster) {
      const chip = el("span", "member " + (mbr.on_duty ? "on" : "off"), mbr.name);
      chip.title = t(mbr.on_duty ? "station.on_duty" : "station.off_duty");
      chip.dataset.onDuty = String(Boolean(mbr.on_duty));
      members.append(chip);
    }
    li.append(members);
    const meta = [];
    if (s.on_scene_target_s) meta.push(`${t("station.target")} ${mmss(s.on_scene_target_s * 1000)}`);
    for (const e of s.equipment || []) meta.push(`${e.name} ×${e.count}`);
    if (meta.length) li.append(el("div", "station-meta muted", meta.join(" · ")));
    list.append(li);
  }
}

// --- district map: inline SVG from lat/lon, no tiles ---------------------------------------------------------------

function renderMap() {
  const svg = $("map");
  if (!svg || !state.me) return;
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  };
  svg.replaceChildren();
  const worst = worstByBuilding();
  const placedBuildings = state.buildings.filter((b) => validPoint(b.location));
  const placedStations = (state.stations || []).filter((s) => validPoint(s.location));
  const unplaced = state.buildings.filter((b) => !validPoint(b.location)).map((b) => b.name);
  const points = [...placedBuildings.map((b) => b.location), ...placedStations.map((s) => s.location)];
  $("map-note").textContent = !points.length
    ? t("map.none")
    : unplaced.length
      ? t("map.unplaced") + unplaced.join(state.lang === "zh" ? "、" : ", ")
      : "";
  svg.toggleAttribute("hidden", !points.length); // nothing to draw: the note says why (SVG has no .hidden)
  if (!points.length) return;
  // Equirectangular around the district's middle latitude: at a district's scale (a few km) the error is nil.
  const W = 600, H = 360, pad = 40;
  const lat0 = points.reduce((s, p) => s + p.lat, 0) / points.length;
  const kx = Math.cos((lat0 * Math.PI) / 180);
  const xs = points.map((p) => p.lon * kx), ys = points.map((p) => p.lat);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const span = Math.max(x1 - x0, y1 - y0, 1e-4);
  const scale = Math.min((W - 2 * pad) / span, (H - 2 * pad) / span);
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const at = (p) => [W / 2 + (p.lon * kx - cx) * scale, H / 2 - (p.lat - cy) * scale];
  // a scale bar, so distances read without tiles (1 degree of latitude is about 111 km)
  const metres = niceMetres((W / 4 / scale) * 111_000);
  const barPx = (metres / 111_000) * scale;
  svg.append(node("line", { x1: 12, y1: H - 14, x2: 12 + barPx, y2: H - 14, class: "map-scale" }));
  svg.append(node("text", { x: 12, y: H - 20, class: "map-scale-label" }, metres >= 1000 ? `${metres / 1000} km` : `${metres} m`));
  // each station's 15-minute rescue circle (what it reaches in 15 minutes at dispatch.travel_speed_kmh), under
  // everything else; at a community's scale it often reaches past the map's edge, which is the point: covered
  const circles = [];
  for (const s of placedStations) {
    const radius = s.rescue_radius_m ?? (s.travel_speed_kmh ? (s.travel_speed_kmh * 1000 * 15) / 60 : null);
    if (!radius) continue;
    const [x, y] = at(s.location);
    const c = node("circle", {
      cx: x, cy: y, r: (radius / 111_000) * scale, class: "map-rescue", "data-station": s.id, "data-radius-m": Math.round(radius),
    });
    const speed = s.travel_speed_kmh ? `, ${s.travel_speed_kmh} km/h` : "";
    c.append(node("title", {}, `${s.name} · ${t("map.rescue")} (${(radius / 1000).toFixed(2)} km${speed})`));
    circles.push(c);
  }
  if (circles.length) {
    svg.prepend(...circles);
    svg.append(node("text", { x: W - 12, y: H - 10, class: "map-rescue-legend", "text-anchor": "end" }, t("map.rescue.legend")));
  }
  // dispatched stations: a line to the building they are heading for
  for (const inc of state.incidents) {
    const f = incidentFacts(inc);
    if (!f.station || f.state === "resolved") continue;
    const s = placedStations.find((x) => x.id === f.station);
    const b = placedBuildings.find((x) => x.id === inc.building);
    if (!s || !b) continue;
    const [ax, ay] = at(s.location), [bx, by] = at(b.location);
    svg.append(node("line", { x1: ax, y1: ay, x2: bx, y2: by, class: "map-route" }));
  }
  const labels = [];
  for (const b of placedBuildings) {
    const [x, y] = at(b.location);
    const sev = worst[b.id] || (b.status && b.status.worst_severity) || "ok";
    const g = node("g", { class: `map-building m-${sev}`, "data-building": b.id, "data-severity": sev });
    g.append(node("title", {}, `${b.name} · ${t("sev." + sev)}`));
    g.append(node("circle", { cx: x, cy: y, r: sev === "ok" ? 7 : 10 }));
    // only buildings that need attention are named on the map (a district's names would cover each other); every
    // building's name is in its tooltip
    if (sev !== "ok") labels.push(node("text", { x: x + 13, y: y + 4, class: "map-label" }, b.name));
    svg.append(g);
  }
  for (const s of placedStations) {
    const [x, y] = at(s.location);
    const g = node("g", { class: "map-station" + (s.committed_to ? " committed" : ""), "data-station": s.id });
    g.append(node("title", {}, `${t("map.station")} ${s.name}`));
    g.append(node("rect", { x: x - 7, y: y - 7, width: 14, height: 14, rx: 2 }));
    labels.push(node("text", { x: x + 11, y: y - 8, class: "map-label" }, s.name));
    svg.append(g);
  }
  svg.append(...labels); // names over every marker, never under one
}

function validPoint(p) {
  return p && typeof p.lat === "number" && typeof p.lon === "number" && Number.isFinite(p.lat) && Number.isFinite(p.lon);
}

function niceMetres(m) {
  for (const step of [5000, 2000, 1000, 500, 200, 100, 50, 20, 10]) if (m >= step) return step;
  return 10;
}

// The worst severity among a building's open incidents and alerts (the buildings rollup may lag a live event).
function worstByBuilding() {
  const worst = {};
  const note = (building, sev) => {
    if ((SEV_RANK[sev] || 0) > (SEV_RANK[worst[building]] || 0)) worst[building] = sev;
  };
  for (const inc of state.incidents) if (inc.state !== "resolved") note(inc.building, inc.severity);
  for (const a of state.alerts) note(a.building, a.severity);
  return worst;
}
