// The pixelforge page: uploads files into this visit's folder, starts jobs and polls them, shows the results.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};
let visit = null, limits = {}, catalog = null;
const images = [];  // {file, id} of the upscale tab, uploaded when added

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.error || `${response.status} ${response.statusText}`);
  return body;
}
const post = (path, data) => api(`/api/v/${visit}/${path}`, {
  method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});

async function upload(file) {
  if (file.size > limits.max_upload_bytes)
    throw new Error(`${file.name}: larger than this server's upload limit of ${limits.max_upload_bytes / 2 ** 20} MB`);
  const query = new URLSearchParams({name: file.name});
  return (await api(`/api/v/${visit}/upload?${query}`, {method: "PUT", body: file})).id;
}

async function poll(job, onUpdate) {
  for (;;) {
    const state = await api(`/api/v/${visit}/jobs/${job}`);
    onUpdate(state);
    if (state.state === "done" || state.state === "failed") return state;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// ---------------------------------------------------------------------------------------------------------- tabs
function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", on);
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !on;
  }
}

// ------------------------------------------------------------------------------------------------------- upscale
function fillModels() {
  const select = $("#model"), withCheckpoint = $("#checkpoint").files.length > 0;
  const previous = select.value;
  select.replaceChildren();
  if (withCheckpoint) select.append(el("option", {value: "", textContent: "named in the checkpoint"}));
  const imageModels = catalog.models.filter((m) => m.kind === "image" && (withCheckpoint || m.has_weights));
  for (const m of imageModels)
    select.append(el("option", {value: m.name,
                                textContent: `${m.name} (${m.task}${m.has_weights ? "" : ", needs the checkpoint"})`}));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function addImages(files) {
  for (const file of files) {
    const entry = {file, id: null, error: null, item: el("li", {textContent: file.name})};
    entry.ready = upload(file).then((id) => { entry.id = id; }, (err) => {
      entry.error = err.message;
      entry.item.append(el("span", {className: "error", textContent: ` ${err.message}`}));
    });
    images.push(entry);
    $("#file-list").append(entry.item);
  }
}

function comparer(item) {
  // before/after at full output resolution: the input scaled to the output size under a clip, a split slider, zoom
  const [w, h] = item.size_out;
  const stage = el("div", {className: "stage"});
  const after = el("img", {className: "after", src: item.after, alt: `${item.name} result`});
  const before = el("img", {className: "before", src: item.before, alt: `${item.name} input`});
  const line = el("div", {className: "split-line"});
  stage.append(after, before, line);
  const viewport = el("div", {className: "viewport"}, stage);
  const split = el("input", {type: "range", min: 0, max: 100, value: 50, className: "split", title: "before | after"});
  let zoom = "fit";
  const layout = () => {
    const z = zoom === "fit" ? Math.min(1, (viewport.clientWidth || w) / w) : Number(zoom);
    stage.style.width = `${w * z}px`;
    stage.style.height = `${h * z}px`;
    stage.classList.toggle("pixelated", z >= 2);
  };
  const setSplit = () => {
    before.style.clipPath = `inset(0 ${100 - split.value}% 0 0)`;
    line.style.left = `${split.value}%`;
  };
  split.addEventListener("input", setSplit);
  stage.addEventListener("pointerdown", (e) => {
    const move = (ev) => {
      const r = stage.getBoundingClientRect();
      split.value = Math.max(0, Math.min(100, (100 * (ev.clientX - r.left)) / r.width));
      setSplit();
    };
    move(e);
    stage.setPointerCapture(e.pointerId);
    stage.onpointermove = (ev) => ev.buttons && move(ev);
  });
  const zooms = el("span", {className: "zooms"});
  for (const [label, value] of [["Fit", "fit"], ["100%", "1"], ["200%", "2"], ["400%", "4"], ["800%", "8"]]) {
    const button = el("button", {textContent: label, className: "zoom"});
    button.dataset.zoom = value;
    button.addEventListener("click", () => { zoom = value; layout(); });
    zooms.append(button);
  }
  setSplit();
  requestAnimationFrame(layout);
  const download = el("a", {className: "download button", href: `${item.after}?download=1`, download: item.download,
                            textContent: `Download ${item.download}`});
  return el("div", {className: "result"},
    el("div", {className: "result-head"},
       el("strong", {textContent: item.name}),
       el("span", {className: "muted", textContent: ` ${item.size_in.join("×")} → ${item.size_out.join("×")} `}),
       download),
    el("div", {className: "tools"}, "before ", split, " after ", zooms), viewport);
}

async function runUpscale() {
  const status = $("#status"), progress = $("#progress"), results = $("#results");
  $("#run").disabled = true;
  $("#zip").hidden = true;
  $("#notes").replaceChildren();
  results.replaceChildren();
  try {
    status.textContent = "uploading…";
    await Promise.all(images.map((e) => e.ready));
    for (const e of images.filter((e) => e.error))
      results.append(el("div", {className: "result error", textContent: e.error}));
    const inputs = images.filter((e) => e.id).map((e) => e.id);
    if (!inputs.length) throw new Error("add at least one image");
    let weights = null;
    if ($("#checkpoint").files.length) {
      status.textContent = "uploading the checkpoint…";
      weights = await upload($("#checkpoint").files[0]);
    }
    const {job} = await post("upscale", {
      inputs, weights, model: $("#model").value, tile: $("#tile").value, tile_overlap: $("#overlap").value,
      precision: $("#precision").value, outscale: $("#outscale").value});
    let shown = 0;
    const final = await poll(job, (s) => {
      status.textContent = s.message || s.state;
      const p = s.progress;
      progress.hidden = !p;
      if (p) {
        const tiles = p.tiles ? `: tile ${p.tile} of ${p.tiles}` : "";
        status.textContent = `${s.message} — image ${p.image} of ${p.images} (${p.name})${tiles}`;
        progress.value = (p.image - 1 + (p.tiles ? p.tile / p.tiles : 0)) / p.images;
      }
      for (const item of s.items.slice(shown))
        results.append(item.error ? el("div", {className: "result error", textContent: item.error}) : comparer(item));
      shown = s.items.length;
      $("#notes").replaceChildren(...s.notes.map((n) => el("div", {className: "note", textContent: n})));
    });
    status.textContent = final.message;
    status.classList.toggle("error", final.state === "failed");
    if (final.zip) Object.assign($("#zip"), {href: `${final.zip}?download=1`, hidden: false});
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("error");
  } finally {
    progress.hidden = true;
    $("#run").disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------------ generate
function family() { return document.querySelector("input[name=family]:checked").value; }

function fillGenerators() {
  const select = $("#gen-model");
  select.replaceChildren();
  for (const m of catalog.models.filter((m) => m.kind === family()))
    select.append(el("option", {value: m.name, textContent: `${m.name}${m.has_weights ? "" : " (upload weights)"}`}));
  for (const node of document.querySelectorAll(".var-only")) node.hidden = family() !== "var";
  for (const node of document.querySelectorAll(".diffusion-only")) node.hidden = family() === "var";
}

async function runGenerate() {
  const status = $("#gen-status");
  $("#generate").disabled = true;
  status.classList.remove("error");
  $("#grid").hidden = true;
  $("#gen-zip").hidden = true;
  $("#samples").replaceChildren();
  try {
    status.textContent = "uploading…";
    const weights = await Promise.all([...$("#gen-weights").files].map(upload));
    const vae = $("#gen-vae").files.length && family() === "var" ? await upload($("#gen-vae").files[0]) : null;
    const {job} = await post("generate", {
      model: $("#gen-model").value, weights, vae_weights: vae, classes: $("#classes").value, n: $("#count").value,
      seed: $("#seed").value, precision: $("#gen-precision").value, cfg: $("#cfg").value, top_k: $("#top-k").value,
      top_p: $("#top-p").value, task: $("#task").value, scheduler: $("#sampler").value, steps: $("#steps").value,
      guidance: $("#guidance").value});
    const final = await poll(job, (s) => { status.textContent = s.message || s.state; });
    status.textContent = final.message;
    if (final.state === "failed") throw new Error(final.message);
    Object.assign($("#grid"), {src: final.grid, hidden: false});
    Object.assign($("#gen-zip"), {href: `${final.zip}?download=1`, hidden: false});
    for (const item of final.items) {
      const link = el("a", {className: "sample-download", href: `${item.url}?download=1`, download: item.name},
                      el("img", {src: item.url, alt: item.name}), el("span", {textContent: item.name}));
      $("#samples").append(el("li", {}, link));
    }
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("error");
  } finally {
    $("#generate").disabled = false;
  }
}

// -------------------------------------------------------------------------------------------------------- models
function fillModelTable() {
  const body = $("#models-table tbody");
  for (const m of catalog.models) {
    const params = m.params >= 1e6 ? `${(m.params / 1e6).toFixed(1)} M` : `${(m.params / 1e3).toFixed(0)} k`;
    body.append(el("tr", {}, ...[m.name, m.task, params, m.weights, m.scores.join("; ")]
      .map((text) => el("td", {textContent: text}))));
  }
}

// ---------------------------------------------------------------------------------------------------------- init
async function init() {
  for (const tab of document.querySelectorAll("[role=tab]"))
    tab.addEventListener("click", () => showTab(tab.id.slice(4)));
  ({visit, ...limits} = await api("/api/visit", {method: "POST"}));
  addEventListener("pagehide", () => navigator.sendBeacon(`/api/v/${visit}/end`));
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { addImages(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addImages(e.dataTransfer.files);
  });
  $("#status").textContent = "loading the model list…";
  catalog = await api("/api/models");
  $("#status").textContent = "";
  $("#device").textContent = `device: ${catalog.device}`;
  const up = catalog.upscale, gen = catalog.generate;
  $("#tile").value = up.tile;
  for (const [select, choices, value] of [[$("#precision"), up.precisions, up.precision],
                                          [$("#gen-precision"), gen.precisions, gen.precision],
                                          [$("#sampler"), gen.schedulers, gen.scheduler]]) {
    select.append(...choices.map((c) => el("option", {value: c, textContent: c})));
    select.value = value;
  }
  for (const [id, key] of [["#cfg", "cfg"], ["#top-k", "top_k"], ["#top-p", "top_p"], ["#steps", "steps"],
                           ["#guidance", "guidance"], ["#seed", "seed"]]) $(id).value = gen[key];
  fillModels();
  fillGenerators();
  fillModelTable();
  $("#checkpoint").addEventListener("change", fillModels);
  for (const radio of document.querySelectorAll("input[name=family]")) radio.addEventListener("change", fillGenerators);
  $("#run").addEventListener("click", runUpscale);
  $("#clear").addEventListener("click", () => { images.length = 0; $("#file-list").replaceChildren(); });
  $("#generate").addEventListener("click", runGenerate);
  document.body.dataset.ready = "1";
}

init().catch((err) => { $("#status").textContent = err.message; $("#status").classList.add("error"); });
