"use strict";
// The annotator. Group names and ids are user data: they reach the page only as text.
let st = null, sel = 0;

async function api(path, body) {
  try {
    await request(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    $("msg").textContent = "";
    return true;
  } catch (err) { $("msg").textContent = err.message; return false; }
}

async function load() {
  const d = $("disease").value;
  try { st = await request("/api/state" + (d ? "?disease=" + encodeURIComponent(d) : "")); }
  catch (err) { $("msg").textContent = err.message; return; }
  if (!$("disease").options.length) {
    st.diseases.forEach((x) => $("disease").append(el("option", {value: x}, x)));
    if (st.mode !== "hierarchical") $("diseaseBox").hidden = true;
    if (st.mode === "hierarchical") return load();
  }
  render();
}

function render() {
  $("progress").textContent = `${st.assigned} of ${st.total} images grouped (${st.mode})`;
  const gl = $("groups"); gl.replaceChildren();
  ["g1", "m1", "m2"].forEach((id) => $(id).replaceChildren());
  st.groups.forEach((g, i) => {
    const div = el("div", {class: "group"});
    div.dataset.group = g.name;
    const name = el("span");
    name.append(el("span", {class: "key"}, i < 9 ? String(i + 1) : ""), document.createTextNode(g.name));
    div.append(name, el("span", {}, String(g.count)));
    div.addEventListener("click", () => assign(g.name));
    gl.append(div);
    ["g1", "m1", "m2"].forEach((id) => $(id).append(el("option", {value: g.name}, g.name)));
  });
  const grid = $("images"); grid.replaceChildren();
  st.images.forEach((im, i) => {
    const div = el("div", {class: "img" + (i === sel ? " sel" : "") + (im.group ? " done" : "")});
    div.dataset.imageId = im.image_id;
    div.append(el("img", {loading: "lazy", src: "/api/thumb/" + encodeURIComponent(im.image_id), alt: im.image_id}),
      el("div", {}, im.image_id), el("div", {}, im.group || "\u00a0"));
    div.addEventListener("click", () => { sel = i; render(); });
    grid.append(div);
  });
}

async function assign(group) {
  const im = st.images[sel]; if (!im) return;
  if (await api("/api/assign", {image_id: im.image_id, group: group})) {
    sel = Math.min(sel + 1, st.images.length - 1); await load(); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("create").addEventListener("click", async () => {
    const name = $("newName").value.trim(); if (!name) return;
    if (await api("/api/groups", {name: name, disease: $("disease").value || null})) { $("newName").value = ""; load(); }
  });
  $("doRename").addEventListener("click", async () => {
    if (await api("/api/groups/rename", {old: $("g1").value, new: $("rename").value.trim()})) load(); });
  $("doMerge").addEventListener("click", async () => {
    if (await api("/api/groups/merge", {source: $("m1").value, target: $("m2").value})) load(); });
  $("disease").addEventListener("change", () => { sel = 0; load(); });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || !st) return;
    if (e.key === "ArrowRight") { sel = Math.min(sel + 1, st.images.length - 1); render(); }
    else if (e.key === "ArrowLeft") { sel = Math.max(sel - 1, 0); render(); }
    else if (e.key === "0") assign(null);
    else if (/^[1-9]$/.test(e.key) && st.groups[+e.key - 1]) assign(st.groups[+e.key - 1].name);
  });
  load();
});
