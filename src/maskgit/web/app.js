// MaskGIT demo page: mask painting, job submission and polling, step viewer.
// Plain browser JavaScript, no dependencies; everything is served by the local app.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const CANVAS = 384;

  const state = {
    imageSize: null, // the model's resolution, from /api/health
    imageBlob: null, // the picture to send (upload or sample)
    imageName: "image.png",
    imageWidth: 0, // the picture's own size: the mask is sent at it, the result comes back at it
    imageHeight: 0,
    view: { x: 0, y: 0, w: CANVAS, h: CANVAS }, // where the picture lies on the canvas
    tool: "brush",
    drawing: false,
    last: null,
    rectStart: null,
    snapshot: null,
    busy: false,
    job: null, // the last finished job (its picture URLs replaced by blob: URLs)
    jobId: null, // the job being followed (Cancel stops it)
    pictureUrls: [], // blob: URLs of the shown job's pictures (revoked for the next job)
    selected: 0, // which image of the job the viewer shows
    playTimer: null,
    defaultsShown: false, // the decoding controls start at the server's defaults once
  };

  const imageCanvas = $("image-canvas");
  const maskCanvas = $("mask-canvas");
  const imageCtx = imageCanvas.getContext("2d");
  const maskCtx = maskCanvas.getContext("2d", { willReadFrequently: true });
  // The mask is painted with a translucent white / magenta hatch (every painted pixel has
  // alpha > 0, which is what exportMask reads), so it stands out on any picture.
  const MASK_COLOR = (() => {
    const tile = document.createElement("canvas");
    tile.width = tile.height = 12;
    const t = tile.getContext("2d");
    t.fillStyle = "rgba(255, 255, 255, 0.7)";
    t.fillRect(0, 0, 12, 12);
    t.strokeStyle = "rgba(214, 0, 110, 0.9)";
    t.lineWidth = 3;
    t.beginPath();
    for (const o of [-12, 0, 12]) {
      t.moveTo(o, 12);
      t.lineTo(o + 12, 0);
    }
    t.stroke();
    return maskCtx.createPattern(tile, "repeat");
  })();

  // ------------------------------------------------------------------ status

  function setStatus(text, kind = "info") {
    const box = $("status");
    box.textContent = text;
    box.className = `status ${kind}`;
  }

  function setProgress(done, total) {
    const bar = $("progress");
    if (total > 0) {
      bar.hidden = false;
      bar.max = total;
      bar.value = done;
    } else {
      bar.hidden = true;
    }
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (err) {
      return { error: `HTTP ${response.status} ${response.statusText}` };
    }
  }

  // ------------------------------------------------------------------ model health

  async function pollHealth() {
    let info;
    try {
      info = await readJson(await fetch("/api/health", { cache: "no-store" }));
    } catch (err) {
      badge("error", "server unreachable");
      setTimeout(pollHealth, 2000);
      return;
    }
    applyDefaults(info.decoding);
    if (info.status === "ready") {
      state.imageSize = info.image_size;
      $("model-res").textContent = `${info.image_size}×${info.image_size}`;
      badge("ready", `model ready · ${info.image_size}px · ${info.device || ""}`);
      $("health-detail").textContent =
        `${info.token_grid}×${info.token_grid} tokens per image.`;
      if ($("status").dataset.initial !== "done") {
        $("status").dataset.initial = "done";
        setStatus(state.imageBlob ? "Paint a mask, then Run." :
          "Model ready. Upload an image (or pick a sample), paint a mask, then Run.");
      }
    } else if (info.status === "loading") {
      badge("loading", "model: loading…");
      setStatus(info.message || "model is loading, try again in a moment");
      setTimeout(pollHealth, 1000);
    } else {
      badge("error", "model: failed to load");
      setStatus(`The model could not be loaded: ${info.error}`, "error");
      $("status").dataset.initial = "done";
    }
  }

  function badge(kind, text) {
    const el = $("model-badge");
    el.className = `badge ${kind}`;
    el.textContent = text;
  }

  // ------------------------------------------------------------------ tabs

  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) {
        const active = other === tab;
        other.classList.toggle("active", active);
        other.setAttribute("aria-selected", String(active));
        $(other.dataset.panel).hidden = !active;
      }
    });
  }

  // ------------------------------------------------------------------ image source

  function showImage(blob, name) {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => {
      imageCtx.clearRect(0, 0, CANVAS, CANVAS);
      // small images (emoji) stay crisp; photos are smoothed
      imageCtx.imageSmoothingEnabled = img.naturalWidth >= CANVAS || img.naturalHeight >= CANVAS;
      imageCtx.fillStyle = "#fff";
      imageCtx.fillRect(0, 0, CANVAS, CANVAS);
      // aspect ratio kept (letterboxed): the result comes back at the picture's own size
      const scale = CANVAS / Math.max(img.naturalWidth, img.naturalHeight);
      const w = Math.max(1, Math.round(img.naturalWidth * scale));
      const h = Math.max(1, Math.round(img.naturalHeight * scale));
      state.view = { x: Math.floor((CANVAS - w) / 2), y: Math.floor((CANVAS - h) / 2), w, h };
      imageCtx.drawImage(img, state.view.x, state.view.y, w, h);
      URL.revokeObjectURL(url);
      state.imageBlob = blob;
      state.imageName = name;
      state.imageWidth = img.naturalWidth;
      state.imageHeight = img.naturalHeight;
      $("canvas-empty").hidden = true;
      setStatus(`Loaded ${name} (${img.naturalWidth}×${img.naturalHeight}). Paint a mask, then Run.`);
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      setStatus(`${name}: the browser cannot read this file as an image`, "error");
    };
    img.src = url;
  }

  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) showImage(file, file.name);
  });

  async function loadSamples() {
    let samples = [];
    try {
      samples = await readJson(await fetch("/api/samples"));
    } catch (err) {
      return;
    }
    if (!Array.isArray(samples) || samples.length === 0) return;
    const box = $("samples");
    box.textContent = "";
    for (const sample of samples) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sample";
      button.title = sample.name;
      const thumb = document.createElement("img");
      thumb.src = sample.url;
      thumb.alt = sample.name;
      button.appendChild(thumb);
      button.addEventListener("click", async () => {
        const response = await fetch(sample.url);
        if (!response.ok) {
          setStatus(`could not load sample ${sample.name}`, "error");
          return;
        }
        showImage(await response.blob(), sample.name);
      });
      box.appendChild(button);
    }
  }

  // ------------------------------------------------------------------ mask painting

  for (const radio of document.querySelectorAll("input[name=tool]")) {
    radio.addEventListener("change", () => { state.tool = radio.value; });
  }
  $("brush-size").addEventListener("input", () => {
    $("brush-size-out").textContent = $("brush-size").value;
  });
  $("clear-mask").addEventListener("click", () => maskCtx.clearRect(0, 0, CANVAS, CANVAS));

  function canvasPoint(event) {
    const rect = maskCanvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * CANVAS) / rect.width,
      y: ((event.clientY - rect.top) * CANVAS) / rect.height,
    };
  }

  function stroke(from, to) {
    const size = Number($("brush-size").value);
    maskCtx.save();
    maskCtx.globalCompositeOperation = state.tool === "eraser" ? "destination-out" : "source-over";
    maskCtx.strokeStyle = MASK_COLOR;
    maskCtx.fillStyle = MASK_COLOR;
    maskCtx.lineWidth = size;
    maskCtx.lineCap = "round";
    maskCtx.lineJoin = "round";
    maskCtx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      maskCtx.arc(to.x, to.y, size / 2, 0, 2 * Math.PI);
      maskCtx.fill();
    } else {
      maskCtx.moveTo(from.x, from.y);
      maskCtx.lineTo(to.x, to.y);
      maskCtx.stroke();
    }
    maskCtx.restore();
  }

  function drawRect(a, b) {
    maskCtx.putImageData(state.snapshot, 0, 0);
    maskCtx.fillStyle = MASK_COLOR;
    const x = Math.min(a.x, b.x), y = Math.min(a.y, b.y);
    maskCtx.fillRect(x, y, Math.abs(a.x - b.x), Math.abs(a.y - b.y));
  }

  maskCanvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    maskCanvas.setPointerCapture(event.pointerId);
    const p = canvasPoint(event);
    state.drawing = true;
    if (state.tool === "rect") {
      state.rectStart = p;
      state.snapshot = maskCtx.getImageData(0, 0, CANVAS, CANVAS);
    } else {
      stroke(p, p);
      state.last = p;
    }
  });
  maskCanvas.addEventListener("pointermove", (event) => {
    if (!state.drawing) return;
    const p = canvasPoint(event);
    if (state.tool === "rect") {
      drawRect(state.rectStart, p);
    } else {
      stroke(state.last, p);
      state.last = p;
    }
  });
  const endDraw = (event) => {
    if (!state.drawing) return;
    if (state.tool === "rect" && event.type === "pointerup") drawRect(state.rectStart, canvasPoint(event));
    state.drawing = false;
    state.snapshot = null;
  };
  maskCanvas.addEventListener("pointerup", endDraw);
  maskCanvas.addEventListener("pointercancel", endDraw);

  // The mask at the picture's own size (the server reads it there and the result comes back
  // at that size): an image pixel is white (repaint) when any canvas pixel over it is painted.
  // Returns { canvas (W x H, black / white), painted (count) }.
  function exportMask() {
    const width = state.imageWidth || CANVAS, height = state.imageHeight || CANVAS;
    const view = state.imageWidth ? state.view : { x: 0, y: 0, w: CANVAS, h: CANVAS };
    const data = maskCtx.getImageData(0, 0, CANVAS, CANVAS).data;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const octx = out.getContext("2d");
    const pixels = octx.createImageData(width, height);
    const span = (i, n, offset, extent) => [
      offset + Math.floor((i * extent) / n),
      Math.max(offset + Math.floor((i * extent) / n) + 1, offset + Math.ceil(((i + 1) * extent) / n)),
    ];
    const columns = new Uint8Array(CANVAS); // per canvas column: painted in this row band
    let painted = 0;
    for (let my = 0; my < height; my++) {
      const [y0, y1] = span(my, height, view.y, view.h);
      columns.fill(0);
      for (let y = y0; y < y1; y++) {
        for (let x = view.x; x < view.x + view.w; x++) {
          if (data[(y * CANVAS + x) * 4 + 3] > 0) columns[x] = 1;
        }
      }
      for (let mx = 0; mx < width; mx++) {
        const [x0, x1] = span(mx, width, view.x, view.w);
        let on = false;
        for (let x = x0; x < x1; x++) {
          if (columns[x]) { on = true; break; }
        }
        const i = (my * width + mx) * 4;
        const v = on ? 255 : 0;
        pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = v;
        pixels.data[i + 3] = 255;
        painted += on ? 1 : 0;
      }
    }
    octx.putImageData(pixels, 0, 0);
    return { canvas: out, painted };
  }
  window.maskgitExportMask = () => exportMask().canvas.toDataURL("image/png"); // for tests

  const toBlob = (canvas) => new Promise((resolve) => canvas.toBlob(resolve, "image/png"));

  // ------------------------------------------------------------------ jobs

  // Every decoding control carries data-option="<DecodingOptions field>": all are sent.
  function decodingFields(form) {
    for (const control of document.querySelectorAll("[data-option]")) {
      form.append(control.dataset.option, control.value);
    }
  }

  // Start the controls at the server's defaults (DEFAULT_DECODING, the model card's best).
  function applyDefaults(defaults) {
    if (!defaults || state.defaultsShown) return;
    state.defaultsShown = true;
    for (const control of document.querySelectorAll("[data-option]")) {
      const value = defaults[control.dataset.option];
      control.value = value === null || value === undefined ? "" : String(value);
    }
    const text = Object.entries(defaults)
      .map(([name, value]) => `${name.replace("_", " ")} ${value === null ? "–" : value}`)
      .join(", ");
    $("decoding-defaults").textContent = `Defaults (model card): ${text}.`;
  }

  $("random-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 1e6));
  });

  async function submit(url, form) {
    if (state.busy) {
      setStatus("a job of this page is still running; wait for it", "warn");
      return;
    }
    state.busy = true;
    setButtons(false);
    try {
      const response = await fetch(url, { method: "POST", body: form });
      const answer = await readJson(response);
      if (!response.ok) {
        setStatus(answer.error || `HTTP ${response.status}`, response.status === 503 ? "warn" : "error");
        return;
      }
      const notes = answer.notices && answer.notices.length ? ` (${answer.notices.join("; ")})` : "";
      setStatus(`job queued${notes}`);
      await follow(answer.job_id);
    } catch (err) {
      setStatus(`request failed: ${err.message || err}`, "error");
    } finally {
      state.busy = false;
      setButtons(true);
      setProgress(0, 0);
    }
  }

  function setButtons(enabled) {
    $("run-inpaint").disabled = !enabled;
    $("run-outpaint").disabled = !enabled;
    $("run-generate").disabled = !enabled;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function follow(jobId) {
    state.jobId = jobId;
    $("cancel-job").hidden = false;
    try {
      await followJob(jobId);
    } finally {
      state.jobId = null;
      $("cancel-job").hidden = true;
    }
  }

  async function followJob(jobId) {
    for (;;) {
      const response = await fetch(`/api/jobs/${jobId}`, { cache: "no-store" });
      const job = await readJson(response);
      if (!response.ok) {
        setStatus(job.error || `HTTP ${response.status}`, "error");
        return;
      }
      if (job.status === "queued") {
        setStatus(`queued: ${job.position} job(s) ahead`);
        setProgress(0, 0);
      } else if (job.status === "running") {
        setStatus(`running: ${job.phase}`);
        setProgress(job.progress.done, job.progress.total);
      } else if (job.status === "error") {
        setStatus(`the job failed: ${job.error}`, "error");
        return;
      } else if (job.status === "cancelled") {
        setStatus(`the job was cancelled (${job.error})`, "warn");
        return;
      } else if (job.status === "done") {
        const notes = job.notices.length ? ` Notes: ${job.notices.join("; ")}.` : "";
        setStatus("loading the result pictures…");
        await loadPictures(job.result);
        setStatus(`done in ${job.seconds.toFixed(2)} s: ${job.result.images.length} image(s), ` +
          `${job.result.images[0].steps.length} steps.${notes}`, "ok");
        showJob(job);
        return;
      }
      await sleep(250);
    }
  }

  $("cancel-job").addEventListener("click", async () => {
    if (!state.jobId) return;
    const response = await fetch(`/api/jobs/${state.jobId}`, { method: "DELETE" });
    if (!response.ok) setStatus((await readJson(response)).error || `HTTP ${response.status}`, "error");
  });

  // A finished job's pictures are PNGs at their own URLs, kept a while on the server: each is
  // fetched once into a blob: URL, so the viewer and the download never ask for it again.
  async function loadPictures(result) {
    for (const url of state.pictureUrls) URL.revokeObjectURL(url);
    state.pictureUrls = [];
    const owners = [result];
    for (const entry of result.images) owners.push(entry, ...entry.steps);
    const keys = ["input", "mask", "image", "token_mask", "token_map"];
    await Promise.all(owners.flatMap((owner) => keys.filter((key) => owner[key]).map(async (key) => {
      const response = await fetch(owner[key], { cache: "no-store" });
      if (!response.ok) {
        throw new Error((await readJson(response)).error || `HTTP ${response.status}`);
      }
      owner[key] = URL.createObjectURL(await response.blob());
      state.pictureUrls.push(owner[key]);
    })));
  }

  $("run-inpaint").addEventListener("click", async () => {
    if (!state.imageBlob) {
      setStatus("upload an image or pick a sample first", "error");
      return;
    }
    const mask = exportMask();
    if (mask.painted === 0) {
      setStatus("the mask is empty: paint the area to repaint", "error");
      return;
    }
    const form = new FormData();
    form.append("image", state.imageBlob, state.imageName);
    form.append("mask", await toBlob(mask.canvas), "mask.png");
    decodingFields(form);
    await submit("/api/inpaint", form);
  });

  $("outpaint-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) showImage(file, file.name);
  });

  $("run-outpaint").addEventListener("click", async () => {
    if (!state.imageBlob) {
      setStatus("upload an image or pick a sample first", "error");
      return;
    }
    const form = new FormData();
    form.append("image", state.imageBlob, state.imageName);
    form.append("pad", $("outpaint-pad").value);
    decodingFields(form);
    await submit("/api/outpaint", form);
  });

  $("run-generate").addEventListener("click", async () => {
    const form = new FormData();
    form.append("n", $("gen-n").value);
    decodingFields(form);
    await submit("/api/generate", form);
  });

  // ------------------------------------------------------------------ results

  function showJob(job) {
    stopPlay();
    state.job = job;
    state.selected = 0;
    const section = $("results");
    section.hidden = false;
    section.dataset.jobId = job.id;
    section.dataset.kind = job.kind;
    $("notices").textContent = job.notices.join(" · ");
    const gallery = $("gallery");
    gallery.textContent = "";
    if (job.result.images.length > 1) {
      job.result.images.forEach((entry, i) => {
        const img = document.createElement("img");
        img.src = entry.image;
        img.className = "pixel thumb" + (i === 0 ? " selected" : "");
        img.alt = `image ${i + 1}`;
        img.addEventListener("click", () => select(i));
        gallery.appendChild(img);
      });
    }
    select(0);
    section.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  function select(index) {
    state.selected = index;
    const entry = state.job.result.images[index];
    [...$("gallery").children].forEach((el, i) => el.classList.toggle("selected", i === index));
    $("result-img").src = entry.image;
    $("result-img").dataset.jobId = state.job.id;
    $("result-size").textContent = `${entry.width}×${entry.height} px`;
    const link = $("download");
    link.href = entry.image;
    link.download = `maskgit-${state.job.kind}-${state.job.params.seed}-${index + 1}.png`;
    const strip = $("strip");
    strip.textContent = "";
    entry.steps.forEach((frame, i) => {
      const fig = document.createElement("figure");
      fig.className = "step-thumb";
      const img = document.createElement("img");
      img.src = frame.image;
      img.className = "pixel";
      img.alt = `step ${frame.step}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `${frame.step} · ${frame.unknown} left`;
      fig.append(img, cap);
      fig.addEventListener("click", () => showStep(i + 1));
      strip.appendChild(fig);
    });
    const slider = $("step-slider");
    slider.max = String(entry.steps.length);
    showStep(entry.steps.length);
  }

  // step 0 = before decoding (the input and the starting token mask), k = after step k
  function showStep(k) {
    const entry = state.job.result.images[state.selected];
    $("step-slider").value = String(k);
    $("step-out").textContent = `${k} / ${entry.steps.length}`;
    if (k === 0) {
      $("step-img").src = state.job.result.input || entry.steps[0].image;
      $("step-mask").src = entry.token_map;
      $("step-caption").textContent = state.job.result.input ? "input" : "start";
    } else {
      const frame = entry.steps[k - 1];
      $("step-img").src = frame.image;
      $("step-mask").src = frame.token_map;
      $("step-caption").textContent =
        `prediction at step ${frame.step}: ${frame.decoded} fixed, ${frame.unknown} still masked`;
    }
    [...$("strip").children].forEach((el, i) => el.classList.toggle("selected", i === k - 1));
  }

  $("step-slider").addEventListener("input", () => {
    stopPlay();
    showStep(Number($("step-slider").value));
  });

  function stopPlay() {
    if (state.playTimer) clearInterval(state.playTimer);
    state.playTimer = null;
    $("play").textContent = "▶ Play";
  }

  $("play").addEventListener("click", () => {
    if (!state.job) return;
    if (state.playTimer) {
      stopPlay();
      return;
    }
    const total = state.job.result.images[state.selected].steps.length;
    let k = 0;
    showStep(k);
    $("play").textContent = "■ Stop";
    state.playTimer = setInterval(() => {
      k += 1;
      if (k > total) {
        stopPlay();
        return;
      }
      showStep(k);
    }, 400);
  });

  // ------------------------------------------------------------------ start

  imageCtx.fillStyle = "#eef0f3";
  imageCtx.fillRect(0, 0, CANVAS, CANVAS);
  pollHealth();
  loadSamples();
})();
