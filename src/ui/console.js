// EUCORA console: optional enhancements. Every page and form works without this script.
// - Times are shown in the viewer's time zone; UTC stays on hover (the title).
// - Pages with a "Refresh" link (data-live) redraw their main content within 2 s of a new event,
//   unless the viewer is typing in a form.
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var at = new Date(t.getAttribute("datetime"));
      if (!isNaN(at.getTime())) {
        t.textContent = at.toLocaleString(undefined, {
          year: "numeric", month: "short", day: "numeric",
          hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
        });
      }
    });
  }

  function typing() {
    var a = document.activeElement;
    return a && a.form && (a.tagName === "TEXTAREA" || a.tagName === "INPUT") && a.value !== "";
  }

  function live() {
    var main = document.getElementById("main");
    if (!main || !document.querySelector("[data-live]")) { return; }
    var seen = null;
    function poll() {
      fetch("/ui/live", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (position) {
          if (position === null) { return; }
          if (seen !== null && position !== seen && !typing()) {
            return fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
              .then(function (r) { return r.ok ? r.text() : null; })
              .then(function (html) {
                if (!html) { return; }
                var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
                if (next) { main.innerHTML = next.innerHTML; localTimes(main); }
                seen = position;
              });
          }
          seen = position;
        })
        .catch(function () {})
        .then(function () { window.setTimeout(poll, 1000); });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    live();
  });
})();
