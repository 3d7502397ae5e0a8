// Live pages: listen to the page's event stream and redraw in place. The server sends at most one
// `update` a second; without JavaScript the pages still work, by plain reload.
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || !window.EventSource) return;
  var charts = me.dataset.charts;
  var swaps = (me.dataset.swap || "").split(",").filter(Boolean);
  var last = null;
  var busy = false;

  function refreshCharts() {
    if (!charts) return Promise.resolve();
    var figures = document.querySelectorAll("figure[data-chart]");
    return Promise.all(Array.prototype.map.call(figures, function (fig) {
      var url = charts + "&chart=" + encodeURIComponent(fig.dataset.chart);
      return fetch(url, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) throw new Error(url + ": " + r.status);
        return r.text();
      }).then(function (svg) {
        var old = fig.querySelector("svg");
        if (old) old.outerHTML = svg; else fig.insertAdjacentHTML("afterbegin", svg);
      });
    }));
  }

  function refreshParts() {
    if (!swaps.length) return Promise.resolve();
    return fetch(location.href, { credentials: "same-origin" }).then(function (r) {
      return r.text();
    }).then(function (html) {
      var fresh = new DOMParser().parseFromString(html, "text/html");
      swaps.forEach(function (sel) {
        var now = document.querySelector(sel), next = fresh.querySelector(sel);
        if (now && next) now.innerHTML = next.innerHTML;
      });
    });
  }

  function onUpdate(e) {
    var snap = JSON.parse(e.data);
    var prev = last;
    last = snap;
    if (busy) return;
    busy = true;
    // Steps redraw the charts; anything else (status, signals, acks, rule events) also redraws the
    // facts and tables.
    var partsChanged = !prev || !charts || prev.status !== snap.status ||
      prev.signals !== snap.signals || prev.acked !== snap.acked || prev.events !== snap.events;
    // The facts that move with every step; the rest is refetched when it changes.
    [["step", snap.last_step], ["loss", snap.loss], ["margin", snap.margin]].forEach(function (f) {
      var el = document.getElementById(f[0]);
      if (el && f[1] !== undefined && f[1] !== null) el.textContent = String(f[1]);
    });
    var work = [refreshCharts()];
    if (partsChanged) work.push(refreshParts());
    Promise.all(work).then(function () {
      document.body.dataset.liveStep = snap.last_step === undefined ? "" : String(snap.last_step);
      document.body.dataset.liveUpdates = String(Number(document.body.dataset.liveUpdates || 0) + 1);
    }).catch(function (err) {
      console.warn("redline: live update failed", err);
    }).then(function () { busy = false; });
  }

  var source = new EventSource(me.dataset.events);
  source.addEventListener("update", onUpdate);
})();
