// Small SVG charts for the console: stacked bars over time, gauges, and
// horizontal bars. No dependencies; every chart is an <svg role="img"> with an
// aria-label, and every drawn value carries data-* attributes and a <title>.

const SVG_NS = "http://www.w3.org/2000/svg";

// Okabe–Ito, distinguishable with the common colour-vision deficiencies.
export const PALETTE = [
  "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

export function colorFor(index) {
  return PALETTE[index % PALETTE.length];
}

export function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  if (text !== null) el.textContent = text;
  return el;
}

function title(text) {
  return svg("title", {}, text);
}

// 1, 2, 2.5, 5 × 10^k at or above value, so gridlines fall on round numbers.
export function niceCeil(value) {
  if (!(value > 0)) return 1;
  const exp = Math.floor(Math.log10(value));
  const base = 10 ** exp;
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * base) return step * base;
  }
  return 10 * base;
}

export function compact(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${trim(value / 1e9)}G`;
  if (abs >= 1e6) return `${trim(value / 1e6)}M`;
  if (abs >= 1e3) return `${trim(value / 1e3)}k`;
  if (abs >= 1) return trim(value);
  return Number(value.toPrecision(2)).toString();
}

function trim(value) {
  return Number(value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)).toString();
}

/**
 * Stacked bars, one bar per time bucket, one segment per series.
 *
 * options: {label, buckets: Date[], bucketLabel(Date) → string, series: [{name, color,
 * values: number[]}], format(value) → string, unit, empty: string}
 */
export function stackedBars(options) {
  const W = Math.max(280, Math.round(options.width || 720));
  const H = options.height || 200;
  const { buckets, series } = options;
  const format = options.format || compact;
  const tickFormat = options.tickFormat || compact;
  const totals = buckets.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  // Four gridlines on round steps; whole steps for counts.
  let step = niceCeil(Math.max(0, ...totals) / 4);
  if (options.integer) step = Math.max(1, Math.ceil(step));
  const max = step * 4;
  const hasData = totals.some((t) => t > 0);
  const ticks = [0, 1, 2, 3, 4].map((i) => tickFormat((max * i) / 4));
  // Room for the longest y label at 11px.
  const M = { top: 12, right: 12, bottom: 26, left: 14 + 6.5 * Math.max(...ticks.map((s) => s.length)) };
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;

  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": options.label,
    class: "chart",
    "data-points": String(series.reduce((n, s) => n + s.values.filter((v) => v > 0).length, 0)),
  });
  root.append(title(options.label));

  const grid = svg("g", { class: "grid", "aria-hidden": "true" });
  for (let i = 0; i <= 4; i++) {
    const y = M.top + plotH - (plotH * i) / 4;
    grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: y, y2: y }));
    grid.append(svg("text", { x: M.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, ticks[i]));
  }
  root.append(grid);

  const n = Math.max(1, buckets.length);
  const slot = plotW / n;
  const barW = Math.max(1, Math.min(slot * 0.8, 48));
  const xTicks = svg("g", { class: "xticks", "aria-hidden": "true" });
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / 70))));
  buckets.forEach((bucket, i) => {
    const last = i === n - 1 && i % every >= every * 0.7;
    if (i % every !== 0 && !last) return;
    const x = M.left + slot * i + slot / 2;
    xTicks.append(
      svg("text", { x, y: H - 8, "text-anchor": "middle", class: "tick" }, options.bucketLabel(bucket)),
    );
  });
  root.append(xTicks);

  const bars = svg("g", { class: "bars" });
  buckets.forEach((bucket, i) => {
    let y = M.top + plotH;
    const x = M.left + slot * i + (slot - barW) / 2;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (value <= 0) continue;
      const h = Math.max(1, (value / max) * plotH);
      y -= h;
      const rect = svg("rect", {
        x: x.toFixed(2),
        y: y.toFixed(2),
        width: barW.toFixed(2),
        height: h.toFixed(2),
        fill: s.color,
        class: "bar",
        "data-model": s.name,
        "data-time": bucket.toISOString(),
        "data-value": String(value),
      });
      rect.append(title(`${s.name} · ${options.bucketLabel(bucket, true)} · ${format(value)}`));
      bars.append(rect);
    }
  });
  root.append(bars);
  root.append(
    svg("line", {
      x1: M.left, x2: W - M.right, y1: M.top + plotH, y2: M.top + plotH, class: "axis",
      "aria-hidden": "true",
    }),
  );
  if (!hasData) {
    root.append(
      svg(
        "text",
        { x: M.left + plotW / 2, y: M.top + plotH / 2, "text-anchor": "middle", class: "empty" },
        options.empty || "No data in this window",
      ),
    );
  }
  return root;
}

/**
 * A half-circle gauge. value null/undefined means "not reported": drawn empty, never as 0.
 *
 * options: {label, value, max, text, sub, warn, crit}
 */
export function gauge(options) {
  const W = 160;
  const H = 104;
  const cx = W / 2;
  const cy = 84;
  const r = 64;
  const known = typeof options.value === "number" && Number.isFinite(options.value);
  const fraction = known && options.max > 0 ? Math.min(1, Math.max(0, options.value / options.max)) : 0;
  const level = !known
    ? "unknown"
    : options.crit !== undefined && options.value >= options.crit
      ? "crit"
      : options.warn !== undefined && options.value >= options.warn
        ? "warn"
        : "ok";
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    class: `gauge gauge-${level}`,
    "aria-label": `${options.label}: ${known ? options.text : "not reported"}`,
    "data-value": known ? String(options.value) : "",
  });
  root.append(title(`${options.label}: ${known ? options.text : "not reported by NVML"}`));
  const arc = (f) => {
    const angle = Math.PI * (1 - f);
    return [cx + r * Math.cos(angle), cy - r * Math.sin(angle)];
  };
  const [x0, y0] = arc(0);
  const [x1, y1] = arc(1);
  root.append(
    svg("path", { d: `M ${x0} ${y0} A ${r} ${r} 0 0 1 ${x1} ${y1}`, class: "gauge-track" }),
  );
  if (known && fraction > 0) {
    const [xv, yv] = arc(fraction);
    root.append(
      svg("path", {
        d: `M ${x0} ${y0} A ${r} ${r} 0 0 1 ${xv.toFixed(2)} ${yv.toFixed(2)}`,
        class: "gauge-value",
      }),
    );
  }
  root.append(
    svg("text", { x: cx, y: cy - 14, "text-anchor": "middle", class: "gauge-text" }, known ? options.text : "—"),
  );
  root.append(
    svg(
      "text",
      { x: cx, y: cy + 14, "text-anchor": "middle", class: "gauge-sub" },
      known ? options.sub || "" : "not reported",
    ),
  );
  return root;
}

/**
 * Horizontal bars with values, e.g. latency percentiles.
 *
 * options: {label, rows: [{name, value (number|null), group}], format, unit}
 */
export function horizontalBars(options) {
  const rowH = 26;
  const W = 520;
  const labelW = 120;
  const valueW = 90;
  const H = options.rows.length * rowH + 8;
  const known = options.rows.map((r) => r.value).filter((v) => typeof v === "number");
  const max = niceCeil(Math.max(0, ...known));
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": options.label,
    class: "chart hbars",
  });
  root.append(title(options.label));
  options.rows.forEach((row, i) => {
    const y = 4 + i * rowH;
    root.append(svg("text", { x: labelW - 8, y: y + 16, "text-anchor": "end", class: "tick" }, row.name));
    const plotW = W - labelW - valueW;
    root.append(svg("rect", { x: labelW, y: y + 4, width: plotW, height: rowH - 10, class: "hbar-track" }));
    const isKnown = typeof row.value === "number";
    if (isKnown && row.value > 0) {
      const rect = svg("rect", {
        x: labelW,
        y: y + 4,
        width: Math.max(1, (row.value / max) * plotW).toFixed(2),
        height: rowH - 10,
        class: `hbar ${row.group || ""}`,
        "data-name": row.name,
        "data-value": String(row.value),
      });
      rect.append(title(`${row.name}: ${options.format(row.value)}`));
      root.append(rect);
    }
    root.append(
      svg(
        "text",
        { x: W - valueW + 8, y: y + 16, class: "hbar-value" },
        isKnown ? options.format(row.value) : "—",
      ),
    );
  });
  return root;
}
