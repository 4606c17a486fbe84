// The console's pages (#playground, #status), the sign-in, and what the gateway says about access.

import { NotServed, Unauthorized, adminJSON, adminKey, forgetAdminKey, setAdminKey } from "./api.js";
import * as charts from "./charts.js";
import * as playground from "./playground.js";
import * as status from "./status.js";

const PAGES = ["playground", "status"];

function $(id) {
  return document.getElementById(id);
}

function showAccess(access) {
  const note = $("access-note");
  if (access === "loopback") {
    note.textContent =
      "No admin key is configured (auth.admin_keys): this console is open because the gateway listens on loopback only.";
    note.hidden = false;
  } else {
    note.hidden = true;
  }
  $("sign-out").hidden = access !== "admin_key";
}

function showOnly(id) {
  for (const name of ["login", ...PAGES]) $(name).hidden = name !== id;
  for (const name of PAGES) {
    const link = $(`nav-${name}`);
    if (name === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function askForKey(message) {
  status.stop();
  charts.stop();
  playground.reset();
  forgetAdminKey();
  showOnly("login");
  $("login-error").textContent = message || "";
  $("admin-key").focus();
}

async function route() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "playground";
  $("page-error").hidden = true;
  try {
    const first = await adminJSON("/admin/api/status");
    showAccess(first.access);
    if (page === "status") status.render(first);
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForKey(adminKey() ? error.message : "");
      return;
    }
    const shown = $("page-error");
    shown.textContent =
      error instanceof NotServed
        ? "The console's admin API is not served to this address (see auth.admin_keys)."
        : `The gateway did not answer: ${error.message}`;
    shown.hidden = false;
    return;
  }
  showOnly(page);
  if (page === "status") {
    status.start(askForKey, showAccess);
    charts.start(askForKey);
  } else {
    status.stop();
    charts.stop();
    try {
      await playground.load();
    } catch (error) {
      if (error instanceof Unauthorized) askForKey(error.message);
    }
  }
}

function main() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("admin-key").value.trim();
    if (!key) return;
    setAdminKey(key);
    $("admin-key").value = "";
    $("login-error").textContent = "";
    route();
  });
  $("sign-out").addEventListener("click", () => askForKey(""));
  playground.wire();
  window.addEventListener("hashchange", route);
  route();
}

main();
