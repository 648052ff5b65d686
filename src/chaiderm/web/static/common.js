"use strict";
// Shared by the viewer and the annotator: build elements with text only, and fetch JSON with errors a
// person can read (a 500 page or a dropped connection is a message, never an exception).
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  if (text !== null) e.textContent = text;
  return e;
}

// the session's CSRF token (from /api/me), sent back on every write; the session itself is an HTTP-only cookie
let csrfToken = null;

async function request(url, options) {
  let r;
  options = Object.assign({}, options || {});
  if (csrfToken && options.method && options.method !== "GET") {
    options.headers = Object.assign({}, options.headers || {}, {"X-CSRF-Token": csrfToken});
  }
  try {
    r = await fetch(url, options);
  } catch (err) {
    throw new Error("The server could not be reached (" + err.message + "). Is it still running?");
  }
  const type = r.headers.get("content-type") || "";
  let body = null;
  if (type.includes("application/json")) {
    try { body = await r.json(); } catch (err) { body = null; }
  }
  if (!r.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    if (!detail) detail = r.status >= 500 ? "the server failed while answering" : r.statusText;
    if (r.status === 401 && url !== "/api/session") detail += ". Sign in again: reload this page";
    throw new Error(`Error ${r.status}: ${detail}`);
  }
  if (body === null) throw new Error(`Error: the server answered ${r.status} without a readable result`);
  return body;
}
