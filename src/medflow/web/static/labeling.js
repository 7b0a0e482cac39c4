// The labeling workspace (/labeling/{set}): a reader works through the queue embedded in the
// page (#labeling-data), one image at a time from WADO-RS rendered frames (PS3.18 §10.4.1.1.3,
// windowed on the server with ?window=center,width,linear), drawn on a canvas with zoom and
// pan; regions are drawn over it in image pixel coordinates (column, row), the SCOORD space.
// A class button writes a label through POST /api/labels: without a region a Key Object
// Selection (replacing the item's earlier KOS class), with a box or polygon a TID 1500 SR.
// DELETE /api/labels/documents/{uid} takes a label back.

const data = JSON.parse(document.getElementById("labeling-data").textContent);
const $ = (id) => document.getElementById(id);
const el = {
  stage: $("label-stage"),
  canvas: $("label-canvas"),
  status: $("label-status"),
  position: $("label-position"),
  prev: $("label-prev"),
  next: $("label-next"),
  nextTodo: $("label-next-todo"),
  center: $("label-center"),
  width: $("label-width"),
  windowReset: $("label-window-reset"),
  zoom: $("label-zoom"),
  zoomIn: $("label-zoom-in"),
  zoomOut: $("label-zoom-out"),
  fit: $("label-fit"),
  facts: $("label-facts"),
  list: $("label-list"),
  message: $("label-message"),
  advance: $("label-advance"),
  count: $("queue-labeled"),
  observer: $("label-observer"),
};
const ctx = el.canvas.getContext("2d");
const ZOOM_MIN = 0.25;
const ZOOM_MAX = 16;
const COLORS = ["#ffd24d", "#62d2a2", "#ff7b7b", "#8fb8e8", "#d59cf5", "#f5a35c"];

const state = {
  index: 0,
  tool: "none", // "none" | "box" | "polygon"
  draft: null, // {type, points: [[x, y], ...], closed}
  zoom: 1,
  pan: { x: 0, y: 0 },
  window: null, // {center, width} the reader set, or null: the header's (server default)
  header: new Map(), // instance UID -> {center, width} | null, from the instance metadata
  image: null, // the loaded HTMLImageElement of the current URL
  url: "",
  busy: false,
};
let drag = null;

function item() {
  return data.items[state.index];
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function round(value) {
  return Math.round(value * 100) / 100;
}

function say(text, error = false) {
  el.message.textContent = text;
  el.message.classList.toggle("error", error);
}

// -- images ------------------------------------------------------------------------------
function frameUrl(it) {
  const path = [
    data.dicomweb,
    "studies", encodeURIComponent(it.study_uid),
    "series", encodeURIComponent(it.shown_series),
    "instances", encodeURIComponent(it.shown_instance),
    "frames", String(it.shown_frame),
    "rendered",
  ].join("/");
  const side = (n) => clamp(Math.ceil(n / 256) * 256, 256, 2048);
  let query = `viewport=${side(it.columns)},${side(it.rows)}`;
  if (state.window) {
    query += `&window=${round(state.window.center)},${round(state.window.width)},linear`;
  }
  return `${path}?${query}`;
}

async function headerWindow(it) {
  if (state.header.has(it.shown_instance)) return state.header.get(it.shown_instance);
  const url = [
    data.dicomweb, "studies", encodeURIComponent(it.study_uid),
    "series", encodeURIComponent(it.shown_series),
    "instances", encodeURIComponent(it.shown_instance), "metadata",
  ].join("/");
  let found = null;
  try {
    const response = await fetch(url, { headers: { Accept: "application/dicom+json" } });
    if (response.ok) {
      const [obj] = await response.json();
      const first = (tag) => (obj[tag] && obj[tag].Value ? Number(obj[tag].Value[0]) : NaN);
      const center = first("00281050");
      const width = first("00281051");
      const bits = first("00280101");
      if (Number.isFinite(center) && Number.isFinite(width) && width > 0) {
        found = { center, width };
      } else if (Number.isFinite(bits)) {
        const signed = first("00280103") === 1;
        found = { center: signed ? 0 : 2 ** (bits - 1), width: 2 ** bits };
      }
    }
  } catch (error) {
    found = null;
  }
  state.header.set(it.shown_instance, found);
  return found;
}

function load() {
  const it = item();
  const url = frameUrl(it);
  if (url === state.url) return;
  state.url = url;
  el.stage.dataset.loaded = "0";
  el.status.textContent = "loading…";
  const image = new Image();
  image.onload = () => {
    if (state.url !== url) return;
    state.image = image;
    el.stage.dataset.loaded = "1";
    el.status.textContent = "";
    draw();
  };
  image.onerror = () => {
    if (state.url !== url) return;
    el.status.textContent = "this image cannot be rendered";
    el.stage.dataset.loaded = "error";
  };
  image.src = url;
  // the next item's image, so "next" shows at once
  const following = data.items[state.index + 1];
  if (following && !state.window) new Image().src = frameUrl(following);
}

// -- geometry: image pixels (column, row) <-> canvas pixels ----------------------------------
function layout() {
  const it = item();
  const cw = el.canvas.width;
  const ch = el.canvas.height;
  const scale = Math.min(cw / it.columns, ch / it.rows) * state.zoom;
  return {
    scale,
    x: cw / 2 - (it.columns * scale) / 2 + state.pan.x,
    y: ch / 2 - (it.rows * scale) / 2 + state.pan.y,
  };
}

function toImage(event) {
  const box = el.canvas.getBoundingClientRect();
  const ratio = el.canvas.width / box.width;
  const at = layout();
  const it = item();
  const x = ((event.clientX - box.left) * ratio - at.x) / at.scale;
  const y = ((event.clientY - box.top) * ratio - at.y) / at.scale;
  return [round(clamp(x, 0, it.columns)), round(clamp(y, 0, it.rows))];
}

function resize() {
  const box = el.stage.getBoundingClientRect();
  const ratio = Math.min(window.devicePixelRatio || 1, 2);
  el.canvas.width = Math.max(1, Math.round(box.width * ratio));
  el.canvas.height = Math.max(1, Math.round(box.height * ratio));
  draw();
}

function path(points, closed, at) {
  ctx.beginPath();
  points.forEach(([x, y], i) => {
    const px = at.x + x * at.scale;
    const py = at.y + y * at.scale;
    if (i === 0) ctx.moveTo(px, py);
    else ctx.lineTo(px, py);
  });
  if (closed) ctx.closePath();
}

function boxCorners(points) {
  const [[x0, y0], [x1, y1]] = points;
  return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
}

function shape(roi, color, at, label) {
  const points = roi.type === "box" ? boxCorners(roi.points) : roi.points;
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  if (roi.type === "point") {
    const [x, y] = points[0];
    ctx.beginPath();
    ctx.arc(at.x + x * at.scale, at.y + y * at.scale, 5, 0, 2 * Math.PI);
    ctx.stroke();
  } else {
    path(points, roi.closed !== false, at);
    ctx.stroke();
  }
  if (label) {
    ctx.fillStyle = color;
    ctx.font = "14px sans-serif";
    ctx.fillText(label, at.x + points[0][0] * at.scale + 4, at.y + points[0][1] * at.scale - 6);
  }
}

function classColor(name) {
  const index = data.classes.findIndex((c) => c.name === name);
  return COLORS[(index < 0 ? 0 : index) % COLORS.length];
}

function draw() {
  const it = item();
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, el.canvas.width, el.canvas.height);
  if (!it || !state.image) return;
  const at = layout();
  ctx.imageSmoothingEnabled = state.zoom < 2;
  ctx.drawImage(state.image, at.x, at.y, it.columns * at.scale, it.rows * at.scale);
  for (const label of it.labels) {
    if (label.roi && label.sop_instance_uid === it.shown_instance && label.frame === it.shown_frame) {
      shape(label.roi, classColor(label.label), at, label.label);
    }
  }
  if (state.draft && state.draft.points.length) {
    const closed = state.draft.type === "box" || state.draft.closed;
    const roi = { type: state.draft.type, points: state.draft.points, closed };
    if (state.draft.type === "box" && state.draft.points.length === 2) shape(roi, "#00e5ff", at);
    else if (state.draft.type === "polygon") {
      shape(roi, "#00e5ff", at);
      for (const [x, y] of state.draft.points) {
        ctx.fillStyle = "#00e5ff";
        ctx.fillRect(at.x + x * at.scale - 3, at.y + y * at.scale - 3, 6, 6);
      }
    }
  }
  el.zoom.textContent = `${Math.round(state.zoom * 100)}%`;
}

// -- the item panel --------------------------------------------------------------------------
function fact(term, value) {
  const div = document.createElement("div");
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = term;
  dd.textContent = value;
  div.append(dt, dd);
  return div;
}

function showItem() {
  const it = item();
  el.facts.replaceChildren(
    fact("Patient ID", it.patient_id),
    fact("Study date", it.study_date),
    fact("Modality", it.modalities),
    fact("Description", it.description),
    fact("Image", `${it.columns} × ${it.rows}${it.frames > 1 ? `, frame ${it.shown_frame} of ${it.frames}` : ""}`),
  );
  el.list.replaceChildren(
    ...it.labels.map((label) => {
      const li = document.createElement("li");
      li.dataset.source = label.source_uid;
      li.dataset.label = label.label;
      li.dataset.kind = label.kind;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = classColor(label.label);
      const text = document.createElement("span");
      text.textContent = `${label.label} · ${label.kind}${label.roi ? ` (${label.roi.type})` : ""}`;
      li.append(swatch, text);
      if (label.source_uid) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove-label";
        remove.textContent = "✕";
        remove.title = "Take this label back (deletes its document)";
        remove.addEventListener("click", () => removeLabel(label.source_uid));
        li.append(remove);
      }
      return li;
    }),
  );
  if (!it.labels.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "no label yet";
    el.list.append(li);
  }
  el.position.textContent = `${data.rank + state.index + 1} / ${data.total}`;
  el.prev.disabled = state.index === 0;
  el.next.disabled = state.index === data.items.length - 1;
  el.stage.dataset.index = String(state.index);
  el.stage.dataset.labels = String(it.labels.length);
  el.count.textContent = String(data.labeled);
  for (const button of document.querySelectorAll(".class-button")) {
    const has = it.labels.some((l) => l.label === button.dataset.class && !l.roi);
    button.setAttribute("aria-pressed", has ? "true" : "false");
  }
}

async function go(index) {
  const target = clamp(index, 0, data.items.length - 1);
  if (target !== state.index || !state.url) {
    state.index = target;
    state.draft = null;
    state.zoom = 1;
    state.pan = { x: 0, y: 0 };
    state.window = null;
    state.image = null;
    showItem();
    draw();
    load();
    const header = await headerWindow(item());
    if (state.index === target && !state.window) showWindow(header);
  }
}

function nextUnlabeled() {
  for (let i = state.index + 1; i < data.items.length; i += 1) {
    if (!data.items[i].labels.length) return go(i);
  }
  say("every later item has a label");
  return undefined;
}

// -- window/level ------------------------------------------------------------------------
function effectiveWindow() {
  return state.window || state.header.get(item().shown_instance) || { center: 128, width: 256 };
}

function showWindow(current = effectiveWindow()) {
  if (!current) return;
  el.center.value = String(round(current.center));
  el.width.value = String(round(current.width));
}

function setWindow(center, width) {
  state.window = { center, width: Math.max(1, width) };
  showWindow();
  load();
}

// -- writing labels ----------------------------------------------------------------------
function draftRoi() {
  const d = state.draft;
  if (!d) return null;
  if (d.type === "box" && d.points.length === 2) {
    const [[x0, y0], [x1, y1]] = d.points;
    if (Math.abs(x1 - x0) < 1 || Math.abs(y1 - y0) < 1) return null;
    return { type: "box", points: [[Math.min(x0, x1), Math.min(y0, y1)], [Math.max(x0, x1), Math.max(y0, y1)]] };
  }
  if (d.type === "polygon" && d.closed && d.points.length >= 3) {
    return { type: "polygon", points: d.points };
  }
  return null;
}

async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch (error) {
    return response.statusText;
  }
}

async function label(name) {
  if (state.busy) return;
  const at = state.index;
  const it = item();
  const roi = draftRoi();
  if (state.draft && !roi) {
    say("finish the region first (a polygon closes with Enter or a double-click), or Esc", true);
    return;
  }
  const body = { label_set: data.label_set, label: name, study_uid: it.study_uid };
  const observer = el.observer.value.trim();
  if (observer) body.observer = observer;
  let replaced = [];
  if (roi) {
    Object.assign(body, {
      series_uid: it.shown_series,
      sop_instance_uid: it.shown_instance,
      frame: it.shown_frame,
      kind: "sr",
      roi,
    });
  } else {
    if (it.series_uid) body.series_uid = it.series_uid;
    if (it.sop_instance_uid) body.sop_instance_uid = it.sop_instance_uid;
    body.kind = "kos";
    replaced = [...new Set(it.labels.filter((l) => l.kind === "KOS" && l.source_uid).map((l) => l.source_uid))];
    body.replaces = replaced;
  }
  state.busy = true;
  say("saving…");
  try {
    const response = await fetch(data.api, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      say(`not saved: ${await problem(response)}`, true);
      return;
    }
    const written = await response.json();
    const had = it.labels.length > 0;
    const kept = new Set((written.not_removed || []).map((n) => n.sop_instance_uid));
    it.labels = it.labels.filter((l) => !replaced.includes(l.source_uid) || kept.has(l.source_uid));
    it.labels.push({
      label: name,
      kind: written.kind,
      source_uid: written.sop_instance_uid,
      roi,
      frame: it.shown_frame,
      sop_instance_uid: roi ? it.shown_instance : it.sop_instance_uid,
    });
    if (!had) data.labeled += 1;
    state.draft = null;
    el.stage.dataset.lastWritten = written.sop_instance_uid;
    el.stage.dataset.written = String(Number(el.stage.dataset.written || 0) + 1);
    const stayed = (written.not_removed || []).map((n) => n.reason).join("; ");
    say(`saved: ${name} as ${written.kind} ${written.sop_instance_uid}${stayed ? ` (kept: ${stayed})` : ""}`, Boolean(stayed));
    showItem();
    draw();
    if (!roi && el.advance.checked && state.index === at && at < data.items.length - 1) go(at + 1);
  } catch (error) {
    say(`not saved: ${error}`, true);
  } finally {
    state.busy = false;
  }
}

async function removeLabel(uid) {
  const it = item();
  const url = `${data.api}/documents/${encodeURIComponent(uid)}?set=${encodeURIComponent(data.label_set)}`;
  const response = await fetch(url, { method: "DELETE", headers: { Accept: "application/json" } });
  if (!response.ok) {
    say(`not removed: ${await problem(response)}`, true);
    return;
  }
  it.labels = it.labels.filter((l) => l.source_uid !== uid);
  if (!it.labels.length) data.labeled -= 1;
  say(`removed ${uid}`);
  showItem();
  draw();
}

// -- tools and input ---------------------------------------------------------------------
function setTool(tool) {
  if (!document.querySelector(`[data-tool="${tool}"]`)) return;
  state.tool = tool;
  state.draft = null;
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", button.dataset.tool === tool ? "true" : "false");
  }
  el.stage.dataset.tool = tool;
  draw();
}

function closePolygon() {
  const d = state.draft;
  if (d && d.type === "polygon" && d.points.length >= 3) {
    d.closed = true;
    el.stage.dataset.draft = "ready";
    say("region ready: press a class (1–9) to save it");
    draw();
  }
}

function zoomAt(factor, event) {
  const before = state.zoom;
  state.zoom = clamp(state.zoom * factor, ZOOM_MIN, ZOOM_MAX);
  if (event) {
    const box = el.canvas.getBoundingClientRect();
    const ratio = el.canvas.width / box.width;
    const px = (event.clientX - box.left) * ratio - el.canvas.width / 2 - state.pan.x;
    const py = (event.clientY - box.top) * ratio - el.canvas.height / 2 - state.pan.y;
    const k = state.zoom / before;
    state.pan.x -= px * (k - 1);
    state.pan.y -= py * (k - 1);
  }
  draw();
}

el.canvas.addEventListener("contextmenu", (event) => event.preventDefault());
el.canvas.addEventListener("pointerdown", (event) => {
  el.stage.focus();
  const windowing = event.button === 2 || event.shiftKey;
  if (windowing) {
    drag = { kind: "window", x: event.clientX, y: event.clientY, start: effectiveWindow() };
  } else if (event.button !== 0) {
    return;
  } else if (state.tool === "box") {
    const at = toImage(event);
    state.draft = { type: "box", points: [at, at] };
    drag = { kind: "box" };
  } else if (state.tool === "polygon") {
    const at = toImage(event);
    if (!state.draft || state.draft.closed) state.draft = { type: "polygon", points: [], closed: false };
    state.draft.points.push(at);
    el.stage.dataset.draft = "open";
    draw();
    return;
  } else {
    drag = { kind: "pan", x: event.clientX, y: event.clientY, pan: { ...state.pan } };
  }
  el.canvas.setPointerCapture(event.pointerId);
});
el.canvas.addEventListener("pointermove", (event) => {
  if (!drag) return;
  if (drag.kind === "box") {
    state.draft.points[1] = toImage(event);
    draw();
  } else if (drag.kind === "pan") {
    const ratio = el.canvas.width / el.canvas.getBoundingClientRect().width;
    state.pan = { x: drag.pan.x + (event.clientX - drag.x) * ratio, y: drag.pan.y + (event.clientY - drag.y) * ratio };
    draw();
  } else if (drag.kind === "window") {
    const scale = Math.max(drag.start.width / 256, 0.5);
    const width = drag.start.width + (event.clientX - drag.x) * scale;
    const center = drag.start.center - (event.clientY - drag.y) * scale;
    state.window = { center, width: Math.max(1, width) };
    showWindow();
  }
});
el.canvas.addEventListener("pointerup", (event) => {
  if (!drag) return;
  const ended = drag;
  drag = null;
  el.canvas.releasePointerCapture(event.pointerId);
  if (ended.kind === "box") {
    if (draftRoi()) {
      el.stage.dataset.draft = "ready";
      say("region ready: press a class (1–9) to save it");
    } else {
      state.draft = null;
    }
    draw();
  } else if (ended.kind === "window") {
    load();
  }
});
el.canvas.addEventListener("dblclick", (event) => {
  event.preventDefault();
  if (state.draft && state.draft.type === "polygon") {
    // the double-click's two clicks added the same corner twice
    const pts = state.draft.points;
    while (pts.length > 1 && pts[pts.length - 1][0] === pts[pts.length - 2][0] && pts[pts.length - 1][1] === pts[pts.length - 2][1]) pts.pop();
    closePolygon();
  }
});
el.canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  zoomAt(event.deltaY < 0 ? 1.2 : 1 / 1.2, event);
}, { passive: false });

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement && !["checkbox", "radio", "button"].includes(event.target.type);
  if (typing || event.target instanceof HTMLSelectElement || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const digit = Number(key);
  if (Number.isInteger(digit) && digit >= 1 && digit <= data.classes.length) {
    label(data.classes[digit - 1].name);
  } else if (key === "ArrowRight" || key === "n") {
    go(state.index + 1);
  } else if (key === "ArrowLeft" || key === "p") {
    go(state.index - 1);
  } else if (key === "u") {
    nextUnlabeled();
  } else if (key === "b") {
    setTool(state.tool === "box" ? "none" : "box");
  } else if (key === "g") {
    setTool(state.tool === "polygon" ? "none" : "polygon");
  } else if (key === "Enter") {
    closePolygon();
  } else if (key === "Escape") {
    state.draft = null;
    delete el.stage.dataset.draft;
    say("");
    draw();
  } else if (key === "+" || key === "=") {
    zoomAt(1.25);
  } else if (key === "-") {
    zoomAt(1 / 1.25);
  } else if (key === "0") {
    state.zoom = 1;
    state.pan = { x: 0, y: 0 };
    draw();
  } else if (key === "r") {
    state.window = null;
    showWindow();
    load();
  } else {
    return;
  }
  event.preventDefault();
});

for (const button of document.querySelectorAll(".class-button")) {
  button.addEventListener("click", () => label(button.dataset.class));
}
for (const button of document.querySelectorAll("[data-tool]")) {
  button.addEventListener("click", () => setTool(button.dataset.tool));
}
el.prev.addEventListener("click", () => go(state.index - 1));
el.next.addEventListener("click", () => go(state.index + 1));
el.nextTodo.addEventListener("click", nextUnlabeled);
el.zoomIn.addEventListener("click", () => zoomAt(1.25));
el.zoomOut.addEventListener("click", () => zoomAt(1 / 1.25));
el.fit.addEventListener("click", () => {
  state.zoom = 1;
  state.pan = { x: 0, y: 0 };
  draw();
});
el.windowReset.addEventListener("click", () => {
  state.window = null;
  showWindow();
  load();
});
for (const input of [el.center, el.width]) {
  input.addEventListener("change", () => {
    const center = Number(el.center.value);
    const width = Number(el.width.value);
    if (Number.isFinite(center) && Number.isFinite(width) && width >= 1) setWindow(center, width);
  });
}
el.observer.value = localStorage.getItem("medflow.observer") || "";
el.observer.addEventListener("change", () => {
  localStorage.setItem("medflow.observer", el.observer.value.trim());
});
new ResizeObserver(resize).observe(el.stage);
el.stage.dataset.tool = "none";
go(0);
