// Browser client for WS /v1/stream: webcam -> JPEG frames -> server -> boxes, labels and bars.
// Plain script, no build step, no CDN. At most MAX_IN_FLIGHT frames are unanswered at any time,
// so latency stays bounded by the server's speed instead of growing with a queue.
'use strict';

(() => {
  const MAX_IN_FLIGHT = 2;
  const SEND_WIDTH = 640;
  const JPEG_QUALITY = 0.8;
  const STALL_MS = 3000; // a reply that never comes (rejected frame) must not block sending forever
  const STALE_MS = 2500; // an older result is not drawn over the live video: the face has moved on
  const KEY_STORE = 'emotion.apiKey';
  const POLICY_VIOLATION = 1008;

  // Same palette as client/colors.py, so the Python and browser clients read alike.
  const COLORS = {
    angry: '#e63946', disgust: '#6a994e', fear: '#8e6cc8', happy: '#ffbe0b',
    sad: '#3a86ff', surprise: '#ff70a6', neutral: '#a0a0a0',
  };
  const ORDER = ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral'];

  const $ = (id) => document.getElementById(id);
  const ui = {
    video: $('video'), overlay: $('overlay'), status: $('status'), placeholder: $('placeholder'),
    fps: $('fps'), latency: $('latency'), dropped: $('dropped'), faces: $('faces'),
    keyForm: $('key-form'), keyInput: $('api-key'), dominant: $('dominant'), bars: $('bars'),
    toggle: $('toggle'), mirror: $('mirror'), smoothing: $('smoothing'), smoothingOut: $('smoothing-out'),
    rate: $('rate'), rateOut: $('rate-out'), message: $('message'), result: $('result'),
    resultNote: $('result-note'), hud: document.querySelector('.hud'),
  };

  // Exposed for tests and for poking at from the devtools console.
  const state = {
    status: 'idle', running: false, keyRequired: false, stale: false,
    sent: 0, results: 0, dropped: 0, fps: 0, latencyMs: null, lastResult: null, error: null, drawn: [],
  };
  window.emotionApp = state;

  const grab = document.createElement('canvas');
  let ws = null;
  let stream = null;
  let answered = -1; // highest frame index replied to on this connection
  let sentAt = new Map();
  let encoding = false;
  let lastSend = 0;
  let lastReply = 0;
  let backoff = 500;
  let reconnectTimer = null;
  let replyTimes = [];

  const apiKey = () => localStorage.getItem(KEY_STORE) || '';

  function setStatus(status, text) {
    state.status = status;
    document.body.dataset.status = status;
    ui.status.textContent = text;
  }

  function say(text) {
    state.error = text || null;
    ui.message.textContent = text || '';
  }

  function streamUrl() {
    // Relative to the page, so it also works under a reverse-proxy prefix; wss behind TLS.
    const url = new URL('v1/stream', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const key = apiKey();
    if (key) url.searchParams.set('api_key', key);
    return url.toString();
  }

  async function loadInfo() {
    try {
      const key = apiKey();
      const res = await fetch('v1/info', { cache: 'no-store', headers: key ? { 'X-API-Key': key } : {} });
      if (res.status === 401 || res.status === 403) {
        needKey(Boolean(key)); // /v1/info itself needs the key: that is how a keyed server says so
        return;
      }
      if (!res.ok) return;
      const info = await res.json();
      const auth = info.auth ?? info.auth_required ?? info.api_key_required ?? info.api_keys;
      state.keyRequired = auth === true || auth === 'api_key' || (auth && auth.required === true);
      if (state.keyRequired && !apiKey()) needKey(false);
    } catch (err) {
      // An older server without /v1/info: a 1008 close will tell us about keys instead.
    }
  }

  // "required" until a key was actually sent and refused; only then "refused".
  function needKey(refused) {
    state.keyRequired = true;
    setStatus('key', refused ? 'key refused' : 'key required');
    say(refused ? 'The server refused this API key.' : 'This server requires an API key.');
    showKeyForm(refused ? 'Enter a valid key to connect.' : 'Paste your key to connect.');
  }

  function showKeyForm(hint) {
    ui.keyForm.hidden = false;
    ui.keyForm.querySelector('.hint').textContent = hint;
    ui.keyInput.value = apiKey();
    ui.keyInput.focus();
  }

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error('This page needs https:// (or http://localhost) to use the camera.');
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: 'user' }, audio: false,
      });
    } catch (err) {
      const why = {
        NotAllowedError: 'Camera permission was denied.',
        NotFoundError: 'No camera found.',
        NotReadableError: 'The camera is in use by another program.',
      }[err.name];
      throw new Error(why || `Cannot open the camera: ${err.message}`);
    }
    ui.video.srcObject = stream;
    await ui.video.play();
    ui.placeholder.hidden = true;
  }

  function stopCamera() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    ui.video.srcObject = null;
    ui.placeholder.hidden = false;
    ui.placeholder.textContent = 'Stopped.';
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (!state.running) return;
    if (state.keyRequired && !apiKey()) {
      needKey(false);
      return;
    }
    setStatus(state.results ? 'reconnecting' : 'connecting', 'connecting…');
    const sock = new WebSocket(streamUrl());
    ws = sock;
    answered = -1;
    state.sent = 0; // frame indices restart at 0 on every connection, on both sides
    sentAt = new Map();
    sock.onopen = () => {
      // backoff is reset by the first result, not here: a busy server (1013) accepts, then closes.
      lastReply = performance.now();
      setStatus('live', 'live');
      say('');
      sendSmoothing();
    };
    sock.onmessage = (ev) => onMessage(ev.data);
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (ev.code === POLICY_VIOLATION && ev.reason && !/key/i.test(ev.reason)) {
        // Not about the key (e.g. "origin not allowed": a proxy that rewrites Host): say so, no retry.
        setStatus('error', 'refused');
        say(`The server refused the stream: ${ev.reason}.`);
        markStale();
        return;
      }
      if (ev.code === POLICY_VIOLATION) {
        needKey(Boolean(apiKey()));
        return; // retrying with the same key cannot help
      }
      if (!state.running) return;
      markStale();
      say(ev.reason ? `Server closed the stream: ${ev.reason}` : '');
      setStatus('reconnecting', `reconnecting in ${(backoff / 1000).toFixed(1)} s`);
      reconnectTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function sendSmoothing() {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ smoothing: Number(ui.smoothing.value) }));
    }
  }

  function onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (msg.error) {
      say(`${msg.error.code}: ${msg.error.message}`);
      return;
    }
    if (msg.type !== 'result') return;
    backoff = 500;
    const now = performance.now();
    const t0 = sentAt.get(msg.frame);
    for (const k of sentAt.keys()) if (k <= msg.frame) sentAt.delete(k);
    answered = Math.max(answered, msg.frame);
    lastReply = now;
    if (t0 !== undefined) state.latencyMs = now - t0;
    replyTimes.push(now);
    replyTimes = replyTimes.filter((t) => now - t < 2000);
    state.fps = replyTimes.length > 1 ? (replyTimes.length - 1) / ((now - replyTimes[0]) / 1000) : 0;
    state.dropped += msg.dropped || 0;
    state.results += 1;
    state.lastResult = msg;
    document.body.dataset.results = String(state.results);
    renderPanel(msg);
    pump();
  }

  // The last result describes a face that has since moved: take it off the video, grey the panel.
  function markStale() {
    state.lastResult = null;
    state.fps = 0;
    state.latencyMs = null;
    replyTimes = [];
  }

  // --- sending ------------------------------------------------------------------------------

  function pump() {
    if (!state.running || !ws || ws.readyState !== WebSocket.OPEN || encoding) return;
    if (ui.video.readyState < 2 || !ui.video.videoWidth) return;
    const now = performance.now();
    if (state.sent - (answered + 1) >= MAX_IN_FLIGHT) {
      if (now - lastReply < STALL_MS) return;
      answered = state.sent - 1; // give up on the stalled frames
    }
    if (now - lastSend < 1000 / Number(ui.rate.value)) return;
    const scale = Math.min(1, SEND_WIDTH / ui.video.videoWidth);
    grab.width = Math.round(ui.video.videoWidth * scale);
    grab.height = Math.round(ui.video.videoHeight * scale);
    grab.getContext('2d').drawImage(ui.video, 0, 0, grab.width, grab.height);
    encoding = true;
    lastSend = now;
    const sock = ws;
    grab.toBlob((blob) => {
      encoding = false;
      if (!blob || sock !== ws || sock.readyState !== WebSocket.OPEN) return;
      sentAt.set(state.sent, performance.now());
      state.sent += 1;
      sock.send(blob);
    }, 'image/jpeg', JPEG_QUALITY);
  }

  // --- drawing ------------------------------------------------------------------------------

  function draw() {
    requestAnimationFrame(draw);
    pump();
    const cv = ui.overlay;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(cv.clientWidth * dpr);
    const h = Math.round(cv.clientHeight * dpr);
    if (cv.width !== w || cv.height !== h) {
      cv.width = w;
      cv.height = h;
    }
    const ctx = cv.getContext('2d');
    ctx.clearRect(0, 0, w, h);
    const fresh = state.status === 'live' && performance.now() - lastReply < STALE_MS;
    const res = fresh ? state.lastResult : null;
    const stale = state.running && !res && state.results > 0;
    if (stale !== state.stale) {
      state.stale = stale;
      ui.result.classList.toggle('stale', stale);
      ui.resultNote.textContent = stale ? `last result, ${state.status === 'live' ? 'no reply' : 'reconnecting'}…` : '';
    }
    if (res && state.running && ui.video.videoWidth) {
      // The video is letterboxed (object-fit: contain) inside the stage: map image px -> canvas px.
      const vw = ui.video.videoWidth;
      const vh = ui.video.videoHeight;
      const fit = Math.min(w / vw, h / vh);
      const ox = (w - vw * fit) / 2;
      const oy = (h - vh * fit) / 2;
      const s = fit * (vw / res.image.width);
      // The HUD chips' box in canvas px: labels and bars go where they do not hide under it.
      const c = cv.getBoundingClientRect();
      const r = ui.hud.getBoundingClientRect();
      const hud = { right: (r.right - c.left + 4) * dpr, bottom: (r.bottom - c.top + 4) * dpr };
      state.drawn = res.faces.map((face) => drawFace(ctx, face, s, ox, oy, res.image.width, dpr, hud));
      state.drawn.hud = hud;
    }
    ui.fps.textContent = res && state.fps ? state.fps.toFixed(1) : '–';
    ui.latency.textContent = res && state.latencyMs != null ? Math.round(state.latencyMs) : '–';
    ui.dropped.textContent = state.dropped;
    ui.faces.textContent = res ? res.faces.length : 0;
  }

  // The lowest y at which a rectangle from x to x + width clears the HUD chips.
  const clearOfHud = (hud, x, width) => (x < hud.right && x + width > 0 ? hud.bottom : 0);

  function drawFace(ctx, face, s, ox, oy, imageWidth, dpr, hud) {
    const b = face.box;
    const bx = ui.mirror.checked ? imageWidth - b.x - b.w : b.x;
    const x = ox + bx * s;
    const y = oy + b.y * s;
    const w = b.w * s;
    const h = b.h * s;
    const color = COLORS[face.dominant] || '#ccc';
    ctx.lineWidth = 3 * dpr;
    ctx.strokeStyle = color;
    ctx.beginPath();
    ctx.roundRect ? ctx.roundRect(x, y, w, h, 8 * dpr) : ctx.rect(x, y, w, h);
    ctx.stroke();

    const p = face.emotions[face.dominant] || 0;
    const tag = `${face.dominant} ${Math.round(p * 100)}%` + (face.track_id != null ? `  #${face.track_id}` : '');
    ctx.font = `600 ${14 * dpr}px system-ui, sans-serif`;
    const tw = ctx.measureText(tag).width + 14 * dpr;
    const th = 22 * dpr;
    // Above the box; below it when the top edge or the HUD is in the way; inside its top if neither fits.
    const H = ctx.canvas.height;
    let ty = y - th - 4 * dpr;
    const top = clearOfHud(hud, x, tw);
    if (ty < top) ty = y + h + 4 * dpr + th <= H ? y + h + 4 * dpr : Math.max(y, top) + 4 * dpr;
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.roundRect ? ctx.roundRect(x, ty, tw, th, 6 * dpr) : ctx.rect(x, ty, tw, th);
    ctx.fill();
    ctx.fillStyle = '#111';
    ctx.textBaseline = 'middle';
    ctx.fillText(tag, x + 7 * dpr, ty + th / 2);

    // Per-emotion bars beside the box: right if they fit, else left, else none (never over the
    // face: on a narrow screen the panel beside the video shows the same numbers).
    const names = ORDER.filter((e) => e in face.emotions);
    const row = 14 * dpr;
    const pw = 130 * dpr;
    const ph = row * names.length + 8 * dpr;
    const W = ctx.canvas.width;
    let px = x + w + 8 * dpr;
    if (px + pw > W) px = x - pw - 8 * dpr;
    const drawn = { box: [x, y, w, h], label: [x, ty, tw, th], bars: null };
    if (px < 0) return drawn;
    const py = Math.min(Math.max(clearOfHud(hud, px, pw), y), H - ph);
    ctx.fillStyle = 'rgba(10, 12, 18, 0.68)';
    ctx.fillRect(px, py, pw, ph);
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    names.forEach((name, i) => {
      const ry = py + 4 * dpr + i * row;
      ctx.fillStyle = '#dfe2ea';
      ctx.fillText(name, px + 6 * dpr, ry + row / 2);
      const bx0 = px + 62 * dpr;
      const bw = pw - 68 * dpr;
      ctx.fillStyle = 'rgba(255,255,255,0.12)';
      ctx.fillRect(bx0, ry + 4 * dpr, bw, row - 8 * dpr);
      ctx.fillStyle = COLORS[name] || '#ccc';
      ctx.fillRect(bx0, ry + 4 * dpr, bw * face.emotions[name], row - 8 * dpr);
    });
    drawn.bars = [px, py, pw, ph];
    return drawn; // canvas px, kept in emotionApp.drawn for tests
  }

  function renderPanel(res) {
    const face = res.faces[0]; // largest first
    if (!face) {
      ui.dominant.textContent = 'no face';
      ui.bars.replaceChildren();
      return;
    }
    const p = Math.round((face.emotions[face.dominant] || 0) * 100);
    ui.dominant.innerHTML = '';
    ui.dominant.append(face.dominant);
    const small = document.createElement('small');
    small.textContent = `${p}%`;
    ui.dominant.append(small);
    ui.dominant.style.color = COLORS[face.dominant] || '';
    const rows = ORDER.filter((e) => e in face.emotions).map((name) => {
      const v = face.emotions[name];
      const el = document.createElement('div');
      el.className = 'bar';
      el.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
      el.querySelector('.name').textContent = name;
      const fill = el.querySelector('.fill');
      fill.style.width = `${(v * 100).toFixed(1)}%`;
      fill.style.background = COLORS[name];
      el.querySelector('.pct').textContent = `${Math.round(v * 100)}%`;
      return el;
    });
    ui.bars.replaceChildren(...rows);
  }

  // --- controls -----------------------------------------------------------------------------

  async function start() {
    if (state.status !== 'key') say(''); // keep "requires a key" while the camera starts
    ui.toggle.disabled = true;
    ui.toggle.textContent = 'Starting…';
    ui.placeholder.hidden = false;
    ui.placeholder.textContent = 'Waiting for the camera…';
    try {
      await startCamera();
    } catch (err) {
      setStatus('error', 'no camera');
      say(err.message);
      ui.placeholder.textContent = `${err.message} Press Retry when it is fixed.`;
      ui.toggle.textContent = 'Retry';
      ui.toggle.disabled = false;
      return;
    }
    state.running = true;
    ui.toggle.textContent = 'Stop';
    ui.toggle.disabled = false;
    connect();
  }

  function stop() {
    state.running = false;
    clearTimeout(reconnectTimer);
    if (ws) {
      const sock = ws;
      ws = null;
      sock.close(1000, 'stopped');
    }
    stopCamera();
    state.lastResult = null;
    ui.toggle.textContent = 'Start';
    setStatus('idle', 'stopped');
  }

  ui.toggle.addEventListener('click', () => (state.running ? stop() : start()));
  ui.smoothing.addEventListener('input', () => {
    ui.smoothingOut.textContent = ui.smoothing.value;
    sendSmoothing();
  });
  const applyMirror = () => ui.video.classList.toggle('mirror', ui.mirror.checked);
  ui.mirror.addEventListener('change', applyMirror);
  applyMirror();
  ui.rate.addEventListener('input', () => {
    ui.rateOut.textContent = ui.rate.value;
  });
  ui.keyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    localStorage.setItem(KEY_STORE, ui.keyInput.value.trim());
    ui.keyForm.hidden = true;
    say('');
    if (state.running) connect();
    else start();
  });

  requestAnimationFrame(draw);
  loadInfo().then(start);
})();
