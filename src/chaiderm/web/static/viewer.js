"use strict";
// The evidence viewer. Data from the server reaches the page only as text (textContent, attributes set
// one by one), never as HTML; and a failed request always clears the previous result, so what is on
// screen is the answer to the current query or nothing.
const judged = {};  // "query_id/image_id" -> "1" | "0": survives re-rendering with another k
let current = null;
let info = {positive_class: "melanoma"};
let me = {name: "local", role: "admin", sign_in: false};
let generation = 0;  // answers to superseded requests are dropped
// refinement of the current query: boxes drawn on it (pixels of the query image) and the marks applied
let boxes = [];
let applied = {region: "", similar: [], not_similar: []};
// the unrefined answer of the current query at each k and filter ("k|where" -> answer), so that a refined
// answer can be shown as the change it made
let firstAnswers = {};

const words = (s) => String(s).replaceAll("_", " ");
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}
function status(msg) { $("status").textContent = msg || ""; }

function clearResult() {
  current = null;
  $("result").hidden = true;
  $("evidence").hidden = true;
  $("neighbors").replaceChildren();
  $("dist").tBodies[0].replaceChildren();
  for (const id of ["qthumb", "qimg", "qam", "rimg", "ram"]) $(id).removeAttribute("src");
  for (const id of ["novelty", "summary", "prob", "predset", "qname", "evlabel", "change"]) $(id).textContent = "";
  $("novelty").className = "novelty";
  $("change").hidden = true;
}

async function run(url, options, name) {
  const mine = ++generation;
  clearResult();
  showError("");
  status("searching the archive\u2026");
  try {
    const q = await request(url, options);
    if (mine !== generation) return;
    render(q, name);
    status("");
  } catch (err) {
    if (mine !== generation) return;
    clearResult();
    status("");
    showError(err.message);
  }
}

function send(form, name) {
  boxes = []; applied = {region: "", similar: [], not_similar: []}; firstAnswers = {};
  form.append("k", $("k").value);
  if ($("where").value.trim()) form.append("where", $("where").value.trim());
  run("/api/query", {method: "POST", body: form}, name);
}

function reQuery() {
  if (!current) return;
  const name = current.name;
  const where = $("where").value.trim();
  const params = new URLSearchParams({k: $("k").value});
  if (where) params.set("where", where);
  if (applied.region) params.set("region", applied.region);
  if (applied.similar.length) params.set("similar", applied.similar.join(","));
  if (applied.not_similar.length) params.set("not_similar", applied.not_similar.join(","));
  run(`/api/query/${encodeURIComponent(current.query_id)}?${params}`, undefined, name);
}

// boxes: drawn on a canvas over the query, kept in the query image's own pixels
function drawBoxes(extra) {
  const cv = $("qdraw"), ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.lineWidth = 2;
  for (const b of extra ? [...boxes, extra] : boxes) {
    const f = cv.width / ($("qthumb").naturalWidth || cv.width);
    ctx.strokeStyle = "#00e5ff";
    ctx.strokeRect(b[0] * f, b[1] * f, (b[2] - b[0]) * f, (b[3] - b[1]) * f);
  }
  $("regionsearch").disabled = !boxes.length;
  $("regionclear").disabled = !boxes.length && !applied.region;
}

function boxFrom(a, b) {
  const cv = $("qdraw"), scale = ($("qthumb").naturalWidth || cv.width) / cv.clientWidth;
  const clamp = (v, hi) => Math.max(0, Math.min(hi, Math.round(v * scale)));
  const hi = $("qthumb").naturalWidth || cv.width;
  return [clamp(Math.min(a.x, b.x), hi), clamp(Math.min(a.y, b.y), hi), clamp(Math.max(a.x, b.x), hi), clamp(Math.max(a.y, b.y), hi)];
}

function setupDrawing() {
  const cv = $("qdraw");
  let start = null;
  const at = (e) => { const r = cv.getBoundingClientRect(); return {x: e.clientX - r.left, y: e.clientY - r.top}; };
  cv.addEventListener("mousedown", (e) => { if (current) start = at(e); });
  cv.addEventListener("mousemove", (e) => { if (start) drawBoxes(boxFrom(start, at(e))); });
  window.addEventListener("mouseup", (e) => {
    if (!start) return;
    const b = boxFrom(start, at(e));
    start = null;
    if (b[2] - b[0] >= 4 && b[3] - b[1] >= 4) boxes.push(b);
    drawBoxes();
  });
}

function showRefinement() {
  const parts = [];
  if (applied.region) parts.push(`searching ${applied.region.split(";").length} boxed region(s)`);
  if (applied.similar.length || applied.not_similar.length) {
    parts.push(`refined: toward ${applied.similar.length} similar, away from ${applied.not_similar.length} not similar`);
  }
  $("refinestate").textContent = parts.join("; ");
  $("refinereset").disabled = !parts.length;
}

function refineWithMarks() {
  if (!current) return;
  const sim = [], dis = [];
  for (const [key, rel] of Object.entries(judged)) {
    const [qid, iid] = [key.slice(0, key.indexOf("/")), key.slice(key.indexOf("/") + 1)];
    if (qid !== current.query_id) continue;
    (rel === "1" ? sim : dis).push(iid);
  }
  if (!sim.length && !dis.length) {
    showError("Mark some neighbours \"similar\" or \"not similar\" first; refining moves the search toward and away from them.");
    return;
  }
  applied.similar = sim; applied.not_similar = dis;
  reQuery();
}

// the vote's answer: the diagnosis with the largest vote share, and how many of the neighbours have it
function answerOf(q) {
  const n = q.neighbors.length;
  const shares = Object.entries(q.class_probabilities).sort((a, b) => b[1] - a[1]);
  const count = (d) => q.neighbors.filter((x) => x.diagnosis === d).length;
  const [top, share] = shares.length ? shares[0] : ["", 0];
  const tied = shares.filter(([d, p]) => d !== top && p === share && p > 0).map(([d]) => d);
  return {top, share, tied, count: count(top), n, pos: q.class_probabilities[q.positive_class] ?? 0,
    posCount: count(q.positive_class)};
}

function answerWords(a) { return `${a.count} of ${a.n} ${words(a.top)}`; }

function headline(a) {
  if (!a.n) return "no archive case to compare with";
  const tie = a.tied.length ? `, tied with ${a.tied.map(words).join(", ")}` : "";
  return `${a.count} of ${a.n} nearest cases: ${words(a.top)} (vote share ${a.share.toFixed(2)}${tie})`;
}

const answerKey = (q) => `${q.k}|${q.where || ""}`;
const isRefined = (q) => Boolean(q.region || (q.similar || []).length || (q.not_similar || []).length);

// a refined answer says what the refinement changed, as plainly as the answer itself
function showChange(q, before) {
  const now = answerOf(q);
  const what = [];
  if (q.region) what.push(q.region.split(";").length === 1 ? "the boxed region" : "the boxed regions");
  const marks = (q.similar || []).length + (q.not_similar || []).length;
  if (marks) what.push(plural(marks, "mark", "marks"));
  const who = what.join(" and ");
  const line = before.top !== now.top
    ? `${who} moved the answer from ${answerWords(before)} to ${answerWords(now)}`
    : `${who} left the answer at ${words(now.top)}: ${before.count} of ${before.n} before, ${now.count} of ${now.n} now`;
  const pos = words(q.positive_class);
  $("change").replaceChildren(document.createTextNode(line.charAt(0).toUpperCase() + line.slice(1)),
    el("span", {class: "before"}, `${pos} vote share ${before.pos.toFixed(2)} before, ${now.pos.toFixed(2)} now ` +
      "(\u201cback to the first answer\u201d undoes it)"));
  $("change").hidden = false;
}

async function compareWithFirst(q) {
  const key = answerKey(q);
  let before = firstAnswers[key];
  if (!before) {  // refined at a k or filter never asked unrefined: ask for that answer once
    const params = new URLSearchParams({k: String(q.k)});
    if (q.where) params.set("where", q.where);
    try {
      before = answerOf(await request(`/api/query/${encodeURIComponent(q.query_id)}?${params}`));
    } catch (err) {
      if (current === q) { $("change").textContent = "The first answer could not be fetched to compare: " + err.message; $("change").hidden = false; }
      return;
    }
    firstAnswers[key] = before;
  }
  if (current === q) showChange(q, before);
}

function render(q, name) {
  current = q;
  current.name = name;
  const pos = q.positive_class;
  $("result").hidden = false;
  $("qthumb").src = q.query_image_url;
  applied = {region: q.region || "", similar: q.similar || [], not_similar: q.not_similar || []};
  drawBoxes();
  showRefinement();
  $("qname").textContent = "query: " + name;
  const answer = answerOf(q);
  // the novelty comes first, in words; a query unlike the archive never shows a bare vote
  const u = q.uncertainty || {};
  const unlike = u.unlike_archive === true;
  $("novelty").className = unlike ? "novelty unlike" : "novelty";
  $("novelty").textContent = unlike
    ? `${u.novelty_words.charAt(0).toUpperCase()}${u.novelty_words.slice(1)}. The cases below are only the closest there are, not a diagnosis.`
    : "Novelty: " + (u.novelty_words || "unknown");
  $("summary").textContent = (unlike ? "Closest cases only (unlike the archive): " : "") +
    (isRefined(q) ? "Refined: " : "") + headline(answer) + (q.where ? ` among cases where ${q.where}` : "");
  if (isRefined(q)) compareWithFirst(q); else firstAnswers[answerKey(q)] = answer;
  const weighed = q.vote === "distance";
  const cal = u.calibrated_probabilities || null;
  $("prob").textContent = `${words(pos)}: vote share ${answer.pos.toFixed(2)} ` +
    `(${answer.posCount} of ${answer.n} nearest cases${weighed ? "; closer cases weigh more" : ""})` +
    (cal && pos in cal ? `; calibrated probability ${cal[pos].toFixed(2)}` : "");
  // a set is withheld (set_words says why) for an image unlike the archive: its guarantee does not hold there
  $("predset").textContent = !u.set_words ? "" : u.prediction_set
    ? `Prediction set: ${u.set_words.replaceAll("_", " ")} (holds the true diagnosis of ${Math.round(u.set_level * 100)}% of held-out cases like the archive's)`
    : `Prediction set: ${u.set_words}`;
  $("votenote").textContent = weighed
    ? "The vote share of a diagnosis is its share among the k most similar archive cases, each case weighed by its closeness (1 / squared distance): a k-nearest-neighbour vote, not a calibrated risk."
    : "The vote share of a diagnosis is its share among the k most similar archive cases (a k-nearest-neighbour vote), not a calibrated risk.";
  const body = $("dist").tBodies[0];
  for (const [d, p] of Object.entries(q.class_probabilities)) {
    const tr = el("tr", d === pos ? {class: "pos"} : {});
    const count = q.neighbors.filter((n) => n.diagnosis === d).length;
    tr.append(el("td", {}, words(d)), el("td", {}, String(count)), el("td", {}, p.toFixed(2)),
      el("td", {}, cal && d in cal ? cal[d].toFixed(2) : "\u2013"));
    body.append(tr);
  }
  $("poslegend").textContent = `red band: ${words(pos)}`;
  const scale = distanceScale(q);
  $("distlegend").textContent = scale.typical
    ? "distance to the query; orange tick: the archive's typical distance (a case to its 10th nearest case); shorter = more alike"
    : "distance to the query, against the furthest case shown; shorter = more alike";
  const grid = $("neighbors");
  q.neighbors.forEach((n) => grid.append(card(q, n, pos, scale)));
  if (q.neighbors.length) select(q.neighbors[0], grid.firstChild);
}

// distances mean little as bare numbers: each is set against the archive's typical neighbour distance
// (the bar's middle tick), or where the server gives none, against the furthest case shown
function distanceScale(q) {
  const typical = q.typical_distance > 0 ? q.typical_distance : null;
  const furthest = Math.max(...q.neighbors.map((n) => n.distance), 1e-12);
  return {typical, full: typical ? 2 * typical : furthest};
}

function distanceLine(n, scale) {
  const bar = el("span", {class: "dbar"});
  const fill = el("span", {class: "fill"});
  fill.style.width = `${Math.min(100, 100 * n.distance / scale.full).toFixed(0)}%`;  // CSSOM: allowed by the CSP
  bar.append(fill);
  if (scale.typical) bar.append(el("span", {class: "tick"}));
  const rel = scale.typical ? `${(n.distance / scale.typical).toFixed(1)}\u00d7 typical` : `d ${n.distance.toPrecision(2)}`;
  const line = el("div", {class: "dist", title: `distance ${n.distance.toPrecision(3)}` + (scale.typical
    ? `; the archive's typical distance from a case to its 10th nearest case is ${scale.typical.toPrecision(3)}` : "")});
  line.append(bar, el("span", {}, rel));
  return line;
}

// group ids often repeat the diagnosis ("seborrheic_keratosis/large-tan"): show the part that says more
function groupWords(n) {
  if (!n.group) return "";
  let g = String(n.group);
  if (g.startsWith(n.diagnosis + "/")) g = g.slice(n.diagnosis.length + 1);
  return g.replaceAll("_", " ").replaceAll("-", " ").replaceAll("/", " / ");
}

function card(q, n, pos, scale) {
  const c = el("div", {class: "card" + (n.diagnosis === pos ? " pos" : "")});
  c.dataset.imageId = n.image_id;
  const img = el("img", {src: n.image_url, alt: `archive case ${n.rank}`});
  img.addEventListener("error", () => { img.classList.add("missing"); img.alt = "image missing from the archive"; });
  const enlarge = el("button", {class: "zoom", type: "button"}, "enlarge");
  enlarge.addEventListener("click", (ev) => { ev.stopPropagation(); zoom(n); });
  c.append(img, el("div", {class: "dx"}, `#${n.rank} ${words(n.diagnosis)}`));
  if (n.group) c.append(el("div", {class: "grp", title: `group ${n.group}`}, "group: " + groupWords(n)));
  c.append(distanceLine(n, scale));
  const about = describeCase(n.metadata || {});
  if (about) c.append(el("div", {class: "meta"}, about));
  if (n.metadata && n.metadata.attribution) c.append(el("div", {class: "attr"}, "\u00a9 " + n.metadata.attribution));
  c.append(enlarge, el("br"));
  // everybody may mark cases to refine a search; only experts' (and admins') marks are recorded as feedback
  for (const [rel, label] of [["1", "similar"], ["0", "not similar"]]) {
    const b = el("button", {class: "sim", type: "button"}, label);
    b.dataset.rel = rel;
    b.addEventListener("click", (ev) => { ev.stopPropagation(); judge(n, b, c); });
    if (judged[q.query_id + "/" + n.image_id] === rel) { b.classList.add("on"); c.dataset.judged = rel; }
    c.append(b, document.createTextNode(" "));
  }
  c.addEventListener("click", () => select(n, c));
  return c;
}

// what the archive knows of a case, in words: "female, 55 y, back". Identifiers (patient, lesion) are
// never shown, whether or not the server still sends them.
function describeCase(m) {
  const parts = [];
  if (m.sex) parts.push(m.sex);
  if (m.age) parts.push(`${m.age} y`);
  if (m.site) parts.push(words(m.site));
  return parts.join(", ");
}

function zoom(n) {
  const img = $("zoomimg");
  img.removeAttribute("width");
  img.src = n.image_url;
  const m = n.metadata || {};
  const extra = [describeCase(m), m.attribution ? "\u00a9 " + m.attribution : "", m.license ? "licence " + m.license : ""]
    .filter((x) => x).join(" \u00b7 ");
  $("zoomcap").textContent = `#${n.rank} ${n.image_id}: ${words(n.diagnosis)}` + (n.group ? `, group ${n.group}` : "") +
    `, distance ${n.distance.toPrecision(3)}` + (extra ? " \u00b7 " + extra : "");
  $("zoom").showModal();
}

function mapUrl(url) { return url + (url.includes("?") ? "&" : "?") + "style=" + encodeURIComponent($("style").value); }

function select(n, c) {
  document.querySelectorAll(".card.sel").forEach((e) => e.classList.remove("sel"));
  c.classList.add("sel");
  current.selected = n;
  $("evidence").hidden = false;
  $("evlabel").textContent = `query and case #${n.rank}`;
  $("rcap").textContent = `case #${n.rank}: ${words(n.diagnosis)}`;
  $("qimg").src = current.query_image_url; $("qam").src = mapUrl(n.qam_url);
  $("rimg").src = n.image_url; $("ram").src = mapUrl(n.ram_url);
  setOpacity();
}

async function judge(n, button, c) {
  if (!current) return;
  const key = current.query_id + "/" + n.image_id;
  const records = me.role === "expert" || me.role === "admin";
  try {
    if (records) await request("/api/feedback", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({query_id: current.query_id, image_id: n.image_id, relevant: button.dataset.rel === "1"})});
  } catch (err) {
    showError(err.message + " (this judgement was not saved)");
    return;
  }
  showError("");
  c.querySelectorAll("button.sim").forEach((b) => b.classList.remove("on"));
  button.classList.add("on"); c.dataset.judged = button.dataset.rel;
  judged[key] = button.dataset.rel;
}

function setOpacity() { document.querySelectorAll("img.map").forEach((m) => { m.style.opacity = $("opacity").value / 100; }); }

async function loadMe() {
  try {
    me = await request("/api/me");
  } catch (err) {
    showError(err.message);
    return;
  }
  csrfToken = me.csrf_token;
  if (me.sign_in) {
    $("whoami").textContent = `${me.name} (${me.role})`;
    $("who").hidden = false;
  }
  if (me.role === "viewer") {
    $("markhint").textContent = "Your similar / not similar marks refine your search; only experts' marks are saved.";
  }
}

async function signOut() {
  try {
    await request("/api/session/end", {method: "POST"});
  } catch (err) {
    showError(err.message);
    return;
  }
  clearResult();
  window.location.assign("/login");
}

async function loadInfo() {
  try {
    info = await request("/api/info");
  } catch (err) {
    $("about").textContent = "model details unavailable: " + err.message;
    return;
  }
  const counts = Object.entries(info.diagnoses).map(([d, n]) => `${n} ${words(d)}`).join(", ");
  $("about").textContent = `model: ${info.model} (${info.logic}, ${info.backbone}) \u00b7 archive: ${info.archive} ` +
    `(${info.archive_size} cases: ${counts}) \u00b7 positive class: ${words(info.positive_class)}`;
  $("synthetic").hidden = !info.synthetic;
  const sel = $("archive");
  for (const it of info.cases) sel.append(el("option", {value: it.image_id}, `${it.image_id} (${words(it.diagnosis)})`));
}

document.addEventListener("DOMContentLoaded", () => {
  $("opacity").addEventListener("input", setOpacity);
  $("style").addEventListener("change", () => { if (current && current.selected) {
    $("qam").src = mapUrl(current.selected.qam_url); $("ram").src = mapUrl(current.selected.ram_url); } });
  $("k").addEventListener("input", () => { $("kval").textContent = $("k").value; });
  $("k").addEventListener("change", reQuery);
  $("where").addEventListener("change", reQuery);
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    if (!f) return;
    const form = new FormData(); form.append("image", f); send(form, f.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (!f) return;
    const form = new FormData(); form.append("image", f); send(form, f.name);
  });
  $("archive").addEventListener("change", () => {
    const id = $("archive").value;
    if (!id) return;
    const form = new FormData(); form.append("archive_id", id); send(form, "archive case " + id);
  });
  $("zoomclose").addEventListener("click", () => $("zoom").close());
  // shown at up to twice its own size (smooth), never stretched from a thumbnail into blocks
  $("zoomimg").addEventListener("load", () => {
    const img = $("zoomimg");
    if (img.naturalWidth) img.width = Math.min(2 * img.naturalWidth, Math.floor(Math.min(0.8 * innerWidth, 0.75 * innerHeight)));
  });
  $("signout").addEventListener("click", signOut);
  setupDrawing();
  $("regionsearch").addEventListener("click", () => { applied.region = boxes.map((b) => b.join(",")).join(";"); reQuery(); });
  $("regionclear").addEventListener("click", () => { boxes = []; drawBoxes(); if (applied.region) { applied.region = ""; reQuery(); } });
  $("refine").addEventListener("click", refineWithMarks);
  $("refinereset").addEventListener("click", () => { boxes = []; applied = {region: "", similar: [], not_similar: []}; drawBoxes(); reQuery(); });
  loadMe().then(loadInfo);
});
