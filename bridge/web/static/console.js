// The HL7 path of a clicked field, shown above the message (hover shows it as a title).
document.addEventListener("click", (event) => {
  const field = event.target.closest(".field");
  const out = document.getElementById("path");
  if (!field || !out) return;
  document.querySelectorAll(".field.picked").forEach((f) => f.classList.remove("picked"));
  field.classList.add("picked");
  out.textContent = field.dataset.path + " = " + (field.textContent || "(empty)");
});
