// The worklist page: a finding button marks the study read through
// POST /api/worklist/{study}/read with the reader's name (kept in this browser).
const reader = document.getElementById("worklist-reader");
const message = document.getElementById("worklist-message");
const table = document.getElementById("worklist-table");
const api = table ? table.dataset.api : "";
reader.value = localStorage.getItem("medflow.observer") || "";
reader.addEventListener("change", () => localStorage.setItem("medflow.observer", reader.value.trim()));

for (const button of document.querySelectorAll(".read-button")) {
  button.addEventListener("click", async () => {
    const row = button.closest("tr");
    const name = reader.value.trim();
    if (!name) {
      message.textContent = "type your name as Reader first";
      reader.focus();
      return;
    }
    const response = await fetch(`${api}/${encodeURIComponent(row.dataset.studyUid)}/read`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ reader: name, finding: button.dataset.finding }),
    });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (error) {
        // keep the status text
      }
      message.textContent = `not recorded: ${detail}`;
      return;
    }
    const entry = await response.json();
    row.classList.add("read");
    row.querySelector(".status").textContent = `read · ${entry.reader}: ${entry.reader_finding}`;
    message.textContent = `recorded: ${entry.reader_finding} (FHIR Observation ${entry.reader_observation_id})`;
  });
}
