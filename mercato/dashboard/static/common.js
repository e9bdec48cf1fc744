// What every page shares: the token (sessionStorage, never the URL), calls to the JSON API
// with Authorization: Bearer, number formats, a tiny DOM builder, CSV downloads.

const KEY = "mercato.token";

// `/#token=…` (printed by `mercato demo`, or opened by the console for a merchant) signs this
// tab in: the token moves to sessionStorage and leaves the address bar and the history.
export function takeTokenFromHash() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(history.state, "", location.pathname + location.search);
  }
}

export const token = () => sessionStorage.getItem(KEY);
export const isMerchantToken = (value) => value.startsWith("mt_");

export function saveToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  location.assign("/");
}

// Pages that need a token send the visitor to sign in, and back here afterwards.
export function requireToken() {
  takeTokenFromHash();
  const value = token();
  if (!value) {
    location.replace(`/?next=${encodeURIComponent(location.pathname + location.search)}`);
    return null;
  }
  return value;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One call to the API. A 429 waits for Retry-After and tries again (three times at most).
export async function api(path, { method = "GET", body, signal, bearer } = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, {
      method,
      signal,
      headers: {
        Authorization: `Bearer ${bearer ?? token() ?? ""}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 429 && attempt < 3) {
      await sleep(1000 * Number(response.headers.get("Retry-After") || 1));
      continue;
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = data?.error ?? {};
      throw new ApiError(response.status, error.code ?? "error", error.message ?? response.statusText);
    }
    return data;
  }
}

// Runs async tasks with at most `limit` in flight (the API rate-limits each merchant).
export async function pool(tasks, limit = 4) {
  const queue = [...tasks];
  const workers = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    while (queue.length) await queue.shift()();
  });
  await Promise.all(workers);
}

// el("td", {class: "num", dataset: {value: 3}}, "3"): text children are always text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const two = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const one = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

// Money is integer minor units; shown as major units with two decimals.
export function format(value, unit) {
  if (value === null || value === undefined) return "—";
  if (unit === "money") return two.format(value / 100);
  if (unit === "percent") return `${two.format(value)}%`;
  if (unit === "ms") return `${one.format(value)} ms`;
  return Number.isInteger(value) ? integer.format(value) : two.format(value);
}

export function formatChange(change) {
  if (change === null || change === undefined) return "no previous value";
  const percent = (change * 100).toFixed(1);
  if (change > 0) return `▲ +${percent}%`;
  if (change < 0) return `▼ ${percent}%`;
  return "■ 0.0%";
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

// "2026-11-26T08:00:00+05:30" as "2026-11-26 08:00" (already in the answer's zone).
export const localTime = (iso) => (iso ? iso.slice(0, 16).replace("T", " ") : "—");

export function downloadCsv(filename, rows) {
  const quote = (cell) => {
    const text = cell === null || cell === undefined ? "" : String(cell);
    return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  const text = rows.map((row) => row.map(quote).join(",")).join("\n") + "\n";
  const link = el("a", {
    href: URL.createObjectURL(new Blob([text], { type: "text/csv" })),
    download: filename,
  });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// Okabe–Ito: distinguishable with the common colour-vision deficiencies.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000"];
export const OTHER_COLOUR = "#999999";

export function showError(node, error) {
  node.replaceChildren(el("p", { class: "error", role: "alert" }, error.message ?? String(error)));
}
