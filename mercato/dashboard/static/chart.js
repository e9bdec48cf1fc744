// Charts: uPlot (vendored, global `uPlot`) for time series, a small SVG for sparklines.
/* global uPlot */
import { el, format } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";

export function sparkline(values, colour = "#0072B2") {
  const points = values.map((v) => (typeof v === "number" ? v : null));
  const numbers = points.filter((v) => v !== null);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 24");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("aria-hidden", "true");
  if (numbers.length < 2) return svg;
  const low = Math.min(...numbers);
  const high = Math.max(...numbers);
  const span = high - low || 1;
  const step = 100 / (points.length - 1);
  let path = "";
  let pen = "M";
  points.forEach((v, i) => {
    if (v === null) {
      pen = "M";
      return;
    }
    path += `${pen}${(i * step).toFixed(2)},${(22 - ((v - low) / span) * 20).toFixed(2)}`;
    pen = "L";
  });
  const line = document.createElementNS(SVG, "path");
  line.setAttribute("d", path);
  line.setAttribute("stroke", colour);
  line.setAttribute("fill", "none");
  line.setAttribute("stroke-width", "1.5");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  return svg;
}

// Shades the periods from `provisionalFrom` (an x value) on, under the lines.
function provisionalBand(from) {
  return {
    hooks: {
      drawClear: [
        (u) => {
          if (from === null) return;
          const left = Math.max(u.valToPos(from, "x", true), u.bbox.left);
          const right = u.bbox.left + u.bbox.width;
          if (left >= right) return;
          const { ctx } = u;
          ctx.save();
          ctx.fillStyle = "rgba(0, 0, 0, 0.06)";
          ctx.fillRect(left, u.bbox.top, right - left, u.bbox.height);
          ctx.fillStyle = "#555";
          ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
          const text = "provisional";
          const width = ctx.measureText(text).width;
          const x = left + 4 * devicePixelRatio + width <= right ? left + 4 * devicePixelRatio : right - width - 4 * devicePixelRatio;
          ctx.fillText(text, x, u.bbox.top + 12 * devicePixelRatio);
          ctx.restore();
        },
      ],
    },
  };
}

// Writes the hovered period's values into `readout` (a live region under the chart).
function readoutPlugin(readout, lines, labels, unit) {
  return {
    hooks: {
      setCursor: [
        (u) => {
          const i = u.cursor.idx;
          if (i === null || i === undefined) {
            readout.textContent = "";
            return;
          }
          const parts = lines.map((line) => `${line.label}: ${format(line.values[i], unit)}`);
          readout.textContent = `${labels[i]} — ${parts.join(" · ")}`;
        },
      ],
    },
  };
}

/**
 * A time-series chart.
 * xs: epoch seconds of period starts; lines: [{label, values, colour, dash}];
 * stacked: fill each line down to the one before (values are stacked first);
 * provisionalFrom: x value where provisional periods start (null: none); tz: IANA zone.
 */
export function timeChart(target, { xs, lines, stacked, provisionalFrom, tz, unit, labels }) {
  const readout = el("p", { class: "readout", "aria-live": "polite" });
  const holder = el("div", { class: "plot" });
  const legend = el("ul", { class: "key", "aria-label": "Lines" }, lines.map((line) =>
    el("li", {}, el("span", {
      class: line.dash ? "mark dashed" : "mark",
      style: `border-color: ${line.colour}; background: ${line.dash ? "transparent" : line.colour}`,
    }), line.label)));
  target.replaceChildren(legend, holder, readout);
  const data = [xs];
  const series = [{}];
  const bands = [];
  let below = null;
  lines.forEach((line, n) => {
    let values = line.values;
    if (stacked && !line.dash) {
      values = values.map((v, i) => (v ?? 0) + (below ? below[i] ?? 0 : 0));
      if (below) bands.push({ series: [data.length, data.length - 1] });
      below = values;
    }
    data.push(values);
    series.push({
      label: line.label,
      stroke: line.colour,
      width: line.dash ? 1.5 : 2,
      dash: line.dash ? [6, 4] : undefined,
      fill: stacked && !line.dash ? `${line.colour}55` : undefined,
      points: { show: xs.length <= 62, size: 5 },
      spanGaps: false,
    });
    if (stacked && !line.dash && n === 0) series[series.length - 1].fillTo = 0;
  });
  const width = Math.max(holder.clientWidth || target.clientWidth || 600, 280);
  const chart = new uPlot(
    {
      width,
      height: Math.min(280, Math.max(180, Math.round(width * 0.4))),
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), tz),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      series,
      bands,
      scales: { y: { range: (u, low, high) => [Math.min(0, low), high > 0 ? high * 1.05 : 1] } },
      axes: [{}, {
        values: (u, ticks) => ticks.map((v) => format(v, unit)),
        size: (u, values) => (values ? Math.max(...values.map((v) => v.length)) * 7 + 18 : 40),
      }],
      plugins: [provisionalBand(provisionalFrom), readoutPlugin(readout, lines, labels, unit)],
    },
    data,
    holder,
  );
  const observer = new ResizeObserver(() => {
    const w = Math.max(holder.clientWidth, 280);
    if (Math.abs(w - chart.width) > 2) chart.setSize({ width: w, height: Math.min(280, Math.max(180, Math.round(w * 0.4))) });
  });
  observer.observe(holder);
  return {
    destroy() {
      observer.disconnect();
      chart.destroy();
    },
  };
}
