// The figures strip: today and this month so far (incidents, median time to acknowledge, share on scene within
// target, false-alarm rate, devices online, extinguishers in service), from GET /api/v1/reports/strip.
//
// Standalone beside app.js: it reads the same token (sessionStorage, sent only in the Authorization header) and
// language (localStorage), shows itself while the dashboard is shown, and follows the live stream on its own
// connection: an alert or incident event refreshes it (coalesced), and it refreshes every minute regardless.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "firegrid.token";
  const LANG_KEY = "firegrid.lang";
  const REFRESH_MS = 60_000;
  const COALESCE_MS = 1_500;

  const TEXT = {
    zh: {
      today: "今日", month: "本月", incidents: "警情", ack: "确认中位数", scene: "目标内到场",
      falseRate: "误报率", online: "设备在线", extinguishers: "灭火器完好", perHundred: "/百台·月", s: "秒",
      report: "月报",
    },
    en: {
      today: "Today", month: "This month", incidents: "Incidents", ack: "Median ack", scene: "On scene in target",
      falseRate: "False alarms", online: "Devices online", extinguishers: "Extinguishers OK", perHundred: "/100·mo",
      s: "s", report: "Report",
    },
  };

  const strip = document.getElementById("figures-strip");
  const app = document.getElementById("app");
  if (!strip || !app) return;

  let data = null;
  let timer = null;
  let pending = null;
  let stream = null;

  const lang = () => (localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh");
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const txt = (key) => TEXT[lang()][key];
  const pct = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(1)}%`);
  const secs = (v) => (v === null || v === undefined ? "—" : `${Math.round(v)}${txt("s")}`);
  const rate = (v) => (v === null || v === undefined ? "—" : `${v.toFixed(1)}${txt("perHundred")}`);

  function cell(label, value, key) {
    const node = document.createElement("div");
    node.className = "fig";
    node.dataset.figure = key;
    const l = document.createElement("span");
    l.className = "fig-label";
    l.textContent = label;
    const v = document.createElement("span");
    v.className = "fig-value";
    v.textContent = value;
    node.append(l, v);
    return node;
  }

  function row(name, f) {
    const line = document.createElement("div");
    line.className = "fig-row";
    line.dataset.period = name;
    const head = document.createElement("span");
    head.className = "fig-period";
    head.textContent = txt(name);
    line.append(
      head,
      cell(txt("incidents"), String(f.incidents), "incidents"),
      cell(txt("ack"), secs(f.ack_median_s), "ack"),
      cell(txt("scene"), f.on_scene_counted ? pct(f.on_scene_within_target) : "—", "scene"),
      cell(txt("falseRate"), rate(f.false_alarm_rate), "false"),
      cell(txt("extinguishers"), pct(f.extinguishers_in_service), "extinguishers"),
    );
    return line;
  }

  function render() {
    if (!data) return;
    const online = cell(txt("online"), `${data.devices_online}/${data.devices_total}`, "online");
    online.classList.add("fig-now");
    const link = document.createElement("a");
    const month = new Date(data.month.from_ms + 12 * 3600_000).toISOString().slice(0, 7);
    link.className = "fig-report";
    link.textContent = txt("report");
    link.title = `${API}/reports/monthly?month=${month}`;
    link.href = "#";
    link.addEventListener("click", (event) => {
      event.preventDefault();
      download(month);
    });
    strip.replaceChildren(row("today", data.today), row("month", data.month), online, link);
  }

  // The monthly report as a file: fetched with the token in its header (never in a URL), then saved.
  async function download(month) {
    const res = await fetch(`${API}/reports/monthly?month=${month}&format=pdf&lang=${lang()}`, {
      headers: { Authorization: `Bearer ${token()}` }, credentials: "omit", cache: "no-store",
    });
    if (!res.ok) return;
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `firegrid-${month}.pdf`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  async function refresh() {
    pending = null;
    if (!token() || app.hidden) return;
    try {
      const res = await fetch(`${API}/reports/strip`, {
        headers: { Authorization: `Bearer ${token()}` }, credentials: "omit", cache: "no-store",
      });
      if (!res.ok) return;
      data = await res.json();
      strip.hidden = false;
      strip.dataset.updated = String(Date.now());
      render();
    } catch (_err) {
      // the next event or the next minute tries again
    }
  }

  function soon() {
    if (pending === null) pending = setTimeout(refresh, COALESCE_MS);
  }

  async function follow(signal) {
    let backoff = 1000;
    while (!signal.aborted) {
      try {
        const res = await fetch(`${API}/stream`, {
          headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
          signal, cache: "no-store", credentials: "omit",
        });
        if (!res.ok || !res.body) throw new Error(String(res.status));
        backoff = 1000;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          const frames = buffer.split(/\r?\n\r?\n/);
          buffer = frames.pop();
          for (const frame of frames) {
            if (/^event: ?(alert|incident|reset)\s*$/m.test(frame)) soon();
          }
        }
      } catch (_err) {
        if (signal.aborted) return;
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 30_000);
    }
  }

  function start() {
    refresh();
    if (timer === null) timer = setInterval(refresh, REFRESH_MS);
    if (stream === null) {
      stream = new AbortController();
      follow(stream.signal);
    }
  }

  function stop() {
    strip.hidden = true;
    if (timer !== null) clearInterval(timer);
    timer = null;
    if (stream !== null) stream.abort();
    stream = null;
  }

  // Shown with the dashboard (app.js unhides #app once the token is accepted, hides it on logout).
  new MutationObserver(() => (app.hidden ? stop() : start())).observe(app, { attributes: true, attributeFilter: ["hidden"] });
  const langButton = document.getElementById("lang");
  // After app.js has stored the new language (its listener may run after this one).
  if (langButton) langButton.addEventListener("click", () => setTimeout(render, 0));
  if (!app.hidden) start();
})();
