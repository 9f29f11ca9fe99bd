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

// ---- selecting faces: click, shift-click for a range, all on the page ------------------------
const faces = Array.from(document.querySelectorAll(".faces.selectable .face"));
let anchor = null;

function selected() {
  return faces.filter((f) => f.classList.contains("selected")).map((f) => parseInt(f.dataset.face, 10));
}

function refreshCount() {
  const n = selected().length;
  for (const c of document.querySelectorAll("[data-count]")) {
    c.textContent = n + " selected";
  }
}

function setSelected(face, on) {
  face.classList.toggle("selected", on);
  face.setAttribute("aria-selected", on ? "true" : "false");
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

for (const button of document.querySelectorAll("[data-select]")) {
  button.addEventListener("click", () => {
    const on = button.dataset.select === "all";
    faces.forEach((f) => setSelected(f, on));
    anchor = null;
    refreshCount();
  });
}

function needFaces() {
  const ids = selected();
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
