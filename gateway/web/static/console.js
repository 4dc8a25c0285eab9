// The console's only script, shipped with the gateway: refreshes parts of a page in place and asks
// before destructive actions. Every page works without it (reload to refresh).
"use strict";

function refresh(element) {
  const url = element.dataset.refresh;
  const every = Number(element.dataset.every || 5000);
  window.setTimeout(async function tick() {
    try {
      // A redirect means the session ended (it leads to sign-in): reload the whole page so it
      // goes there, rather than following it and putting the sign-in page inside this one.
      const answer = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual",
      });
      if (answer.type === "opaqueredirect") {
        window.location.reload();
        return;
      }
      if (answer.ok) {
        element.innerHTML = await answer.text();
      }
    } catch (err) {
      // The gateway restarting or the network blinking: try again next time.
    }
    if (element.dataset.stop !== "true" && !element.querySelector("[data-stop]")) {
      window.setTimeout(tick, every);
    }
  }, every);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  });
  document.querySelectorAll("tr[data-href]").forEach(function (row) {
    row.addEventListener("click", function (event) {
      if (event.target.closest("a, button, form")) {
        return;
      }
      window.location.href = row.dataset.href;
    });
  });
});
