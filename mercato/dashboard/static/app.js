// The merchant dashboard. Its state lives in the query string (bookmarkable, shareable); the
// merchant comes only from the token, so the page has no merchant parameter at all.
import {
  ApiError, OTHER_COLOUR, PALETTE, api, downloadCsv, el, format, formatChange,
  isMerchantToken, localTime, pool, requireToken, showError, signOut,
} from "./common.js";
import { sparkline, timeChart } from "./chart.js";

const DEFAULTS = { range: "7d", from: "", to: "", g: "", tz: "", cmp: "0", by: "", view: "stacked", top: "5" };
const RANGES = ["today", "yesterday", "7d", "30d", "90d", "this_month", "last_month", "custom"];
const GRANULARITIES = ["15m", "hour", "day", "week", "month"];
const ADDITIVE = new Set(["count", "sum"]);

const $ = (id) => document.getElementById(id);
const controls = {
  range: $("range"), from: $("from"), to: $("to"), g: $("granularity"), tz: $("tz"),
  cmp: $("compare"), by: $("breakdown"), view: $("view"), top: $("top"),
};

let catalogue = null;
let state = readState();
let generation = 0;
const charts = new Map(); // metric name -> {section, chart}

// -- state and the URL ---------------------------------------------------------------------

function readState() {
  const query = new URLSearchParams(location.search);
  const read = {};
  for (const [key, fallback] of Object.entries(DEFAULTS)) read[key] = query.get(key) ?? fallback;
  if (!RANGES.includes(read.range)) read.range = DEFAULTS.range;
  if (read.g && !GRANULARITIES.includes(read.g)) read.g = "";
  if (!["stacked", "lines"].includes(read.view)) read.view = DEFAULTS.view;
  if (!/^\d+$/.test(read.top)) read.top = DEFAULTS.top;
  for (const key of ["from", "to"]) if (!/^\d{4}-\d{2}-\d{2}$/.test(read[key])) read[key] = "";
  return read;
}

function writeState() {
  const query = new URLSearchParams();
  for (const [key, fallback] of Object.entries(DEFAULTS)) {
    if ((key === "from" || key === "to") && state.range !== "custom") continue;
    if (state[key] !== fallback) query.set(key, state[key]);
  }
  const search = query.toString();
  history.pushState(null, "", search ? `/app?${search}` : "/app");
}

function syncControls() {
  controls.range.value = state.range;
  controls.from.value = state.from;
  controls.to.value = state.to;
  controls.g.value = state.g;
  controls.tz.value = state.tz;
  controls.cmp.checked = state.cmp === "1";
  controls.by.value = state.by;
  controls.view.value = state.view;
  controls.top.value = state.top;
  $("custom").hidden = state.range !== "custom";
}

function readControls() {
  state = {
    range: controls.range.value,
    from: controls.from.value,
    to: controls.to.value,
    g: controls.g.value,
    tz: controls.tz.value,
    cmp: controls.cmp.checked ? "1" : "0",
    by: controls.by.value,
    view: controls.view.value,
    top: controls.top.value,
  };
  if (state.range === "custom" && !(state.from && state.to)) {
    // start a custom range from what the preset showed
    const zone = state.tz || catalogue.tz;
    const shown = presetDays("30d", zone);
    state.from ||= shown.from;
    state.to ||= addDays(shown.to, -1);
  }
}

// -- dates in the chosen zone (the API takes dates as local midnights in tz) ---------------

function partsIn(zone, date = new Date()) {
  const format = new Intl.DateTimeFormat("en-CA", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
  const parts = Object.fromEntries(format.formatToParts(date).map((p) => [p.type, p.value]));
  return { day: `${parts.year}-${parts.month}-${parts.day}`, minute: Number(parts.minute) };
}

function addDays(day, n) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
}

function monthStart(day, shift = 0) {
  const [y, m] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1 + shift, 1)).toISOString().slice(0, 10);
}

function weekday(day) {
  return (new Date(`${day}T00:00:00Z`).getUTCDay() + 6) % 7; // Monday = 0
}

// [from, to) as local dates; `to` is exclusive.
function presetDays(range, zone) {
  const today = partsIn(zone).day;
  const tomorrow = addDays(today, 1);
  switch (range) {
    case "today": return { from: today, to: tomorrow };
    case "yesterday": return { from: addDays(today, -1), to: today };
    case "30d": return { from: addDays(today, -29), to: tomorrow };
    case "90d": return { from: addDays(today, -89), to: tomorrow };
    case "this_month": return { from: monthStart(today), to: tomorrow };
    case "last_month": return { from: monthStart(today, -1), to: monthStart(today) };
    case "custom":
      if (state.from && state.to && state.from <= state.to) return { from: state.from, to: addDays(state.to, 1) };
      return { ...presetDays("30d", zone), problem: "From is after To: showing the last 30 days." };
    default: return { from: addDays(today, -6), to: tomorrow };
  }
}

function autoGranularity(range, days) {
  if (range === "today" || range === "yesterday") return "hour";
  if (days <= 120) return "day";
  return days <= 730 ? "week" : "month";
}

// The range the page asks for: whole periods of the granularity, and none after the current
// one (so totals equal the sum of the periods, and no empty future is drawn).
function chosenRange(zone) {
  const days = presetDays(state.range, zone);
  const span = Math.round((Date.parse(days.to) - Date.parse(days.from)) / 86_400_000);
  const granularity = state.g || autoGranularity(state.range, span);
  let { from, to, problem } = days;
  const now = Date.now();
  const today = partsIn(zone).day;
  if (granularity === "week") {
    from = addDays(from, -weekday(from));
    if (weekday(to) !== 0) to = addDays(to, 7 - weekday(to));
  } else if (granularity === "month") {
    from = monthStart(from);
    if (!to.endsWith("-01")) to = monthStart(to, 1);
  } else if ((granularity === "15m" || granularity === "hour") && to > today) {
    const step = granularity === "15m" ? 15 : 60;
    const minute = partsIn(zone).minute;
    const end = Math.floor(now / 60_000) * 60_000 + (step - (minute % step)) * 60_000;
    to = new Date(end).toISOString().replace(".000", "");
  }
  return { from, to, granularity, problem };
}

// -- loading -------------------------------------------------------------------------------

async function render() {
  const mine = ++generation;
  const zone = state.tz || catalogue.tz;
  const { from, to, granularity, problem } = chosenRange(zone);
  const base = `from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}&tz=${encodeURIComponent(zone)}`;
  document.body.dataset.loading = "true";
  $("range-label").textContent = `${from} to ${to.length === 10 ? `${to} (exclusive)` : localTime(to)}, ` +
    `by ${granularity}, ${zone}${problem ? `. ${problem}` : ""}`;
  controls.g.querySelector('option[value=""]').textContent = `Automatic (${granularity})`;
  const names = catalogue.metrics.filter((m) => m.kind !== "percentile").map((m) => m.name);
  const totals = api(`/v1/overview?${base}&metrics=${names.join(",")}`);
  totals.catch(() => {});
  const tiles = api(`/v1/overview?${base}`).then((overview) => {
    if (mine !== generation) return;
    renderKpis(overview);
    renderComplete(overview);
    performance.mark("mercato:kpis");
    document.body.dataset.kpis = "ready";
  }, (error) => mine === generation && showError($("kpis"), error));
  const jobs = catalogue.metrics.map((metric) => () => renderChart(metric, base, granularity, totals, mine));
  await Promise.all([tiles, pool(jobs, 4)]);
  if (mine === generation) document.body.dataset.loading = "false";
}

function renderComplete(answer) {
  const node = $("complete");
  if (answer.complete_through) {
    const [day, time] = localTime(answer.complete_through).split(" ");
    node.textContent = `Complete through ${time} (${day}, ${answer.tz}); later periods are provisional and may still change.`;
  } else {
    node.textContent = "Nothing sealed yet: every period is provisional and may still change.";
  }
  node.dataset.completeThrough = answer.complete_through ?? "";
}

function title(name) {
  const text = name.replaceAll("_", " ");
  return text[0].toUpperCase() + text.slice(1);
}

function renderKpis(overview) {
  const tiles = overview.kpis.map((kpi) => {
    const tile = el("article", { class: "kpi", dataset: { metric: kpi.metric, value: JSON.stringify(kpi.value) } },
      el("h3", {}, title(kpi.metric)),
      el("p", { class: "value" }, format(kpi.value, kpi.unit)),
      el("p", { class: `change ${kpi.change > 0 ? "up" : kpi.change < 0 ? "down" : ""}`, dataset: { change: JSON.stringify(kpi.change) } },
        formatChange(kpi.change), el("span", { class: "muted" }, ` vs ${format(kpi.previous, kpi.unit)} before`)),
      kpi.provisional ? el("p", { class: "badge" }, "provisional") : null,
      el("div", { class: "spark" }));
    return tile;
  });
  $("kpis").replaceChildren(...tiles);
  for (const [name, entry] of charts) if (entry.spark) setSparkline(name, entry.spark);
}

function setSparkline(name, values) {
  const tile = document.querySelector(`.kpi[data-metric="${CSS.escape(name)}"] .spark`);
  if (tile) tile.replaceChildren(sparkline(values));
}

function chartSection(metric) {
  let entry = charts.get(metric.name);
  if (!entry) {
    const section = el("section", { class: "metric", id: `metric-${metric.name}`, dataset: { metric: metric.name }, "aria-labelledby": `h-${metric.name}` },
      el("header", {},
        el("h2", { id: `h-${metric.name}` }, title(metric.name)),
        el("p", { class: "muted" }, metric.description || "", metric.unit === "money" ? " (amounts in major units)" : "")),
      el("p", { class: "note" }),
      el("div", { class: "chart" }),
      el("div", { class: "table" }));
    $("charts").append(section);
    entry = { section, chart: null, spark: null };
    charts.set(metric.name, entry);
  }
  return entry;
}

function periodLabel(iso, granularity) {
  if (granularity === "month") return iso.slice(0, 7);
  if (granularity === "week") return `week of ${iso.slice(0, 10)}`;
  if (granularity === "day") return iso.slice(0, 10);
  return localTime(iso);
}

// Lines of an answer: one per member (or per quantile for percentiles). A member keeps its
// colour in the compared period (`colours` maps members to colours across both answers).
function linesOf(answer, metric, dashed, colours) {
  const colour = (key) => {
    if (key === "other") return OTHER_COLOUR;
    if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length]);
    return colours.get(key);
  };
  const lines = [];
  for (const series of answer.series) {
    const member = series.member ?? "total";
    if (metric.kind === "percentile") {
      for (const key of Object.keys(series.values[0] ?? {})) {
        lines.push({
          label: dashed ? `${key}, previous` : key, key: member, dash: dashed, colour: colour(key),
          values: series.values.map((v) => v?.[key] ?? null),
        });
      }
    } else {
      lines.push({
        label: dashed ? (series.member === null ? "previous period" : `${member}, previous`) : member,
        key: member, values: series.values, dash: dashed, colour: colour(member),
      });
    }
  }
  return lines;
}

async function renderChart(metric, base, granularity, totals, mine) {
  const entry = chartSection(metric);
  const { section } = entry;
  const dimension = state.by && metric.dimensions.includes(state.by) ? state.by : null;
  let path = `/v1/metrics/${metric.name}?${base}&granularity=${granularity}`;
  if (dimension) path += `&group_by=${encodeURIComponent(dimension)}&top=${state.top}`;
  if (state.cmp === "1") path += "&compare=previous_period";
  const notes = [];
  if (state.by && !dimension) notes.push(`No breakdown by ${state.by} for this metric: showing the total.`);
  const stacked = Boolean(dimension) && state.view === "stacked" && ADDITIVE.has(metric.kind);
  if (dimension && state.view === "stacked" && !stacked) notes.push("Its values do not add up across members: shown as lines.");
  section.querySelector(".note").textContent = notes.join(" ");
  section.dataset.src = path;
  section.dataset.state = "loading";
  let answer;
  try {
    answer = await api(path);
  } catch (error) {
    if (mine !== generation) return;
    entry.chart?.destroy();
    entry.chart = null;
    showError(section.querySelector(".chart"), error);
    section.querySelector(".table").replaceChildren();
    section.dataset.state = "error";
    return;
  }
  if (mine !== generation) return;
  if (answer.invalid) {
    const n = answer.invalid.toLocaleString("en-US");
    notes.push(`${n} event${answer.invalid === 1 ? "" : "s"} in this range had a value this metric could not use and ${answer.invalid === 1 ? "is" : "are"} left out of it.`);
    section.querySelector(".note").textContent = notes.join(" ");
  }
  const xs = answer.periods.map((p) => Date.parse(p) / 1000);
  const colours = new Map();
  const lines = linesOf(answer, metric, false, colours);
  const previous = answer.compare ? linesOf(answer.compare, metric, true, colours) : [];
  for (const line of previous) line.values = xs.map((_, i) => line.values[i] ?? null);
  const flags = answer.series[0]?.provisional ?? xs.map(() => true);
  const firstProvisional = flags.indexOf(true);
  const labels = answer.periods.map((p) => periodLabel(p, granularity));
  entry.chart?.destroy();
  entry.chart = timeChart(section.querySelector(".chart"), {
    xs, lines: [...lines, ...previous], stacked, tz: answer.tz, unit: metric.unit, labels,
    provisionalFrom: firstProvisional < 0 ? null : xs[firstProvisional],
  });
  if (metric.kind !== "percentile") {
    entry.spark = ADDITIVE.has(metric.kind) || !dimension
      ? xs.map((_, i) => lines.reduce((sum, line) => sum + (line.values[i] ?? 0), 0))
      : null;
    if (entry.spark && (ADDITIVE.has(metric.kind) || lines.length === 1)) setSparkline(metric.name, entry.spark);
  }
  let exact = null;
  try {
    exact = (await totals).kpis.find((k) => k.metric === metric.name) ?? null;
  } catch {
    exact = null;
  }
  if (mine !== generation) return;
  renderTable(section, metric, answer, { lines, previous, labels, flags, exact, granularity, dimension });
  section.dataset.state = "ready";
}

function total(metric, line, exact, isPrevious) {
  if (ADDITIVE.has(metric.kind)) return line.values.reduce((sum, v) => sum + (v ?? 0), 0);
  if (metric.kind === "min" || metric.kind === "max") {
    const values = line.values.filter((v) => v !== null);
    if (!values.length) return null;
    return metric.kind === "min" ? Math.min(...values) : Math.max(...values);
  }
  if (exact && line.key === "total") return isPrevious ? exact.previous : exact.value;
  return undefined; // not derivable from the periods shown
}

function renderTable(section, metric, answer, { lines, previous, labels, flags, exact, dimension }) {
  const columns = [...lines, ...previous];
  const head = el("tr", {}, el("th", { scope: "col" }, "Period"),
    columns.map((line) => el("th", { scope: "col", class: "num" }, line.label)),
    el("th", { scope: "col" }, "Status"));
  const body = labels.map((label, i) => el("tr", { class: flags[i] ? "provisional" : "" },
    el("th", { scope: "row" }, label),
    columns.map((line) => el("td", { class: "num", dataset: { value: JSON.stringify(line.values[i] ?? null) } },
      format(line.values[i], metric.unit))),
    el("td", {}, flags[i] ? "provisional" : "final")));
  const totalsRow = metric.kind === "percentile" ? null : el("tr", { class: "totals" },
    el("th", { scope: "row" }, "Total"),
    columns.map((line) => {
      const value = total(metric, line, exact, line.dash);
      return value === undefined
        ? el("td", { class: "num", title: "a total of this metric is not the sum of its periods" }, "—")
        : el("td", { class: "num", dataset: { value: JSON.stringify(value) } }, format(value, metric.unit));
    }),
    el("td"));
  const table = el("table", {},
    el("caption", {}, `${title(metric.name)} by ${answer.granularity}${dimension ? `, top members of ${dimension}` : ""}`),
    el("thead", {}, head), el("tbody", {}, body), totalsRow ? el("tfoot", {}, totalsRow) : null);
  const csv = () => downloadCsv(`${metric.name}_${answer.from.slice(0, 10)}_${answer.granularity}.csv`, [
    ["period_start", ...columns.map((l) => l.label), "status"],
    ...answer.periods.map((p, i) => [p, ...columns.map((l) => l.values[i] ?? ""), flags[i] ? "provisional" : "final"]),
  ]);
  section.querySelector(".table").replaceChildren(
    el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": `${title(metric.name)} table` }, table),
    el("button", { type: "button", class: "csv", onclick: csv }, "Download CSV"));
}

// -- start ---------------------------------------------------------------------------------

function fatal(message, link) {
  $("charts").replaceChildren();
  $("kpis").replaceChildren();
  $("fatal").replaceChildren(el("p", { role: "alert" }, message, " ", link ?? el("a", { href: "/" }, "Sign in again")));
  $("fatal").hidden = false;
  document.body.dataset.loading = "false";
}

async function start() {
  const bearer = requireToken();
  if (!bearer) return;
  $("sign-out").addEventListener("click", signOut);
  if (!isMerchantToken(bearer)) {
    fatal("This page shows a merchant's analytics and needs a merchant token (mt_…).",
      el("a", { href: "/console" }, "Open the operator console"));
    return;
  }
  try {
    catalogue = await api("/v1/metrics");
  } catch (error) {
    fatal(error instanceof ApiError && error.status === 401 ? `Your token was refused: ${error.message}.` : error.message);
    return;
  }
  const dimensions = [...new Set(catalogue.metrics.flatMap((m) => m.dimensions))].sort();
  controls.by.append(...dimensions.map((d) => el("option", { value: d }, d.replaceAll("_", " "))));
  controls.tz.querySelector('option[value=""]').textContent = `The shop's (${catalogue.tz})`;
  if (state.by && !dimensions.includes(state.by)) state.by = "";
  syncControls();
  $("controls").addEventListener("change", () => {
    readControls();
    writeState();
    syncControls();
    render();
  });
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  window.addEventListener("popstate", () => {
    state = readState();
    syncControls();
    render();
  });
  render();
}

start();
