// The page of scripts/serve.py: photos (drop or pick) and the webcam, over the service's own API.
// Plain JavaScript, no build step, nothing loaded from other sites.
"use strict";

const FRAMES_PER_SECOND = 4;    // webcam frames sent at most this often (one request at a time)
const FRAME_SIDE = 640;         // webcam frames are scaled to this longest side before sending
const CHART_SECONDS = 10;       // the charts show each face's last seconds
const FORGET_MS = 2000;         // a webcam face unseen this long is dropped
const SAME_FACE_IOU = 0.2;      // a box overlapping last frame's this much is the same face

const state = {
  classes: [],
  colours: {},
  token: sessionStorage.getItem("fervgg-token") || "",
};
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const percent = (p) => `${Math.round(p * 100)}%`;

// ------------------------------------------------------------------ the API

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    return { ok: false, status: 0, body: { error: `the service cannot be reached (${err.message})` } };
  }
  let body;
  try {
    body = await response.json();
  } catch (err) {
    body = { error: `HTTP ${response.status}` };
  }
  if (response.status === 401) askForToken(body.error);
  return { ok: response.ok, status: response.status, body };
}

function options(forWebcam) {
  // Webcam frames: always find faces, one view (ten-crop would cut the frame rate, as for video).
  const detect = forWebcam || $("opt-detect").checked;
  const tta = !forWebcam && $("opt-tta").checked;
  return `?detect=${detect}&tta=${tta}`;
}

function askForToken(message) {
  $("token-form").hidden = false;
  $("token-message").textContent = message || "";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token-input").value.trim();
  sessionStorage.setItem("fervgg-token", state.token);
  $("token-form").hidden = true;
  describeModel();
});

async function describeModel() {
  const { ok, body } = await api("/v1/model");
  if (!ok) {
    $("model-line").textContent = body.error;
    return;
  }
  state.classes = body.classes;
  state.colours = body.colours;
  $("opt-tta").checked = Boolean(body.photo_tta);  // the service's default for photos
  const accuracy = body.sidecar && body.sidecar.provenance && body.sidecar.provenance.publicTest_accuracy;
  $("model-line").textContent = `model ${body.model} (${body.backend}), face detector ${body.detector}` +
    (accuracy ? `, ${percent(accuracy.accuracy)} on FER2013's public test set` : "");
  const legend = $("legend");
  legend.replaceChildren(...state.classes.map((name) => {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.textContent = name;
    swatch.style.background = colourOf(name).fill;
    swatch.style.color = colourOf(name).text;
    return swatch;
  }));
}

function colourOf(emotion) {
  return state.colours[emotion] || { fill: "#4363d8", text: "white" };
}

// ------------------------------------------------------------------ drawing

// Boxes and labels as elements over the image, placed in percent of its size (they follow
// any scaling of the page). Boxes are in the pixels of the image that was sent.
function drawBoxes(layer, records, width, height, name) {
  layer.replaceChildren(...records.map((record) => {
    const { x, y, w, h } = record.box;
    const box = document.createElement("div");
    box.className = "face-box" + (y < height * 0.08 ? " low" : "");
    Object.assign(box.style, {
      left: `${(100 * x) / width}%`, top: `${(100 * y) / height}%`,
      width: `${(100 * w) / width}%`, height: `${(100 * h) / height}%`,
      borderColor: colourOf(record.emotion).fill,
    });
    const label = document.createElement("span");
    label.className = "face-label";
    label.dataset.emotion = record.emotion;
    label.textContent = (name ? name(record) + ": " : "") + `${record.emotion} ${percent(record.confidence)}` +
      (record.face_found === false ? " (no face found: whole image)" : "");
    label.style.background = colourOf(record.emotion).fill;
    label.style.color = colourOf(record.emotion).text;
    box.append(label);
    return box;
  }));
}

function probabilityTable(records) {
  const table = document.createElement("table");
  table.className = "probs";
  const head = table.createTHead().insertRow();
  for (const title of ["face", ...state.classes]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const record of records) {
    const row = body.insertRow();
    row.insertCell().textContent = record.face_found === false ? "whole image" : `face ${record.face}`;
    for (const name of state.classes) {
      const cell = row.insertCell();
      cell.textContent = (100 * record.probabilities[name]).toFixed(1) + "%";
      if (name === record.emotion) cell.className = "best";
    }
  }
  return table;
}

// ------------------------------------------------------------------ photos

async function addPhotos(files) {
  for (const file of files) {
    const card = document.createElement("div");
    card.className = "card";
    const stage = document.createElement("div");
    stage.className = "stage";
    const img = document.createElement("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    const layer = document.createElement("div");
    layer.className = "boxes";
    stage.append(img, layer);
    const info = document.createElement("div");
    const title = document.createElement("h3");
    title.textContent = file.name;
    const status = document.createElement("div");
    status.className = "status";
    status.textContent = "recognising…";
    info.append(title, status);
    card.append(stage, info);
    $("results").prepend(card);

    const form = new FormData();
    form.append("file", file, file.name);
    const started = performance.now();
    const [answer] = await Promise.all([
      api("/v1/predict" + options(false), { method: "POST", body: form }),
      img.decode().catch(() => null),
    ]);
    const ms = Math.round(performance.now() - started);
    if (!answer.ok) {
      status.textContent = answer.body.error;
      status.classList.add("error");
      continue;
    }
    const records = answer.body;
    const found = records.filter((r) => r.face_found !== false).length;
    status.textContent = (records.length && records[0].face_found === false ? "no face found: the whole image is classified"
      : `${found} face${found === 1 ? "" : "s"}`) + ` · ${ms} ms`;
    if (img.naturalWidth) drawBoxes(layer, records, img.naturalWidth, img.naturalHeight);
    info.append(probabilityTable(records));
  }
}

const dropZone = $("drop-zone");
$("file-input").addEventListener("change", (event) => {
  addPhotos([...event.target.files]);
  event.target.value = "";
});
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("over");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  addPhotos([...event.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
});

// ------------------------------------------------------------------ webcam

const cam = { stream: null, running: false, tracks: new Map(), nextId: 1 };

function iou(a, b) {
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  if (w <= 0 || h <= 0) return 0;
  return (w * h) / (a.w * a.h + b.w * b.h - w * h);
}

// Which face is which from frame to frame: the best-overlapping box of the last frames.
function follow(records, now) {
  const free = new Set(cam.tracks.keys());
  for (const record of records) {
    let id = null;
    let best = SAME_FACE_IOU;
    for (const candidate of free) {
      const overlap = iou(cam.tracks.get(candidate).box, record.box);
      if (overlap > best) [id, best] = [candidate, overlap];
    }
    if (id === null) {
      id = cam.nextId++;
      cam.tracks.set(id, { history: [] });
    }
    free.delete(id);
    const track = cam.tracks.get(id);
    Object.assign(track, { box: record.box, seen: now });
    track.history.push({ t: now, p: record.probabilities });
    record.track = id;
  }
  for (const [id, track] of cam.tracks) {
    track.history = track.history.filter((h) => now - h.t <= CHART_SECONDS * 1000);
    if (now - track.seen > FORGET_MS) cam.tracks.delete(id);
  }
}

function drawCharts(now) {
  const charts = $("charts");
  for (const element of [...charts.children]) {
    if (!cam.tracks.has(Number(element.dataset.track))) element.remove();
  }
  for (const [id, track] of cam.tracks) {
    let element = charts.querySelector(`[data-track="${id}"]`);
    if (!element) {
      element = document.createElement("div");
      element.className = "chart";
      element.dataset.track = id;
      element.innerHTML = `<h4></h4><canvas width="300" height="90"></canvas>`;
      charts.append(element);
    }
    const last = track.history[track.history.length - 1];
    const top = state.classes.reduce((a, b) => (last.p[a] >= last.p[b] ? a : b));
    element.querySelector("h4").textContent = `face ${id}: ${top} ${percent(last.p[top])} (last ${CHART_SECONDS} s)`;
    const canvas = element.querySelector("canvas");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const xOf = (t) => canvas.width * (1 - (now - t) / (CHART_SECONDS * 1000));
    const yOf = (p) => canvas.height - 3 - (canvas.height - 6) * p;
    for (const name of state.classes) {
      ctx.strokeStyle = colourOf(name).fill;
      ctx.lineWidth = name === top ? 2.5 : 1.5;
      ctx.beginPath();
      track.history.forEach((h, i) => (i ? ctx.lineTo(xOf(h.t), yOf(h.p[name])) : ctx.moveTo(xOf(h.t), yOf(h.p[name]))));
      ctx.stroke();
    }
  }
}

async function startWebcam() {
  const status = $("cam-status");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    status.textContent = "This browser offers no camera to this page: open it as http://localhost:PORT or " +
      "http://127.0.0.1:PORT on this machine (browsers allow cameras only there or over https).";
    return;
  }
  try {
    cam.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } },
                                                             audio: false });
  } catch (err) {
    status.textContent = `no camera: ${err.message || err.name}`;
    return;
  }
  const video = $("cam-video");
  video.srcObject = cam.stream;
  await video.play();
  $("cam-view").hidden = false;
  $("cam-start").disabled = true;
  $("cam-stop").disabled = false;
  cam.running = true;
  webcamLoop(video);
}

function stopWebcam() {
  cam.running = false;
  if (cam.stream) cam.stream.getTracks().forEach((t) => t.stop());
  cam.stream = null;
  $("cam-start").disabled = false;
  $("cam-stop").disabled = true;
  $("cam-status").textContent = "stopped";
}

async function webcamLoop(video) {
  const canvas = document.createElement("canvas");
  const status = $("cam-status");
  let frames = 0;
  let since = performance.now();
  let latency = 0;
  while (cam.running) {
    const started = performance.now();
    if (!video.videoWidth) {
      await sleep(100);
      continue;
    }
    const scale = Math.min(1, FRAME_SIDE / Math.max(video.videoWidth, video.videoHeight));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
    const answer = await api("/v1/predict" + options(true),
                             { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" } });
    if (!cam.running) break;
    const now = performance.now();
    if (answer.ok) {
      const faces = answer.body.filter((r) => r.face_found !== false);
      follow(faces, now);
      drawBoxes($("cam-boxes"), faces, canvas.width, canvas.height, (r) => `face ${r.track}`);
      drawCharts(now);
      frames += 1;
      latency = now - started;
      if (now - since > 1000) {
        status.textContent = `${(frames * 1000 / (now - since)).toFixed(1)} frames/s, ${Math.round(latency)} ms a frame, ` +
          `${faces.length} face${faces.length === 1 ? "" : "s"}`;
        frames = 0;
        since = now;
      }
    } else {
      status.textContent = answer.body.error;
      if (answer.status === 401) stopWebcam();
      await sleep(answer.status === 503 ? 1000 : 500);
    }
    const wait = 1000 / FRAMES_PER_SECOND - (performance.now() - started);
    if (wait > 0) await sleep(wait);
  }
}

$("cam-start").addEventListener("click", startWebcam);
$("cam-stop").addEventListener("click", stopWebcam);
describeModel();
