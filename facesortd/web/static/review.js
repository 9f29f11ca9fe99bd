// facesortd review page: face selection and the actions, sent to the JSON API (/api/...).
// No framework and no build step; the page works offline.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;

function say(text, isError) {
  const box = document.getElementById("status");
  box.textContent = text;
  box.className = isError ? "error" : "ok";
  box.hidden = false;
}

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: response.statusText}; }
  if (!response.ok) {
    throw new Error(data.error || ("HTTP " + response.status));
  }
  return data;
}

async function act(work, done) {
  document.body.classList.add("busy");
  try {
    const data = await work();
    sessionStorage.removeItem(selKey);   // the selection was used up
    if (done) { done(data); } else { location.reload(); }
  } catch (err) {
    say(err.message, true);
  } finally {
    document.body.classList.remove("busy");
  }
}

// ---- picking a person: "Alice #12", "#12", "12", or a name shown in the list -----------------
const list = document.getElementById("people-list");
let lastQuery = null;
let listed = Promise.resolve();   // the list for lastQuery, once it has come back

function suggestPeople(input) {
  const q = input.value.replace(/#\d*\s*$/, "").trim();
  if (!list || q === lastQuery) { return listed; }
  lastQuery = q;
  listed = fetch("/api/identities?q=" + encodeURIComponent(q), {credentials: "same-origin"})
    .then((response) => (response.ok ? response.json() : null))
    .then((data) => {
      if (!data || q !== lastQuery) { return; }   // a later query's answer wins
      list.replaceChildren(...data.identities.map((p) => {
        const option = document.createElement("option");
        option.value = p.display_name + " #" + p.id;
        option.label = p.face_count + " faces";
        return option;
      }));
    })
    .catch(() => {});
  return listed;
}

async function targetId(input) {
  const text = input.value.trim();
  const m = text.match(/^#?(\d+)$/) || text.match(/#(\d+)\s*$/);
  if (m) { return parseInt(m[1], 10); }
  if (list) {
    await suggestPeople(input);   // a name typed and sent at once: wait for its list
    for (const option of list.options) {
      if (option.value.replace(/\s*#\d+$/, "") === text) {
        return parseInt(option.value.match(/#(\d+)$/)[1], 10);
      }
    }
  }
  throw new Error("choose a person from the list (or type #id)");
}

for (const input of document.querySelectorAll("input[list=people-list]")) {
  input.addEventListener("input", () => suggestPeople(input));
  input.addEventListener("focus", () => suggestPeople(input));
}

// ---- the photo view: each face box placed in per cent of the photo (the CSP allows no inline style)
for (const box of document.querySelectorAll(".photo-frame .face.box")) {
  const [left, top, width, height] = box.dataset.pct.split(" ");
  Object.assign(box.style, {left: left + "%", top: top + "%", width: width + "%", height: height + "%"});
}

// ---- selecting faces: click, shift-click for a range, all on the page ------------------------
// The selection is kept per page path (a person's pages share one) for the browser tab's life,
// so faces picked on page 1 and page 3 of a person move together.
const faces = Array.from(document.querySelectorAll(".faces.selectable .face"));
const selKey = "facesortd-selection:" + location.pathname;
let anchor = null;
let chosen = new Set();
try { chosen = new Set(JSON.parse(sessionStorage.getItem(selKey) || "[]")); } catch (e) { chosen = new Set(); }

function selected() {
  return Array.from(chosen);
}

function refreshCount() {
  const onPage = faces.filter((f) => chosen.has(parseInt(f.dataset.face, 10))).length;
  const elsewhere = chosen.size - onPage;
  for (const c of document.querySelectorAll("[data-count]")) {
    c.textContent = chosen.size + " selected" + (elsewhere ? " (" + elsewhere + " on other pages)" : "");
  }
}

function setSelected(face, on) {
  face.classList.toggle("selected", on);
  face.setAttribute("aria-selected", on ? "true" : "false");
  const id = parseInt(face.dataset.face, 10);
  if (on) { chosen.add(id); } else { chosen.delete(id); }
  sessionStorage.setItem(selKey, JSON.stringify(Array.from(chosen)));
}

faces.forEach((face, index) => {
  face.tabIndex = 0;
  face.setAttribute("aria-selected", "false");
  face.addEventListener("click", (event) => {
    if (event.target.closest("a")) { return; }   // the photo link opens the photo
    event.preventDefault();
    if (event.shiftKey && anchor !== null) {
      const [lo, hi] = [Math.min(anchor, index), Math.max(anchor, index)];
      const on = !face.classList.contains("selected") || faces[anchor].classList.contains("selected");
      for (let i = lo; i <= hi; i++) { setSelected(faces[i], on); }
    } else {
      setSelected(face, !face.classList.contains("selected"));
    }
    anchor = index;
    refreshCount();
  });
  face.addEventListener("keydown", (event) => {
    if (event.key === " " || event.key === "Enter") { event.preventDefault(); face.click(); }
  });
});

faces.forEach((f) => { if (chosen.has(parseInt(f.dataset.face, 10))) { setSelected(f, true); } });
refreshCount();

for (const button of document.querySelectorAll("[data-select]")) {
  button.addEventListener("click", () => {
    const on = button.dataset.select === "all";
    if (!on) { chosen.clear(); }
    faces.forEach((f) => setSelected(f, on));
    anchor = null;
    refreshCount();
  });
}

function needFaces() {
  const ids = selected();
  const focused = document.activeElement && document.activeElement.closest(".faces.selectable .face");
  if (!ids.length && focused) { return [parseInt(focused.dataset.face, 10)]; }   // keyboard: the face in focus
  if (!ids.length) { throw new Error("select one or more faces first"); }
  return ids;
}

// ---- the actions ------------------------------------------------------------------------------
const handlers = {
  "recluster": () => act(() => api("/api/recluster"),
    () => say("Recluster started: reload in a moment to see the new groups.")),
  "undo": () => act(() => api("/api/undo")),
  "logout": () => act(() => api("/logout"), () => location.assign("/login")),
  "move": (button) => act(async () => {
    const input = button.closest("[data-toolbar]").querySelector("[data-target]");
    return api("/api/faces/move", {faces: needFaces(), to: await targetId(input)});
  }),
  "move-new": () => act(() => api("/api/faces/move", {faces: needFaces(), to: "new"}),
    (data) => location.assign("/people/" + data.identity)),
  "not-this-person": () => act(() => api("/api/faces/not-this-person", {faces: needFaces()})),
  "reject": () => act(() => api("/api/faces/reject", {faces: needFaces()})),
  "confirm": () => act(() => api("/api/faces/confirm", {faces: needFaces()})),
  "hide": (button) => act(() => api("/api/identities/" + button.closest("[data-identity]").dataset.identity + "/hide")),
  "unhide": (button) => act(() => api("/api/identities/" + button.closest("[data-identity]").dataset.identity + "/unhide")),
  "accept": (button) => act(() => api("/api/suggestions/" + button.closest("[data-suggestion]").dataset.suggestion + "/accept")),
  "dismiss": (button) => act(() => api("/api/suggestions/" + button.closest("[data-suggestion]").dataset.suggestion + "/dismiss")),
};

for (const button of document.querySelectorAll("button[data-action]")) {
  button.addEventListener("click", () => handlers[button.dataset.action](button));
}

const head = document.querySelector(".person-head");
if (head) {
  const identity = head.dataset.identity;
  head.querySelector('[data-form="rename"]').addEventListener("submit", (event) => {
    event.preventDefault();
    const name = head.querySelector("[data-name]").value;
    act(() => api("/api/identities/" + identity + "/rename", {name: name}));
  });
  head.querySelector('[data-form="merge"]').addEventListener("submit", (event) => {
    event.preventDefault();
    act(async () => {
      const into = await targetId(head.querySelector("[data-merge-target]"));
      return api("/api/identities/" + identity + "/merge", {into: into});
    }, (data) => location.assign("/people/" + data.identity));
  });
}

for (const input of document.querySelectorAll("[data-toolbar] [data-target]")) {
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      input.closest("[data-toolbar]").querySelector('[data-action="move"]').click();
    }
  });
}

// ---- the review queue: one face per row, its person and the nearest other person -------------
const rows = Array.from(document.querySelectorAll(".review-row"));
const posKey = "facesortd-review-position";

function reviewAct(row, what) {
  const face = parseInt(row.dataset.face, 10);
  sessionStorage.setItem(posKey, String(rows.indexOf(row)));   // the next row takes its place
  if (what === "confirm") { return act(() => api("/api/faces/confirm", {faces: [face]})); }
  if (what === "move") {
    if (!row.dataset.candidate) { say("no other person near this face: use its person's page", true); return null; }
    return act(() => api("/api/faces/move", {faces: [face], to: parseInt(row.dataset.candidate, 10)}));
  }
  return act(() => api("/api/faces/not-this-person", {faces: [face]}));
}

for (const button of document.querySelectorAll("[data-review-action]")) {
  button.addEventListener("click", () => reviewAct(button.closest(".review-row"), button.dataset.reviewAction));
}
if (rows.length) {
  const pos = parseInt(sessionStorage.getItem(posKey) || "0", 10);
  sessionStorage.removeItem(posKey);
  rows[Math.min(Math.max(pos, 0), rows.length - 1)].focus();
}

// ---- keyboard shortcuts; "?" lists them ------------------------------------------------------
const KEYS = [
  ["j  →", "next face"], ["k  ←", "previous face"], ["x  space", "select / unselect the face"],
  ["c", "confirm: the face is right where it is"], ["m", "move: to the other person (review), else to the person typed"],
  ["n", "new person from the selected faces"], ["t", "not this person"], ["d", "not a face"],
  ["u", "undo the last correction"], ["Esc", "clear the selection / close this list"], ["?", "this list"],
];

function overlay() {
  let box = document.getElementById("keys");
  if (!box) {
    box = document.createElement("div");
    box.id = "keys";
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-label", "keyboard shortcuts");
    const table = document.createElement("table");
    for (const [key, what] of KEYS) {
      const tr = table.insertRow();
      tr.insertCell().textContent = key;
      tr.insertCell().textContent = what;
    }
    const title = document.createElement("h2");
    title.textContent = "Keyboard shortcuts";
    box.append(title, table);
    box.hidden = true;
    document.body.append(box);
  }
  return box;
}

function items() { return rows.length ? rows : faces; }

function step(delta) {
  const list = items();
  if (!list.length) { return; }
  const at = list.indexOf(document.activeElement);
  const next = at < 0 ? 0 : Math.min(Math.max(at + delta, 0), list.length - 1);
  list[next].focus();
  list[next].scrollIntoView({block: "nearest"});
}

function clickAction(name) {
  const button = document.querySelector('button[data-action="' + name + '"]');
  if (button) { button.click(); }
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) { return; }
  if (event.target.closest && event.target.closest("input, textarea, select")) {
    if (event.key === "Escape") { event.target.blur(); }
    return;
  }
  const row = document.activeElement && document.activeElement.closest && document.activeElement.closest(".review-row");
  const key = event.key;
  const box = overlay();
  let handled = true;
  if (key === "?") { box.hidden = !box.hidden; }
  else if (key === "Escape") { if (!box.hidden) { box.hidden = true; } else { const b = document.querySelector('[data-select="none"]'); if (b) { b.click(); } } }
  else if (key === "j" || key === "ArrowRight") { step(1); }
  else if (key === "k" || key === "ArrowLeft") { step(-1); }
  else if (key === "x" && document.activeElement.classList.contains("face")) { document.activeElement.click(); }
  else if (key === "u") { clickAction("undo"); }
  else if (row && key === "c") { reviewAct(row, "confirm"); }
  else if (row && key === "m") { reviewAct(row, "move"); }
  else if (row && key === "t") { reviewAct(row, "not-this-person"); }
  else if (!rows.length && key === "c") { clickAction("confirm"); }
  else if (!rows.length && key === "m") { const input = document.querySelector("[data-toolbar] [data-target]"); if (input) { input.focus(); } }
  else if (!rows.length && key === "n") { clickAction("move-new"); }
  else if (!rows.length && key === "t") { clickAction("not-this-person"); }
  else if (!rows.length && (key === "d" || key === "Delete")) { clickAction("reject"); }
  else { handled = false; }
  if (handled) { event.preventDefault(); }
});

// ---- the photo view: drag to draw a face the detector missed, then say who it is -------------
const frame = document.querySelector(".photo-frame");
const drawForm = document.querySelector('[data-form="draw"]');
if (frame && drawForm) {
  let start = null;
  let box = null;
  let drawn = null;
  const at = (event) => {
    const r = frame.getBoundingClientRect();
    return [Math.min(Math.max((event.clientX - r.left) / r.width, 0), 1),
            Math.min(Math.max((event.clientY - r.top) / r.height, 0), 1)];
  };
  const place = (a, b) => {
    box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
    Object.assign(drawn.style, {left: box[0] * 100 + "%", top: box[1] * 100 + "%",
      width: (box[2] - box[0]) * 100 + "%", height: (box[3] - box[1]) * 100 + "%"});
  };
  frame.addEventListener("mousedown", (event) => {
    if (event.button !== 0 || event.target.closest(".face")) { return; }
    event.preventDefault();
    start = at(event);
    if (!drawn) { drawn = document.createElement("div"); drawn.className = "drawn"; frame.append(drawn); }
    drawn.hidden = false;
    place(start, start);
  });
  window.addEventListener("mousemove", (event) => { if (start) { place(start, at(event)); } });
  window.addEventListener("mouseup", (event) => {
    if (!start) { return; }
    place(start, at(event));
    start = null;
    drawForm.hidden = false;
    drawForm.querySelector("[data-draw-target]").focus();
  });
  const send = (to) => act(async () => {
    const w = parseFloat(frame.dataset.width), h = parseFloat(frame.dataset.height);
    const pixels = [box[0] * w, box[1] * h, box[2] * w, box[3] * h];
    return api("/api/images/" + frame.dataset.photo + "/faces", {box: pixels, to: await to()});
  });
  drawForm.addEventListener("submit", (event) => {
    event.preventDefault();
    send(() => targetId(drawForm.querySelector("[data-draw-target]")));
  });
  drawForm.querySelector("[data-draw-new]").addEventListener("click", () => send(async () => "new"));
  drawForm.querySelector("[data-draw-cancel]").addEventListener("click", () => {
    drawForm.hidden = true;
    if (drawn) { drawn.hidden = true; }
    box = null;
  });
}

// ---- the overview's "Export selected…": the people ticked, into a new dated folder -----------
const exportBar = document.querySelector("[data-export]");
if (exportBar) {
  const picks = Array.from(document.querySelectorAll("input[data-pick]"));
  const panel = exportBar.querySelector("[data-export-panel]");
  const result = exportBar.querySelector("[data-export-result]");
  const ticked = () => picks.filter((p) => p.checked).map((p) => Number(p.dataset.pick));
  const count = () => {
    exportBar.querySelector("[data-export-count]").textContent = ticked().length + " ticked";
  };
  picks.forEach((p) => p.addEventListener("change", count));
  count();
  exportBar.querySelector("[data-export-open]").addEventListener("click", () => {
    if (!ticked().length) { say("Tick the people to export first.", true); return; }
    panel.hidden = false;
  });
  exportBar.querySelector("[data-export-cancel]").addEventListener("click", () => { panel.hidden = true; });
  exportBar.querySelector("[data-export-start]").addEventListener("click", async () => {
    const layout = exportBar.querySelector("[data-export-layout]").value;
    document.body.classList.add("busy");
    try {
      let data = await api("/api/export", {people: ticked(), layout: layout});
      while (data.running) {   // a large export: how far it got, until it is done
        result.textContent = "exporting… " + data.done + " of " + data.total + " photo(s)";
        result.hidden = false;
        await new Promise((resolve) => setTimeout(resolve, 700));
        const response = await fetch(data.status_url, {credentials: "same-origin"});
        const next = await response.json().catch(() => ({error: response.statusText}));
        if (!response.ok) { throw new Error(next.error || ("HTTP " + response.status)); }
        data = next;
      }
      panel.hidden = true;
      result.textContent = "";
      const link = document.createElement("a");
      link.href = data.manifest_url;
      link.dataset.exportManifest = data.folder;
      link.textContent = "manifest.csv";
      result.append(data.photos + " photo(s) exported to " + data.path + " — ", link);
      if (data.missing.length || data.failed.length) {
        result.append(" (" + (data.missing.length + data.failed.length) + " could not be exported)");
      }
      result.hidden = false;
    } catch (err) {
      say(err.message, true);
    } finally {
      document.body.classList.remove("busy");
    }
  });
}
