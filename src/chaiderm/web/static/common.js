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

async function request(url, options) {
  let r;
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
    throw new Error(`Error ${r.status}: ${detail}`);
  }
  if (body === null) throw new Error(`Error: the server answered ${r.status} without a readable result`);
  return body;
}
