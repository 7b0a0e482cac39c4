// The cohort builder (/cohorts/new): the form becomes a cohort definition, evaluated as the
// user edits (POST /api/cohorts/$evaluate, debounced) to show the count and the attrition;
// "Save" stores it (POST /api/cohorts), runs it and opens its page. Text from the server is
// only ever set as textContent.

const DEBOUNCE_MS = 350;
const form = document.getElementById("cohort-builder");
const root = form.dataset.root || "";
const countEl = document.getElementById("cohort-count");
const statusEl = document.getElementById("builder-status");
const errorEl = document.getElementById("builder-error");
const attritionBody = document.querySelector("#attrition tbody");

function value(name) {
  return form.elements.namedItem(name).value.trim();
}

function list(name) {
  return value(name).split(/[\s,;]+/).filter((x) => x !== "");
}

function window_(from, to) {
  const w = {};
  if (value(from)) w.from = value(from);
  if (value(to)) w.to = value(to);
  return Object.keys(w).length ? w : null;
}

function demographics() {
  const out = [];
  const age = {};
  if (value("age_min") !== "") age.min = Number(value("age_min"));
  if (value("age_max") !== "") age.max = Number(value("age_max"));
  if (Object.keys(age).length) {
    const label = `age ${age.min ?? ""}–${age.max ?? ""}`;
    out.push({ label, demographics: { age } });
  }
  if (value("gender")) {
    out.push({ label: `gender ${value("gender")}`, demographics: { gender: [value("gender")] } });
  }
  return out;
}

function condition() {
  const codes = list("condition_codes");
  const prefixes = list("condition_prefixes");
  if (!codes.length && !prefixes.length) return [];
  const system = value("condition_system");
  const body = { codes: [{ system, codes, prefixes }] };
  const onset = value("onset_within") ? { within: value("onset_within") } : window_("onset_from", "onset_to");
  if (onset) body.onset = onset;
  const shown = [...codes, ...prefixes.map((p) => `${p}*`)].join(", ");
  return [{ label: `diagnosis ${system} ${shown}`, condition: body }];
}

function medication() {
  const codes = list("medication_codes");
  if (!codes.length) return [];
  const label = `medication rxnorm ${codes.join(", ")}`;
  return [{ label, medication: { codes: [{ system: "rxnorm", codes }] } }];
}

function imaging() {
  const date = window_("imaging_from", "imaging_to");
  if (!value("modality") && !date) return [];
  const body = {};
  if (value("modality")) body.modality = [value("modality")];
  if (date) body.date = date;
  return [{ label: `imaging ${value("modality") || "any"}`, imaging: body }];
}

function definition() {
  const criteria = [...demographics(), ...condition(), ...medication(), ...imaging()];
  if (!criteria.length) return null;
  const top = value("combine") === "or" && criteria.length > 1 ? [{ or: criteria }] : criteria;
  // every patient's studies are listed on the cohort page: collect them
  return {
    name: value("name") || "new cohort",
    evaluation_date: value("evaluation_date") || new Date().toISOString().slice(0, 10),
    criteria: top,
    collect: [{ label: "studies", imaging: {} }],
  };
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = !message;
}

async function problemText(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.errors) && body.errors.length) {
      return body.errors.map((e) => (e.path ? `${e.path}: ${e.message}` : e.message)).join("; ");
    }
    return body.detail || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function showAttrition(steps) {
  const rows = steps.map((step) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = step.criterion;
    const n = document.createElement("td");
    n.className = "num";
    n.textContent = String(step.patients);
    tr.append(name, n);
    return tr;
  });
  attritionBody.replaceChildren(...rows);
}

let generation = 0;

async function evaluate() {
  const body = definition();
  const mine = ++generation;
  if (body === null) {
    countEl.textContent = "–";
    statusEl.textContent = "add a criterion";
    attritionBody.replaceChildren();
    showError("");
    return;
  }
  statusEl.textContent = "counting…";
  const response = await fetch(`${root}/api/cohorts/$evaluate`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (mine !== generation) return; // a newer edit has been sent since
  if (!response.ok) {
    statusEl.textContent = "";
    showError(await problemText(response));
    return;
  }
  const result = await response.json();
  if (mine !== generation) return;
  showError("");
  countEl.textContent = String(result.patients.length);
  statusEl.textContent = `in ${Math.round(result.elapsed_s * 1000)} ms`;
  showAttrition(result.attrition);
}

let timer = null;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(() => evaluate().catch((e) => showError(String(e))), DEBOUNCE_MS);
}

async function save(event) {
  event.preventDefault();
  const body = definition();
  if (body === null) {
    showError("add a criterion before saving");
    return;
  }
  const name = encodeURIComponent(body.name);
  const saved = await fetch(`${root}/api/cohorts?name=${name}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!saved.ok) {
    showError(await problemText(saved));
    return;
  }
  const { id } = await saved.json();
  const run = await fetch(`${root}/api/cohorts/${id}/$run`, { method: "POST" });
  if (!run.ok) {
    showError(await problemText(run));
    return;
  }
  window.location.assign(`${root}/cohorts/${id}`);
}

form.addEventListener("input", schedule);
form.addEventListener("change", schedule);
form.addEventListener("submit", (event) => save(event).catch((e) => showError(String(e))));
schedule();
