// The streams page: start, list, watch (MJPEG + Server-Sent Events) and stop video streams.
// Kept apart from app.js (the image page); it shares only the saved API key.
(() => {
  "use strict";
  const KEY_STORAGE = "cvserve.apiKey";
  const $ = (id) => document.getElementById(id);
  const apiKey = () => localStorage.getItem(KEY_STORAGE) || "";
  // <img> and EventSource cannot send headers: the key goes in the query, as the API allows.
  const withKey = (path) => (apiKey() ? `${path}${path.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(apiKey())}` : path);
  let selected = null;
  let events = null;

  async function api(path, options = {}) {
    const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    const res = await fetch(path, Object.assign({}, options, { headers }));
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.message || body.Message || `HTTP ${res.status}`);
    return body;
  }

  async function loadModels() {
    const body = await api("/models");
    const select = $("model");
    select.replaceChildren();
    for (const m of body.models || []) {
      const option = document.createElement("option");
      option.value = m.model_id;
      option.textContent = `${m.model_id} (${m.task_type})`;
      select.append(option);
    }
  }

  function describe(s) {
    const st = s.stats || {};
    return `${s.status} · ${st.frames_inferred || 0}/${st.frames_read || 0} frames · ${st.fps_out || 0} fps`;
  }

  async function refresh() {
    let items = [];
    try { items = (await api("/streams")).items || []; } catch (e) { return; }
    const list = $("stream-list");
    list.replaceChildren();
    $("no-streams").hidden = items.length > 0;
    for (const s of items) {
      const li = document.createElement("li");
      li.className = "stream-item" + (selected === s.id ? " selected" : "");
      li.dataset.id = s.id;
      const title = document.createElement("div");
      title.textContent = `${s.id} · ${s.model_id}`;
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = `${s.source} · ${describe(s)}${s.error ? ` · ${s.error}` : ""}`;
      li.append(title, meta);
      li.addEventListener("click", () => watch(s.id));
      list.append(li);
      if (s.id === selected) {
        $("stream-title").textContent = `${s.id}: ${describe(s)}`;
        $("stop-btn").disabled = ["completed", "failed", "stopped"].includes(s.status);
      }
    }
  }

  function watch(id) {
    selected = id;
    if (events) events.close();
    const img = $("live");
    img.src = withKey(`/streams/${id}/mjpeg`);
    img.hidden = false;
    events = new EventSource(withKey(`/streams/${id}/events`));
    const show = (e) => { $("last-event").textContent = JSON.stringify(JSON.parse(e.data), null, 2); };
    events.addEventListener("frame", show);
    events.addEventListener("status", (e) => { show(e); refresh(); });
    events.onerror = () => { if (events && events.readyState === EventSource.CLOSED) events = null; };
    refresh();
  }

  async function start(ev) {
    ev.preventDefault();
    const error = $("start-error");
    error.hidden = true;
    const maxFps = parseFloat($("max-fps").value);
    const body = {
      source: $("source").value.trim(),
      model_id: $("model").value,
      tracker: $("tracker").value || null,
      realtime: $("realtime").checked,
      max_fps: Number.isFinite(maxFps) && maxFps > 0 ? maxFps : null,
      params: { confidence: $("confidence").value },
    };
    try {
      const stream = await api("/streams", { method: "POST", body: JSON.stringify(body) });
      watch(stream.id);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  }

  async function stop() {
    if (!selected) return;
    try { await api(`/streams/${selected}`, { method: "DELETE" }); } catch (e) { /* listed below */ }
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("start-form").addEventListener("submit", start);
    $("stop-btn").addEventListener("click", stop);
    loadModels().catch((e) => { $("start-error").textContent = e.message; $("start-error").hidden = false; });
    refresh();
    setInterval(refresh, 2000);
  });
})();
