/* cvserve web page: pick a model, give it an image (file, drop, paste or webcam), and see
 * its answer drawn over the image, with the raw JSON beside it. Plain JS, no build step.
 * Talks to the same server: GET /_web/config.json (palette, SAM route), GET /models (classes,
 * keypoint names and skeleton per model), POST /{dataset}/{version} (hosted route), and for
 * promptable (SAM) models the config's SAM route. What the server knows, it is asked for. */
"use strict";

(() => {
  const ACCENT = [79, 70, 229]; // the page's own colour (SAM segments, and no config)
  const DETECTION_TASKS = ["object-detection", "instance-segmentation", "keypoint-detection"];
  const SAM_TASK = "promptable-segmentation";
  const SAM_PROJECT = "web";
  const KEY_STORAGE = "cvserve.apiKey";
  const MODEL_STORAGE = "cvserve.model";
  const MAX_CHIPS = 60;

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), serverStatus: $("server-status"), keyBox: $("key-box"),
    apiKey: $("api-key"), apiKeySave: $("api-key-save"), modelSelect: $("model-select"),
    modelMeta: $("model-meta"), fileInput: $("file-input"), dropZone: $("drop-zone"),
    cameraBtn: $("camera-btn"), cameraLabel: $("camera-label"), paramsGroup: $("params-group"),
    confidence: $("confidence"), confidenceOut: $("confidence-out"), overlap: $("overlap"),
    overlapOut: $("overlap-out"), overlapRow: $("overlap-row"), classesRow: $("classes-row"),
    classesFilter: $("classes-filter"), classesChips: $("classes-chips"),
    classesClear: $("classes-clear"), showLabels: $("show-labels"), showBoxes: $("show-boxes"),
    showMasks: $("show-masks"), opacity: $("opacity"), opacityOut: $("opacity-out"),
    samGroup: $("sam-group"), samUndo: $("sam-undo"), samClear: $("sam-clear"),
    viewport: $("viewport"), empty: $("empty"), canvas: $("canvas"), video: $("video"),
    busy: $("busy"), error: $("error"), download: $("download-btn"), predCount: $("pred-count"),
    timing: $("timing"), legend: $("legend"), predictions: $("predictions"),
    noPreds: $("no-preds"), json: $("json-output"), copyJson: $("copy-json"),
  };
  const ctx = el.canvas.getContext("2d");

  const state = {
    // Replaced by GET /_web/config.json: the palette is the server annotator's, so a class
    // keeps its colour between this page and `format=image`.
    config: { keys_required: false, palette: [ACCENT], keypoint_color_offset: 0, sam_route: null },
    models: [],
    model: null, // the selected model's entry from GET /models
    image: null, // {source: drawable, width, height, blob, name, dataUrl?}
    response: null, // last JSON answer (hosted or SAM)
    semantic: null, // {canvas, present: [ids]} for the last semantic answer
    selected: new Set(), // class filter
    points: [], // SAM prompts [{x, y, label}] in image pixels
    hot: -1, // highlighted prediction index
    seq: 0,
    busy: false,
    camera: null, // {stream, running}
    roundTripMs: 0,
    // What the last drawCanvas() put on the canvas, for tests: window.cvserve.drawn().
    drawn: { boxes: 0, points: [], edges: [], labels: [] },
  };

  // -- helpers -----------------------------------------------------------------------------
  function rgb(i) {
    const pal = state.config.palette;
    return pal[((i % pal.length) + pal.length) % pal.length];
  }
  const css = (c, a = 1) => `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${a})`;
  const pct = (v) => `${(v * 100).toFixed(v >= 0.995 || v < 0.1 ? 1 : 0)}%`;
  const isSam = () => state.model && state.model.task_type === SAM_TASK;
  const apiKey = () => localStorage.getItem(KEY_STORAGE) || "";

  function debounce(fn, ms) {
    let t = 0;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  function node(tag, attrs = {}, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) n.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c != null) n.append(c);
    return n;
  }

  function swatch(color, cls = "sw") {
    const s = node("span", { class: cls });
    s.style.background = css(color);
    return s;
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      throw new Error(`cannot reach the server (${e.message})`);
    }
    const type = res.headers.get("content-type") || "";
    const body = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) {
      let message = typeof body === "string" ? body : body.message || body.Message;
      if (!message && body && body.error) message = body.error.message;
      const err = new Error(message || `HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = !message;
  }

  function setStatus(html) { el.status.innerHTML = html; }
  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function setBusy(on) {
    state.busy = on;
    el.busy.hidden = !on;
  }

  function handleAuthError(err) {
    if (err.status === 401 || err.status === 403) {
      el.keyBox.hidden = false;
      el.apiKey.focus();
      return `${err.message}. Paste an API key at the top right and save it.`;
    }
    return err.message;
  }

  // -- models -----------------------------------------------------------------------------
  async function loadModels() {
    try {
      const body = await api("/models");
      state.models = (body.models || []).slice().sort((a, b) => a.model_id.localeCompare(b.model_id));
      el.serverStatus.textContent = `${state.models.length} model${state.models.length === 1 ? "" : "s"}`;
      el.serverStatus.className = "pill pill-ok";
      showError("");
    } catch (err) {
      el.serverStatus.textContent = err.status === 403 || err.status === 401 ? "key needed" : "offline";
      el.serverStatus.className = "pill pill-bad";
      showError(handleAuthError(err));
      state.models = [];
    }
    fillModelSelect();
  }

  function fillModelSelect() {
    el.modelSelect.textContent = "";
    if (!state.models.length) {
      el.modelSelect.append(node("option", { value: "", text: "No models in the store" }));
      el.modelSelect.disabled = true;
      selectModel(null);
      return;
    }
    el.modelSelect.disabled = false;
    const groups = new Map();
    for (const m of state.models) {
      if (!groups.has(m.task_type)) groups.set(m.task_type, []);
      groups.get(m.task_type).push(m);
    }
    for (const [task, models] of groups) {
      const g = node("optgroup", { label: task });
      for (const m of models) g.append(node("option", { value: m.model_id, text: m.model_id }));
      el.modelSelect.append(g);
    }
    const wanted = new URLSearchParams(location.search).get("model") || localStorage.getItem(MODEL_STORAGE);
    const pick = state.models.find((m) => m.model_id === wanted) || state.models[0];
    el.modelSelect.value = pick.model_id;
    selectModel(pick);
  }

  function selectModel(model) {
    state.model = model;
    state.selected.clear();
    state.points = [];
    state.response = null;
    state.semantic = null;
    state.hot = -1;
    el.modelMeta.textContent = "";
    if (!model) { renderAll(); return; }
    localStorage.setItem(MODEL_STORAGE, model.model_id);
    const task = model.task_type;
    const classes = model.classes || [];
    el.modelMeta.append(node("span", { class: "tag tag-task", text: task }));
    if (model.family) el.modelMeta.append(node("span", { class: "tag", text: model.family }));
    if (classes.length) el.modelMeta.append(node("span", { class: "tag", text: `${classes.length} class${classes.length === 1 ? "" : "es"}` }));
    const kpNames = model.keypoint_names || [];
    if (kpNames.length) {
      const edges = (model.skeleton || []).length;
      el.modelMeta.append(node("span", {
        class: "tag", text: `${kpNames.length} keypoint${kpNames.length === 1 ? "" : "s"}`,
        title: `${kpNames.join(", ")} · ${edges} skeleton edge${edges === 1 ? "" : "s"}`,
      }));
    }
    if (model.input_size) el.modelMeta.append(node("span", { class: "tag", text: `${model.input_size[0]}×${model.input_size[1]}` }));
    const detectionLike = DETECTION_TASKS.includes(task);
    el.paramsGroup.hidden = task === SAM_TASK;
    el.samGroup.hidden = task !== SAM_TASK;
    el.overlapRow.hidden = !detectionLike;
    $("show-labels-row").hidden = !(detectionLike || task === "classification");
    $("show-boxes-row").hidden = !detectionLike;
    $("show-masks-row").hidden = !(task === "instance-segmentation" || task === "semantic-segmentation");
    el.classesRow.hidden = !detectionLike || !classes.length;
    el.canvas.classList.toggle("prompting", task === SAM_TASK);
    el.cameraBtn.hidden = task === SAM_TASK;
    const defaults = (state.config.defaults || {})[task];
    if (defaults) {
      el.confidence.value = defaults.confidence;
      el.overlap.value = defaults.overlap;
    }
    updateOutputs();
    el.classesFilter.value = "";
    renderChips();
    if (task === SAM_TASK && state.camera) stopCamera(true);
    renderAll();
    if (state.image) run();
  }

  function renderChips() {
    el.classesChips.textContent = "";
    const classes = (state.model && state.model.classes) || [];
    const q = el.classesFilter.value.trim().toLowerCase();
    el.classesFilter.hidden = classes.length <= 12;
    let shown = 0;
    classes.forEach((name, i) => {
      if (q && !name.toLowerCase().includes(q)) return;
      if (shown >= MAX_CHIPS) return;
      shown += 1;
      const chip = node("button", {
        class: `chip${state.selected.has(name) ? " on" : ""}`, type: "button",
        "aria-pressed": state.selected.has(name) ? "true" : "false", title: name,
        onclick: () => {
          if (state.selected.has(name)) state.selected.delete(name); else state.selected.add(name);
          renderChips();
          runSoon();
        },
      }, swatch(rgb(i)), name);
      el.classesChips.append(chip);
    });
    const remaining = classes.filter((n) => !q || n.toLowerCase().includes(q)).length - shown;
    if (remaining > 0) el.classesChips.append(node("span", { class: "more", text: `+${remaining} more: filter to find them` }));
    el.classesClear.textContent = state.selected.size ? `clear (${state.selected.size})` : "all";
  }

  // -- images ------------------------------------------------------------------------------
  async function setImageFromBlob(blob, name) {
    let source;
    try {
      source = await createImageBitmap(blob, { imageOrientation: "from-image" });
    } catch (_) {
      source = await new Promise((resolve, reject) => {
        const img = new Image();
        img.onload = () => resolve(img);
        img.onerror = () => reject(new Error("this file is not an image the browser can show"));
        img.src = URL.createObjectURL(blob);
      });
    }
    state.image = { source, width: source.width, height: source.height, blob, name: name || "image" };
    state.points = [];
    state.response = null;
    state.semantic = null;
    state.hot = -1;
    showError("");
    renderAll();
    await run();
  }

  function openFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(`${file.name} is not an image`);
      return;
    }
    if (state.camera) stopCamera(false);
    setImageFromBlob(file, file.name).catch((e) => showError(e.message));
  }

  function blobToDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.readAsDataURL(blob);
    });
  }

  // -- inference ---------------------------------------------------------------------------
  const runSoon = debounce(() => run(), 180);

  async function run() {
    if (!state.model || !state.image) return;
    const seq = ++state.seq;
    const model = state.model;
    const image = state.image;
    setBusy(true);
    const t0 = performance.now();
    try {
      let body;
      if (model.task_type === SAM_TASK) {
        if (!state.points.length) {
          state.response = null;
          if (seq === state.seq) renderAll();
          return;
        }
        if (!image.dataUrl) image.dataUrl = await blobToDataUrl(image.blob);
        if (!state.config.sam_route) throw new Error("the server names no SAM route");
        body = await api(state.config.sam_route.replace("{project}", SAM_PROJECT), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ image: image.dataUrl, points: state.points, pixels: true, model: model.model_id }),
        });
      } else {
        const q = new URLSearchParams({ format: "json", confidence: el.confidence.value, name: image.name });
        if (!el.overlapRow.hidden) q.set("overlap", el.overlap.value);
        if (state.selected.size) q.set("classes", [...state.selected].join(","));
        body = await api(`/${model.model_id}?${q}`, {
          method: "POST",
          headers: { "Content-Type": "application/octet-stream" },
          body: image.blob,
        });
      }
      if (seq !== state.seq || image !== state.image || model !== state.model) return; // stale
      state.roundTripMs = performance.now() - t0;
      state.response = body;
      state.hot = -1;
      state.semantic = body.segmentation_mask ? await decodeSemantic(body) : null;
      if (seq !== state.seq) return;
      showError("");
      renderAll();
    } catch (err) {
      if (seq !== state.seq) return;
      state.response = null;
      showError(handleAuthError(err));
      renderAll();
    } finally {
      if (seq === state.seq) setBusy(false);
    }
  }

  async function decodeSemantic(body) {
    const img = new Image();
    img.src = `data:image/png;base64,${body.segmentation_mask}`;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const cx = c.getContext("2d", { willReadFrequently: true });
    cx.drawImage(img, 0, 0);
    const data = cx.getImageData(0, 0, c.width, c.height);
    const px = data.data;
    const alpha = Math.round((Number(el.opacity.value) / 100) * 255);
    for (let i = 0; i < px.length; i += 4) {
      const id = px[i];
      if (id === 0) { px[i + 3] = 0; continue; }
      const col = rgb(id);
      px[i] = col[0]; px[i + 1] = col[1]; px[i + 2] = col[2]; px[i + 3] = alpha;
    }
    cx.putImageData(data, 0, 0);
    return { canvas: c, ids: body.present_class_ids || [], opacity: el.opacity.value };
  }

  // -- drawing -----------------------------------------------------------------------------
  function scaleFor(w, h) { return Math.max(w, h) / 800; }

  function drawLabel(text, x, y, color, s) {
    const size = Math.max(12, Math.round(13 * s));
    ctx.font = `600 ${size}px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif`;
    const pad = Math.round(size * 0.35);
    const w = ctx.measureText(text).width + pad * 2;
    const h = size + pad * 1.4;
    let top = y - h;
    if (top < 0) top = y;
    const left = Math.min(Math.max(0, x), Math.max(0, ctx.canvas.width - w));
    ctx.fillStyle = css(color);
    ctx.fillRect(left, top, w, h);
    const lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2];
    ctx.fillStyle = lum > 170 ? "#111" : "#fff";
    ctx.textBaseline = "middle";
    ctx.fillText(text, left + pad, top + h / 2 + 0.5);
  }

  function drawDetections(body, s) {
    const preds = body.predictions || [];
    const lw = Math.max(2, Math.round(2 * s));
    const opacity = Number(el.opacity.value) / 100;
    preds.forEach((p, i) => {
      const color = rgb(p.class_id ?? 0);
      const hot = i === state.hot;
      if (el.showMasks.checked && p.points && p.points.length > 2) {
        ctx.beginPath();
        p.points.forEach((pt, j) => (j ? ctx.lineTo(pt.x, pt.y) : ctx.moveTo(pt.x, pt.y)));
        ctx.closePath();
        ctx.fillStyle = css(color, hot ? Math.min(1, opacity + 0.2) : opacity);
        ctx.fill();
        ctx.lineWidth = Math.max(1, lw / 2);
        ctx.strokeStyle = css(color, 0.95);
        ctx.stroke();
      }
      const x1 = p.x - p.width / 2;
      const y1 = p.y - p.height / 2;
      if (el.showBoxes.checked) {
        ctx.lineWidth = hot ? lw * 2 : lw;
        ctx.strokeStyle = css(color);
        ctx.strokeRect(x1, y1, p.width, p.height);
        state.drawn.boxes += 1;
      }
      if (p.keypoints && p.keypoints.length) drawKeypoints(p.keypoints, color, s, i);
      if (el.showLabels.checked) drawLabel(`${p.class} ${pct(p.confidence)}`, x1 - lw / 2, y1 - lw / 2, color, s);
    });
  }

  // The skeleton is the model's own, from GET /models (none: points only); an edge is drawn
  // when the answer kept both of its keypoints, as the server's annotator does.
  function drawKeypoints(kps, color, s, prediction) {
    const byId = new Map(kps.map((k) => [k.class_id, k]));
    const names = (state.model && state.model.keypoint_names) || [];
    const r = Math.max(3, Math.round(3.5 * s));
    ctx.lineWidth = Math.max(2, Math.round(2 * s));
    ctx.strokeStyle = css(color, 0.9);
    for (const [a, b] of (state.model && state.model.skeleton) || []) {
      const ka = byId.get(a), kb = byId.get(b);
      if (!ka || !kb) continue;
      ctx.beginPath(); ctx.moveTo(ka.x, ka.y); ctx.lineTo(kb.x, kb.y); ctx.stroke();
      state.drawn.edges.push({ prediction, from: a, to: b });
    }
    for (const k of kps) {
      state.drawn.points.push({ prediction, id: k.class_id, name: names[k.class_id] ?? k.class, x: k.x, y: k.y });
      ctx.beginPath();
      ctx.arc(k.x, k.y, r, 0, Math.PI * 2);
      ctx.fillStyle = css(rgb(k.class_id + state.config.keypoint_color_offset));
      ctx.fill();
      ctx.lineWidth = Math.max(1, r / 3);
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }

  function classificationRows(body) {
    if (Array.isArray(body.predictions)) return body.predictions;
    const rows = Object.entries(body.predictions || {}).map(([name, v]) => ({ class: name, class_id: v.class_id, confidence: v.confidence }));
    return rows.sort((a, b) => b.confidence - a.confidence);
  }

  function drawClassification(body, s) {
    const rows = classificationRows(body);
    // The confidence slider is the threshold: a class below it is not drawn (as the server's
    // own image draws them); the list beside the image still shows every class.
    const threshold = Number(el.confidence.value) / 100;
    const shown = Array.isArray(body.predictions)
      ? rows.filter((r) => r.confidence >= threshold).slice(0, 3)
      : rows.filter((r) => (body.predicted_classes || []).includes(r.class)).slice(0, 5);
    let y = Math.round(10 * s) + Math.max(12, Math.round(13 * s)) * 1.5;
    for (const r of shown) {
      state.drawn.labels.push(r.class);
      drawLabel(`${r.class} ${pct(r.confidence)}`, Math.round(10 * s), y, rgb(r.class_id ?? 0), s * 1.4);
      y += Math.max(12, Math.round(13 * s * 1.4)) * 1.8;
    }
  }

  function drawSam(body, s) {
    const opacity = Number(el.opacity.value) / 100;
    for (const seg of (body && body.segments) || []) {
      ctx.beginPath();
      for (const poly of seg.polygons || []) {
        (poly.vertices || []).forEach((v, j) => (j ? ctx.lineTo(v.x, v.y) : ctx.moveTo(v.x, v.y)));
        ctx.closePath();
      }
      ctx.fillStyle = css(ACCENT, Math.max(0.25, opacity));
      ctx.fill("evenodd");
      ctx.lineWidth = Math.max(2, Math.round(2 * s));
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
    const r = Math.max(5, Math.round(6 * s));
    for (const p of state.points) {
      ctx.beginPath();
      ctx.arc(p.x, p.y, r, 0, Math.PI * 2);
      ctx.fillStyle = p.label === 1 ? "#22c55e" : "#ef4444";
      ctx.fill();
      ctx.lineWidth = Math.max(2, r / 2.5);
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }

  function drawCanvas() {
    const img = state.image;
    el.empty.hidden = !!img;
    el.canvas.hidden = !img;
    el.download.disabled = !img;
    state.drawn = { boxes: 0, points: [], edges: [], labels: [] };
    if (!img) return;
    if (el.canvas.width !== img.width || el.canvas.height !== img.height) {
      el.canvas.width = img.width;
      el.canvas.height = img.height;
      fitCanvas();
    }
    ctx.clearRect(0, 0, img.width, img.height);
    ctx.drawImage(img.source, 0, 0, img.width, img.height);
    const s = scaleFor(img.width, img.height);
    const body = state.response;
    if (isSam()) { drawSam(body, s); return; }
    if (!body) return;
    if (state.semantic && el.showMasks.checked) {
      if (state.semantic.opacity !== el.opacity.value) {
        decodeSemantic(body).then((sem) => { state.semantic = sem; drawCanvas(); });
        return;
      }
      ctx.drawImage(state.semantic.canvas, 0, 0, img.width, img.height);
    } else if (body.top !== undefined || body.predicted_classes !== undefined) {
      if (el.showLabels.checked) drawClassification(body, s);
    } else if (Array.isArray(body.predictions)) {
      drawDetections(body, s);
    }
  }

  // The canvas holds the image at its own resolution; CSS scales it to fill the viewport
  // (up to 3x for small images). Clicks map back through getBoundingClientRect.
  function fitCanvas() {
    if (!state.image) return;
    const pad = 24;
    const aw = Math.max(50, el.viewport.clientWidth - pad);
    const ah = Math.max(50, el.viewport.clientHeight - pad);
    const k = Math.min(aw / el.canvas.width, ah / el.canvas.height, 3);
    el.canvas.style.width = `${Math.floor(el.canvas.width * k)}px`;
    el.canvas.style.height = `${Math.floor(el.canvas.height * k)}px`;
  }

  // -- side panel --------------------------------------------------------------------------
  function renderList() {
    const body = state.response;
    el.predictions.textContent = "";
    el.legend.textContent = "";
    let count = 0;
    if (body && isSam()) {
      (body.segments || []).forEach((seg, i) => {
        count += 1;
        const polys = (seg.polygons || []).length;
        el.predictions.append(predItem(`segment ${i + 1}`, ACCENT, seg.score, `${polys} polygon${polys === 1 ? "" : "s"} · ${state.points.length} point${state.points.length === 1 ? "" : "s"}`));
      });
    } else if (body && body.segmentation_mask) {
      const map = body.class_map || {};
      for (const id of body.present_class_ids || []) {
        if (Number(id) === 0) continue;
        count += 1;
        el.predictions.append(predItem(map[String(id)] ?? String(id), rgb(Number(id)), null, `class id ${id}`));
      }
    } else if (body && (body.top !== undefined || body.predicted_classes !== undefined)) {
      const rows = classificationRows(body);
      const picked = new Set(body.predicted_classes || []);
      rows.slice(0, 25).forEach((r) => {
        count += 1;
        const li = predItem(r.class, rgb(r.class_id ?? 0), r.confidence, picked.has(r.class) ? "predicted" : null);
        el.predictions.append(li);
      });
    } else if (body && Array.isArray(body.predictions)) {
      const per = new Map();
      body.predictions.forEach((p, i) => {
        count += 1;
        per.set(p.class, (per.get(p.class) || { n: 0, id: p.class_id ?? 0 }));
        per.get(p.class).n += 1;
        const geo = `x ${Math.round(p.x)}  y ${Math.round(p.y)}  ${Math.round(p.width)}×${Math.round(p.height)}` +
          (p.keypoints ? `  · ${p.keypoints.length} kp` : "") + (p.points ? `  · ${p.points.length} pts` : "");
        const li = predItem(p.class, rgb(p.class_id ?? 0), p.confidence, geo);
        li.addEventListener("mouseenter", () => { state.hot = i; drawCanvas(); });
        li.addEventListener("mouseleave", () => { state.hot = -1; drawCanvas(); });
        el.predictions.append(li);
      });
      for (const [name, v] of per) el.legend.append(node("span", { class: "chip" }, swatch(rgb(v.id)), `${name} · ${v.n}`));
    }
    el.predCount.textContent = String(count);
    el.noPreds.hidden = count > 0;
    el.noPreds.textContent = !state.image ? "No image yet." : isSam() && !state.points.length
      ? "Click the image to add a point." : body ? "Nothing found at this threshold." : "No predictions yet.";
  }

  function predItem(name, color, confidence, geo) {
    const li = node("li", { class: "pred-item" },
      swatch(color),
      node("span", { class: "name", text: name, title: name }),
      node("span", { class: "conf", text: confidence == null ? "" : pct(confidence) }));
    if (confidence != null) {
      const bar = node("span");
      bar.style.width = `${Math.max(0, Math.min(1, confidence)) * 100}%`;
      bar.style.background = css(color);
      li.append(node("div", { class: "bar" }, bar));
    }
    if (geo) li.append(node("div", { class: "geo", text: geo }));
    return li;
  }

  function shorten(value) {
    if (typeof value === "string" && value.length > 120) return `${value.slice(0, 60)}… (${value.length} chars)`;
    if (Array.isArray(value)) return value.map(shorten);
    if (value && typeof value === "object") {
      const out = {};
      for (const [k, v] of Object.entries(value)) out[k] = shorten(v);
      return out;
    }
    return value;
  }

  function renderJson() {
    const body = state.response;
    if (!body) { el.json.textContent = ""; return; }
    const text = JSON.stringify(shorten(body), null, 2);
    el.json.innerHTML = escapeHtml(text).replace(
      /(&quot;(?:[^&]|&(?!quot;))*?&quot;)(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g,
      (m, str, colon, lit, num) => {
        if (str) return colon ? `<span class="k">${str}</span>${colon}` : `<span class="s">${str}</span>`;
        if (lit) return `<span class="b">${lit}</span>`;
        return `<span class="n">${num}</span>`;
      });
  }

  function renderStatus() {
    const body = state.response;
    const m = state.model;
    if (!m) { setStatus("No model selected."); return; }
    if (!state.image) { setStatus(`<strong>${escapeHtml(m.model_id)}</strong> · drop, choose or paste an image${isSam() ? "" : ", or use the webcam"}`); return; }
    const parts = [`<strong>${escapeHtml(m.model_id)}</strong>`, `${state.image.width}×${state.image.height}`];
    if (body) {
      const serverMs = (body.time || 0) * 1000;
      parts.push(`server ${serverMs.toFixed(0)} ms`, `round trip ${state.roundTripMs.toFixed(0)} ms`);
      el.timing.textContent = `${serverMs.toFixed(0)} ms`;
    } else {
      el.timing.textContent = "";
      if (isSam()) parts.push("click to add points");
    }
    if (state.camera) parts.push("live");
    setStatus(parts.join(" · "));
  }

  function renderAll() {
    drawCanvas();
    renderList();
    renderJson();
    renderStatus();
  }

  function updateOutputs() {
    el.confidenceOut.textContent = `${el.confidence.value}%`;
    el.overlapOut.textContent = `${el.overlap.value}%`;
    el.opacityOut.textContent = `${el.opacity.value}%`;
  }

  // -- webcam ------------------------------------------------------------------------------
  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser gives no camera access here (the page must be served over https or from localhost).");
      return;
    }
    if (isSam()) {
      showError("The webcam streams to detection-style models; pick one, or take a photo for SAM.");
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false });
      el.video.srcObject = stream;
      await el.video.play();
      state.camera = { stream };
      el.cameraBtn.classList.add("active");
      el.cameraLabel.textContent = "Stop webcam";
      showError("");
      cameraLoop();
    } catch (err) {
      showError(`Cannot open the camera: ${err.message}`);
    }
  }

  function stopCamera(keepFrame) {
    const cam = state.camera;
    if (!cam) return;
    cam.stream.getTracks().forEach((t) => t.stop());
    state.camera = null;
    el.video.srcObject = null;
    el.cameraBtn.classList.remove("active");
    el.cameraLabel.textContent = "Use webcam";
    if (!keepFrame) return;
    renderStatus();
  }

  async function cameraLoop() {
    const cam = state.camera;
    if (!cam || state.camera !== cam) return;
    const v = el.video;
    if (v.videoWidth && !state.busy) {
      const frame = document.createElement("canvas");
      frame.width = v.videoWidth;
      frame.height = v.videoHeight;
      frame.getContext("2d").drawImage(v, 0, 0);
      const blob = await new Promise((r) => frame.toBlob(r, "image/jpeg", 0.85));
      if (blob && state.camera === cam) {
        state.image = { source: frame, width: frame.width, height: frame.height, blob, name: "webcam.jpg" };
        await run();
      }
    }
    if (state.camera === cam) requestAnimationFrame(cameraLoop);
  }

  // -- events ------------------------------------------------------------------------------
  function imageCoords(ev) {
    const r = el.canvas.getBoundingClientRect();
    return {
      x: Math.round(((ev.clientX - r.left) / r.width) * el.canvas.width * 10) / 10,
      y: Math.round(((ev.clientY - r.top) / r.height) * el.canvas.height * 10) / 10,
    };
  }

  function addPoint(ev, label) {
    if (!isSam() || !state.image) return;
    const p = imageCoords(ev);
    if (p.x < 0 || p.y < 0 || p.x > el.canvas.width || p.y > el.canvas.height) return;
    state.points.push({ x: p.x, y: p.y, label });
    renderAll();
    run();
  }

  function bind() {
    el.modelSelect.addEventListener("change", () => {
      selectModel(state.models.find((m) => m.model_id === el.modelSelect.value) || null);
    });
    el.fileInput.addEventListener("change", () => { openFile(el.fileInput.files[0]); el.fileInput.value = ""; });
    for (const input of [el.confidence, el.overlap]) {
      input.addEventListener("input", () => { updateOutputs(); runSoon(); });
    }
    el.opacity.addEventListener("input", () => { updateOutputs(); drawCanvas(); });
    for (const box of [el.showLabels, el.showBoxes, el.showMasks]) box.addEventListener("change", drawCanvas);
    el.classesFilter.addEventListener("input", renderChips);
    el.classesClear.addEventListener("click", () => { state.selected.clear(); renderChips(); runSoon(); });
    el.cameraBtn.addEventListener("click", () => (state.camera ? stopCamera(true) : startCamera()));
    el.samClear.addEventListener("click", () => { state.points = []; state.response = null; renderAll(); });
    el.samUndo.addEventListener("click", () => {
      state.points.pop();
      if (!state.points.length) state.response = null;
      renderAll();
      run();
    });
    el.canvas.addEventListener("click", (ev) => addPoint(ev, ev.shiftKey ? 0 : 1));
    el.canvas.addEventListener("contextmenu", (ev) => {
      if (!isSam()) return;
      ev.preventDefault();
      addPoint(ev, 0);
    });
    el.download.addEventListener("click", () => {
      el.canvas.toBlob((blob) => {
        if (!blob) return;
        const a = node("a", { href: URL.createObjectURL(blob), download: `${(state.image && state.image.name || "image").replace(/\.[^.]+$/, "")}-prediction.png` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 2000);
      }, "image/png");
    });
    el.copyJson.addEventListener("click", async () => {
      if (!state.response) return;
      try {
        await navigator.clipboard.writeText(JSON.stringify(state.response, null, 2));
        el.copyJson.textContent = "Copied";
      } catch (_) {
        el.copyJson.textContent = "Copy failed";
      }
      setTimeout(() => { el.copyJson.textContent = "Copy"; }, 1200);
    });
    el.keyBox.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = el.apiKey.value.trim();
      if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
      loadModels();
    });

    // drop anywhere, paste anywhere
    const over = (on) => { el.dropZone.classList.toggle("over", on); el.viewport.classList.toggle("over", on); };
    window.addEventListener("dragover", (ev) => { ev.preventDefault(); over(true); });
    window.addEventListener("dragleave", (ev) => { if (!ev.relatedTarget) over(false); });
    window.addEventListener("drop", (ev) => {
      ev.preventDefault();
      over(false);
      const file = [...(ev.dataTransfer.files || [])].find((f) => f.type.startsWith("image/"));
      if (file) openFile(file); else showError("Drop an image file.");
    });
    window.addEventListener("paste", (ev) => {
      const item = [...(ev.clipboardData.items || [])].find((i) => i.type.startsWith("image/"));
      if (item) openFile(item.getAsFile());
    });
    window.addEventListener("keydown", (ev) => {
      if (isSam() && (ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); el.samUndo.click(); }
    });
  }

  async function init() {
    bind();
    new ResizeObserver(() => fitCanvas()).observe(el.viewport);
    updateOutputs();
    el.apiKey.value = apiKey();
    try {
      state.config = Object.assign({}, state.config, await api("/_web/config.json"));
    } catch (_) { /* older server: assume no keys */ }
    el.keyBox.hidden = !state.config.keys_required;
    await loadModels();
    renderAll();
    document.body.dataset.ready = "true";
  }

  // A read-only look at the last drawing (boxes counted; keypoints and skeleton edges as
  // drawn), so a test can check what the page drew without reading pixels.
  window.cvserve = Object.freeze({ drawn: () => JSON.parse(JSON.stringify(state.drawn)) });

  init();
})();
