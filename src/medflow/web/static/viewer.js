// The study page's image viewer: one image at a time from WADO-RS rendered frames
// (PS3.18 §10.4.1.1.3: .../instances/{sop}/frames/{n}/rendered?viewport=w,h&window=c,w,linear).
// The page embeds the series, their image instances in InstanceNumber order with frame counts,
// and the header's window presets (#viewer-data): no QIDO or metadata request is made here.
// Windowing and scaling happen on the server; zoom is a CSS transform of the rendered image.

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
function selectSeries(uid) {
  const series = data.series.find((s) => s.uid === uid);
  if (!series) return;
  state.series = series;
  state.positions = series.instances.flatMap((instance, i) =>
    Array.from({ length: instance.frames }, (_, f) => ({ instance: i, frame: f + 1 })),
  );
  state.index = 0;
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
  });
  el.image.addEventListener("error", () => {
    el.status.textContent = "this image could not be rendered";
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
  selectSeries(data.series[0].uid);
}

start();
