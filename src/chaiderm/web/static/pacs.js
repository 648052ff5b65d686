"use strict";
// The viewer's PACS control (`chaiderm serve --dicomweb`): open a study by UID, query one of its images with
// the viewer's own `run` (the answer is drawn as any query's), and, for experts and admins, store the
// current answer back into the study. UIDs reach the page as text only.
let pacsQuery = null;  // the query id answered from the PACS and on screen now

async function pacsOpen() {
  const study = $("pacsstudy").value.trim();
  if (!study) return;
  $("pacsimages").replaceChildren();
  $("pacsnote").textContent = "asking the PACS\u2026";
  try {
    const s = await request(`/api/pacs/studies/${encodeURIComponent(study)}`);
    const other = Object.entries(s.skipped).map(([kind, n]) => `${n} ${kind}`).join(", ");
    $("pacsnote").textContent = `${s.images.length} dermoscopic image(s)` + (other ? `; not images to query: ${other}` : "");
    s.images.forEach((im, i) => {
      const b = el("button", {type: "button", title: im.instance}, `image ${i + 1} (${im.class})`);
      b.addEventListener("click", () => pacsQueryImage(study, im.instance, i + 1));
      $("pacsimages").append(b);
    });
  } catch (err) {
    $("pacsnote").textContent = "";
    showError(err.message);
  }
}

async function pacsQueryImage(study, instance, n) {
  const form = new FormData();
  form.append("study", study); form.append("instance", instance); form.append("k", $("k").value);
  boxes = []; applied = {region: "", similar: [], not_similar: []}; firstAnswers = {};
  pacsQuery = null; $("pacsstore").hidden = true;
  await run("/api/pacs/query", {method: "POST", body: form}, `PACS image ${n} of study ${study}`);
  if (current) {
    pacsQuery = current.query_id;
    $("pacsstore").hidden = !(me.role === "expert" || me.role === "admin");
  }
}

async function pacsStore() {
  if (!pacsQuery || !current || current.query_id !== pacsQuery) { showError("query a PACS image first"); return; }
  const form = new FormData(); form.append("query_id", pacsQuery);
  status("storing in the PACS\u2026");
  try {
    const r = await request("/api/pacs/store", {method: "POST", body: form});
    status(`stored ${r.stored.length} object(s) in study ${r.study}: a report and an evidence capture`);
  } catch (err) {
    status("");
    showError(err.message);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("pacsopen").addEventListener("click", pacsOpen);
  $("pacsstudy").addEventListener("keydown", (e) => { if (e.key === "Enter") pacsOpen(); });
  $("pacsstore").addEventListener("click", pacsStore);
  try {
    $("pacs").hidden = !(await request("/api/pacs")).configured;
  } catch (err) {
    $("pacs").hidden = true;
  }
});
