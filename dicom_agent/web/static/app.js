/* dicom_agent worklist: small hand-written helpers, no framework, no network beyond this origin. */
(function () {
  "use strict";

  function onReady(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  /* Widths from data attributes (inline styles are blocked by the Content-Security-Policy). */
  function applyWidths(root) {
    root.querySelectorAll("[data-width]").forEach(function (el) {
      el.style.width = Math.max(0, Math.min(100, Number(el.dataset.width))) + "%";
    });
  }

  /* Whole worklist rows are links. */
  function bindRows(root) {
    root.querySelectorAll("tr.row-link").forEach(function (tr) {
      tr.addEventListener("click", function (ev) {
        if (ev.target.closest("a, button, input, select")) return;
        window.location.href = tr.dataset.href;
      });
    });
  }

  /* Refresh without reload: poll a change token, fetch the rows fragment when it moves. */
  function pollWorklist() {
    var box = document.getElementById("worklist");
    if (!box) return;
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch("/worklist/version.json", { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.redirected || !r.ok) { window.location.reload(); throw new Error("session"); }
          return r.json();
        })
        .then(function (v) {
          if (v.token === box.dataset.version) return null;
          return fetch(box.dataset.rowsUrl, { credentials: "same-origin" }).then(function (r) { return r.text(); })
            .then(function (html) {
              box.innerHTML = html;
              box.dataset.version = v.token;
              applyWidths(box); bindRows(box);
              var live = document.getElementById("live-indicator");
              if (live) { live.classList.add("flash"); setTimeout(function () { live.classList.remove("flash"); }, 1500); }
            });
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, 4000);
  }

  function bindConfirm() {
    document.querySelectorAll("form.confirm").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
      });
    });
    document.querySelectorAll("button[data-confirm]").forEach(function (btn) {
      btn.addEventListener("click", function (ev) {
        if (!window.confirm(btn.dataset.confirm)) ev.preventDefault();
      });
    });
    document.querySelectorAll("select.autosubmit").forEach(function (sel) {
      sel.addEventListener("change", function () { sel.form.submit(); });
    });
  }

  /* The image viewer: slice scrolling, window presets, per-finding box and mask overlays. */
  function viewer() {
    var root = document.getElementById("viewer");
    if (!root) return;
    var data = JSON.parse(root.dataset.overlay);
    var img = document.getElementById("slice-img");
    var svg = document.getElementById("box-layer");
    var masks = document.getElementById("mask-layer");
    var range = document.getElementById("slice-range");
    var label = document.getElementById("slice-label");
    var state = { index: data.start, preset: root.dataset.preset, on: {} };
    data.findings.forEach(function (f) { state.on[f.id] = f.on; });
    var SVGNS = "http://www.w3.org/2000/svg";

    function frameUrl(s) {
      return "/studies/" + data.study + "/instances/" + s.i + "/frames/" + s.f + ".png?preset=" + encodeURIComponent(state.preset);
    }

    /* Small matrices (a 256² CT) are scaled up to fill the viewport; the overlays follow the image box. */
    function fit() {
      var s = data.slices[state.index];
      if (!s || !s.c || !s.r) return;
      var scale = Math.min(root.clientWidth / s.c, (window.innerHeight * 0.72) / s.r);
      img.style.width = Math.floor(s.c * scale) + "px";
      img.style.height = Math.floor(s.r * scale) + "px";
    }

    function draw() {
      var s = data.slices[state.index];
      if (!s) return;
      fit();
      var url = frameUrl(s);
      if (img.getAttribute("src") !== url) img.setAttribute("src", url);
      svg.setAttribute("viewBox", "0 0 " + (s.c || 1) + " " + (s.r || 1));
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      while (masks.firstChild) masks.removeChild(masks.firstChild);
      data.findings.forEach(function (f) {
        if (!state.on[f.id]) return;
        f.boxes.forEach(function (b) {
          if (b.sop !== s.sop || b.frame !== s.f) return;
          var r = document.createElementNS(SVGNS, "rect");
          r.setAttribute("x", b.x0); r.setAttribute("y", b.y0);
          r.setAttribute("width", Math.max(1, b.x1 - b.x0)); r.setAttribute("height", Math.max(1, b.y1 - b.y0));
          r.setAttribute("class", "box c" + f.color);
          r.setAttribute("data-finding", f.id);
          svg.appendChild(r);
        });
        if (f.mask && f.maskSops.indexOf(s.sop) >= 0) {
          var m = document.createElement("img");
          m.src = "/studies/" + data.study + "/findings/" + f.id + "/mask/" + s.i + "/" + s.f + ".png?color=" + f.color;
          m.alt = ""; m.className = "mask"; m.dataset.finding = f.id;
          masks.appendChild(m);
        }
      });
      if (range) range.value = state.index;
      if (label) label.textContent = (state.index + 1) + " / " + data.slices.length;
    }

    function go(delta) {
      state.index = Math.max(0, Math.min(data.slices.length - 1, state.index + delta));
      draw();
    }

    if (range) range.addEventListener("input", function () { state.index = Number(range.value); draw(); });
    document.getElementById("stage").addEventListener("wheel", function (ev) {
      if (data.slices.length < 2) return;
      ev.preventDefault(); go(ev.deltaY > 0 ? 1 : -1);
    }, { passive: false });
    document.addEventListener("keydown", function (ev) {
      if (ev.target.closest("input, textarea, select")) return;
      if (ev.key === "ArrowDown" || ev.key === "PageDown") { ev.preventDefault(); go(1); }
      if (ev.key === "ArrowUp" || ev.key === "PageUp") { ev.preventDefault(); go(-1); }
    });
    document.querySelectorAll("button.preset").forEach(function (btn) {
      btn.addEventListener("click", function () {
        state.preset = btn.dataset.preset;
        document.querySelectorAll("button.preset").forEach(function (b) { b.classList.toggle("active", b === btn); });
        draw();
      });
    });
    document.querySelectorAll("input.overlay-toggle").forEach(function (box) {
      box.addEventListener("change", function () { state.on[box.dataset.finding] = box.checked; draw(); });
    });
    window.addEventListener("resize", fit);
    draw();
  }

  onReady(function () {
    applyWidths(document);
    bindRows(document);
    bindConfirm();
    pollWorklist();
    viewer();
  });
})();
