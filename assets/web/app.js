// Butterfly cluster map: draws the live view from /api/events and chats through /v1/chat/completions.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#7c5cff", "#1fb3d6", "#f2a22c", "#16b37e", "#ec4e6c", "#3b82f6", "#b159f0", "#14b8a6", "#f97316", "#84cc16"];
  const colorOf = new Map(); // node id -> colour, in order of first appearance
  let view = null;

  // --- small helpers ---------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function nodeColor(id) {
    if (!colorOf.has(id)) {
      const used = new Set(colorOf.values());
      const free = PALETTE.find((c) => !used.has(c));
      colorOf.set(id, free || PALETTE[colorOf.size % PALETTE.length]);
    }
    return colorOf.get(id);
  }

  function isLight(hex) {
    const n = parseInt(hex.slice(1), 16);
    const [r, g, b] = [(n >> 16) & 255, (n >> 8) & 255, n & 255];
    return 0.299 * r + 0.587 * g + 0.114 * b > 170;
  }

  const fmt = {
    int: (n) => Math.round(n || 0).toLocaleString("en-US"),
    rate: (n) => (n >= 100 ? Math.round(n).toString() : (n || 0).toFixed(1)),
    ms: (n) => (n == null ? "–" : n < 10 ? n.toFixed(2) + " ms" : n < 100 ? n.toFixed(1) + " ms" : Math.round(n) + " ms"),
    gib: (b) => (b ? (b / 2 ** 30).toFixed(1) + " GiB" : "–"),
    ranges: (rs) => (rs && rs.length ? rs.map(([a, b]) => `[${a}, ${b})`).join(" ") : "–"),
    clock: (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false }),
  };

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  // --- header and stats ------------------------------------------------------------

  function renderHeader(v) {
    setText("pool-name", v.pool.name || "Butterfly pool");
    setText("model-name", `${v.model.name} · ${v.model.layers} layers`);
    setText("pool-id", (v.pool.id || "").slice(0, 16));
    $("pool-id").title = "pool id " + (v.pool.id || "");
    document.title = `${v.pool.name || "Butterfly"} · cluster map`;
    const ready = $("ready");
    ready.textContent = v.ready ? "ready" : "waiting";
    ready.className = "pill " + (v.ready ? "pill-ready" : "pill-wait");
    ready.title = v.last_error || (v.ready ? "serving requests" : "");
    setText("stat-volunteers", String(v.volunteers.length));
    setText("stat-pipelines", String(v.pipelines.length));
    setText("stat-tps", fmt.rate(v.throughput.tokens_per_s));
    setText("stat-queue", String(v.queue.waiting));
    setText("stat-queue-hint", `${v.queue.running} running · room for ${v.queue.max_queue}`);
    setText("stat-tokens", fmt.int(v.throughput.tokens_total));
    setText("stat-failures", String(v.throughput.stage_failures));
    $("key-row").hidden = !v.api.key_required;
  }

  // --- layer band ------------------------------------------------------------------

  function renderBand(v) {
    const band = $("band");
    const layers = v.model.layers;
    const rows = v.pipelines.length ? v.pipelines : [null];
    band.replaceChildren(
      ...rows.map((stages, i) => {
        const track = el("div", { class: "band-track" + (stages ? "" : " empty-track") });
        if (stages) {
          for (const s of stages) {
            const color = nodeColor(s.node_id);
            const span = s.end - s.start;
            const seg = el(
              "div",
              {
                class: "segment" + (isLight(color) ? " dark-text" : ""),
                "data-node-id": s.node_id,
                "data-start": String(s.start),
                "data-end": String(s.end),
                title: `${s.name}: layers [${s.start}, ${s.end}) (${span} of ${layers})`,
                style: `flex: 0 0 ${(100 * span) / layers}%; background-color: ${color}; --cell: ${100 / span}%`,
              },
              el("span", {}, `${s.name} · ${span} layer${span === 1 ? "" : "s"}`)
            );
            track.append(seg);
          }
        }
        const label = stages ? (v.pipelines.length > 1 ? `Pipeline ${i + 1}` : "Pipeline") : "No plan";
        return el("div", { class: "band-row", "data-pipeline": String(i) }, el("span", { class: "band-label" }, label), track);
      })
    );
    const step = layers <= 12 ? 2 : layers <= 40 ? 5 : layers <= 100 ? 10 : 20;
    const ticks = [];
    for (let t = 0; t < layers; t += step) if (layers - t >= step / 2 || t === 0) ticks.push(t);
    ticks.push(layers);
    $("axis").replaceChildren(...ticks.map((t) => el("span", { style: `left: ${(100 * t) / layers}%` }, String(t))));
    setText("layers-caption", v.pipelines.length ? `${layers} decoder layers, coloured by volunteer` : `${layers} decoder layers`);
    const note = $("band-note");
    note.hidden = !!v.pipelines.length;
    note.textContent = v.last_error || "Waiting for enough volunteers to hold the model.";
  }

  // --- volunteers ------------------------------------------------------------------

  function nodeCard(vol) {
    const card = el("article", { class: "node", "data-node-id": vol.node_id });
    card.innerHTML = `
      <div class="node-head"><span class="node-name"></span><span class="badge"></span></div>
      <div class="node-sub"></div>
      <dl class="kv">
        <div><dt>Memory</dt><dd data-k="memory"></dd></div>
        <div><dt>RTT</dt><dd data-k="rtt"></dd></div>
        <div><dt>Step</dt><dd data-k="step"></dd></div>
        <div><dt>Layers</dt><dd data-k="layers"></dd></div>
        <div><dt>Steps</dt><dd data-k="steps"></dd></div>
        <div><dt>Per layer</dt><dd data-k="perlayer"></dd></div>
        <div title="Steps whose output this volunteer handed straight to the next stage's volunteer (the rest the coordinator relayed)"><dt>Direct</dt><dd data-k="handoff"></dd></div>
      </dl>
      <div class="util"><span>busy</span><div class="util-track"><div class="util-fill"></div></div><span class="util-pct"></span></div>`;
    return card;
  }

  function renderNodes(v) {
    const box = $("nodes");
    const seen = new Set();
    // Pipeline order first (by first layer served), idle volunteers after, by name.
    const firstLayer = (vol) => (vol.layers.length ? Math.min(...vol.layers.map((r) => r[0])) : Infinity);
    const ordered = v.volunteers.slice().sort((a, b) => firstLayer(a) - firstLayer(b) || a.name.localeCompare(b.name));
    ordered.forEach((vol, index) => {
      seen.add(vol.node_id);
      let card = box.querySelector(`.node[data-node-id="${CSS.escape(vol.node_id)}"]`);
      if (!card) {
        card = nodeCard(vol);
        box.append(card);
      }
      if (box.children[index] !== card) box.insertBefore(card, box.children[index] || null);
      card.style.setProperty("--node", nodeColor(vol.node_id));
      const q = (sel) => card.querySelector(sel);
      q(".node-name").textContent = vol.name;
      const trust = vol.trust || "";
      const state = trust === "quarantined" ? "quarantined" : vol.draining ? "draining" : vol.layers.length ? "serving" : "idle";
      const badge = q(".badge");
      badge.textContent = state;
      badge.className = "badge " + state;
      badge.title = trust ? `${trust} · ${vol.strikes || 0} strikes · ${fmt.int(vol.verified_steps)} steps verified` : "";
      card.classList.toggle("quarantined", trust === "quarantined");
      card.classList.toggle("probation", trust === "probation");
      const sub = [vol.device, vol.os].filter(Boolean).join(" · ") || "unknown machine";
      q(".node-sub").textContent = trust === "probation" ? sub + " · on probation" : sub;
      const set = (k, text) => {
        const dd = q(`[data-k="${k}"]`);
        if (dd.textContent !== text) dd.textContent = text;
      };
      set("memory", fmt.gib(vol.memory_bytes));
      set("rtt", fmt.ms(vol.rtt_ms));
      set("step", fmt.ms(vol.step_ms));
      set("layers", fmt.ranges(vol.layers));
      set("steps", fmt.int(vol.steps));
      const perLayer = vol.observed_seconds_per_layer || vol.seconds_per_layer;
      set("perlayer", perLayer ? fmt.ms(perLayer * 1000) : "–");
      const last = vol.layers.some((r) => r[1] === v.model.layers);
      set("handoff", last ? "to pool" : vol.steps ? Math.round((100 * (vol.handed_off_steps || 0)) / vol.steps) + "%" : "–");
      const pct = Math.round(100 * Math.min(1, Math.max(0, vol.utilisation || 0)));
      q(".util-fill").style.width = pct + "%";
      q(".util-pct").textContent = pct + "%";
    });
    for (const card of [...box.children]) if (!seen.has(card.dataset.nodeId)) card.remove();
    $("nodes-empty").hidden = v.volunteers.length > 0;
    const serving = v.volunteers.filter((x) => x.layers.length).length;
    const quarantined = v.volunteers.filter((x) => x.trust === "quarantined").length;
    setText(
      "nodes-caption",
      v.volunteers.length
        ? `${serving} serving · ${v.volunteers.length - serving - quarantined} idle` + (quarantined ? ` · ${quarantined} quarantined` : "")
        : ""
    );
  }

  // --- events ----------------------------------------------------------------------

  function renderEvents(v) {
    const list = $("events");
    const events = (v.events || []).slice().reverse();
    const key = events.length ? `${events.length}:${events[0].time}` : "0";
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(
      ...events.map((e) =>
        el(
          "li",
          { "data-kind": e.kind },
          el("time", {}, fmt.clock(e.time)),
          el("span", { class: `kind kind-${e.kind}` }, e.kind),
          el("span", { class: "event-text" }, e.text)
        )
      )
    );
    if (!events.length) list.append(el("li", { class: "empty" }, "Nothing yet."));
    setText("events-caption", events.length ? `latest ${events.length}` : "");
  }

  // --- throughput chart ------------------------------------------------------------

  function drawChart(v) {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const points = v.throughput.history;
    const span = 120;
    const end = v.generated_at;
    const left = 34, right = 8, top = 8, bottom = 20;
    const plotW = width - left - right, plotH = height - top - bottom;
    const peak = Math.max(1, ...points.map((p) => p[1]));
    const nice = 4 * niceStep(peak / 4);
    const x = (t) => left + plotW * (1 - (end - t) / span);
    const y = (r) => top + plotH * (1 - r / nice);

    ctx.font = `11px ${color("--sans") || "system-ui"}`;
    ctx.fillStyle = color("--faint");
    ctx.strokeStyle = color("--border");
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const r = (nice * i) / 4;
      const yy = Math.round(y(r)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(width - right, yy);
      ctx.stroke();
      ctx.fillText(fmtTick(r), left - 6, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const [label, ago] of [["−2 min", 120], ["−1 min", 60], ["now", 0]]) {
      const xx = Math.min(Math.max(x(end - ago), left + 18), width - right - 12);
      ctx.fillText(label, xx, height - bottom + 6);
    }
    const visible = points.filter((p) => end - p[0] <= span);
    if (visible.length < 2) return;
    const accent = color("--accent");
    const grad = ctx.createLinearGradient(0, top, 0, top + plotH);
    grad.addColorStop(0, hexA(accent, 0.28));
    grad.addColorStop(1, hexA(accent, 0.02));
    ctx.beginPath();
    ctx.moveTo(x(visible[0][0]), y(0));
    for (const [t, r] of visible) ctx.lineTo(x(t), y(r));
    ctx.lineTo(x(visible[visible.length - 1][0]), y(0));
    ctx.closePath();
    ctx.fillStyle = grad;
    ctx.fill();
    ctx.beginPath();
    visible.forEach(([t, r], i) => (i ? ctx.lineTo(x(t), y(r)) : ctx.moveTo(x(t), y(r))));
    ctx.strokeStyle = accent;
    ctx.lineWidth = 1.8;
    ctx.lineJoin = "round";
    ctx.stroke();
  }

  function niceStep(n) {
    const p = 10 ** Math.floor(Math.log10(n));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= n) return m * p;
    return 10 * p;
  }
  function fmtTick(r) {
    return Number.isInteger(r) || r >= 10 ? String(Math.round(r)) : String(+r.toFixed(2));
  }
  function hexA(hex, alpha) {
    const m = /^#([0-9a-f]{6})$/i.exec(hex);
    if (!m) return hex;
    const n = parseInt(m[1], 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  // --- live updates ----------------------------------------------------------------

  function render(v) {
    view = v;
    for (const vol of v.volunteers) nodeColor(vol.node_id);
    renderHeader(v);
    renderBand(v);
    renderNodes(v);
    renderEvents(v);
    drawChart(v);
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.onopen = () => {
      $("conn").className = "pill pill-on";
      setText("conn-text", "live");
    };
    source.onerror = () => {
      $("conn").className = "pill pill-off";
      setText("conn-text", "reconnecting");
    };
    source.onmessage = (message) => {
      try {
        render(JSON.parse(message.data));
      } catch (err) {
        console.error("bad view", err);
      }
    };
  }
  window.addEventListener("resize", () => view && drawChart(view));
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => view && drawChart(view));

  // --- chat ------------------------------------------------------------------------

  const history = [];
  let controller = null;
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem("butterfly-api-key") || "";
  keyInput.addEventListener("change", () => sessionStorage.setItem("butterfly-api-key", keyInput.value.trim()));

  function addMessage(role, text) {
    $("chat-empty").hidden = true;
    const node = el("div", { class: `msg ${role}` }, text);
    $("messages").append(node);
    node.scrollIntoView({ block: "nearest" });
    return node;
  }

  function setBusy(busy) {
    $("send").textContent = busy ? "Stop" : "Send";
    $("send").classList.toggle("busy", busy);
  }

  async function send(prompt) {
    history.push({ role: "user", content: prompt });
    addMessage("user", prompt);
    const bubble = addMessage("assistant streaming", "");
    const headers = { "Content-Type": "application/json" };
    const key = keyInput.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    controller = new AbortController();
    setBusy(true);
    const started = performance.now();
    let firstAt = null;
    let text = "";
    let usage = null;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers,
        signal: controller.signal,
        body: JSON.stringify({
          model: view ? view.api.model : "",
          messages: history,
          stream: true,
          stream_options: { include_usage: true },
          temperature: 0.7,
          top_p: 0.9,
          max_tokens: 256,
        }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            if (chunk.usage) usage = chunk.usage;
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) {
              if (firstAt === null) firstAt = performance.now();
              text += delta.content;
              bubble.textContent = text;
              bubble.scrollIntoView({ block: "nearest" });
            }
          }
        }
      }
      history.push({ role: "assistant", content: text });
      const seconds = (performance.now() - started) / 1000;
      const first = firstAt === null ? seconds : (firstAt - started) / 1000;
      if (usage) {
        const rate = usage.completion_tokens > 1 && seconds > first ? (usage.completion_tokens - 1) / (seconds - first) : 0;
        $("chat-meta").textContent = `${usage.completion_tokens} tokens · first after ${first.toFixed(2)} s · ${rate.toFixed(1)} tokens/s`;
      }
    } catch (err) {
      history.pop();
      if (err.name !== "AbortError") addMessage("error", String(err.message || err));
      if (!text) bubble.remove();
    } finally {
      bubble.classList.remove("streaming");
      controller = null;
      setBusy(false);
    }
  }

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (controller) {
      controller.abort();
      return;
    }
    const prompt = $("prompt").value.trim();
    if (!prompt) return;
    $("prompt").value = "";
    send(prompt);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-reset").addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    $("messages").replaceChildren($("chat-empty"));
    $("chat-empty").hidden = false;
    $("chat-meta").textContent = "";
  });

  connect();
})();
