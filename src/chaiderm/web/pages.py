"""Server-rendered pages: plain HTML and a little JavaScript over the JSON API."""

VIEWER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chaiderm evidence viewer</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#263238;color:#fff;padding:.7rem 1.2rem}header h1{font-size:1.2rem;margin:0}
main{padding:1rem 1.2rem;max-width:1300px}
#drop{border:2px dashed #90a4ae;border-radius:8px;padding:1.2rem;text-align:center;background:#fafafa}
#drop.over{background:#e3f2fd}.controls{display:flex;gap:1.5rem;align-items:center;margin:.8rem 0;flex-wrap:wrap}
#prob{font-size:1.5rem;font-weight:600}#error{color:#b00020;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:150px;font-size:.8rem;border:1px solid #ddd;border-radius:6px;padding:5px;cursor:pointer;background:#fff}
.card img{width:140px;height:140px;object-fit:cover;border:4px solid #ccc;box-sizing:border-box}
.card.mel img{border-color:#d00}.card.sel{outline:3px solid #1976d2}
.card button{font-size:.75rem;margin-top:3px}.card button.on{background:#1976d2;color:#fff}
.pair{display:flex;gap:16px;margin-top:1rem}.stack{position:relative;width:256px;height:256px}
.stack img{position:absolute;left:0;top:0;width:256px;height:256px}
</style></head><body>
<header><h1>chaiderm: evidence viewer</h1></header>
<main>
<div id="drop">Drop a dermoscopic image here, or <input type="file" id="file" accept="image/jpeg,image/png">
 or pick an archive case: <select id="archive"><option value="">(archive)</option></select></div>
<div class="controls">
 <div>k = <input type="range" id="k" min="3" max="40" value="10"> <span id="kval">10</span></div>
 <div id="prob"></div><div id="error" role="alert"></div>
</div>
<h2 id="nh" hidden>Nearest archive cases (red border: melanoma)</h2>
<div class="grid" id="neighbors"></div>
<div id="evidence" hidden><h2>Query / result activation maps <small id="evlabel"></small></h2>
 <div>map opacity <input type="range" id="opacity" min="0" max="100" value="60"></div>
 <div class="pair">
  <div><div>query + QAM</div><div class="stack"><img id="qimg" alt="query"><img id="qam" class="map" alt="QAM"></div></div>
  <div><div>result + RAM</div><div class="stack"><img id="rimg" alt="result"><img id="ram" class="map" alt="RAM"></div></div>
 </div></div>
</main>
<script>
let current = null, selected = null;
const judged = {};  // "query_id/image_id" -> "1" | "0": survives re-rendering with another k
const $ = (id) => document.getElementById(id);
function showError(msg) { $("error").textContent = msg || ""; }
async function send(form) {
  showError("");
  form.append("k", $("k").value);
  const r = await fetch("/api/query", {method: "POST", body: form});
  const body = await r.json();
  if (!r.ok) { showError(body.detail || ("error " + r.status)); return; }
  render(body);
}
async function reQuery() {
  if (!current) return;
  const r = await fetch(`/api/query/${current.query_id}?k=${$("k").value}`);
  const body = await r.json();
  if (!r.ok) { showError(body.detail); return; }
  render(body);
}
function render(q) {
  current = q;
  $("prob").textContent = `melanoma probability ${(q.melanoma_probability).toFixed(2)} (k = ${q.k})`;
  $("nh").hidden = false;
  const grid = $("neighbors"); grid.innerHTML = "";
  q.neighbors.forEach((n) => {
    const c = document.createElement("div");
    c.className = "card" + (n.diagnosis === "melanoma" ? " mel" : "");
    c.dataset.imageId = n.image_id;
    c.innerHTML = `<img src="${n.image_url}" alt="${n.image_id}"><div>#${n.rank} ${n.diagnosis}</div>
      <div>${n.group ?? "-"} &middot; d=${n.distance.toPrecision(3)}</div>
      <button class="sim" data-rel="1">similar</button> <button class="sim" data-rel="0">not similar</button>`;
    c.addEventListener("click", (ev) => { if (!ev.target.classList.contains("sim")) select(n, c); });
    c.querySelectorAll("button.sim").forEach((b) => {
      b.addEventListener("click", () => judge(n, b, c));
      if (judged[q.query_id + "/" + n.image_id] === b.dataset.rel) { b.classList.add("on"); c.dataset.judged = b.dataset.rel; }
    });
    grid.appendChild(c);
  });
  if (q.neighbors.length) select(q.neighbors[0], grid.firstChild);
}
function select(n, card) {
  document.querySelectorAll(".card.sel").forEach((e) => e.classList.remove("sel"));
  card.classList.add("sel"); selected = n;
  $("evidence").hidden = false;
  $("evlabel").textContent = `#${n.rank} ${n.image_id} (${n.diagnosis})`;
  $("qimg").src = current.query_image_url; $("qam").src = n.qam_url;
  $("rimg").src = n.image_url; $("ram").src = n.ram_url;
  setOpacity();
}
async function judge(n, button, card) {
  const r = await fetch("/api/feedback", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({query_id: current.query_id, image_id: n.image_id, relevant: button.dataset.rel === "1"})});
  if (!r.ok) { showError((await r.json()).detail); return; }
  card.querySelectorAll("button.sim").forEach((b) => b.classList.remove("on"));
  button.classList.add("on"); card.dataset.judged = button.dataset.rel;
  judged[current.query_id + "/" + n.image_id] = button.dataset.rel;
}
function setOpacity() { document.querySelectorAll("img.map").forEach((m) => m.style.opacity = $("opacity").value / 100); }
$("opacity").addEventListener("input", setOpacity);
$("k").addEventListener("input", () => { $("kval").textContent = $("k").value; });
$("k").addEventListener("change", reQuery);
$("file").addEventListener("change", () => { const f = new FormData(); f.append("image", $("file").files[0]); send(f); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  const f = new FormData(); f.append("image", e.dataTransfer.files[0]); send(f); });
$("archive").addEventListener("change", () => { if (!$("archive").value) return;
  const f = new FormData(); f.append("archive_id", $("archive").value); send(f); });
fetch("/api/archive").then((r) => r.json()).then((items) => items.forEach((it) => {
  const o = document.createElement("option"); o.value = it.image_id; o.textContent = `${it.image_id} (${it.diagnosis})`;
  $("archive").appendChild(o); }));
</script></body></html>
"""

ANNOTATE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chaiderm annotate</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}
aside{width:300px;padding:1rem;background:#f5f5f5;overflow:auto;border-right:1px solid #ddd}
main{flex:1;padding:1rem;overflow:auto}.grid{display:flex;flex-wrap:wrap;gap:8px}
.img{width:130px;font-size:.75rem;text-align:center;cursor:pointer;border:3px solid transparent;border-radius:4px}
.img img{width:124px;height:124px;object-fit:cover}.img.sel{border-color:#1976d2}.img.done{opacity:.55}
.group{display:flex;justify-content:space-between;padding:4px 6px;margin:2px 0;background:#fff;border:1px solid #ddd;
border-radius:4px;cursor:pointer}.group:hover{background:#e3f2fd}.key{color:#888;margin-right:6px}
#msg{color:#b00020;min-height:1.2em}input,select,button{font-size:.85rem}
</style></head><body>
<aside>
<h2>Similarity groups</h2>
<div id="diseaseBox">disease: <select id="disease"></select></div>
<p id="progress"></p>
<div><input id="newName" placeholder="new group name"> <button id="create">create</button></div>
<div id="groups"></div>
<h3>Rename / merge</h3>
<div><select id="g1"></select> &rarr; <input id="rename" placeholder="new name"> <button id="doRename">rename</button></div>
<div><select id="m1"></select> into <select id="m2"></select> <button id="doMerge">merge</button></div>
<p><small>Click an image, then a group (or press 1-9; 0 removes it). Arrow keys move between images.
Everything is saved as you go.</small></p>
<div id="msg" role="alert"></div>
</aside>
<main><div class="grid" id="images"></div></main>
<script>
const $ = (id) => document.getElementById(id);
let st = null, sel = 0;
async function api(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const j = await r.json(); $("msg").textContent = r.ok ? "" : (j.detail || "error"); return r.ok;
}
async function load() {
  const d = $("disease").value;
  const r = await fetch("/api/state" + (d ? "?disease=" + encodeURIComponent(d) : ""));
  st = await r.json();
  if (!$("disease").options.length) {
    st.diseases.forEach((x) => { const o = document.createElement("option"); o.value = o.textContent = x; $("disease").appendChild(o); });
    if (st.mode !== "hierarchical") $("diseaseBox").hidden = true;
    if (st.mode === "hierarchical") return load();
  }
  render();
}
function render() {
  $("progress").textContent = `${st.assigned} of ${st.total} images grouped (${st.mode})`;
  const gl = $("groups"); gl.innerHTML = "";
  ["g1", "m1", "m2"].forEach((id) => $(id).innerHTML = "");
  st.groups.forEach((g, i) => {
    const div = document.createElement("div"); div.className = "group"; div.dataset.group = g.name;
    div.innerHTML = `<span><span class="key">${i < 9 ? i + 1 : ""}</span>${g.name}</span><span>${g.count}</span>`;
    div.addEventListener("click", () => assign(g.name)); gl.appendChild(div);
    ["g1", "m1", "m2"].forEach((id) => { const o = document.createElement("option"); o.value = o.textContent = g.name; $(id).appendChild(o); });
  });
  const grid = $("images"); grid.innerHTML = "";
  st.images.forEach((im, i) => {
    const div = document.createElement("div");
    div.className = "img" + (i === sel ? " sel" : "") + (im.group ? " done" : "");
    div.dataset.imageId = im.image_id;
    div.innerHTML = `<img loading="lazy" src="/api/thumb/${encodeURIComponent(im.image_id)}" alt="${im.image_id}"><div>${im.image_id}</div><div>${im.group || "&nbsp;"}</div>`;
    div.addEventListener("click", () => { sel = i; render(); }); grid.appendChild(div);
  });
}
async function assign(group) {
  const im = st.images[sel]; if (!im) return;
  if (await api("/api/assign", {image_id: im.image_id, group: group})) {
    sel = Math.min(sel + 1, st.images.length - 1); await load(); }
}
$("create").addEventListener("click", async () => {
  const name = $("newName").value.trim(); if (!name) return;
  if (await api("/api/groups", {name: name, disease: $("disease").value || null})) { $("newName").value = ""; load(); }
});
$("doRename").addEventListener("click", async () => { if (await api("/api/groups/rename", {old: $("g1").value, new: $("rename").value.trim()})) load(); });
$("doMerge").addEventListener("click", async () => { if (await api("/api/groups/merge", {source: $("m1").value, target: $("m2").value})) load(); });
$("disease").addEventListener("change", () => { sel = 0; load(); });
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  if (e.key === "ArrowRight") { sel = Math.min(sel + 1, st.images.length - 1); render(); }
  else if (e.key === "ArrowLeft") { sel = Math.max(sel - 1, 0); render(); }
  else if (e.key === "0") assign(null);
  else if (/^[1-9]$/.test(e.key) && st.groups[+e.key - 1]) assign(st.groups[+e.key - 1].name);
});
load();
</script></body></html>
"""
