/* vlmnb attention explorer: draws one widget from the JSON payload written by vlmnb.explorer.
   Self-contained (no library, no network). Each widget's root element gets an API as
   `root.vx` (also window.vlmnbExplorer.widgets[root.id]) for tests and curious readers. */
(function () {
  "use strict";
  var VERSION = 1;
  if (window.vlmnbExplorer && window.vlmnbExplorer.version >= VERSION) return;

  var MAGMA_HEX = "__MAGMA__";
  var LUT = [];
  for (var i = 0; i < 256; i++) {
    LUT.push("rgb(" + parseInt(MAGMA_HEX.substr(6 * i, 2), 16) + "," +
      parseInt(MAGMA_HEX.substr(6 * i + 2, 2), 16) + "," + parseInt(MAGMA_HEX.substr(6 * i + 4, 2), 16) + ")");
  }
  var SPAN_COLORS = { system: "#9e9e9e", image: "#1f77b4", query: "#ff7f0e", generated: "#2ca02c" };
  var SVGNS = "http://www.w3.org/2000/svg";

  function bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function el(tag, attrs, parent, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function svg(tag, attrs, parent) {
    var node = document.createElementNS(SVGNS, tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v === 0) return "0";
    return Math.abs(v) >= 1e-3 ? v.toPrecision(3) : v.toExponential(2);
  }

  function mount(root) {
    if (!root) throw new Error("vlmnb explorer: root element not found");
    if (root.vx) return root.vx;
    var data = JSON.parse(root.querySelector("script.vx-data").textContent);
    var L = data.layers.length, NW = data.n_words, N = data.n_tokens;
    var Q = bytes(data.attn);
    var SCALE = new Float32Array(bytes(data.attn_scale).buffer);
    var OFFSET = new Float32Array(bytes(data.attn_offset).buffer);
    var SHARES = data.shares ? bytes(data.shares) : null;
    var B = data.boxes;
    var dw = data.display[0], dh = data.display[1];
    var sx = dw / data.image_size[0], sy = dh / data.image_size[1];
    var state = { word: data.state.word, layer: data.state.layer, window: data.state.window,
                  mask: true, lo: 0, hi: 0, peak: -1, max: 0, min: 0, view: -1 };
    var current = new Float64Array(N);

    // ------------------------------------------------------------------ layout
    var live = el("div", { "class": "vx-live" }, root);
    var row = el("div", { "class": "vx-row" }, live);
    var imageColumn = el("div", { "class": "vx-imgcol" }, row);
    var stack = el("div", { "class": "vx-stack", style: "width:" + dw + "px;height:" + dh + "px" }, imageColumn);
    var scaleRow = el("div", { "class": "vx-scale", style: "width:" + dw + "px" }, imageColumn);
    var scaleLo = el("span", {}, scaleRow);
    var scaleBar = el("canvas", { width: 256, height: 1, "class": "vx-bar" }, scaleRow);
    var scaleHi = el("span", {}, scaleRow);
    (function () {
      var c = scaleBar.getContext("2d");
      for (var k = 0; k < 256; k++) { c.fillStyle = LUT[k]; c.fillRect(k, 0, 1, 1); }
    })();
    var pixelated = data.image_size[0] < dw;
    if (pixelated) stack.classList.add("vx-pixelated");
    function canvas(cls) {
      var c = el("canvas", { "class": cls, width: dw, height: dh }, stack);
      c.style.width = dw + "px"; c.style.height = dh + "px";
      return c;
    }
    var base = canvas("vx-base"), heat = canvas("vx-heat"), over = canvas("vx-over");
    base.setAttribute("role", "img");
    base.setAttribute("aria-label", "the image with the selected word's attention over it");

    var side = el("div", { "class": "vx-side" }, row);
    var controls = el("div", { "class": "vx-controls" }, side);
    var layerLabel = el("label", {}, controls);
    var layerText = el("span", {}, layerLabel);
    var slider = el("input", { type: "range", min: 0, max: L - 1, step: 1, value: state.layer,
                               "class": "vx-layer", "aria-label": "decoder layer" }, layerLabel);
    var windowLabel = el("label", {}, controls, "average over ");
    var windowSelect = el("select", { "class": "vx-window" }, windowLabel);
    var widths = [1, 3, 5, 9].filter(function (w) { return w === 1 || w < L; });
    if (widths.indexOf(state.window) < 0 && state.window !== 0) {
      widths.push(state.window);
      widths.sort(function (a, b) { return a - b; });
    }
    widths.forEach(function (w) {
      el("option", { value: w }, windowSelect, w === 1 ? "this layer only" : w + " layers around it");
    });
    el("option", { value: 0 }, windowSelect, "all layers");
    windowSelect.value = String(state.window);
    var viewSelect = null;
    if (data.views.length > 1) {  // tiles / thumbnails overlap: let the reader pick one
      var viewLabel = el("label", {}, controls, "image view ");
      viewSelect = el("select", { "class": "vx-view" }, viewLabel);
      el("option", { value: -1 }, viewSelect, "all views (later ones on top)");
      data.views.forEach(function (v, i) {
        el("option", { value: i }, viewSelect, v.name + " (" + v.cols.length + " tokens)");
      });
    }
    var maskLabel = el("label", {}, controls);
    var maskBox = el("input", { type: "checkbox", "class": "vx-mask" }, maskLabel);
    maskBox.checked = true;
    var maskText = el("span", {}, maskLabel, " outline the true mask");
    var info = el("div", { "class": "vx-info", "aria-live": "polite" }, side);

    var CW = 300, CH = 120, ML = 30, MR = 8, MT = 16, MB = 22, PW = CW - ML - MR, PH = CH - MT - MB;
    var chart = svg("svg", { "class": "vx-chart", width: CW, height: CH, viewBox: "0 0 " + CW + " " + CH }, SHARES ? side : null);
    function xOf(l) { return ML + (L === 1 ? PW / 2 : l * PW / (L - 1)); }
    function yOf(v) { return MT + (1 - v) * PH; }
    var band = svg("rect", { y: MT, height: PH, fill: "#7b3294", "fill-opacity": 0.15 }, chart);
    svg("line", { x1: ML, x2: ML + PW, y1: MT + PH, y2: MT + PH, stroke: "#888" }, chart);
    svg("line", { x1: ML, x2: ML, y1: MT, y2: MT + PH, stroke: "#888" }, chart);
    [0, 0.5, 1].forEach(function (v) {
      var t = svg("text", { x: ML - 4, y: yOf(v) + 3, "text-anchor": "end" }, chart); t.textContent = v;
    });
    var xl = svg("text", { x: ML, y: CH - 6, "text-anchor": "start" }, chart); xl.textContent = data.layers[0];
    var xr = svg("text", { x: ML + PW, y: CH - 6, "text-anchor": "end" }, chart); xr.textContent = data.layers[L - 1];
    var xm = svg("text", { x: ML + PW / 2, y: CH - 6, "text-anchor": "middle" }, chart); xm.textContent = "layer";
    var paths = {};
    var legendX = ML + 4;
    data.spans.forEach(function (name) {
      paths[name] = svg("path", { fill: "none", stroke: SPAN_COLORS[name] || "#000",
                                  "stroke-width": name === "system" ? 1 : 1.8 }, chart);
      var t = svg("text", { x: legendX, y: 10, fill: SPAN_COLORS[name] || "#000" }, chart);
      t.textContent = name; t.style.fill = SPAN_COLORS[name] || "#000";
      legendX += 8 + 6 * name.length;
    });

    var words = el("div", { "class": "vx-words" }, live);
    var spans = [];
    var pos = 0;
    data.words.forEach(function (w, i) {
      if (w.s > pos) words.appendChild(document.createTextNode(data.text.slice(pos, w.s)));
      var s = el("span", { "class": "vx-w" + (w.m >= 0 ? " vx-has-mask" : ""), tabindex: 0, "data-word": i,
                           title: w.n > 1 ? w.n + " tokens" : "1 token" }, words, data.text.slice(w.s, w.e));
      s.addEventListener("mouseenter", function () { select(i); });
      s.addEventListener("click", function () { select(i); });
      s.addEventListener("focus", function () { select(i); });
      s.addEventListener("keydown", function (e) {
        var step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (step && spans[i + step]) { e.preventDefault(); spans[i + step].focus(); }
      });
      spans.push(s);
      pos = w.e;
    });
    if (pos < data.text.length) words.appendChild(document.createTextNode(data.text.slice(pos)));
    el("div", { "class": "vx-help" }, live,
       "Hover or click a word to see where it looked; words with a dotted underline name an object with a known mask.");

    // ------------------------------------------------------------------ images
    var image = null;
    if (data.image) {
      image = new Image();
      image.onload = drawBase;
      image.src = data.image;
    }
    var maskImages = data.masks.map(function (m) {
      var img = new Image();
      img.onload = drawOverlay;
      img.src = m.src;
      return img;
    });

    function drawBase() {
      var c = base.getContext("2d");
      c.fillStyle = "#ddd";
      c.fillRect(0, 0, dw, dh);
      if (image && image.complete && image.naturalWidth) {
        c.imageSmoothingEnabled = !pixelated;
        c.drawImage(image, 0, 0, dw, dh);
      }
    }

    // ------------------------------------------------------------------ data
    function rect(j) {
      var x0 = Math.round(B[4 * j] * sx), y0 = Math.round(B[4 * j + 1] * sy);
      var x1 = Math.max(Math.round(B[4 * j + 2] * sx), x0 + 1), y1 = Math.max(Math.round(B[4 * j + 3] * sy), y0 + 1);
      return [x0, y0, x1, y1];
    }

    function compute() {
      // the same rule as vlmnb.explorer.window_slots
      var before = Math.floor((state.window - 1) / 2);
      state.lo = state.window === 0 ? 0 : Math.max(0, state.layer - before);
      state.hi = state.window === 0 ? L - 1 : Math.min(L - 1, state.layer + (state.window - 1 - before));
      current.fill(0);
      var n = state.hi - state.lo + 1;
      for (var l = state.lo; l <= state.hi; l++) {
        var r = l * NW + state.word, s = SCALE[r], o = OFFSET[r], off = r * N;
        for (var j = 0; j < N; j++) current[j] += Math.fround(o + Math.fround(Q[off + j] * s)) / n;
      }
      // scale and peak over the tokens on show
      state.peak = -1;
      shownViews().forEach(function (view) {
        view.cols.forEach(function (k) {
          if (state.peak < 0) { state.peak = k; state.max = state.min = current[k]; return; }
          if (current[k] > state.max) { state.max = current[k]; state.peak = k; }
          if (current[k] < state.min) state.min = current[k];
        });
      });
    }

    function shownViews() {
      return state.view < 0 ? data.views : [data.views[state.view]];
    }

    // the colour scale spans the map's own range (like the book's static maps)
    function colorIndex(v) {
      var range = state.max - state.min;
      return range > 0 ? Math.round(255 * (v - state.min) / range) : 255;
    }

    function share(span, l) {
      return SHARES[(l * NW + state.word) * 4 + span] / 255;
    }

    // ------------------------------------------------------------------ drawing
    function drawHeat() {
      var c = heat.getContext("2d");
      c.clearRect(0, 0, dw, dh);
      if (!(state.max > 0)) return;
      shownViews().forEach(function (view) {
        view.cols.forEach(function (j) {
          var r = rect(j);
          c.fillStyle = LUT[colorIndex(current[j])];
          c.fillRect(r[0], r[1], r[2] - r[0], r[3] - r[1]);
        });
      });
    }

    function drawOverlay() {
      var c = over.getContext("2d");
      c.clearRect(0, 0, dw, dh);
      var m = data.words[state.word].m;
      if (state.mask && m >= 0 && maskImages[m].complete && maskImages[m].naturalWidth) {
        c.drawImage(maskImages[m], 0, 0, dw, dh);
      }
      if (state.max > 0) {
        var r = rect(state.peak), x = (r[0] + r[2]) / 2, y = (r[1] + r[3]) / 2, a = 6;
        c.lineCap = "round";
        [["#000", 5], ["#00e5ff", 2.5]].forEach(function (st) {
          c.strokeStyle = st[0]; c.lineWidth = st[1];
          c.beginPath();
          c.moveTo(x - a, y - a); c.lineTo(x + a, y + a);
          c.moveTo(x - a, y + a); c.lineTo(x + a, y - a);
          c.stroke();
        });
      }
    }

    function drawChart() {
      if (!SHARES) return;
      var step = L === 1 ? PW : PW / (L - 1);
      band.setAttribute("x", xOf(state.lo) - step / 2);
      band.setAttribute("width", (state.hi - state.lo + 1) * step);
      data.spans.forEach(function (name, s) {
        var d = "";
        for (var l = 0; l < L; l++) d += (l ? "L" : "M") + xOf(l).toFixed(1) + " " + yOf(share(s, l)).toFixed(1);
        if (L === 1) d += "h1";
        paths[name].setAttribute("d", d);
      });
    }

    function describe() {
      var w = data.words[state.word];
      var layers = state.lo === state.hi ? "layer " + data.layers[state.lo]
        : "mean of layers " + data.layers[state.lo] + "\u2013" + data.layers[state.hi];
      var r = B.slice(4 * state.peak, 4 * state.peak + 4);
      var text = "\u201c" + w.t + "\u201d (" + w.n + (w.n > 1 ? " tokens" : " token") + "), " + layers + ". ";
      text += state.max > 0
        ? "Peak: image token " + data.token_index[state.peak] + " at (" + Math.round((r[0] + r[2]) / 2) + ", " +
          Math.round((r[1] + r[3]) / 2) + ") px, attention " + fmt(state.max) + "."
        : "No attention to the image here.";
      if (SHARES) {
        var img = 0, n = state.hi - state.lo + 1, iq = data.spans.indexOf("image");
        for (var l = state.lo; l <= state.hi; l++) img += share(iq, l) / n;
        text += " Share on the image: " + (100 * img).toFixed(0) + "%.";
      }
      info.textContent = text;
      scaleLo.textContent = fmt(state.min);
      scaleHi.textContent = fmt(state.max);
      layerText.textContent = "layer " + data.layers[state.layer] + " (" + (state.layer + 1) + " of " + L + ")";
      if (w.m >= 0) {
        maskBox.disabled = false;
        maskText.textContent = " outline the true mask of \u201c" + data.masks[w.m].name + "\u201d";
      } else {
        maskBox.disabled = true;
        maskText.textContent = data.masks.length ? " outline the true mask (this word names no masked object)"
                                                 : " outline the true mask (no masks given)";
      }
    }

    function render() {
      compute();
      drawHeat();
      drawOverlay();
      drawChart();
      describe();
      spans.forEach(function (s, i) { s.classList.toggle("vx-on", i === state.word); });
      root.setAttribute("data-word", state.word);
      root.setAttribute("data-layer-lo", data.layers[state.lo]);
      root.setAttribute("data-layer-hi", data.layers[state.hi]);
      root.setAttribute("data-peak", state.max > 0 ? data.token_index[state.peak] : -1);
    }

    // ------------------------------------------------------------------ events and API
    function select(i) {
      if (i === state.word || i < 0 || i >= NW) return;
      state.word = i;
      render();
    }
    function setLayer(slot) {
      slot = Math.max(0, Math.min(L - 1, slot | 0));
      state.layer = slot;
      if (String(slider.value) !== String(slot)) slider.value = slot;
      render();
    }
    function setWindow(w) {
      state.window = w | 0;
      windowSelect.value = String(state.window);
      render();
    }
    slider.addEventListener("input", function () { setLayer(+slider.value); });
    windowSelect.addEventListener("change", function () { setWindow(+windowSelect.value); });
    if (viewSelect) viewSelect.addEventListener("change", function () { state.view = +viewSelect.value; render(); });
    maskBox.addEventListener("change", function () { state.mask = maskBox.checked; drawOverlay(); });

    var api = {
      data: data,
      values: function () { return Array.prototype.slice.call(current); },
      state: function () {
        return { word: state.word, text: data.words[state.word].t, layer: data.layers[state.layer],
                 lo: data.layers[state.lo], hi: data.layers[state.hi], window: state.window,
                 peak: state.max > 0 ? data.token_index[state.peak] : -1, min: state.min, max: state.max,
                 view: state.view < 0 ? "all" : data.views[state.view].name };
      },
      rect: rect,
      colorIndex: function (v) { return colorIndex(v); },
      select: select,
      setLayer: setLayer,
      setWindow: setWindow,
      canvases: { base: base, heat: heat, overlay: over }
    };
    root.vx = api;
    window.vlmnbExplorer.widgets[root.id] = api;
    drawBase();
    render();
    root.classList.add("vx-ready");
    return api;
  }

  window.vlmnbExplorer = { version: VERSION, mount: mount, widgets: {} };
})();
