// The slide viewer: pan and zoom over a whole slide image pyramid drawn on a canvas, tile by
// tile, from WADO-RS frames (PS3.18 §10.4.1.1.5) as stored: each tile is one request
// .../instances/{level}/frames/{n} with Accept: multipart/related; type="image/jpeg", whose one
// part (a JPEG) is cut out of the multipart/related body here and decoded by the browser.
// The page embeds the levels (#slide-data: Total Pixel Matrix, tile size, frames; TILED_FULL,
// so tile n lies at column (n-1) % across, row (n-1) / across). The level drawn is the
// coarsest one with at least one of its pixels per screen pixel; the coarsest level is drawn
// under it while its tiles load. Decoded tiles are kept (least recently used first out).

const data = JSON.parse(document.getElementById("slide-data").textContent);
const $ = (id) => document.getElementById(id);
const stage = $("slide-stage");
const canvas = $("slide-canvas");
const ctx = canvas.getContext("2d");
const status = $("slide-status");
const zoomLabel = $("slide-zoom");
const levelLabel = $("slide-level");

const ACCEPT = 'multipart/related; type="image/jpeg"';
const MAX_CACHED = 600;
const MAX_IN_FLIGHT = 8;
const ZOOM_STEP = 1.5;
const base = data.levels[0];
const levels = data.levels.map((lv) => ({
  ...lv,
  down: base.width / lv.width, // base pixels per pixel of this level
  across: Math.ceil(lv.width / lv.tileWidth),
  rows: Math.ceil(lv.height / lv.tileHeight),
}));
const coarsest = levels.length - 1;

const view = { cx: base.width / 2, cy: base.height / 2, scale: 1, fitted: true };
const cache = new Map(); // "level/frame" -> ImageBitmap, in least recently used order
const failed = new Set();
const inFlight = new Set();
let queue = [];
let drawScheduled = false;
let loaded = 0;

// ---------------------------------------------------------------------------------------
// multipart/related (RFC 2046 §5.1): the first part's body
// ---------------------------------------------------------------------------------------
function boundaryOf(contentType) {
  const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
  if (!match) throw new Error("the frames response is not multipart/related");
  return match[1];
}

function indexOf(bytes, pattern, from) {
  const first = pattern[0];
  const last = bytes.length - pattern.length;
  for (let i = from; i <= last; i += 1) {
    if (bytes[i] !== first) continue;
    let j = 1;
    while (j < pattern.length && bytes[i + j] === pattern[j]) j += 1;
    if (j === pattern.length) return i;
  }
  return -1;
}

const encoder = new TextEncoder();

function firstPart(buffer, boundary) {
  const bytes = new Uint8Array(buffer);
  const dash = encoder.encode("--" + boundary);
  const open = indexOf(bytes, dash, 0);
  if (open < 0) throw new Error("no part in the frames response");
  const headersEnd = indexOf(bytes, encoder.encode("\r\n\r\n"), open + dash.length);
  if (headersEnd < 0) throw new Error("malformed part in the frames response");
  const start = headersEnd + 4;
  const end = indexOf(bytes, encoder.encode("\r\n--" + boundary), start);
  if (end < 0) throw new Error("the frames response ends before its delimiter");
  return bytes.subarray(start, end);
}

async function fetchTile(level, frame) {
  const lv = levels[level];
  const url = `${data.dicomweb}/studies/${data.study}/series/${data.series}` +
    `/instances/${lv.uid}/frames/${frame}`;
  let response = await fetch(url, { headers: { Accept: ACCEPT } });
  if (response.status >= 500) response = await fetch(url, { headers: { Accept: ACCEPT } }); // once more
  if (response.status === 406) {
    // tiles not stored as JPEG (JPEG 2000, uncompressed): the server renders the tile
    const rendered = await fetch(`${url}/rendered`, { headers: { Accept: "image/jpeg" } });
    if (!rendered.ok) throw new Error(`tile request answered ${rendered.status}`);
    return createImageBitmap(await rendered.blob());
  }
  if (!response.ok) throw new Error(`tile request answered ${response.status}`);
  const body = firstPart(await response.arrayBuffer(), boundaryOf(response.headers.get("content-type")));
  return createImageBitmap(new Blob([body], { type: "image/jpeg" }));
}

// ---------------------------------------------------------------------------------------
// Tiles: cache, queue
// ---------------------------------------------------------------------------------------
function cached(key) {
  const bitmap = cache.get(key);
  if (bitmap) {
    cache.delete(key);
    cache.set(key, bitmap);
  }
  return bitmap;
}

function remember(key, bitmap) {
  cache.set(key, bitmap);
  while (cache.size > MAX_CACHED) {
    const [oldest, old] = cache.entries().next().value;
    cache.delete(oldest);
    old.close();
  }
}

function pump() {
  while (inFlight.size < MAX_IN_FLIGHT && queue.length) {
    const { level, frame, key } = queue.shift();
    if (cache.has(key) || inFlight.has(key) || failed.has(key)) continue;
    inFlight.add(key);
    fetchTile(level, frame)
      .then((bitmap) => {
        remember(key, bitmap);
        loaded += 1;
      })
      .catch((err) => {
        failed.add(key);
        status.textContent = `A tile could not be loaded: ${err.message}`;
      })
      .finally(() => {
        inFlight.delete(key);
        stage.dataset.pending = String(inFlight.size + queue.length);
        schedule();
        pump();
      });
  }
  stage.dataset.pending = String(inFlight.size + queue.length);
}

// ---------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------
function fitScale() {
  return Math.min(canvas.clientWidth / base.width, canvas.clientHeight / base.height) * 0.95;
}

function chooseLevel() {
  const ratio = window.devicePixelRatio || 1;
  const wanted = 1 / (view.scale * ratio); // base pixels per device pixel
  let chosen = 0;
  levels.forEach((lv, i) => {
    if (lv.down <= wanted * 1.01) chosen = i;
  });
  return chosen;
}

function visibleTiles(level) {
  const lv = levels[level];
  const w = canvas.clientWidth / view.scale;
  const h = canvas.clientHeight / view.scale;
  const x0 = (view.cx - w / 2) / lv.down;
  const y0 = (view.cy - h / 2) / lv.down;
  const c0 = Math.max(0, Math.floor(x0 / lv.tileWidth));
  const r0 = Math.max(0, Math.floor(y0 / lv.tileHeight));
  const c1 = Math.min(lv.across - 1, Math.floor((x0 + w / lv.down) / lv.tileWidth));
  const r1 = Math.min(lv.rows - 1, Math.floor((y0 + h / lv.down) / lv.tileHeight));
  const tiles = [];
  for (let r = r0; r <= r1; r += 1) {
    for (let c = c0; c <= c1; c += 1) {
      const frame = r * lv.across + c + 1;
      tiles.push({ level, frame, c, r, key: `${level}/${frame}` });
    }
  }
  const mc = (c0 + c1) / 2;
  const mr = (r0 + r1) / 2;
  tiles.sort((a, b) => Math.hypot(a.c - mc, a.r - mr) - Math.hypot(b.c - mc, b.r - mr));
  return tiles;
}

function drawTile(tile, bitmap) {
  const lv = levels[tile.level];
  const sw = Math.min(lv.tileWidth, lv.width - tile.c * lv.tileWidth, bitmap.width);
  const sh = Math.min(lv.tileHeight, lv.height - tile.r * lv.tileHeight, bitmap.height);
  const k = view.scale * lv.down;
  const x = (tile.c * lv.tileWidth * lv.down - view.cx) * view.scale + canvas.clientWidth / 2;
  const y = (tile.r * lv.tileHeight * lv.down - view.cy) * view.scale + canvas.clientHeight / 2;
  // one device pixel of overlap hides seams between neighbouring tiles
  ctx.drawImage(bitmap, 0, 0, sw, sh, x, y, sw * k + 0.5, sh * k + 0.5);
}

function draw() {
  drawScheduled = false;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  if (view.fitted) view.scale = fitScale();
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#f2f2f2";
  ctx.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  ctx.imageSmoothingQuality = "high";
  const level = chooseLevel();
  const wanted = visibleTiles(level);
  const under = level === coarsest ? [] : visibleTiles(coarsest);
  for (const tile of under) {
    const bitmap = cached(tile.key);
    if (bitmap) drawTile(tile, bitmap);
  }
  let drawn = 0;
  for (const tile of wanted) {
    const bitmap = cached(tile.key);
    if (bitmap) {
      drawTile(tile, bitmap);
      drawn += 1;
    }
  }
  queue = [...wanted, ...under].filter((t) => !cache.has(t.key) && !failed.has(t.key));
  pump();
  stage.dataset.level = String(level);
  stage.dataset.drawn = String(drawn);
  stage.dataset.visible = String(wanted.length);
  stage.dataset.loaded = String(loaded);
  const lv = levels[level];
  levelLabel.textContent = `level ${level + 1} / ${levels.length} · ${lv.width} × ${lv.height}` +
    ` · ${drawn} / ${wanted.length} tiles`;
  zoomLabel.textContent = `${(view.scale * 100).toPrecision(3)}%`;
}

function schedule() {
  if (!drawScheduled) {
    drawScheduled = true;
    requestAnimationFrame(draw);
  }
}

// ---------------------------------------------------------------------------------------
// Interaction
// ---------------------------------------------------------------------------------------
function zoomAt(factor, px, py) {
  const min = fitScale() / 4;
  const max = 8 * (window.devicePixelRatio || 1);
  const scale = Math.min(max, Math.max(min, view.scale * factor));
  const sx = px ?? canvas.clientWidth / 2;
  const sy = py ?? canvas.clientHeight / 2;
  // keep the slide point under (sx, sy) in place
  const bx = view.cx + (sx - canvas.clientWidth / 2) / view.scale;
  const by = view.cy + (sy - canvas.clientHeight / 2) / view.scale;
  view.scale = scale;
  view.cx = bx - (sx - canvas.clientWidth / 2) / scale;
  view.cy = by - (sy - canvas.clientHeight / 2) / scale;
  view.fitted = false;
  schedule();
}

function pan(dx, dy) {
  view.cx = Math.min(base.width, Math.max(0, view.cx - dx / view.scale));
  view.cy = Math.min(base.height, Math.max(0, view.cy - dy / view.scale));
  view.fitted = false;
  schedule();
}

function fit() {
  view.cx = base.width / 2;
  view.cy = base.height / 2;
  view.fitted = true;
  schedule();
}

let drag = null;
stage.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, y: e.clientY };
  stage.setPointerCapture(e.pointerId);
  stage.classList.add("dragging");
  stage.focus();
});
stage.addEventListener("pointermove", (e) => {
  if (!drag) return;
  pan(e.clientX - drag.x, e.clientY - drag.y);
  drag = { x: e.clientX, y: e.clientY };
});
const endDrag = () => {
  drag = null;
  stage.classList.remove("dragging");
};
stage.addEventListener("pointerup", endDrag);
stage.addEventListener("pointercancel", endDrag);
stage.addEventListener(
  "wheel",
  (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, e.clientX - rect.left, e.clientY - rect.top);
  },
  { passive: false },
);
stage.addEventListener("keydown", (e) => {
  const step = 100;
  const keys = {
    "+": () => zoomAt(ZOOM_STEP),
    "=": () => zoomAt(ZOOM_STEP),
    "-": () => zoomAt(1 / ZOOM_STEP),
    0: fit,
    ArrowLeft: () => pan(step, 0),
    ArrowRight: () => pan(-step, 0),
    ArrowUp: () => pan(0, step),
    ArrowDown: () => pan(0, -step),
  };
  const action = keys[e.key];
  if (action) {
    e.preventDefault();
    action();
  }
});
$("slide-zoom-in").addEventListener("click", () => zoomAt(ZOOM_STEP));
$("slide-zoom-out").addEventListener("click", () => zoomAt(1 / ZOOM_STEP));
$("slide-fit").addEventListener("click", fit);
new ResizeObserver(schedule).observe(stage);
schedule();
