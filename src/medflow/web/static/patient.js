// The patient page (issue 12): the timeline filters (kinds, from/to dates) apply at once in
// the page, and the address follows them (so a reload or a shared link shows the same); the
// form still works without scripts, through the server, with its Apply button. Thumbnails
// load lazily (loading="lazy") and hide themselves when they fail (medflow.js).
const form = document.getElementById("timeline-filters");
const events = [...document.querySelectorAll("#timeline > li.event")];
const summary = document.getElementById("timeline-summary");

function apply() {
  const kinds = new Set(
    [...form.querySelectorAll("input[name=kind]:checked")].map((i) => i.value),
  );
  const from = form.elements.from.value;
  const to = form.elements.to.value;
  let shown = 0;
  for (const li of events) {
    const day = li.dataset.date;
    const visible =
      kinds.has(li.dataset.kind) && (!from || (day && day >= from)) && (!to || (day && day <= to));
    li.hidden = !visible;
    if (visible) shown += 1;
  }
  summary.textContent = `${shown} event${shown === 1 ? "" : "s"}, newest first.`;
  const params = new URLSearchParams(window.location.search);
  params.delete("kind");
  const all = form.querySelectorAll("input[name=kind]").length;
  if (kinds.size < all) for (const k of kinds) params.append("kind", k);
  for (const [name, value] of [["from", from], ["to", to]]) {
    if (value) params.set(name, value);
    else params.delete(name);
  }
  const query = params.toString();
  history.replaceState(null, "", `${window.location.pathname}${query ? `?${query}` : ""}`);
}

// Filtered on the server, the page holds only the matching events: the first change in the
// browser asks the server for all of them again (the form, submitted).
const partial = form && (form.dataset.filtered === "true");
if (form) {
  form.addEventListener("change", (event) => {
    if (!event.target.matches("input[name=kind], input[type=date]")) return;
    if (partial) form.requestSubmit();
    else apply();
  });
}
