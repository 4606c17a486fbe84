// The status page: the admin API's status stream (/admin/api/status/events), one snapshot a second.

import { Unauthorized, adminFetch, clock, sseEvents } from "./api.js";

const RECONNECT_MS = 2000;

let controller = null;

/** Follow the status stream until stop(); onUnauthorized() when the key is refused. */
export function start(onUnauthorized, onAccess) {
  stop();
  const own = new AbortController();
  controller = own;
  follow(own, onUnauthorized, onAccess);
}

export function stop() {
  if (controller) controller.abort();
  controller = null;
}

async function follow(own, onUnauthorized, onAccess) {
  const live = document.getElementById("live");
  while (!own.signal.aborted) {
    let received = 0;
    try {
      const response = await adminFetch("/admin/api/status/events", { signal: own.signal });
      for await (const message of sseEvents(response)) {
        if (message.event !== "status") continue;
        received += 1;
        const snapshot = JSON.parse(message.data);
        render(snapshot);
        onAccess(snapshot.access);
        live.textContent = `Live · updated ${clock(snapshot.time)}`;
        live.classList.remove("lost");
      }
    } catch (error) {
      if (own.signal.aborted) return;
      if (error instanceof Unauthorized) {
        onUnauthorized(error.message);
        return;
      }
      received = 0;
    }
    if (own.signal.aborted) return;
    if (received) continue; // the gateway ends each stream after a few events: follow on at once
    live.textContent = "Connection lost: reconnecting…";
    live.classList.add("lost");
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "—" : String(text);
  if (className) td.className = className;
  row.append(td);
  return td;
}

function fill(tbody, items, build) {
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    build(row, item);
    return row;
  });
  tbody.replaceChildren(...rows);
}

const STATE_TEXT = { up: "up", cooling_down: "cooling down" };

export function render(snapshot) {
  fill(document.querySelector("#providers-table tbody"), snapshot.providers, (row, provider) => {
    row.dataset.provider = provider.name;
    row.dataset.state = provider.state;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = provider.name;
    row.append(name);
    cell(row, provider.kind);
    cell(row, STATE_TEXT[provider.state] || provider.state, `state-${provider.state}`);
    cell(row, provider.cooling_until ? `${clock(provider.cooling_until)} (${Math.ceil(provider.cooling_remaining_s)} s)` : "");
    const recent = provider.recent;
    cell(row, recent.calls);
    cell(row, recent.error_rate == null ? null : `${(recent.error_rate * 100).toFixed(1)} %`);
    cell(row, recent.p50_ms == null ? null : `${recent.p50_ms} ms`);
    cell(row, recent.p95_ms == null ? null : `${recent.p95_ms} ms`);
  });

  fill(document.querySelector("#models-table tbody"), snapshot.models, (row, model) => {
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = model.name;
    row.append(name);
    cell(row, model.aliases.join(", ") || null, "wrap");
    cell(row, model.targets.map((t, i) => `${i + 1}. ${t.provider} → ${t.model}`).join("   "), "wrap");
  });

  const limits = snapshot.limits;
  fill(document.querySelector("#limits-table tbody"), limits.items, (row, item) => {
    cell(row, item.scope);
    cell(row, item.name);
    cell(row, item.unit);
    const used = cell(row, item.used == null ? null : `${item.used} / ${item.limit}`);
    if (item.used != null) {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fillBar = document.createElement("span");
      fillBar.style.width = `${Math.min(100, (100 * item.used) / item.limit)}%`;
      bar.append(fillBar);
      used.append(" ", bar);
    }
    cell(row, `${item.period_s} s`);
  });
  const keyNote = limits.auth_open
    ? "No inbound keys are configured: every client is admitted, and there is no per-key use to show."
    : `Inbound keys: ${limits.keys.map((k) => k.name + (k.revoked ? " (revoked)" : "")).join(", ")}.`;
  document.getElementById("limits-note").textContent =
    (limits.items.length ? "" : "No rate limits are configured. ") + keyNote;

  renderLocal(snapshot.local);
  document.getElementById("jobs").textContent = jobsText(snapshot.jobs);
  renderBudgets(snapshot.budgets);
}

function renderBudgets(budgets) {
  const note = document.getElementById("budgets-note");
  const items = budgets.available ? budgets.items : [];
  fill(document.querySelector("#budgets-table tbody"), items, (row, item) => {
    row.dataset.key = item.key;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = item.key;
    row.append(name);
    const spent = cell(row, item.spent == null ? null : `${item.spent} / ${item.amount} ${item.currency}`);
    if (item.spent != null && item.amount > 0) {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fillBar = document.createElement("span");
      fillBar.style.width = `${Math.min(100, (100 * item.spent) / item.amount)}%`;
      bar.append(fillBar);
      spent.append(" ", bar);
    }
    cell(row, item.period === "day" ? "UTC day" : "UTC month");
    cell(row, new Date(item.renews_at).toLocaleString());
  });
  if (!budgets.available) note.textContent = availability(budgets);
  else note.textContent = items.length ? "Spent includes what requests under way have reserved." : "No key has a budget.";
}

function jobsText(jobs) {
  if (!jobs || jobs.available === false) return availability(jobs);
  const seen = Object.entries(jobs.by_status_here || {}).map(([status, n]) => `${status} ${n}`).join(", ");
  return `${jobs.waiting} queued or running (${jobs.store} store), ${jobs.running_here} running here; ` +
    `since this process started: ${seen || "none yet"}.`;
}

function availability(section) {
  if (!section || section.available === false) return `Not available: ${section ? section.reason : "unknown"}.`;
  return JSON.stringify(section);
}

function renderLocal(backends) {
  const host = document.getElementById("local");
  if (!backends.length) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "No local backend is configured.";
    host.replaceChildren(p);
    return;
  }
  host.replaceChildren(
    ...backends.map((backend) => {
      const box = document.createElement("div");
      box.className = "local-card";
      box.dataset.provider = backend.provider;
      const title = document.createElement("strong");
      title.textContent = backend.provider;
      box.append(title);
      const facts = [];
      if (backend.remote) {
        for (const [url, up] of Object.entries(backend.workers)) facts.push([url, up ? "healthy" : "unreachable"]);
        facts.push(...speedFacts(backend.options));
      } else if (!backend.started) {
        facts.push(["state", "not started yet"]);
      } else {
        const sizes = Object.entries(backend.batch_sizes).map(([size, count]) => `${size}×${count}`).join(", ");
        facts.push(
          ["device", backend.device],
          ["queue depth", backend.queue_depth],
          ["images in the running batch", backend.running],
          ["batches", backend.batches],
          ["batch sizes (images × calls)", sizes || "none yet"],
          ["images/s (last 10 s)", backend.images_per_s == null ? "measuring…" : backend.images_per_s],
          ["images made", backend.images_generated],
          ["models", Object.entries(backend.models).map(([m, s]) => `${m}: ${s}`).join(", ")],
          ...speedFacts(backend.options),
        );
      }
      const dl = document.createElement("dl");
      for (const [term, value, fact] of facts) {
        const group = document.createElement("div");
        if (fact) group.dataset.fact = fact;
        const dt = document.createElement("dt");
        dt.textContent = term;
        const dd = document.createElement("dd");
        dd.textContent = String(value);
        group.append(dt, dd);
        dl.append(group);
      }
      box.append(dl);
      return box;
    }),
  );
}

/** One fact per loaded model: what it runs with (docs/local_backend.md, "Speed options"). */
function speedFacts(options) {
  return Object.entries(options || {}).map(([model, o]) => [`${model}: speed options`, speedLabel(o), `options-${model}`]);
}

export function speedLabel(o) {
  const parts = [o.dtype];
  if (o.quantize) parts.push(`float8 weights (${o.quantize})`);
  parts.push(o.cache ? `step cache ${o.cache}` : "no step cache");
  parts.push(o.compile ? `compiled (${o.compile})` : "eager");
  if (o.fuse_qkv) parts.push("fused QKV");
  if (o.channels_last) parts.push("channels-last");
  return parts.join(" · ");
}
