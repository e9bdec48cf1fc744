// The operator console: every call goes to /v1/admin/… with the admin token.
import {
  PALETTE, api, el, formatBytes, isMerchantToken, localTime, requireToken, showError, signOut,
} from "./common.js";
import { timeChart } from "./chart.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 5000;
let ingestChart = null;

const time = (iso) => (iso ? localTime(iso) : "—");
const ago = (iso, now) => {
  if (!iso) return "never";
  const seconds = Math.round((Date.parse(now) - Date.parse(iso)) / 1000);
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
};

function table(caption, headers, rows) {
  return el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption },
    el("table", {}, el("caption", {}, caption),
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
}

// -- pipeline: freshness and lag -------------------------------------------------------------

async function loadPipeline() {
  const data = await api("/v1/admin/pipeline");
  const f = data.freshness;
  const serving = data.consumers.find((c) => c.serving);
  const tiles = [
    ["Newest event in the log", ago(f.newest_event_at, data.now), f.newest_event_at],
    ["Not yet aggregated", !data.partitions.length ? "no log here" : serving
      ? `${serving.total_lag.toLocaleString("en-US")} events` : "no aggregator", null],
    ["Archived through", ago(f.archived_through, data.now), f.archived_through],
    ["Sealed (final) through", time(f.sealed_through), null],
    ["Drift, speed vs final", f.drift_ratio === null ? "not checked" : `${(f.drift_ratio * 100).toFixed(3)}%`, f.drift_checked_at],
    ["Serving version", data.serving_version ?? "none", null],
    ["Values metrics could not use, 24 h", invalidSummary(data.invalid_values), null],
  ];
  $("freshness").replaceChildren(...tiles.map(([label, value, at]) =>
    el("article", { class: "kpi" }, el("h3", {}, label), el("p", { class: "value small" }, value),
      at ? el("p", { class: "muted" }, time(at)) : null)));
  const headers = ["Consumer", ...data.partitions.map((p) => `p${p.partition}`), "Total lag"];
  const ends = el("tr", {}, el("th", { scope: "row" }, "log end offset"),
    data.partitions.map((p) => el("td", { class: "num" }, p.end_offset.toLocaleString("en-US"))), el("td"));
  const rows = data.consumers.map((c) => el("tr", { dataset: { consumer: c.consumer } },
    el("th", { scope: "row" }, c.consumer, c.serving ? " (serving)" : c.version ? ` (version ${c.version})` : ""),
    data.partitions.map((p) => el("td", { class: "num" }, (c.lag[p.partition] ?? 0).toLocaleString("en-US"))),
    el("td", { class: "num", dataset: { lag: c.total_lag } }, c.total_lag.toLocaleString("en-US"))));
  $("lag").replaceChildren(data.partitions.length
    ? table("Lag (events behind the log's end) per partition and consumer", headers, [ends, ...rows])
    : el("p", { class: "muted" }, "No log on this machine: the API cannot see the log's offsets."));
}

// Events a metric matched but could not use (say an amount of "100"): a count per metric.
function invalidSummary(counts) {
  const entries = Object.entries(counts ?? {}).filter(([, n]) => n > 0);
  if (!entries.length) return "none";
  return entries.sort((a, b) => b[1] - a[1])
    .map(([metric, n]) => `${metric}: ${n.toLocaleString("en-US")}`).join(", ");
}

// -- ingest ----------------------------------------------------------------------------------

async function loadIngest() {
  const data = await api("/v1/admin/ingest");
  const status = $("ingest-status");
  status.textContent = data.error
    ? data.error
    : `Collectors ${data.collector}; sampled every ${data.interval_seconds} s for the last hour, since this API started.`;
  const points = data.points;
  if (points.length < 2) {
    $("ingest").replaceChildren(el("p", { class: "muted" }, "Collecting samples…"));
    return;
  }
  const keys = [
    ["log_events_per_second", "events/s into the log"],
    ["accepted_per_second", "accepted/s"],
    ["rejected_per_second", "rejected events/s"],
    ["client_errors_per_second", "4xx requests/s"],
    ["server_errors_per_second", "5xx requests/s"],
  ];
  const lines = keys.map(([key, label], n) => ({ label, colour: PALETTE[n], values: points.map((p) => p[key]) }));
  ingestChart?.destroy();
  ingestChart = timeChart($("ingest"), {
    xs: points.map((p) => Date.parse(p.at) / 1000), lines, stacked: false, provisionalFrom: null,
    tz: Intl.DateTimeFormat().resolvedOptions().timeZone, unit: "", labels: points.map((p) => time(p.at)),
  });
}

// -- quarantine ------------------------------------------------------------------------------

async function loadQuarantine() {
  const data = await api("/v1/admin/quarantine?limit=10");
  const target = $("quarantine");
  if (!data.total) {
    target.replaceChildren(el("p", { id: "quarantine-empty", class: "muted" },
      data.exists ? "Empty: every Segment message was accepted." : "Empty: nothing was ever quarantined."));
    return;
  }
  target.replaceChildren(
    el("p", { id: "quarantine-total", dataset: { total: data.total } },
      `${data.total.toLocaleString("en-US")} open ${data.total === 1 ? "entry" : "entries"}.`),
    table("Open entries by reason", ["Reason", "Entries"],
      Object.entries(data.by_reason).map(([reason, n]) => el("tr", { dataset: { reason } },
        el("th", { scope: "row" }, reason), el("td", { class: "num" }, n.toLocaleString("en-US"))))),
    table("Newest entries", ["#", "Received", "Source", "Event id", "Reason", "Error", "Message"],
      data.latest.map((e) => el("tr", { dataset: { entry: e.id } },
        el("td", { class: "num" }, e.id), el("td", {}, time(e.received_at)), el("td", {}, e.source),
        el("td", {}, el("code", {}, e.event_id)), el("td", {}, e.reason), el("td", {}, e.error),
        el("td", {}, el("code", {}, e.message))))));
}

// -- jobs ------------------------------------------------------------------------------------

async function loadJobs() {
  const data = await api("/v1/admin/jobs?limit=30");
  const last = Object.fromEntries([...data.runs].reverse().map((r) => [r.job, r]));
  $("jobs").replaceChildren(table("Scheduled jobs", ["Job", "Schedule (UTC)", "Next run", "Last attempt", ""],
    data.jobs.map((job) => el("tr", { dataset: { job: job.name } },
      el("th", { scope: "row" }, job.name),
      el("td", {}, el("code", {}, job.schedule)),
      el("td", {}, job.enabled ? time(job.next_run) : "disabled"),
      el("td", {}, last[job.name] ? `${last[job.name].status}, ${time(last[job.name].started_at)}` : "—"),
      el("td", {}, el("button", { type: "button", onclick: () => act(`/v1/admin/jobs/${job.name}/run`, `Run ${job.name} now?`) },
        last[job.name]?.status === "failed" ? `Retry ${job.name}` : `Run ${job.name} now`))))));
  $("runs").replaceChildren(table("Latest attempts, newest first", ["Job", "Attempt", "Status", "Started", "Finished", "Error"],
    data.runs.map((run) => el("tr", { class: run.status },
      el("th", { scope: "row" }, run.job), el("td", { class: "num" }, run.attempt), el("td", {}, run.status),
      el("td", {}, time(run.started_at)), el("td", {}, time(run.finished_at)), el("td", {}, run.error ?? "")))));
}

// -- versions --------------------------------------------------------------------------------

async function loadVersions() {
  const data = await api("/v1/admin/versions");
  $("versions").replaceChildren(table("Definitions versions", ["Version", "Hash", "Created", "State", "Sealed through", ""],
    data.versions.map((v) => el("tr", { dataset: { version: v.id } },
      el("th", { scope: "row" }, v.id, v.serving ? " (serving)" : ""),
      el("td", {}, el("code", {}, v.hash.slice(0, 12))),
      el("td", {}, time(v.created_at)), el("td", {}, v.state),
      el("td", {}, v.sealed_through ? time(new Date(v.sealed_through * 1000).toISOString()) : "—"),
      el("td", {}, v.serving || v.state === "dropped" || data.serving === null ? null : [
        el("button", { type: "button", onclick: () => loadDiff(v.id) }, `Diff ${v.id} vs ${data.serving}`),
        el("button", { type: "button", onclick: () => act(`/v1/admin/versions/${v.id}/promote`, `Promote version ${v.id}? It will serve every merchant.`) }, `Promote ${v.id}`),
      ])))));
  const rollback = data.history[0]?.previous;
  $("rollback").hidden = rollback === null || rollback === undefined;
  $("rollback").textContent = `Roll back to version ${rollback}`;
}

async function loadDiff(version) {
  const target = $("diff");
  target.replaceChildren(el("p", { class: "muted" }, "Comparing…"));
  try {
    const data = await api(`/v1/admin/versions/${version}/diff?limit=200`);
    target.replaceChildren(
      el("p", {}, `${data.rows.length}${data.truncated ? "+" : ""} differences between version ${data.old} and ${data.new}, ${data.from} to ${data.to} (UTC days, final values).`),
      table(`Diff of version ${data.new} against ${data.old}`, ["Merchant", "Metric", "Day", `Version ${data.old}`, `Version ${data.new}`],
        data.rows.map((r) => el("tr", {}, el("td", {}, r.merchant_id), el("td", {}, r.metric), el("td", {}, r.day),
          el("td", { class: "num" }, r.old ?? "—"), el("td", { class: "num" }, r.new ?? "—")))));
  } catch (error) {
    showError(target, error);
  }
}

// -- archive ---------------------------------------------------------------------------------

async function loadArchive() {
  const data = await api("/v1/admin/archive?days=7");
  if (!data.exists) {
    $("archive").replaceChildren(el("p", { class: "muted" }, `No archive at ${data.path} yet.`));
    return;
  }
  const days = new Map();
  for (const hour of data.hours) {
    const day = hour.hour.slice(0, 10);
    if (!days.has(day)) days.set(day, []);
    days.get(day).push(hour);
  }
  const state = (h) => (h.sealed ? "sealed" : h.files ? "archived" : "empty");
  const grid = el("table", { class: "coverage" },
    el("caption", {}, "Hours of the last 7 days (UTC): sealed, archived but not sealed, or empty"),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Day"),
      Array.from({ length: 24 }, (_, h) => el("th", { scope: "col" }, String(h).padStart(2, "0"))))),
    el("tbody", {}, [...days].map(([day, hours]) => el("tr", {}, el("th", { scope: "row" }, day),
      Array.from({ length: Number(hours[0].hour.slice(11, 13)) }, () => el("td", { class: "none" })),
      hours.map((h) => el("td", { class: state(h), title: `${time(h.hour)} UTC: ${state(h)}, ${h.files} files, ${formatBytes(h.bytes)}` },
        el("span", { class: "sr" }, state(h))))))));
  $("archive").replaceChildren(
    el("p", {}, `${data.files.toLocaleString("en-US")} files, ${formatBytes(data.bytes)}, ${data.hours_archived} hours from ${time(data.first_hour)} to ${time(data.last_hour)} UTC, in ${data.path}.`),
    el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": "Archive coverage" }, grid),
    el("p", { class: "legend" }, el("span", { class: "swatch sealed" }), " sealed ", el("span", { class: "swatch archived" }), " archived ",
      el("span", { class: "swatch empty" }), " empty"));
}

// -- merchants -------------------------------------------------------------------------------

async function lookUp(event) {
  event.preventDefault();
  const merchant = $("merchant-id").value.trim();
  const target = $("merchant");
  if (!merchant) return;
  try {
    const data = await api(`/v1/admin/merchants/${encodeURIComponent(merchant)}`);
    const counts = Object.entries(data.counts).filter(([, n]) => n > 0);
    const zone = el("input", { id: "merchant-tz", value: data.timezone ?? "", "aria-label": "Time zone (IANA)", list: "zones" });
    target.replaceChildren(
      el("p", { dataset: { hasData: String(data.has_data) } }, `${data.merchant_id}: time zone ${data.timezone ?? "not set (UTC)"}; `,
        data.has_data ? `data in the last ${data.lookback_days} days` : `no data in the last ${data.lookback_days} days`, "."),
      counts.length ? table("Rows counted per metric", ["Metric", "Count"], counts.map(([m, n]) =>
        el("tr", {}, el("th", { scope: "row" }, m), el("td", { class: "num" }, n.toLocaleString("en-US"))))) : null,
      el("form", { class: "inline", onsubmit: async (e) => {
        e.preventDefault();
        try {
          await api(`/v1/admin/merchants/${encodeURIComponent(merchant)}/timezone`, { method: "PUT", body: { timezone: zone.value.trim() } });
          lookUp(event);
        } catch (error) {
          showError(target, error);
        }
      } }, el("label", { for: "merchant-tz" }, "Time zone "), zone, el("button", { type: "submit" }, "Set")),
      el("button", { type: "button", onclick: async () => {
        const issued = await api("/v1/admin/tokens", { method: "POST", body: { merchant_id: merchant, ttl_seconds: 3600 } });
        window.open(`/#token=${encodeURIComponent(issued.token)}`, "_blank", "noopener");
      } }, "Open this merchant's dashboard (1-hour token)"));
  } catch (error) {
    showError(target, error);
  }
}

// -- actions ---------------------------------------------------------------------------------

async function act(path, question) {
  if (!window.confirm(question)) return;
  try {
    await api(path, { method: "POST" });
  } catch (error) {
    $("action-error").textContent = error.message;
    return;
  }
  $("action-error").textContent = "";
  loadOperations();
}

async function loadOperations() {
  const data = await api("/v1/admin/operations");
  $("operations").replaceChildren(data.operations.length
    ? table("Commands started from this console", ["#", "Command", "Started", "Result", "Output (tail)"],
      data.operations.map((o) => el("tr", { dataset: { operation: o.id } },
        el("td", { class: "num" }, o.id), el("td", {}, el("code", {}, `mercato ${o.command.join(" ")}`)),
        el("td", {}, time(o.started_at)),
        el("td", {}, o.finished_at === null ? "running…" : o.exit_code === 0 ? "succeeded" : `failed (exit ${o.exit_code})`),
        el("td", {}, el("pre", {}, o.output.split("\n").slice(-6).join("\n"))))))
    : el("p", { class: "muted" }, "None yet."));
  if (data.operations.some((o) => o.finished_at === null)) setTimeout(loadOperations, 2000);
  else {
    loadJobs().catch(() => {});
    loadVersions().catch(() => {});
    refresh().catch(() => {});
  }
}

// -- start -----------------------------------------------------------------------------------

async function guarded(load, target) {
  try {
    await load();
  } catch (error) {
    if (error.status === 401 || error.status === 403) throw error;
    showError($(target), error);
  }
}

async function refresh() {
  await Promise.all([guarded(loadPipeline, "lag"), guarded(loadIngest, "ingest"),
    guarded(loadQuarantine, "quarantine")]);
}

async function start() {
  const bearer = requireToken();
  if (!bearer) return;
  $("sign-out").addEventListener("click", signOut);
  try {
    if (isMerchantToken(bearer)) throw Object.assign(new Error("this page needs the admin token"), { status: 403 });
    await Promise.all([refresh(), guarded(loadJobs, "jobs"), guarded(loadVersions, "versions"),
      guarded(loadArchive, "archive"), guarded(loadOperations, "operations")]);
  } catch (error) {
    document.querySelector("main").replaceChildren(el("p", { class: "error", role: "alert", id: "refused" },
      `The operator console needs the admin token: ${error.message}. `, el("a", { href: "/" }, "Sign in")));
    return;
  }
  document.body.dataset.ready = "true";
  $("merchant-form").addEventListener("submit", lookUp);
  $("rollback").addEventListener("click", () => act("/v1/admin/rollback", "Roll back to the previous version?"));
  $("archive-refresh").addEventListener("click", () => guarded(loadArchive, "archive"));
  setInterval(() => {
    if (!document.hidden) refresh().catch(() => {});
  }, POLL_MS);
}

start();
