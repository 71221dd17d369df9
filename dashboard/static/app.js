// spendstream dashboard: plain JS over the API (/api/openapi.json). Money arrives as exact
// decimal strings and is shown as given; numbers are parsed only to size bars and lines.
"use strict";

const REFRESH_MS = 3000;
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037",
                "#ad1457", "#455a64", "#9e9d24"];
let token = sessionStorage.getItem("spendstream-token") || "";
let writable = false;
let busy = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c === null || c === undefined ? "" : c);
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
const usd = (v) => (v === null || v === undefined ? "—" : "$" + v);
const when = (t) => (t ? t.replace("T", " ").replace("Z", " UTC") : "—");

async function get(path) {
  const r = await fetch(path, {cache: "no-store"});
  const body = await r.json();
  if (!r.ok) throw new Error(path + ": " + (body.error || r.status));
  return body;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}
function empty(cols, text) {
  return el("tr", {}, el("td", {colspan: cols, class: "muted"}, text));
}

function budgetBar(f) {
  // The period's spend against the budget, with the warn / cutoff / alert lines.
  const w = 220, h = 16;
  const s = svg("svg", {width: w, height: h, role: "img"});
  if (f.budget_usd === null) return el("span", {class: "muted"}, "no budget");
  const budget = parseFloat(f.budget_usd), alert = parseFloat(f.lines.alert);
  const top = Math.max(alert * 1.1, parseFloat(f.spent_usd), budget) || 1;
  const x = (v) => Math.min(w, (parseFloat(v) / top) * w);
  const ratio = parseFloat(f.spent_usd) / (budget || 1);
  const fill = ratio >= parseFloat(f.lines.alert) / budget ? "#6a1b9a"
    : ratio >= parseFloat(f.lines.cutoff) / budget ? "#c62828"
    : ratio >= parseFloat(f.lines.warn) / budget ? "#f9a825" : "#66bb6a";
  s.append(svg("rect", {x: 0, y: 2, width: w, height: h - 4, fill: "#eee"}));
  s.append(svg("rect", {x: 0, y: 2, width: x(f.spent_usd), height: h - 4, fill}));
  if (f.prorated_usd !== null) {
    s.append(svg("line", {x1: x(f.prorated_usd), x2: x(f.prorated_usd), y1: 0, y2: h,
                          stroke: "#888", "stroke-dasharray": "2,2"}));
  }
  for (const [name, color] of [["warn", "#f9a825"], ["cutoff", "#c62828"], ["alert", "#6a1b9a"]]) {
    const line = svg("line", {x1: x(f.lines[name]), x2: x(f.lines[name]), y1: 0, y2: h,
                              stroke: color, "stroke-width": 2});
    const title = svg("title", {});
    title.textContent = name + " at $" + f.lines[name];
    line.append(title);
    s.append(line);
  }
  return s;
}

function switchButton(feature, state) {
  const disabled = state === "disabled" || state === "cut off";
  const action = disabled ? "enable" : "disable";
  return el("button", {"data-action": action, "data-feature": feature,
                       title: writable ? "" : "read-only: the dashboard has no token set",
                       onclick: () => toggle(feature, action)}, action);
}

function renderFeatures(body) {
  const rows = body.features.map((f) => el("tr", {"data-feature": f.feature},
    el("td", {}, f.feature),
    el("td", {}, f.period || "—"),
    el("td", {class: "num", "data-col": "spent"}, usd(f.spent_usd)),
    el("td", {class: "num", "data-col": "budget"}, usd(f.budget_usd)),
    el("td", {class: "num", "data-col": "percent"}, f.percent ? f.percent + "%" : "—"),
    el("td", {}, budgetBar(f)),
    el("td", {"data-col": "pace", class: f.status ? "status-" + f.status.replace(" ", "-") : ""},
       f.status ? f.status + (f.pace ? " (" + f.pace + "× pro-rated $" + f.prorated_usd + ")" : "")
         : "—"),
    el("td", {class: "num", "data-col": "today"}, usd(f.today_usd)),
    el("td", {class: "num", "data-col": "month"}, usd(f.month_usd)),
    el("td", {"data-col": "state", class: "state-" + f.state.replace(" ", "-"),
              title: f.state_reason || ""},
       f.state + (f.state_reason ? ": " + f.state_reason : "")),
    el("td", {}, switchButton(f.feature, f.state))));
  fill("features", rows.length ? rows : [empty(11, "no features in the budgets file")]);
}

function renderHourly(body) {
  const box = document.getElementById("hourly");
  const names = Object.keys(body.series);
  if (!names.length) { box.replaceChildren(el("p", {class: "muted"}, "no spend in the last 48 hours")); return; }
  const w = 1100, h = 220, left = 60, bottom = 20, n = body.hours.length;
  let max = 0;
  for (const s of Object.values(body.series)) for (const v of s) max = Math.max(max, parseFloat(v));
  max = max || 1;
  const x = (i) => left + (i + 0.5) * (w - left) / n;
  const y = (v) => (h - bottom) - (parseFloat(v) / max) * (h - bottom - 10);
  const chart = svg("svg", {width: "100%", viewBox: `0 0 ${w} ${h}`, role: "img"});
  chart.append(svg("line", {x1: left, x2: w, y1: h - bottom, y2: h - bottom, stroke: "#bbb"}));
  const top = svg("text", {x: 4, y: 14}); top.textContent = "$" + max.toPrecision(3);
  chart.append(top);
  for (let i = 0; i < n; i += 6) {
    const t = svg("text", {x: x(i) - 14, y: h - 4});
    t.textContent = body.hours[i].slice(5, 13).replace("T", " ") + "h";
    chart.append(t);
  }
  const legend = el("div", {class: "legend"});
  names.forEach((name, k) => {
    const color = COLORS[k % COLORS.length];
    const pts = body.series[name].map((v, i) => `${x(i)},${y(v)}`).join(" ");
    chart.append(svg("polyline", {points: pts, fill: "none", stroke: color, "stroke-width": 2}));
    const total = body.series[name].reduce((a, v) => a + parseFloat(v), 0);
    legend.append(el("span", {"data-series": name}, el("i", {style: "background:" + color}),
                     name + " ($" + total.toPrecision(4) + ")"));
  });
  box.replaceChildren(chart, legend);
}

const READ_ONLY = "read-only: the dashboard has no token set (SPENDSTREAM_DASHBOARD_TOKEN)";

function userButtons(user, cutOff, tokens, out) {
  // Grant (and, when cut off, unblock) one user from the page; disabled when read-only.
  const title = (what) => (writable ? what + " (needs the dashboard token above)" : READ_ONLY);
  const box = el("span", {class: "actions"},
    el("button", {"data-action": "grant", "data-user": user, disabled: writable ? null : "",
                  title: title("grant " + user + " extra budget for today"),
                  onclick: () => grantUser(user, tokens, out)}, "grant"));
  if (cutOff) {
    box.append(el("button", {"data-action": "unblock", "data-user": user,
                             disabled: writable ? null : "",
                             title: title("clear " + user + "'s cutoff: today's spend is granted"),
                             onclick: () => sendUser(user, "unblock", {}, out)}, "unblock"));
  }
  return box;
}

function budgetCell(u) {
  // Today's budget: the worker's, raised by grants (marked, the tier's in the tooltip).
  const text = [u.daily_budget_usd !== null && u.daily_budget_usd !== undefined
                  ? usd(u.daily_budget_usd) : null,
                u.daily_budget_tokens !== null && u.daily_budget_tokens !== undefined
                  ? u.daily_budget_tokens + " tokens" : null].filter((x) => x).join(" · ") || "—";
  const raised = (u.granted_usd && parseFloat(u.granted_usd) > 0) || u.granted_tokens > 0;
  const grants = [u.granted_usd && parseFloat(u.granted_usd) > 0 ? "$" + u.granted_usd : null,
                  u.granted_tokens > 0 ? u.granted_tokens + " tokens" : null]
    .filter((x) => x).join(" and ");
  return el("td", {class: "num" + (raised ? " granted" : ""), "data-col": "budget",
                   title: raised ? `tier ${u.tier}: ${usd(u.tier_budget_usd)}, ${grants} granted`
                     : null}, text);
}

function renderUsers(tableId, body, actions) {
  const rows = body.rows.map((u) => el("tr", {"data-user": u.key},
    el("td", {}, u.key),
    el("td", {class: u.cut_off ? "state-cut-off" : null, "data-col": "tier",
              title: u.cut_off ? "cut off now" : null}, u.tier),
    el("td", {class: "num"}, String(u.calls)),
    el("td", {class: "num", "data-col": "spent"}, usd(u.spend_usd)),
    budgetCell(u),
    el("td", {class: "num", "data-col": "left"},
       [u.left_today_usd !== null && u.left_today_usd !== undefined ? usd(u.left_today_usd) : null,
        u.left_today_tokens !== null && u.left_today_tokens !== undefined
          ? u.left_today_tokens + " tokens" : null].filter((x) => x).join(" · ") || "—"),
    actions ? el("td", {}, userButtons(u.key, u.cut_off,
                                       u.daily_budget_tokens !== null
                                       && u.daily_budget_tokens !== undefined, actions)) : null));
  fill(tableId, rows.length ? rows : [empty(actions ? 7 : 6, "no spend")]);
}

function renderFlags(body) {
  const rows = body.flags.map((f) => el("tr", {"data-flag": f.key, class: "level-" + f.kind},
    el("td", {}, f.kind === "cutoff" ? (f.unit === "switch" ? "disabled" : "cut off") : "warned"),
    el("td", {}, f.scope + " " + f.id), el("td", {}, f.reason || ""),
    el("td", {class: "num"}, f.unit === "usd" ? usd(f.spent) : (f.spent || "")),
    el("td", {class: "num"}, f.unit === "usd" ? usd(f.budget) : (f.budget || "")),
    el("td", {}, f.reset_at ? when(f.reset_at) : "when enabled"),
    el("td", {}, f.scope === "user"
      ? userButtons(f.id, f.kind === "cutoff", f.unit === "tokens", "flags-result") : "")));
  fill("flags", rows.length ? rows : [empty(7, "nobody is cut off or warned")]);
}

function renderAlerts(body) {
  const rows = body.alerts.map((a) => el("tr", {class: "level-" + a.level, "data-kind": a.kind},
    el("td", {}, when(a.at)), el("td", {}, a.level), el("td", {}, a.scope),
    el("td", {}, a.subject), el("td", {}, a.kind),
    el("td", {class: "num"}, a.unit === "usd" ? usd(a.spent) : a.spent + " " + a.unit),
    el("td", {class: "num"}, a.unit === "usd" ? usd(a.budget) : a.budget + " " + a.unit),
    el("td", {}, a.detail || (a.percent ? a.percent + "%" : ""))));
  fill("alerts", rows.length ? rows : [empty(8, body.error || "no alerts")]);
}

async function refresh() {
  if (busy) return;
  busy = true;
  const problems = [];
  const by = document.getElementById("hourly-by").value;
  try {  // first: whether the write controls are enabled
    writable = (await get("/api/status")).writable;
    document.getElementById("mode").textContent = writable
      ? "writes on (token needed): kill switch, grants"
      : "read-only (SPENDSTREAM_DASHBOARD_TOKEN not set)";
    document.getElementById("token").disabled = !writable;
  } catch (e) { problems.push(e.message); }
  const jobs = [
    ["/api/features", renderFeatures],
    ["/api/spend/hourly?by=" + by, renderHourly],
    ["/api/users/top?period=today", (b) => renderUsers("users-today", b, "users-result")],
    ["/api/users/top?period=month", (b) => renderUsers("users-month", b, null)],
    ["/api/flags", renderFlags],
    ["/api/alerts?limit=50", renderAlerts],
  ];
  await Promise.all(jobs.map(async ([path, render]) => {
    try { render(await get(path)); } catch (e) { problems.push(e.message); }
  }));
  const box = document.getElementById("problems");
  box.hidden = !problems.length;
  box.replaceChildren(...problems.map((p) => el("div", {}, p)));
  document.getElementById("updated").textContent = "updated " + new Date().toISOString()
    .slice(11, 19) + " UTC, every " + REFRESH_MS / 1000 + " s";
  busy = false;
}

async function post(path, body) {
  // A write action: the token as a bearer token; the answer's status and JSON body.
  const headers = {"Content-Type": "application/json"};
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, {method: "POST", headers, body: JSON.stringify(body)});
  return [r, await r.json()];
}

function say(outId, text, ok) {
  const out = document.getElementById(outId);
  out.textContent = text;
  out.className = ok ? "state-ok" : "state-disabled";
}

async function toggle(feature, action) {
  const body = action === "disable" ? {reason: "disabled from the dashboard"} : {};
  try {
    const [r, answer] = await post(`/api/features/${encodeURIComponent(feature)}/${action}`, body);
    say("switch-result", r.ok ? `${feature}: ${action}d`
      : `${feature}: refused (${r.status}): ${answer.error}`, r.ok);
  } catch (e) {
    say("switch-result", feature + ": " + e.message, false);
  }
  refresh();
}

function grantUser(user, tokens, out) {
  // Ask for the amount: dollars ("1.00"), or tokens ("20000 tokens") for a token budget.
  const asked = prompt(`Grant ${user} extra budget for today: USD` +
                       (tokens ? ', or tokens as "20000 tokens"' : ""), "1.00");
  if (asked === null) return;  // cancelled
  const text = asked.trim().replace(/^\$/, "");
  const many = /^(\d+)\s*tokens?$/i.exec(text);
  const body = many ? {tokens: parseInt(many[1], 10)} : {usd: text};
  sendUser(user, "grant", {...body, reason: "granted from the dashboard"}, out);
}

async function sendUser(user, action, body, out) {
  try {
    const [r, answer] = await post(`/api/users/${encodeURIComponent(user)}/${action}`, body);
    say(out, r.ok ? answer.message + (answer.warning ? ` (note: ${answer.warning})` : "")
      : `${user}: ${action} refused (${r.status}): ${answer.error}`, r.ok);
  } catch (e) {
    say(out, user + ": " + e.message, false);
  }
  refresh();
}

document.getElementById("token").value = token;
document.getElementById("token").addEventListener("input", (e) => {
  token = e.target.value.trim();
  sessionStorage.setItem("spendstream-token", token);
});
document.getElementById("hourly-by").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
