// Every read and write goes through the daemon's API. With FTQ_API_TOKEN set the daemon answers 401 until the
// page sends the token: the page then asks for it once and keeps it in sessionStorage (this tab only).

const TOKEN_KEY = "ftq-token";
let asking = null;

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

// One prompt however many requests met the 401 at once; `refused` says the token sent was wrong.
export function askToken() {
  if (!asking) {
    asking = promptToken(token() != null).finally(() => {
      asking = null;
    });
  }
  return asking;
}

function promptToken(refused) {
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-refused").hidden = !refused;
  input.value = "";
  return new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      form.removeEventListener("submit", submit);
      dialog.close();
      resolve(value);
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without it
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

async function send(path, { method = "GET", body, accept = "application/json" } = {}) {
  for (;;) {
    const headers = { ...authHeaders(), Accept: accept };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      await askToken();
      continue;
    }
    if (!response.ok) {
      let detail = null;
      try {
        detail = (await response.json()).detail;
      } catch {
        detail = null;
      }
      throw new ApiError(response.status, typeof detail === "string" ? detail : `${method} ${path}: HTTP ${response.status}`);
    }
    return response;
  }
}

export async function getJson(path) {
  return (await send(path)).json();
}

export async function postJson(path, body) {
  return (await send(path, { method: "POST", body })).json();
}

export async function getText(path) {
  return (await send(path, { accept: "text/plain" })).text();
}
