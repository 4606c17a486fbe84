// The status page's charts of the last hour (/admin/api/charts), drawn with the vendored uPlot
// (assets/vendor/uplot, loaded by index.html as window.uPlot). The gateway reads Prometheus, or this
// process's own readings: the page only draws what it is given, and says which.

import { Unauthorized, adminJSON } from "./api.js";

const REFRESH_MS = 30000; // the gateway keeps an answer for 10 s; a minute's point changes slowly
const HEIGHT = 170;
const COLORS = ["#0b5cad", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

const colors = new Map(); // series name → its colour, the same in every chart of the page
let timer = null;
let observer = null;
const plots = new Map(); // chart id → its uPlot

/** Draw the charts now and every REFRESH_MS until stop(); onUnauthorized() when the key is refused. */
export function start(onUnauthorized) {
  stop();
  const refresh = () => load(onUnauthorized);
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
  if (!observer && "ResizeObserver" in window) {
    observer = new ResizeObserver(() => resize());
    observer.observe(document.getElementById("charts"));
  }
}

export function stop() {
  if (timer) clearInterval(timer);
  timer = null;
}

async function load(onUnauthorized) {
  const error = document.getElementById("charts-error");
  try {
    draw(await adminJSON("/admin/api/charts"));
  } catch (failure) {
    if (failure instanceof Unauthorized) {
      stop();
      onUnauthorized(failure.message);
      return;
    }
    error.textContent = `The charts could not be loaded: ${failure.message}`;
    error.hidden = false;
  }
}

function cssColor(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

/** Draw one answer of /admin/api/charts. */
export function draw(answer) {
  const host = document.getElementById("charts");
  host.dataset.source = answer.source;
  document.getElementById("charts-note").textContent = answer.note;
  const error = document.getElementById("charts-error");
  error.textContent = answer.error ? `${answer.error}.` : "";
  error.hidden = !answer.error;
  const figures = answer.charts.map((chart) => figure(chart, answer.times, answer.window_s));
  host.replaceChildren(...figures);
  host.setAttribute("aria-busy", "false");
}

function figure(chart, times, windowS) {
  const existing = plots.get(chart.id);
  if (existing) existing.destroy();
  plots.delete(chart.id);
  const box = document.createElement("figure");
  box.className = "chart";
  box.dataset.chart = chart.id;
  box.dataset.series = chart.series.map((s) => s.name).join(",");
  const caption = document.createElement("figcaption");
  const title = document.createElement("strong");
  title.textContent = chart.title;
  const unit = document.createElement("span");
  unit.className = "hint";
  unit.textContent = ` ${chart.unit}`;
  caption.append(title, unit);
  box.append(caption);
  const drawn = chart.series.filter((s) => s.values.some((v) => v != null));
  if (!drawn.length) {
    const empty = document.createElement("p");
    empty.className = "hint empty";
    empty.textContent = "Nothing in this window yet.";
    box.append(empty);
    return box;
  }
  const plot = document.createElement("div");
  plot.className = "plot";
  plot.setAttribute("role", "img");
  plot.setAttribute("aria-label", `${chart.title} (${chart.unit}), latest: ${latest(drawn)}`);
  box.append(plot);
  const muted = cssColor("--muted", "#5b5b5b");
  const grid = cssColor("--line", "#d6d6d2");
  const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  const end = times[times.length - 1];
  const options = {
    width: 300,
    height: HEIGHT,
    scales: {
      x: { time: true, range: () => [end - windowS, end] }, // the whole window, however few points it has yet
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [axis, { ...axis, size: 56, values: (u, ticks) => ticks.map(short) }],
    series: [
      {},
      ...drawn.map((s) => ({
        label: s.name,
        stroke: colorOf(s.name),
        width: 2,
        points: { show: true, size: 6, filter: lonely },
        value: (u, v) => (v == null ? "—" : short(v)),
      })),
    ],
  };
  const data = [times, ...drawn.map((s) => s.values)];
  // uPlot measures its box: it is drawn once the figure is in the page.
  requestAnimationFrame(() => {
    options.width = Math.max(160, plot.clientWidth);
    // The legend shows the latest point until the pointer moves over the chart.
    const latestInLegend = (u) => u.setLegend({ idx: times.length - 1 });
    options.hooks = {
      ready: [latestInLegend],
      setCursor: [(u) => u.cursor.idx == null && latestInLegend(u)], // the pointer left: the latest again
    };
    const made = new window.uPlot(options, data, plot);
    plots.set(chart.id, made);
    box.dataset.drawn = "true";
  });
  return box;
}

function colorOf(name) {
  if (!colors.has(name)) colors.set(name, COLORS[colors.size % COLORS.length]);
  return colors.get(name);
}

/** The points drawn as dots: those with no neighbour to draw a line to, and the latest. */
function lonely(u, seriesIndex) {
  const values = u.data[seriesIndex];
  const found = [];
  let last = null;
  for (let i = 0; i < values.length; i++) {
    if (values[i] == null) continue;
    last = i;
    if (values[i - 1] == null && values[i + 1] == null) found.push(i);
  }
  if (last != null && !found.includes(last)) found.push(last);
  return found;
}

function resize() {
  for (const plot of plots.values()) {
    const width = Math.max(160, plot.root.parentElement.clientWidth);
    if (Math.abs(plot.width - width) <= 4) continue;
    plot.setSize({ width, height: HEIGHT });
    plot.setLegend({ idx: plot.data[0].length - 1 }); // a new size clears the legend: the latest point again
  }
}

function latest(series) {
  return series
    .map((s) => {
      const found = [...s.values].reverse().find((v) => v != null);
      return `${s.name} ${found == null ? "none" : short(found)}`;
    })
    .join(", ");
}

/** A number as a chart writes it: 3 significant digits, no exponent for everyday values. */
export function short(value) {
  if (value == null) return "—";
  const size = Math.abs(value);
  if (size === 0) return "0";
  if (size >= 1e6) return `${(value / 1e6).toPrecision(3)}M`;
  if (size >= 1e3) return `${(value / 1e3).toPrecision(3)}k`;
  if (size >= 1) return String(Number(value.toPrecision(3)));
  return String(Number(value.toPrecision(2)));
}
