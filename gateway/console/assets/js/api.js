// Talking to the gateway: the admin key, the admin API, error messages, and server-sent events over fetch.
//
// The admin key lives in this tab's sessionStorage and goes out only as `Authorization: Bearer` on
// same-origin fetches to /admin/api. EventSource cannot send that header, so streams are read with
// fetch and parsed here (the same reader serves the status stream and the image stream).

const ADMIN_KEY = "image-gateway.admin-key";

export class Unauthorized extends Error {}
export class NotServed extends Error {}

export function adminKey() {
  return sessionStorage.getItem(ADMIN_KEY) || "";
}

export function setAdminKey(key) {
  sessionStorage.setItem(ADMIN_KEY, key);
}

export function forgetAdminKey() {
  sessionStorage.removeItem(ADMIN_KEY);
}

/** fetch() to the admin API with the admin key; throws Unauthorized (401), NotServed (404) or Error. */
export async function adminFetch(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = adminKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401) throw new Unauthorized(await errorMessage(response));
  if (response.status === 404) throw new NotServed(await errorMessage(response));
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

export async function adminJSON(path) {
  return (await adminFetch(path)).json();
}

/** The message of an error answer, in whatever envelope the dialect uses; the raw text otherwise. */
export async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const found = findMessage(body);
    if (found) return found;
  } catch {
    // not JSON: the text itself
  }
  return text.trim() || `HTTP ${response.status}`;
}

function findMessage(body) {
  if (body == null) return "";
  if (typeof body === "string") return body;
  if (typeof body !== "object") return "";
  if (typeof body.error === "object" && body.error !== null) return findMessage(body.error);
  for (const field of ["message", "error", "detail", "msg"]) {
    if (typeof body[field] === "string" && body[field]) return body[field];
  }
  return "";
}

/**
 * The events of a text/event-stream answer, as {event, data, id}; ends when the stream does.
 * Follows the HTML standard's parsing: fields per line, events at a blank line, `data` lines joined by \n.
 */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        const width = buffer.startsWith("\r\n", newline) ? 2 : 1;
        buffer = buffer.slice(newline + width);
        if (line === "") {
          if (event.data.length) yield { event: event.event, data: event.data.join("\n"), id: event.id };
          event = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") event.event = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** A readable time of day from an ISO timestamp. */
export function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}
