// Live updates without a build step: the server names what changed over server-sent events,
// and each part of the page that shows it is fetched again as an HTML fragment.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var seenAlert = maxAlertId(document);

  function maxAlertId(root) {
    var top = 0;
    root.querySelectorAll("[data-alert-id]").forEach(function (el) {
      top = Math.max(top, parseInt(el.getAttribute("data-alert-id"), 10) || 0);
    });
    return top;
  }

  function ago(seconds) {
    if (seconds < 1) return "just now";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 129600) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function relativeTimes() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-ts]").forEach(function (el) {
      el.textContent = ago(now - parseFloat(el.getAttribute("data-ts")));
    });
  }

  function markFresh(root) {
    var top = seenAlert;
    root.querySelectorAll("[data-alert-id]").forEach(function (el) {
      var id = parseInt(el.getAttribute("data-alert-id"), 10) || 0;
      if (id > seenAlert) el.classList.add("fresh");
      top = Math.max(top, id);
    });
    return top;
  }

  relativeTimes();
  setInterval(relativeTimes, 1000);

  var regions = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
  var banner = document.getElementById("database-down");
  if (!window.EventSource || regions.length === 0) {
    if (status && (!banner || banner.hidden)) status.textContent = "static";
    return;
  }
  var pending = {};
  var timer = null;

  function reload() {
    timer = null;
    var names = Object.keys(pending);
    pending = {};
    var top = seenAlert;
    Promise.all(regions.filter(function (el) {
      return names.indexOf(el.getAttribute("data-live")) >= 0;
    }).map(function (el) {
      var url = new URL(window.location.href);
      url.searchParams.set("fragment", el.getAttribute("data-live"));
      return fetch(url.toString(), { credentials: "same-origin" }).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html === null) return;
        var open = {};
        el.querySelectorAll("details[open]").forEach(function (d, i) { open[i] = true; });
        el.innerHTML = html;
        el.querySelectorAll("details").forEach(function (d, i) { if (open[i]) d.open = true; });
        top = Math.max(top, markFresh(el));
      });
    })).then(function () {
      seenAlert = top;
      var updated = document.getElementById("updated");
      if (updated) updated.setAttribute("data-ts", String(Date.now() / 1000));
      relativeTimes();
    });
  }

  var source = new EventSource("/events");
  source.addEventListener("hello", function () {
    if (status) { status.textContent = "live"; status.className = "status live"; }
  });
  source.addEventListener("change", function (event) {
    var topics = JSON.parse(event.data);
    regions.forEach(function (el) {
      var wanted = (el.getAttribute("data-topics") || "").split(" ");
      if (wanted.some(function (t) { return topics.indexOf(t) >= 0; })) {
        pending[el.getAttribute("data-live")] = true;
      }
    });
    if (timer === null && Object.keys(pending).length) timer = setTimeout(reload, 250);
  });
  // The database lost (the banner, with why) or back (the banner hidden; the server names
  // every topic in a change that follows, so the whole page catches up).
  source.addEventListener("database", function (event) {
    var state = JSON.parse(event.data);
    if (banner) {
      banner.hidden = state.up;
      var reason = banner.querySelector(".reason");
      if (reason) reason.textContent = state.reason || "";
    }
    if (status) {
      status.textContent = state.up ? "live" : "database lost";
      status.className = state.up ? "status live" : "status lost";
    }
  });
  source.onerror = function () {
    if (status) { status.textContent = "reconnecting…"; status.className = "status lost"; }
  };
})();
