// The study page's image viewer: one image at a time from WADO-RS rendered frames
// (PS3.18 §10.4.1.1.3: .../instances/{sop}/frames/{n}/rendered?viewport=w,h&window=c,w,linear).
// The page embeds the series, their image instances in InstanceNumber order with frame counts,
// and the header's window presets (#viewer-data): no QIDO or metadata request is made here.
// Windowing and scaling happen on the server; zoom is a CSS transform of the rendered image.
// A link may open the page at an image: ?series=UID&instance=UID[&frame=n].
// Beside the viewer, the similar images panel (at the end of this file).

const source = document.getElementById("viewer-data"); // absent when no series has images
const data = source ? JSON.parse(source.textContent) : null;
const $ = (id) => document.getElementById(id);
const el = {
  stage: $("viewer-stage"),
  image: $("viewer-image"),
  slider: $("viewer-slider"),
  prev: $("viewer-prev"),
  next: $("viewer-next"),
  position: $("viewer-position"),
  frame: $("viewer-frame"),
  preset: $("window-preset"),
  center: $("window-center"),
  width: $("window-width"),
  zoomIn: $("zoom-in"),
  zoomOut: $("zoom-out"),
  zoomReset: $("zoom-reset"),
  zoomLevel: $("zoom-level"),
  status: $("viewer-status"),
};
const CT_PRESETS = [
  { label: "Soft tissue", center: 40, width: 400 },
  { label: "Lung", center: -600, width: 1500 },
  { label: "Bone", center: 400, width: 1800 },
  { label: "Brain", center: 40, width: 80 },
];
const PREFETCH = 3;
const ZOOM_MIN = 0.25;
const ZOOM_MAX = 8;

const state = {
  series: null, // one entry of data.series
  positions: [], // [{instance: index, frame: number}] through every frame of every instance
  index: 0,
  window: null, // {center, width}, or null: the server's default (the header's window)
  zoom: 1,
  viewport: "512,512",
  presets: [],
};
const prefetched = new Map(); // URL -> Image, keeps the next images in the memory cache
let wheelDelta = 0;
let dragRender = null;

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function round(value) {
  return Math.round(value * 100) / 100;
}

function measureViewport() {
  const box = el.stage.getBoundingClientRect();
  const ratio = Math.min(window.devicePixelRatio || 1, 2);
  // Rounded up to 128 pixels: a small resize keeps the URLs (and the cached images).
  const side = (n) => clamp(Math.ceil((n * ratio) / 128) * 128, 128, 2048);
  return `${side(box.width)},${side(box.height)}`;
}

function urlAt(index) {
  const pos = state.positions[index];
  const instance = state.series.instances[pos.instance];
  const path = [
    data.dicomweb,
    "studies", encodeURIComponent(data.study),
    "series", encodeURIComponent(state.series.uid),
    "instances", encodeURIComponent(instance.uid),
    "frames", String(pos.frame),
    "rendered",
  ].join("/");
  let query = `viewport=${state.viewport}`;
  if (state.window) {
    query += `&window=${round(state.window.center)},${round(state.window.width)},linear`;
  }
  return `${path}?${query}`;
}

function prefetch() {
  for (let step = 1; step <= PREFETCH; step += 1) {
    const index = state.index + step;
    if (index >= state.positions.length) break;
    const url = urlAt(index);
    if (!prefetched.has(url)) {
      const image = new Image();
      image.src = url;
      prefetched.set(url, image);
    }
  }
  while (prefetched.size > 4 * PREFETCH) {
    prefetched.delete(prefetched.keys().next().value);
  }
}

function render() {
  const pos = state.positions[state.index];
  const count = state.series.instances.length;
  const frames = state.series.instances[pos.instance].frames;
  const url = urlAt(state.index);
  if (el.image.getAttribute("src") !== url) {
    el.status.textContent = "loading…";
    el.image.src = url;
  }
  el.image.dataset.instance = String(pos.instance + 1);
  el.image.dataset.frame = String(pos.frame);
  el.position.textContent = `instance ${pos.instance + 1} / ${count}`;
  el.frame.textContent = frames > 1 ? `frame ${pos.frame} / ${frames}` : "";
  el.slider.value = String(state.index + 1);
  el.prev.disabled = state.index === 0;
  el.next.disabled = state.index === state.positions.length - 1;
  prefetch();
  similarShown(state.series, pos.instance);
}

function go(index) {
  const target = clamp(index, 0, state.positions.length - 1);
  if (target !== state.index) {
    state.index = target;
    render();
  }
}

// -- window/level ---------------------------------------------------------------------------
function effectiveWindow() {
  if (state.window) return state.window;
  if (state.series.presets.length) return state.series.presets[0];
  if (state.series.range) {
    const [low, high] = state.series.range;
    return { center: (low + high) / 2, width: Math.max(1, high - low) };
  }
  return { center: 128, width: 256 };
}

function showWindow() {
  const current = effectiveWindow();
  el.center.value = String(round(current.center));
  el.width.value = String(round(current.width));
  if (!state.window) {
    el.preset.value = "";
    return;
  }
  const match = state.presets.findIndex(
    (p) => p.center === state.window.center && p.width === state.window.width,
  );
  el.preset.value = match >= 0 ? String(match) : "custom";
}

function setWindow(next, { now = true } = {}) {
  state.window = next ? { center: next.center, width: Math.max(1, next.width) } : null;
  showWindow();
  if (now) {
    render();
  } else if (dragRender === null) {
    dragRender = setTimeout(() => {
      dragRender = null;
      render();
    }, 120);
  }
}

function fillPresets() {
  const series = state.series;
  state.presets = [...series.presets];
  if (series.modality === "CT") state.presets.push(...CT_PRESETS);
  if (series.range) {
    const [low, high] = series.range;
    state.presets.push({ label: "Full range", center: (low + high) / 2, width: high - low });
  }
  el.preset.replaceChildren();
  const option = (value, text) => {
    const node = document.createElement("option");
    node.value = value;
    node.textContent = text;
    el.preset.append(node);
  };
  option("", "Default (header)");
  state.presets.forEach((p, i) => option(String(i), `${p.label} (${round(p.center)}/${round(p.width)})`));
  option("custom", "Custom");
}

// -- zoom -------------------------------------------------------------------------------------
function setZoom(zoom) {
  state.zoom = clamp(zoom, ZOOM_MIN, ZOOM_MAX);
  el.image.style.transform = state.zoom === 1 ? "" : `scale(${state.zoom})`;
  el.zoomLevel.textContent = `${Math.round(state.zoom * 100)}%`;
}

// -- series -----------------------------------------------------------------------------------
function selectSeries(uid, at = null) {
  const series = data.series.find((s) => s.uid === uid);
  if (!series) return;
  state.series = series;
  state.positions = series.instances.flatMap((instance, i) =>
    Array.from({ length: instance.frames }, (_, f) => ({ instance: i, frame: f + 1 })),
  );
  const wanted = at
    ? state.positions.findIndex(
        (p) => series.instances[p.instance].uid === at.instance && p.frame === at.frame,
      )
    : -1;
  state.index = Math.max(0, wanted);
  state.window = null;
  prefetched.clear();
  for (const card of document.querySelectorAll(".series-card[data-series-uid]")) {
    card.setAttribute("aria-pressed", String(card.dataset.seriesUid === uid));
  }
  el.slider.max = String(state.positions.length);
  el.slider.disabled = state.positions.length < 2;
  fillPresets();
  showWindow();
  render();
}

// -- events -----------------------------------------------------------------------------------
function onKey(event) {
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) return;
  if (event.altKey || event.metaKey || event.ctrlKey) return;
  const last = state.positions.length - 1;
  const actions = {
    ArrowDown: () => go(state.index + 1),
    ArrowRight: () => go(state.index + 1),
    ArrowUp: () => go(state.index - 1),
    ArrowLeft: () => go(state.index - 1),
    PageDown: () => go(state.index + 10),
    PageUp: () => go(state.index - 10),
    Home: () => go(0),
    End: () => go(last),
    "+": () => setZoom(state.zoom * 1.25),
    "=": () => setZoom(state.zoom * 1.25),
    "-": () => setZoom(state.zoom / 1.25),
    0: () => setZoom(1),
    r: () => setWindow(null),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

function onWheel(event) {
  event.preventDefault();
  if (event.ctrlKey) {
    setZoom(state.zoom * (event.deltaY < 0 ? 1.1 : 1 / 1.1));
    return;
  }
  if (event.deltaMode !== 0) {
    go(state.index + Math.sign(event.deltaY));
    return;
  }
  wheelDelta += event.deltaY;
  if (Math.abs(wheelDelta) >= 60) {
    go(state.index + Math.sign(wheelDelta));
    wheelDelta = 0;
  }
}

function onDrag() {
  let drag = null;
  el.stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    el.stage.focus();
    drag = { x: event.clientX, y: event.clientY, start: effectiveWindow() };
    el.stage.setPointerCapture(event.pointerId);
  });
  el.stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const scale = Math.max(drag.start.width, 16) / 256; // a full window per 256 pixels
    const width = drag.start.width + (event.clientX - drag.x) * scale;
    const center = drag.start.center + (event.clientY - drag.y) * scale;
    setWindow({ center, width }, { now: false });
  });
  const end = () => {
    if (!drag) return;
    drag = null;
    if (dragRender !== null) {
      clearTimeout(dragRender);
      dragRender = null;
      render();
    }
  };
  el.stage.addEventListener("pointerup", end);
  el.stage.addEventListener("pointercancel", end);
}

function onWindowInput() {
  const center = Number.parseFloat(el.center.value);
  const width = Number.parseFloat(el.width.value);
  if (Number.isFinite(center) && Number.isFinite(width) && width >= 1) {
    setWindow({ center, width });
  }
}

function onPreset() {
  const value = el.preset.value;
  if (value === "") setWindow(null);
  else if (value !== "custom") setWindow(state.presets[Number(value)]);
}

function start() {
  if (!data || !data.series.length) return;
  state.viewport = measureViewport();
  for (const card of document.querySelectorAll(".series-card[data-series-uid]")) {
    card.addEventListener("click", () => selectSeries(card.dataset.seriesUid));
  }
  document.addEventListener("keydown", onKey);
  el.stage.addEventListener("wheel", onWheel, { passive: false });
  onDrag();
  el.slider.addEventListener("input", () => go(Number(el.slider.value) - 1));
  el.prev.addEventListener("click", () => go(state.index - 1));
  el.next.addEventListener("click", () => go(state.index + 1));
  el.center.addEventListener("change", onWindowInput);
  el.width.addEventListener("change", onWindowInput);
  el.preset.addEventListener("change", onPreset);
  el.zoomIn.addEventListener("click", () => setZoom(state.zoom * 1.25));
  el.zoomOut.addEventListener("click", () => setZoom(state.zoom / 1.25));
  el.zoomReset.addEventListener("click", () => setZoom(1));
  el.image.addEventListener("load", () => {
    el.status.textContent = "";
    similarStart(); // lazily: once the viewer's first image is there
  });
  el.image.addEventListener("error", () => {
    el.status.textContent = "this image could not be rendered";
    similarStart();
  });
  let resizing = null;
  new ResizeObserver(() => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      const viewport = measureViewport();
      if (viewport !== state.viewport && state.series) {
        state.viewport = viewport;
        render();
      }
    }, 200);
  }).observe(el.stage);
  const link = new URLSearchParams(window.location.search);
  const at = { instance: link.get("instance"), frame: Number(link.get("frame")) || 1 };
  const linked =
    data.series.find((s) => s.uid === link.get("series")) ||
    data.series.find((s) => s.instances.some((i) => i.uid === at.instance));
  selectSeries((linked || data.series[0]).uid, at.instance ? at : null);
}

// -- similar images panel ---------------------------------------------------------------------
// Other patients' images most like the one shown (GET /api/similar: cosine similarity of a
// production model's embeddings), as thumbnails linking to their study page at that image.
// Asked once the viewer's first image has loaded, then when another instance is shown (after
// a pause in scrolling). /api/similar/status first says whether any model has embeddings (no
// request that can only fail) and, when an image has none, why. Patient, study date and
// modalities of the answers: one QIDO-RS study query. Nothing is written to the console.
const SIMILAR_K = 10;
const SIMILAR_PAUSE_MS = 400;
const SIMILAR_RETRY_MS = 5000;
const SIMILAR_RETRIES = 24;
const sim = {
  panel: $("similar-panel"),
  query: $("similar-query"),
  status: $("similar-status"),
  results: $("similar-results"),
  meta: $("similar-meta"),
  options: $("similar-options"),
  model: $("similar-model"),
  modelLabel: $("similar-model-label"),
  cohort: $("similar-cohort"),
  cohortLabel: $("similar-cohort-label"),
  started: false,
  chosen: false, // the model and cohort choices are filled
  info: null, // the answer of /api/similar/status
  problem: "", // why the status could not be read
  image: null, // {uid, number, series} of the instance shown
  timer: null,
  controller: null,
  retries: 0,
  studies: new Map(), // Study Instance UID -> what QIDO-RS said of it
};

function similarSay(text, state) {
  sim.status.textContent = text;
  sim.status.hidden = !text;
  sim.panel.dataset.state = state;
  sim.panel.setAttribute("aria-busy", String(state === "loading"));
}

async function getJSON(url, signal) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, signal });
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null; // not JSON: the status alone tells
  }
  return { ok: response.ok, status: response.status, body };
}

async function similarStatus() {
  try {
    const answer = await getJSON(`${data.similar}/status`);
    sim.info = answer.ok && answer.body ? answer.body : null;
    sim.problem = answer.ok ? "" : (answer.body && answer.body.detail) || `HTTP ${answer.status}`;
  } catch (error) {
    sim.info = null;
    sim.problem = "the server did not answer";
  }
}

async function similarStart() {
  if (sim.started || !sim.panel) return;
  sim.started = true;
  sim.model.addEventListener("change", () => similarAsk(true));
  sim.cohort.addEventListener("change", () => similarAsk(true));
  await similarStatus();
  similarOptions();
  similarAsk(true);
}

function similarShown(series, index) {
  if (!sim.panel) return;
  const instance = series.instances[index];
  if (sim.image && sim.image.uid === instance.uid) return;
  sim.image = { uid: instance.uid, number: index + 1, series };
  if (!sim.started) return;
  clearTimeout(sim.timer);
  sim.timer = setTimeout(() => similarAsk(true), SIMILAR_PAUSE_MS);
}

function similarRetry() {
  if (sim.retries >= SIMILAR_RETRIES) return false;
  sim.retries += 1;
  sim.timer = setTimeout(async () => {
    await similarStatus();
    similarOptions();
    similarAsk(false);
  }, SIMILAR_RETRY_MS);
  return true;
}

async function similarOptions() {
  // Once some model has embeddings: a model to choose when there are several, and a cohort.
  if (sim.chosen || !sim.info || !sim.info.models.length) return;
  sim.chosen = true;
  const models = sim.info.models.map((m) => m.model);
  if (models.length > 1) {
    sim.model.options[0].textContent = sim.info.default_model
      ? `In production (${sim.info.default_model})`
      : "The newest";
    for (const ref of models) sim.model.append(new Option(ref, ref));
    sim.modelLabel.hidden = false;
    sim.options.hidden = false;
  }
  try {
    const answer = await getJSON(data.cohorts);
    if (!answer.ok || !Array.isArray(answer.body) || !answer.body.length) return;
    for (const cohort of answer.body) sim.cohort.append(new Option(cohort.name, String(cohort.id)));
    sim.cohortLabel.hidden = false;
    sim.options.hidden = false;
  } catch (error) {
    // no cohort to choose: the panel searches every patient
  }
}

async function similarAsk(fresh) {
  clearTimeout(sim.timer);
  if (fresh) sim.retries = 0;
  if (sim.controller) sim.controller.abort();
  const image = sim.image;
  if (!image) return;
  const series = image.series;
  sim.query.textContent =
    `Other patients' images most like image ${image.number} of series ` +
    `${series.number || "?"}${series.modality ? ` (${series.modality})` : ""}, most similar first.`;
  if (!sim.info) {
    similarClear();
    similarSay(`Similar images are not available: ${sim.problem}.`, "unavailable");
    return;
  }
  if (!sim.info.models.length) {
    similarExplain("");
    return;
  }
  const controller = new AbortController();
  sim.controller = controller;
  const params = new URLSearchParams({ instance: image.uid, k: String(SIMILAR_K) });
  if (sim.model.value) params.set("model", sim.model.value);
  if (sim.cohort.value) params.set("cohort", sim.cohort.value);
  similarSay("Looking for similar images…", "loading");
  try {
    const answer = await getJSON(`${data.similar}?${params}`, controller.signal);
    if (controller !== sim.controller) return;
    if (answer.ok) await similarShow(answer.body, controller.signal);
    else await similarProblem(answer, controller);
  } catch (error) {
    if (error.name === "AbortError") return;
    similarClear();
    similarSay("Similar images could not be loaded: the server did not answer.", "error");
  }
}

async function similarProblem(answer, controller) {
  const detail = (answer.body && answer.body.detail) || `HTTP ${answer.status}`;
  similarClear();
  if (answer.status === 503 && answer.body && answer.body.title === "Storage failure") {
    const again = similarRetry();
    similarSay(`The similarity index is being built${again ? "; trying again shortly" : ""}.`,
      again ? "pending" : "unavailable");
  } else if (answer.status === 503) {
    similarSay(`Similar images are not available: ${detail}.`, "unavailable");
  } else if (answer.status === 404 && detail.startsWith("instance ")) {
    await similarStatus();
    if (controller === sim.controller) similarExplain(detail);
  } else {
    similarSay(`No similar images: ${detail}.`, "error");
  }
}

function similarExplain(detail) {
  // Why the image shown has no embedding: the answer's detail and the embedding's progress.
  similarClear();
  const info = sim.info || { models: [], default_model: null, embedding: {} };
  const progress = info.embedding || {};
  const model = sim.model.value || info.default_model;
  const modality = sim.image.series.modality;
  if (detail.includes("could not be embedded")) {
    similarSay(`${detail.replace(/^instance \S+/, "This image")}.`, "failed");
  } else if (!model) {
    similarSay("No model is in production. Similar images compare what a production model " +
      "sees in each image: once one is promoted (medflow models promote NAME:VERSION), every " +
      "image it reads is embedded.", "no-model");
  } else if (progress.enabled === false) {
    similarSay("This server does not compute image embeddings (the embedding worker runs " +
      "with triage: MEDFLOW_TRIAGE__ENABLED is false).", "unavailable");
  } else if ((progress.backlog || {})[model] > 0) {
    const again = similarRetry();
    similarSay(`Not computed yet: ${model} is still reading the archive ` +
      `(${progress.backlog[model]} changes to go)${again ? "; trying again shortly" : ""}.`,
      "pending");
  } else {
    similarSay(`${sim.model.value ? "Model" : "The model in production,"} ${model}` +
      `${sim.model.value ? "" : ","} does not read this image` +
      `${modality ? ` (${modality})` : ""}: there are no similar images for it.`, "not-read");
  }
}

function similarClear() {
  sim.results.replaceChildren();
  sim.meta.textContent = "";
}

function dicomValue(obj, tag) {
  const element = obj && obj[tag];
  return element && Array.isArray(element.Value) ? element.Value : [];
}

function dicomText(obj, tag) {
  const value = dicomValue(obj, tag)[0];
  if (value === undefined || value === null) return "";
  if (typeof value !== "object") return String(value);
  const parts = String(value.Alphabetic || value.Ideographic || value.Phonetic || "")
    .split("^")
    .map((p) => p.trim());
  const given = parts.slice(1, 3).filter(Boolean).join(" ");
  return parts[0] && given ? `${parts[0]}, ${given}` : parts[0] || given;
}

function dicomDate(value) {
  return /^\d{8}$/.test(value) ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}` : value;
}

async function similarStudies(uids, signal) {
  // One QIDO-RS study query for the answers' studies not seen yet (a UID list key).
  const missing = [...new Set(uids)].filter((uid) => !sim.studies.has(uid));
  for (let start = 0; start < missing.length; start += 15) {
    const chunk = missing.slice(start, start + 15);
    const params = new URLSearchParams({
      StudyInstanceUID: chunk.join("\\"),
      includefield: "StudyDescription",
      limit: String(chunk.length),
    });
    const response = await fetch(`${data.dicomweb}/studies?${params}`, {
      headers: { Accept: "application/dicom+json" },
      signal,
    });
    if (response.status !== 200) continue; // the cards keep what /api/similar said
    for (const obj of await response.json()) {
      sim.studies.set(dicomText(obj, "0020000D"), {
        name: dicomText(obj, "00100010"),
        date: dicomDate(dicomText(obj, "00080020")),
        modalities: dicomValue(obj, "00080061").join(", "),
        description: dicomText(obj, "00081030"),
      });
    }
  }
}

function span(className, text) {
  const node = document.createElement("span");
  node.className = className;
  node.textContent = text;
  return node;
}

function similarCard(result, rank) {
  const item = document.createElement("li");
  item.className = "similar-card";
  item.dataset.studyUid = result.study_uid;
  item.dataset.instanceUid = result.sop_instance_uid;
  const at = { series: result.series_uid, instance: result.sop_instance_uid };
  if (result.frame > 1) at.frame = String(result.frame);
  const link = document.createElement("a");
  link.className = "similar-link";
  link.href = `${data.studies}/${encodeURIComponent(result.study_uid)}?${new URLSearchParams(at)}#viewer`;
  const image = document.createElement("img");
  image.className = "thumbnail";
  image.width = 128;
  image.height = 128;
  image.loading = "lazy";
  image.setAttribute("data-hide-on-error", "");
  const path = [data.dicomweb, "studies", result.study_uid, "series", result.series_uid,
    "instances", result.sop_instance_uid].map((p, i) => (i ? encodeURIComponent(p) : p));
  if (result.frame > 1) path.push("frames", String(result.frame));
  image.src = `${path.join("/")}/thumbnail?viewport=128,128`;
  const study = sim.studies.get(result.study_uid) || {};
  const score = Number(result.score);
  const shown = Number.isFinite(score) ? score.toFixed(3) : "?";
  image.alt = `Similar image ${rank}${study.modalities ? `, ${study.modalities}` : ""}` +
    `${study.date ? ` of ${study.date}` : ""}, similarity ${shown}`;
  const similarity = span("similar-score", `similarity ${shown}`);
  if (Number.isFinite(score)) {
    similarity.title = `cosine similarity ${score.toFixed(4)}, distance ${(1 - score).toFixed(4)}`;
  }
  const patient = [study.name, result.patient_id].filter(Boolean).join(" · ");
  const facts = [study.date, study.modalities].filter(Boolean).join(" · ");
  link.append(image, similarity, span("similar-patient", patient || "(no patient ID)"),
    span("similar-study", facts || study.description || ""));
  item.append(link);
  return item;
}

async function similarShow(answer, signal) {
  const results = answer.results || [];
  try {
    await similarStudies(results.map((r) => r.study_uid), signal);
  } catch (error) {
    if (error.name === "AbortError") throw error; // the details are optional
  }
  sim.results.replaceChildren(...results.map((r, i) => similarCard(r, i + 1)));
  const cohort = answer.cohort;
  sim.meta.textContent =
    `${answer.model} · ${answer.searched} image${answer.searched === 1 ? "" : "s"} searched` +
    (cohort ? ` · within ${cohort.name} (${cohort.patients} patients)` : "");
  if (results.length) {
    similarSay("", "results");
  } else {
    similarSay(`No image of another patient${cohort ? ` in ${cohort.name}` : ""} is ` +
      `embedded by ${answer.model} yet.`, "empty");
  }
}

start();
