// The playground: one prompt to several models side by side, through the OpenAI-family route.
//
// Each model gets its own POST /v1/images/generations with response_format b64_json (and the inbound key
// when one is given). With "previews" on, the request also asks for stream=true and partial_images: a
// gateway whose route streams answers text/event-stream (OpenAI's image_generation.partial_image and
// .completed events) and the card shows progress and previews; any other answer is read as the JSON
// answer, final images only. Nothing is shown that the gateway did not send.

import { NotServed, adminJSON, errorMessage, sseEvents } from "./api.js";

const INBOUND_KEY = "image-gateway.inbound-key";
const PARTIAL_IMAGES = 2;
const MAX_SEED = 2 ** 31 - 1;

let lastRun = null;
let loaded = false;

export async function load() {
  if (loaded) return;
  const answer = await adminJSON("/admin/api/models");
  const list = document.getElementById("model-list");
  const boxes = answer.models.map((model, index) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "model";
    box.value = model.name;
    box.checked = index === 0;
    const targets = model.targets.map((t) => t.provider).join(" → ");
    label.append(box, `${model.name}`);
    label.title = `targets: ${targets}`;
    return label;
  });
  if (!boxes.length) {
    const none = document.createElement("p");
    none.className = "hint";
    none.textContent = "This gateway serves no models.";
    boxes.push(none);
  }
  list.replaceChildren(...boxes);
  const keyField = document.getElementById("inbound-key");
  keyField.value = sessionStorage.getItem(INBOUND_KEY) || "";
  document.getElementById("inbound-key-hint").textContent = answer.auth_open
    ? "This gateway has no inbound keys: none is needed."
    : "Needed: a client key of this gateway, sent to /v1/images/generations (kept in this tab only).";
  keyField.required = !answer.auth_open;
  loaded = true;
}

export function reset() {
  loaded = false;
}

export function wire() {
  const form = document.getElementById("generate-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = readForm();
    if (!params) return;
    run(params);
  });
  document.getElementById("same-again").addEventListener("click", () => {
    if (lastRun) run(lastRun);
  });
}

function readForm() {
  const models = [...document.querySelectorAll("#model-list input[name=model]:checked")].map((box) => box.value);
  const choice = document.getElementById("model-choice");
  if (!models.length) {
    choice.setAttribute("aria-invalid", "true");
    showFormError("Pick at least one model.");
    return null;
  }
  choice.removeAttribute("aria-invalid");
  showFormError("");
  const seedField = document.getElementById("seed");
  if (seedField.value === "") seedField.value = String(Math.floor(Math.random() * MAX_SEED));
  const key = document.getElementById("inbound-key").value.trim();
  if (key) sessionStorage.setItem(INBOUND_KEY, key);
  else sessionStorage.removeItem(INBOUND_KEY);
  const steps = document.getElementById("steps").value;
  return {
    models,
    prompt: document.getElementById("prompt").value,
    size: document.getElementById("size").value,
    n: Number(document.getElementById("n").value),
    seed: Number(seedField.value),
    steps: steps === "" ? null : Number(steps),
    key,
    previews: document.getElementById("previews").checked,
  };
}

function showFormError(message) {
  let node = document.getElementById("form-error");
  if (!node) {
    node = document.createElement("p");
    node.id = "form-error";
    node.className = "error";
    node.setAttribute("role", "alert");
    document.getElementById("generate-form").append(node);
  }
  node.textContent = message;
}

async function run(params) {
  lastRun = params;
  const generate = document.getElementById("generate");
  const again = document.getElementById("same-again");
  generate.disabled = true;
  again.disabled = true;
  const results = document.getElementById("results");
  const cards = params.models.map((model) => new Card(model, params));
  results.replaceChildren(...cards.map((card) => card.root));
  try {
    await Promise.all(cards.map((card) => generateOne(card, params)));
  } finally {
    generate.disabled = false;
    again.disabled = false;
  }
}

async function generateOne(card, params) {
  const body = {
    model: card.model,
    prompt: params.prompt,
    size: params.size,
    n: params.n,
    seed: params.seed,
    response_format: "b64_json",
  };
  if (params.steps != null) body.steps = params.steps;
  // OpenAI streams one image per request: with n > 1 the plain answer is asked for.
  if (params.previews && params.n === 1) Object.assign(body, { stream: true, partial_images: PARTIAL_IMAGES });
  const headers = { "Content-Type": "application/json" };
  if (params.key) headers.Authorization = `Bearer ${params.key}`;
  const started = performance.now();
  let response;
  try {
    response = await fetch("/v1/images/generations", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    card.fail(`The gateway could not be reached: ${error.message}`);
    return;
  }
  card.headers(response.headers);
  if (!response.ok) {
    card.fail(`${response.status}: ${await errorMessage(response)}`);
    card.latency(performance.now() - started);
    return;
  }
  const type = response.headers.get("content-type") || "";
  try {
    if (type.startsWith("text/event-stream")) {
      await readStream(card, response, params);
      await streamFacts(card, response.headers.get("X-Request-ID"));
    } else readJSON(card, await response.json());
  } catch (error) {
    card.fail(`The answer could not be read: ${error.message}`);
  }
  card.latency(performance.now() - started);
}

// A streamed answer's headers go out before the generation runs, so they cannot say which provider answered
// or what it cost: the admin API keeps this process's last requests by request id. The record is written as
// the stream ends, so it may take a moment to appear; another replica's request is never found (no facts).
async function streamFacts(card, requestId) {
  if (!requestId) return;
  for (let attempt = 0; attempt < 20; attempt += 1) {
    try {
      const found = await adminJSON(`/admin/api/requests/${encodeURIComponent(requestId)}`);
      if (found.provider && found.provider !== "none") card.fact("provider", found.provider);
      if (found.cost) card.fact("cost", found.cost);
      if (found.energy_kwh != null) card.fact("energy", `${found.energy_kwh} kWh (${found.energy_method})`);
      return;
    } catch (error) {
      if (!(error instanceof NotServed)) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

function readJSON(card, answer) {
  card.done();
  for (const image of answer.data || []) card.image(image.b64_json, image.url);
  if (answer.environment_impact) card.energy(answer.environment_impact);
}

async function readStream(card, response, params) {
  card.streaming(PARTIAL_IMAGES + 1);
  let completed = 0;
  for await (const message of sseEvents(response)) {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      continue;
    }
    const type = data.type || message.event;
    if (type === "image_generation.partial_image") {
      card.preview(data.b64_json, (data.partial_image_index ?? 0) + 1);
    } else if (type === "image_generation.completed") {
      completed += 1;
      card.image(data.b64_json, data.url);
      if (data.environment_impact) card.energy(data.environment_impact);
      if (completed >= params.n) card.done();
    } else if (type === "error" || data.error) {
      card.fail(data.error && data.error.message ? data.error.message : JSON.stringify(data.error || data));
      return;
    }
  }
  card.done();
}

const MEDIA = [
  ["iVBOR", "image/png"],
  ["/9j/", "image/jpeg"],
  ["UklGR", "image/webp"],
];

function dataURL(b64) {
  const found = MEDIA.find(([prefix]) => b64.startsWith(prefix));
  return `data:${found ? found[1] : "image/png"};base64,${b64}`;
}

class Card {
  constructor(model, params) {
    this.model = model;
    this.prompt = params.prompt;
    this.count = 0;
    this.root = document.createElement("article");
    this.root.className = "card";
    this.root.dataset.model = model;
    this.root.setAttribute("aria-busy", "true");
    const title = document.createElement("h3");
    title.textContent = model;
    this.facts = document.createElement("dl");
    this.fact("status", "generating…");
    this.fact("seed", params.seed);
    this.progress = document.createElement("progress");
    this.progress.setAttribute("aria-label", `${model}: progress`);
    this.error = document.createElement("p");
    this.error.className = "error";
    this.error.setAttribute("role", "alert");
    this.images = document.createElement("div");
    this.images.className = "images";
    this.previewImage = null;
    this.root.append(title, this.facts, this.progress, this.error, this.images);
  }

  fact(name, value) {
    let dd = this.facts.querySelector(`dd[data-fact="${name}"]`);
    if (!dd) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      dd = document.createElement("dd");
      dd.dataset.fact = name;
      this.facts.append(dt, dd);
    }
    dd.textContent = String(value);
  }

  headers(headers) {
    const provider = headers.get("X-Gateway-Provider");
    if (provider) this.fact("provider", provider);
    const cost = headers.get("X-Gateway-Cost");
    if (cost) this.fact("cost", cost);
    const cache = headers.get("X-Gateway-Cache"); // identical seeded requests share one generation
    if (cache) this.fact("cache", cache);
  }

  latency(ms) {
    this.fact("latency", `${Math.round(ms)} ms`);
  }

  energy(impact) {
    const parts = [];
    if (impact.energy_kwh != null) parts.push(`${impact.energy_kwh} kWh`);
    if (impact.carbon_g_co2 != null) parts.push(`${impact.carbon_g_co2} g CO₂`);
    if (impact.water_liters != null) parts.push(`${impact.water_liters} L water`);
    if (parts.length) this.fact("energy", parts.join(" · "));
  }

  streaming(steps) {
    this.progress.max = steps;
    this.progress.value = 0;
    this.fact("status", "streaming…");
  }

  preview(b64, step) {
    if (!b64) return;
    if (!this.previewImage) {
      this.previewImage = document.createElement("img");
      this.previewImage.className = "preview";
      this.images.append(this.previewImage);
    }
    this.previewImage.alt = `${this.model}: preview ${step}`;
    this.previewImage.src = dataURL(b64);
    this.progress.value = Math.min(step, this.progress.max - 1);
  }

  image(b64, url) {
    if (this.previewImage) {
      this.previewImage.remove();
      this.previewImage = null;
    }
    const img = document.createElement("img");
    this.count += 1;
    img.alt = `${this.model}: image ${this.count} for “${this.prompt}”`;
    img.src = b64 ? dataURL(b64) : url;
    img.decoding = "async";
    this.images.append(img);
  }

  done() {
    this.progress.max = 1;
    this.progress.value = 1;
    this.fact("status", "done");
    this.root.setAttribute("aria-busy", "false");
  }

  fail(message) {
    this.error.textContent = message;
    this.progress.hidden = true;
    this.fact("status", "failed");
    this.root.setAttribute("aria-busy", "false");
    this.root.dataset.failed = "true";
  }
}
