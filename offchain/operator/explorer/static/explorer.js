// Clearhouse explorer: raw-hex toggles, copy buttons on full hex values, "/" focuses the search box.
// Everything works without this file; it only saves clicks.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.toggle-raw")) {
    button.addEventListener("click", () => {
      const raw = button.parentElement.querySelector("pre.raw");
      raw.hidden = !raw.hidden;
      button.setAttribute("aria-expanded", String(!raw.hidden));
      button.textContent = (raw.hidden ? "show " : "hide ") + button.textContent.replace(/^(show|hide) /, "");
    });
  }
  if (navigator.clipboard) {
    for (const el of document.querySelectorAll("dd.hex, span.hex[title]")) {
      const value = el.getAttribute("title") || el.textContent.trim();
      if (!value.startsWith("0x")) continue;
      const copy = document.createElement("button");
      copy.type = "button"; copy.className = "copy"; copy.textContent = "copy"; copy.title = "copy " + value;
      copy.addEventListener("click", (event) => { event.preventDefault(); navigator.clipboard.writeText(value); });
      el.after(copy);
    }
  }
  document.addEventListener("keydown", (event) => {
    const search = document.getElementById("search");
    if (event.key === "/" && document.activeElement !== search) { event.preventDefault(); search.focus(); }
  });
});
