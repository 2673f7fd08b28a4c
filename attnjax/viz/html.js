// attnjax attention views: plain JavaScript, no libraries, no network. Reads the JSON block
// #attnjax-data written by attnjax/viz/html.py and draws one view into #app.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("attnjax-data").textContent);
  const app = document.getElementById("app");

  function el(tag, attrs, parent, text) {
    const svg = ["svg", "line", "text", "g"].includes(tag);
    const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function bytes(b64) {
    const s = atob(b64), a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    return a;
  }

  // Rows of every layer and head: 8-bit values, dense (k = 0) or top-k with uint16 keys.
  const SQUARE = Float32Array.from({ length: 256 }, (_, q) => (q / 255) ** 2);  // 8-bit √p → p

  function Rows(d) {
    const T = d.T, k = d.k || d.T, v = bytes(d.values);
    const ix = d.k ? new Uint16Array(bytes(d.indices).buffer) : null;
    const off = (l, h, t) => ((l * d.N + h) * T + t) * k;
    return {
      T, L: d.L, N: d.N,
      each(l, h, t, f) {  // f(key, weight) for every stored non-zero entry of row t
        const o = off(l, h, t);
        for (let j = 0; j < k; j++) if (v[o + j]) f(ix ? ix[o + j] : j, SQUARE[v[o + j]]);
      },
      get(l, h, t, s) {
        const o = off(l, h, t);
        if (!ix) return SQUARE[v[o + s]];
        for (let j = 0; j < k; j++) if (ix[o + j] === s) return SQUARE[v[o + j]];
        return 0;
      },
    };
  }

  const short = (t) => (t.length > 12 ? t.slice(0, 11) + "…" : t);
  const headColor = (h, n) => `hsl(${Math.round((h * 360) / n)},70%,42%)`;

  // Head (l, h) on the window w = {r0, c0, span} (integers) into a P×P square at (x, y).
  function paint(ctx, R, l, h, w, P, x, y) {
    const G = Math.max(1, Math.min(P, w.span)), grid = new Float32Array(G * G);
    const r1 = Math.min(R.T, w.r0 + w.span);
    for (let t = w.r0; t < r1; t++) {
      const gy = Math.floor(((t - w.r0) * G) / w.span);
      R.each(l, h, t, (s, p) => {
        const gx = Math.floor(((s - w.c0) * G) / w.span);
        if (gx >= 0 && gx < G && p > grid[gy * G + gx]) grid[gy * G + gx] = p;
      });
    }
    const off = document.createElement("canvas");
    off.width = off.height = G;
    const octx = off.getContext("2d"), img = octx.createImageData(G, G);
    for (let i = 0; i < G * G; i++) {  // white → dark blue, by √p
      const p = Math.sqrt(grid[i]);
      img.data.set([255 - 247 * p, 255 - 207 * p, 255 - 148 * p, 255], 4 * i);
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, x, y, P, P);
  }

  // One head, enlarged: labels, value under the pointer, wheel/button zoom, drag to pan.
  function Heatmap(parent, R, tokens) {
    const M = 90, P = 480, box = el("div", { class: "heat" }, parent);
    const title = el("div", { class: "bar" }, box);
    const bar = el("div", { class: "bar" }, box);
    const cv = el("canvas", { width: M + P, height: M + P, class: "heatmap",
      "data-margin": M, "data-plot": P }, box);
    const out = el("div", { class: "readout" }, box);
    const ctx = cv.getContext("2d");
    let l = 0, h = 0, w = { r0: 0, c0: 0, span: R.T }, drag = null;

    function draw() {
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, M + P, M + P);
      paint(ctx, R, l, h, w, P, M, M);
      title.textContent = `layer ${l}, head ${h} — queries down, keys across` +
        (w.span < R.T ? ` (rows ${w.r0}–${w.r0 + w.span - 1}, keys ${w.c0}–${w.c0 + w.span - 1})` : "");
      cv.dataset.layer = l; cv.dataset.head = h;
      cv.dataset.r0 = w.r0; cv.dataset.c0 = w.c0; cv.dataset.span = w.span;
      const cell = P / w.span;
      if (cell < 8) return;
      ctx.fillStyle = "#333";
      ctx.font = `${Math.min(12, Math.floor(cell) - 1)}px sans-serif`;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (let i = 0; i < w.span && w.r0 + i < R.T; i++) {
        ctx.fillText(short(tokens[w.r0 + i]), M - 4, M + (i + 0.5) * cell);
        ctx.save();
        ctx.translate(M + (i + 0.5) * cell, M - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left";
        ctx.fillText(short(tokens[w.c0 + i]), 0, 0);
        ctx.restore();
      }
    }
    function cellAt(e) {
      const r = cv.getBoundingClientRect(), x = e.clientX - r.left - M, y = e.clientY - r.top - M;
      if (x < 0 || y < 0 || x >= P || y >= P) return null;
      return [w.r0 + Math.floor((y / P) * w.span), w.c0 + Math.floor((x / P) * w.span)];
    }
    function zoom(f, t, s) {
      const span = Math.max(Math.min(4, R.T), Math.min(R.T, Math.round(w.span * f)));
      const clamp = (a) => Math.max(0, Math.min(R.T - span, Math.round(a)));
      w = { r0: clamp(t - ((t - w.r0) * span) / w.span), c0: clamp(s - ((s - w.c0) * span) / w.span), span };
      draw();
    }
    const mid = () => [w.r0 + w.span / 2, w.c0 + w.span / 2];
    el("button", { class: "zoom-in" }, bar, "zoom in").onclick = () => zoom(0.5, ...mid());
    el("button", { class: "zoom-out" }, bar, "zoom out").onclick = () => zoom(2, ...mid());
    el("button", { class: "reset" }, bar, "reset").onclick = () => { w = { r0: 0, c0: 0, span: R.T }; draw(); };
    el("span", { class: "note" }, bar, " wheel zooms, drag pans");
    cv.addEventListener("wheel", (e) => {
      const c = cellAt(e);
      if (!c) return;
      e.preventDefault();
      zoom(e.deltaY < 0 ? 0.5 : 2, c[0], c[1]);
    });
    cv.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY, w.r0, w.c0]; });
    window.addEventListener("mouseup", () => { drag = null; });
    cv.addEventListener("mousemove", (e) => {
      if (drag && w.span < R.T) {
        const k = w.span / P, clamp = (a) => Math.max(0, Math.min(R.T - w.span, Math.round(a)));
        w.r0 = clamp(drag[2] - (e.clientY - drag[1]) * k);
        w.c0 = clamp(drag[3] - (e.clientX - drag[0]) * k);
        draw();
      }
      const c = cellAt(e);
      if (!c) { out.textContent = ""; return; }
      const [t, s] = c, p = R.get(l, h, t, s);
      out.textContent = `query ${t} "${tokens[t]}" → key ${s} "${tokens[s]}": ${p.toFixed(3)}`;
      Object.assign(out.dataset, { query: t, key: s, value: p });
    });
    return { show(l2, h2) { l = l2; h = h2; w = { r0: 0, c0: 0, span: R.T }; out.textContent = ""; draw(); } };
  }

  function note(R) {
    const kept = D.k ? `, each row's ${D.k} largest weights (keeping ${(100 * D.kept).toFixed(1)}% of its attention)` : "";
    el("div", { class: "note" }, app,
      `${D.L} layers × ${D.N} heads, T = ${D.T} tokens${kept}; 8 bits of √weight, colour ∝ √weight.`);
  }

  function modelView(R) {
    note(R);
    const row = el("div", { style: "display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start" }, app);
    const grid = el("table", { class: "grid" }, row);
    const heat = Heatmap(row, R, D.tokens);
    const size = Math.max(20, Math.min(64, Math.floor(540 / D.N)));
    const head = el("tr", {}, grid);
    el("th", {}, head);
    for (let h = 0; h < D.N; h++) el("th", {}, head, `h${h}`);
    for (let l = 0; l < D.L; l++) {
      const tr = el("tr", {}, grid);
      el("th", {}, tr, `L${l}`);
      for (let h = 0; h < D.N; h++) {
        const cv = el("canvas", { class: "cell", width: size, height: size, "data-layer": l,
          "data-head": h, title: `layer ${l}, head ${h}` }, el("td", {}, tr));
        paint(cv.getContext("2d"), R, l, h, { r0: 0, c0: 0, span: R.T }, size, 0, 0);
        cv.onclick = () => {
          for (const c of grid.querySelectorAll("canvas.on")) c.classList.remove("on");
          cv.classList.add("on");
          heat.show(l, h);
        };
      }
    }
    grid.querySelector("canvas.cell").classList.add("on");
    heat.show(0, 0);
  }

  function patternView(R) {
    note(R);
    const bar = el("div", { class: "bar" }, app);
    const heat = Heatmap(app, R, D.tokens);
    const pick = (name, n, value) => {
      el("span", {}, bar, ` ${name} `);
      const s = el("select", { class: name }, bar);
      for (let i = 0; i < n; i++) el("option", { value: i }, s, i);
      s.value = value;
      s.onchange = () => heat.show(+lay.value, +hd.value);
      return s;
    };
    const lay = pick("layer", D.L, D.layer), hd = pick("head", D.N, D.head);
    heat.show(D.layer, D.head);
  }

  function headView(R) {
    note(R);
    const bar = el("div", { class: "bar" }, app);
    el("span", {}, bar, "layer ");
    const lay = el("select", { class: "layer" }, bar);
    for (let i = 0; i < D.L; i++) el("option", { value: i }, lay, i);
    lay.value = D.layer;
    const chosen = new Set(D.heads);
    el("span", {}, bar, " heads ");
    for (let h = 0; h < D.N; h++) {
      const label = el("label", { style: `color:${headColor(h, D.N)}` }, bar);
      const box = el("input", { type: "checkbox", class: "head", "data-head": h }, label);
      box.checked = chosen.has(h);
      label.appendChild(document.createTextNode(`${h} `));
      box.onchange = () => { box.checked ? chosen.add(h) : chosen.delete(h); draw(); };
    }
    const Y = (i) => 20 + i * 22, X1 = 150, X2 = 450;
    const svg = el("svg", { class: "hv", width: 600, height: Y(D.T) + 10 }, app);
    const lines = el("g", { id: "lines" }, svg);
    let focus = null, locked = false;
    const texts = { q: [], k: [] };
    for (const side of ["q", "k"]) {
      for (let i = 0; i < D.T; i++) {
        const t = el("text", { x: side === "q" ? X1 - 8 : X2 + 8, y: Y(i) + 4, class: side,
          "data-index": i, "text-anchor": side === "q" ? "end" : "start" }, svg, short(D.tokens[i]));
        texts[side].push(t);
        t.addEventListener("mouseenter", () => { if (!locked) { focus = { side, i }; draw(); } });
        t.addEventListener("mouseleave", () => { if (!locked) { focus = null; draw(); } });
        t.addEventListener("click", () => {
          const same = focus && focus.side === side && focus.i === i;
          locked = !(locked && same);
          focus = { side, i };
          draw();
        });
      }
    }
    function draw() {
      lines.replaceChildren();
      const l = +lay.value, all = [];
      for (const h of chosen) {
        for (let t = 0; t < D.T; t++) {
          if (focus && focus.side === "q" && t !== focus.i) continue;
          R.each(l, h, t, (s, p) => {
            if (p < 0.02 || (focus && focus.side === "k" && s !== focus.i)) return;
            all.push([p, t, s, h]);
          });
        }
      }
      all.sort((a, b) => b[0] - a[0]);
      for (const [p, t, s, h] of all.slice(0, 4000)) {
        el("line", { x1: X1, y1: Y(t), x2: X2, y2: Y(s), stroke: headColor(h, D.N),
          "stroke-width": 2, "stroke-opacity": p.toFixed(3), "data-q": t, "data-k": s,
          "data-head": h }, lines);
      }
      for (const side of ["q", "k"]) {
        texts[side].forEach((t, i) => t.classList.toggle("focus", !!focus && focus.side === side && focus.i === i));
      }
      svg.dataset.locked = locked ? `${focus.side}${focus.i}` : "";
    }
    lay.onchange = draw;
    draw();
  }

  function wordView() {
    const S = D.sentences.length, L = D.focus[0].rows.length, N = D.focus[0].rows[0].length;
    el("div", { class: "note" }, app,
      `Where "${D.word}" looks in each sentence (attention from the word, red outline), ` +
      "and how similar its vectors are between sentences, layer by layer.");
    const bar = el("div", { class: "bar" }, app);
    el("span", {}, bar, "layer ");
    const lay = el("input", { type: "range", min: 0, max: L - 1, value: 0, class: "layer" }, bar);
    const shown = el("span", {}, bar, " 0 ");
    el("span", {}, bar, " head ");
    const hd = el("select", { class: "head" }, bar);
    el("option", { value: -1 }, hd, "mean");
    for (let h = 0; h < N; h++) el("option", { value: h }, hd, h);
    const sents = el("div", {}, app);
    el("div", { class: "bar" }, app, "cosine similarity of its vectors at this layer's output:");
    const sim = el("table", { class: "sim" }, app);
    el("div", { class: "bar" }, app, "mean similarity between sentences (emb = embeddings, then each layer):");
    const trend = el("table", { class: "sim trend" }, app);
    const shade = (p) => `rgba(33,102,172,${Math.min(1, p).toFixed(3)})`;
    const ink = (p) => (p > 0.55 ? "#fff" : "#222");
    function draw() {
      const l = +lay.value, h = +hd.value;
      shown.textContent = ` ${l} `;
      sents.replaceChildren();
      D.focus.forEach((f, b) => {
        const row = f.rows[l], w = row[0].map((_, s) => (h >= 0 ? row[h][s]
          : row.reduce((a, r) => a + r[s], 0) / N));
        const div = el("div", { class: "sent" }, sents);
        el("b", {}, div, `s${b}: `);
        f.tokens.forEach((t, s) => {
          const span = el("span", { class: "tok" + (f.positions.includes(s) ? " word" : ""),
            title: w[s].toFixed(3), style: `background:${shade(w[s])};color:${ink(w[s])}` }, div, t);
          span.dataset.weight = w[s];
        });
        const top = w.map((p, s) => [p, s]).sort((a, c) => c[0] - a[0]).slice(0, 3);
        el("span", { class: "note" }, div, "  top: " + top.map(([p, s]) => `${f.tokens[s]} ${p.toFixed(2)}`).join(", "));
      });
      sim.replaceChildren();
      const m = D.similarity[l + 1], head = el("tr", {}, sim);
      el("td", {}, head);
      for (let j = 0; j < S; j++) el("td", {}, head, `s${j}`);
      for (let i = 0; i < S; i++) {
        const tr = el("tr", {}, sim);
        el("td", {}, tr, `s${i}`);
        for (let j = 0; j < S; j++) {
          el("td", { style: `background:${shade(m[i][j])};color:${ink(m[i][j])}` }, tr, m[i][j].toFixed(2));
        }
      }
      trend.replaceChildren();
      const names = el("tr", {}, trend), vals = el("tr", {}, trend);
      D.similarity.forEach((m2, i) => {
        let sum = 0, n = 0;
        for (let a = 0; a < S; a++) for (let c = a + 1; c < S; c++) { sum += m2[a][c]; n++; }
        const v = n ? sum / n : 1;
        el("td", { style: i === l + 1 ? "font-weight:bold" : "" }, names, i ? `${i - 1}` : "emb");
        el("td", { style: `background:${shade(v)};color:${ink(v)}` }, vals, v.toFixed(2));
      });
    }
    lay.oninput = draw;
    hd.onchange = draw;
    draw();
  }

  if (D.view === "word") wordView();
  else ({ model: modelView, pattern: patternView, head: headView })[D.view](Rows(D));
  document.body.dataset.readyMs = performance.now().toFixed(1);
  document.body.dataset.ready = "1";
})();
