// firegrid dashboard: inspection compliance per grid this month and the open hazards with their deadlines.
// Separate from app.js on purpose: it only reads the API (same token, same language switch) and renders its own
// panel, so the incident cards can change without touching it.  Data goes into the page as text, never as HTML.
// Live: app.js hands on every event of the dashboard's one stream ("firegrid:live"); a hazard or inspection event
// (or a reconnect, or a reset) reloads the panel at once, and a slow poll is only the safety net under the stream.
"use strict";

(() => {
  const API = "/api/v1";
  const I18N = {
    zh: {
      title: "码上安全 · 巡查与隐患", compliance: "本月巡查完成率", grid: "网格", points: "巡查点",
      inspected: "已巡查", overdue: "逾期", hazards: "未闭环隐患", deadline: "整改期限", none: "没有未闭环的隐患",
      assignee: "责任人", mean: "平均整改用时", hours: "小时", overdueMark: "已逾期",
      state: { reported: "待分派", assigned: "已分派", rectifying: "整改中", rectified: "待核查", verified: "已核查" },
    },
    en: {
      title: "Inspections and hazards", compliance: "Inspection compliance this month", grid: "Grid",
      points: "Points", inspected: "Inspected", overdue: "Overdue", hazards: "Open hazards", deadline: "Deadline",
      none: "No open hazards", assignee: "Assigned to", mean: "Mean time to rectify", hours: "h",
      overdueMark: "overdue",
      state: { reported: "reported", assigned: "assigned", rectifying: "rectifying", rectified: "to verify",
               verified: "verified" },
    },
  };
  const lang = () => (localStorage.getItem("firegrid.lang") === "en" ? "en" : "zh");
  const t = (key) => I18N[lang()][key];
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };

  async function get(path) {
    const token = sessionStorage.getItem("firegrid.token");
    if (!token) return null;
    const response = await fetch(API + path, { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) return null;
    return response.json();
  }

  function when(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function render(panel, compliance, hazards) {
    panel.replaceChildren();
    panel.append(el("h2", t("title")));
    const table = el("table", null, "inspections-table");
    table.id = "inspection-compliance";
    table.style.borderSpacing = "14px 2px";
    table.style.marginLeft = "-14px";
    const head = el("tr");
    for (const key of ["grid", "points", "inspected", "overdue", "compliance"]) head.append(el("th", t(key)));
    table.append(head);
    for (const g of compliance ? compliance.grids : []) {
      const row = el("tr");
      row.dataset.grid = g.grid;
      row.append(el("td", g.grid), el("td", g.points), el("td", g.inspected), el("td", g.overdue),
        el("td", `${Math.round(g.rate * 100)}%`));
      table.append(row);
    }
    panel.append(table);
    if (compliance && compliance.mean_hours_to_rectify !== null) {
      panel.append(el("p", `${t("mean")}: ${compliance.mean_hours_to_rectify} ${t("hours")}`, "muted"));
    }
    const title = el("h3", `${t("hazards")} (${hazards ? hazards.items.length : 0})`);
    panel.append(title);
    const list = el("ul", null, "hazard-list");
    list.id = "open-hazards";
    const items = hazards ? hazards.items : [];
    if (!items.length) list.append(el("li", t("none"), "muted"));
    for (const h of items) {
      const li = el("li");
      li.dataset.hazard = String(h.id);
      const state = t("state")[h.state] || h.state;
      li.append(el("strong", `#${h.id} ${h.building_name}`), el("span", ` ${h.description} · ${state}`));
      if (h.assignee) li.append(el("span", ` · ${t("assignee")}: ${h.assignee}`));
      if (h.deadline_ms) {
        const due = el("span", ` · ${t("deadline")}: ${when(h.deadline_ms)}`);
        if (h.overdue) {
          due.textContent += ` (${t("overdueMark")})`;
          due.style.color = "#c62828";
          due.style.fontWeight = "600";
        }
        li.append(due);
      }
      list.append(li);
    }
    panel.append(list);
  }

  async function refresh() {
    const panel = document.getElementById("inspections");
    const app = document.getElementById("app");
    if (!panel || (app && app.hidden)) return;
    try {
      const [compliance, hazards] = await Promise.all([
        get("/inspections/compliance"), get("/hazards?open=true&limit=50"),
      ]);
      render(panel, compliance, hazards);
    } catch (err) {
      // the next round tries again; the rest of the dashboard does not depend on this panel
    }
  }

  function start() {
    const panel = document.getElementById("inspections");
    if (!panel) return;
    panel.style.gridColumn = "1 / -1";
    const lang = document.getElementById("lang");
    if (lang) lang.addEventListener("click", () => setTimeout(refresh, 0));
    const app = document.getElementById("app");
    if (app) new MutationObserver(refresh).observe(app, { attributes: true, attributeFilter: ["hidden"] });
    let pending = null;
    document.addEventListener("firegrid:live", (ev) => {
      const type = ev.detail && ev.detail.type;
      if (!["hazard", "inspection", "connected", "reset"].includes(type)) return;
      if (pending === null) pending = setTimeout(() => { pending = null; refresh(); }, 150); // a burst: one reload
    });
    refresh();
    setInterval(refresh, 30000); // safety net under the live stream
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
