/**
 * A small hand-made SVG line chart: per-second series over time, with axes, ticks, labels,
 * a legend, a title, a shaded interval and a dotted reference line. No plotting library.
 */

export interface Series {
  label: string;
  values: readonly number[];
  color: string;
  dashed?: boolean;
}

export interface Chart {
  title: string;
  /** A line under the title. */
  subtitle?: string;
  /** A small line at the foot of the figure. */
  note?: string;
  /** Read by screen readers and shown as a tooltip: what the figure shows and how it was made. */
  caption: string;
  xLabel: string;
  yLabel: string;
  series: readonly Series[];
  /** A shaded span of the x axis, e.g. the flood, in the same unit as the bins. */
  band?: { from: number; to: number; label: string };
  /** A dotted horizontal line, e.g. a refill rate. */
  reference?: { value: number; label: string };
}

const WIDTH = 760;
const HEIGHT = 470;
const MARGIN = { top: 62, right: 24, bottom: 112, left: 64 };
const FONT_FAMILY = 'system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif';

/** The chart as an SVG document. Bin i spans [i, i + 1) and is drawn as a step over that span. */
export function lineChart(chart: Chart): string {
  const bins = Math.max(...chart.series.map((s) => s.values.length));
  const peak = Math.max(1, ...chart.series.flatMap((s) => s.values), chart.reference?.value ?? 0);
  const step = niceStep(peak / 5);
  const top = Math.ceil(peak / step) * step;
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (t: number): number => MARGIN.left + (t / bins) * plotW;
  const y = (v: number): number => MARGIN.top + plotH - (v / top) * plotH;
  const r = (n: number): string => n.toFixed(1);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" ` +
      `role="img" aria-labelledby="title desc" font-family="${FONT_FAMILY}">`,
    `<title id="title">${escape(chart.title)}</title>`,
    `<desc id="desc">${escape(chart.caption)}</desc>`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#fff"/>`,
    `<text x="${WIDTH / 2}" y="26" text-anchor="middle" font-size="16" font-weight="600" fill="#222">` +
      `${escape(chart.title)}</text>`,
  );
  if (chart.subtitle) {
    out.push(
      `<text x="${WIDTH / 2}" y="45" text-anchor="middle" font-size="12" fill="#555">` +
        `${escape(chart.subtitle)}</text>`,
    );
  }
  if (chart.band) {
    const { from, to, label } = chart.band;
    out.push(
      `<rect x="${r(x(from))}" y="${MARGIN.top}" width="${r(x(to) - x(from))}" height="${plotH}" fill="#f3ede4"/>`,
      `<text x="${r((x(from) + x(to)) / 2)}" y="${MARGIN.top + 14}" text-anchor="middle" font-size="12" ` +
        `fill="#8a6d3b">${escape(label)}</text>`,
    );
  }
  // Grid and y ticks.
  for (let v = 0; v <= top + 1e-9; v += step) {
    out.push(
      `<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${r(y(v))}" y2="${r(y(v))}" stroke="#e4e4e4"/>`,
      `<text x="${MARGIN.left - 8}" y="${r(y(v) + 4)}" text-anchor="end" font-size="12" fill="#444">${v}</text>`,
    );
  }
  // x ticks, every second (every other one labelled past 20 bins).
  const labelEvery = bins > 20 ? 2 : 1;
  for (let t = 0; t <= bins; t++) {
    out.push(
      `<line x1="${r(x(t))}" x2="${r(x(t))}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH + 5}" stroke="#444"/>`,
    );
    if (t % labelEvery === 0) {
      out.push(
        `<text x="${r(x(t))}" y="${MARGIN.top + plotH + 19}" text-anchor="middle" font-size="12" ` +
          `fill="#444">${t}</text>`,
      );
    }
  }
  // Axes and their labels.
  out.push(
    `<line x1="${MARGIN.left}" x2="${MARGIN.left}" y1="${MARGIN.top}" y2="${MARGIN.top + plotH}" stroke="#444"/>`,
    `<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH}" stroke="#444"/>`,
    `<text x="${MARGIN.left + plotW / 2}" y="${MARGIN.top + plotH + 38}" text-anchor="middle" font-size="13" ` +
      `fill="#222">${escape(chart.xLabel)}</text>`,
    `<text transform="translate(18 ${MARGIN.top + plotH / 2}) rotate(-90)" text-anchor="middle" ` +
      `font-size="13" fill="#222">${escape(chart.yLabel)}</text>`,
  );
  if (chart.reference) {
    const { value, label } = chart.reference;
    out.push(
      `<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${r(y(value))}" y2="${r(y(value))}" stroke="#888" ` +
        `stroke-dasharray="2 4"/>`,
      `<text x="${WIDTH - MARGIN.right - 4}" y="${r(y(value) - 5)}" text-anchor="end" font-size="11" ` +
        `fill="#666">${escape(label)}</text>`,
    );
  }
  for (const s of chart.series) {
    const points = steps(s.values)
      .map(([t, v]) => `${r(x(t))},${r(y(v))}`)
      .join(' ');
    out.push(
      `<polyline points="${points}" fill="none" stroke="${s.color}" stroke-width="2.25" stroke-linejoin="round"` +
        `${s.dashed ? ' stroke-dasharray="7 4"' : ''}/>`,
    );
  }
  // Legend, in two columns under the axis label.
  const legendTop = MARGIN.top + plotH + 56;
  chart.series.forEach((s, i) => {
    const lx = MARGIN.left + (i % 2) * (plotW / 2);
    const ly = legendTop + Math.floor(i / 2) * 18;
    out.push(
      `<line x1="${lx}" x2="${lx + 26}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="2.25"` +
        `${s.dashed ? ' stroke-dasharray="7 4"' : ''}/>`,
      `<text x="${lx + 32}" y="${ly + 4}" font-size="12" fill="#222">${escape(s.label)}</text>`,
    );
  });
  if (chart.note) {
    out.push(`<text x="${MARGIN.left}" y="${HEIGHT - 10}" font-size="11" fill="#666">${escape(chart.note)}</text>`);
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** The corners of a step line over bins [i, i + 1): one run of equal values is one segment. */
function steps(values: readonly number[]): [number, number][] {
  const corners: [number, number][] = [];
  values.forEach((value, i) => {
    if (i > 0 && values[i - 1] === value) return;
    corners.push([i, value]);
    let end = i + 1;
    while (end < values.length && values[end] === value) end++;
    corners.push([end, value]);
  });
  return corners;
}

/** 1, 2 or 5 times a power of ten, at least `raw`. */
function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-9)));
  for (const factor of [1, 2, 5, 10]) if (factor * power >= raw) return factor * power;
  return 10 * power;
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
