// The demo page: the served models and four panels, each one REST task call.

import { ApiError, call, modelPath, postJson, setApiKey } from "./api.js";

const TOP_K = 5;
const MAX_SIDE = 256;          // photos are cropped to their centre: fast, and the detail shows
const LATENT_RANGE = 3;        // the VAE's prior is a standard normal: +-3 holds nearly all of it
const LATENT_STEP = 0.1;       // an arrow key's move on the pad
const MAX_SEED = Number.MAX_SAFE_INTEGER;  // what a JavaScript number holds exactly

const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

// -- errors -----------------------------------------------------------------------------------

function showError(section, error) {
  const box = $(".error", section);
  if (error instanceof ApiError) {
    const hint = error.status === 401 ? " (enter the API key at the top of the page)" : "";
    box.textContent = `${error.status} ${error.statusText}: ${error.message}${hint}`;
  } else {
    box.textContent = error.message;
  }
  box.hidden = false;
}

function clearError(section) {
  $(".error", section).hidden = true;
}

// Run one panel's work with its errors shown in the panel, never thrown into the console.
async function guarded(section, work) {
  clearError(section);
  section.setAttribute("aria-busy", "true");
  try {
    await work();
  } catch (error) {
    showError(section, error);
  } finally {
    section.setAttribute("aria-busy", "false");
  }
}

// -- images -----------------------------------------------------------------------------------

function showBlob(img, blob) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  return img.decode();
}

function canvasOf(width, height) {
  const canvas = element("canvas", { width, height });
  return [canvas, canvas.getContext("2d")];
}

function pngOf(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function bitmapOf(file) {
  try {
    return await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name}: the browser cannot read this file as an image`);
  }
}

// PNG and JPEG go to the server as they are; whatever else the browser reads goes as a PNG.
async function upload(file) {
  if (file.type === "image/png" || file.type === "image/jpeg") return file;
  const bitmap = await bitmapOf(file);
  const [canvas, context] = canvasOf(bitmap.width, bitmap.height);
  context.drawImage(bitmap, 0, 0);
  return pngOf(canvas);
}

// A drop zone: a <label class="drop"> around a file input, so a click picks a file too.
function onImage(section, handle) {
  const zone = $(".drop", section);
  const input = $("input[type=file]", zone);
  input.addEventListener("change", () => {
    if (input.files.length) handle(input.files[0]);
    input.value = "";  // the same file picked again is a new request
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) handle(file);
  });
}

// -- models -----------------------------------------------------------------------------------

const panels = [];

// A panel lists the ready models it can use in its <select>; without any, it says why.
function panel(id, accepts, what) {
  const section = $(`#${id}`);
  const select = $("select[name=model]", section);
  const entry = {
    section, accepts, models: new Map(),
    get model() {
      const model = entry.models.get(select.value);
      if (!model) throw new Error(`no ${what} to use (see Models)`);
      return model;
    },
    set(models, listed) {
      const previous = select.value;
      entry.models = new Map(models.map((m) => [m.name, m]));
      select.replaceChildren(...models.map((m) => element("option", { value: m.name,
                                                                      textContent: m.name })));
      if (entry.models.has(previous)) select.value = previous;
      section.classList.toggle("empty", models.length === 0);
      $(".note", section).textContent = !listed ? "The model list did not load (see Models)."
        : models.length ? "" : `This server serves no ${what}.`;
      select.dispatchEvent(new Event("change"));
    },
  };
  panels.push(entry);
  return entry;
}

async function loadModels() {
  const section = $("#models");
  const rows = $("tbody", section);
  rows.replaceChildren();
  let ready = null;
  await guarded(section, async () => {
    const { models } = await (await call("v1/models")).json();
    rows.replaceChildren(...models.map((m) => element("tr", {}, [
      element("td", { textContent: m.name }), element("td", { textContent: m.task_kind }),
      element("td", { textContent: m.versions.join(", ") }),
      element("td", { textContent: m.state, title: m.reason })])));
    ready = models.filter((m) => m.state === "READY");
  });
  for (const entry of panels) entry.set(ready?.filter(entry.accepts) ?? [], ready !== null);
}

// -- 1. classify ------------------------------------------------------------------------------

const classifier = panel("classify", (m) => m.task_kind === "classifier", "classifier");

function bar({ name, probability }) {
  const percent = (probability * 100).toFixed(1);
  const fill = element("span", { className: "fill" });
  fill.style.width = `${probability * 100}%`;
  const row = element("li", { className: "bar" }, [
    element("span", { className: "label", textContent: name }),
    element("span", { className: "track" }, [fill]),
    element("span", { className: "value", textContent: `${percent}%` })]);
  row.dataset.probability = String(probability);
  return row;
}

onImage(classifier.section, (file) => guarded(classifier.section, async () => {
  const model = classifier.model;
  const body = await upload(file);
  await showBlob($(".preview", classifier.section), body);
  const topK = Math.min(TOP_K, model.labels.length || model.num_classes || TOP_K);
  const answer = await (await call(`${modelPath(model.name, "classify")}?top_k=${topK}`, {
    method: "POST", body, type: body.type })).json();
  const [result] = answer.results;
  $(".bars", classifier.section).replaceChildren(...result.labels.map(bar));
  $(".note", classifier.section).textContent =
    `${file.name} by ${answer.model} v${answer.version}: ${result.conversion}`;
}));

// -- 2. super-resolution against bicubic ------------------------------------------------------

const upscaler = panel("upscale", (m) => m.task_kind === "super_resolution", "upscaler");

onImage(upscaler.section, (file) => guarded(upscaler.section, async () => {
  const model = upscaler.model;
  const bitmap = await bitmapOf(file);
  const width = Math.min(bitmap.width, MAX_SIDE);
  const height = Math.min(bitmap.height, MAX_SIDE);
  const [source, context] = canvasOf(width, height);
  context.drawImage(bitmap, (bitmap.width - width) >> 1, (bitmap.height - height) >> 1, width,
                    height, 0, 0, width, height);
  // Both sides start from the same pixels: the crop, sent as a PNG.
  const response = await call(modelPath(model.name, "superresolve"), {
    method: "POST", body: await pngOf(source), type: "image/png", accept: "image/png" });
  const scale = Number(response.headers.get("x-upscale-scale"));
  const upscaled = await response.blob();
  // Chromium resamples an upscale with high-quality smoothing by a bicubic (Mitchell) filter.
  const [bicubic, smooth] = canvasOf(width * scale, height * scale);
  smooth.imageSmoothingEnabled = true;
  smooth.imageSmoothingQuality = "high";
  smooth.drawImage(source, 0, 0, width * scale, height * scale);
  await Promise.all([showBlob($("img.bicubic", upscaler.section), await pngOf(bicubic)),
                     showBlob($("img.model", upscaler.section), upscaled)]);
  const crop = width < bitmap.width || height < bitmap.height
    ? `, its centre ${width}\u00d7${height}` : "";
  $(".note", upscaler.section).textContent =
    `${file.name}: ${bitmap.width}\u00d7${bitmap.height}${crop}, upscaled \u00d7${scale} to ` +
    `${width * scale}\u00d7${height * scale} (${response.headers.get("x-conversion")})`;
}));

// -- 3. generate ------------------------------------------------------------------------------

const generator = panel("generate", (m) => ["generator", "conditional_generator"]
  .includes(m.task_kind), "generator");
const generateForm = $("form", generator.section);

$("select[name=model]", generator.section).addEventListener("change", () => {
  const model = generator.models.get(generateForm.elements.model.value);
  const conditional = model?.task_kind === "conditional_generator";
  $(".class-field", generator.section).hidden = !conditional;
  if (!conditional) return;
  const names = model.labels.length ? model.labels
    : Array.from({ length: model.num_classes }, (_, i) => String(i));
  generateForm.elements.class_label.replaceChildren(...names.map((name, i) =>
    element("option", { value: String(i), textContent: `${i}: ${name}` })));
});

$(".random", generator.section).addEventListener("click", () => {
  generateForm.elements.seed.value = String(Math.floor(Math.random() * 2 ** 32));
});

generateForm.addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(generator.section, async () => {
    const model = generator.model;
    const fields = generateForm.elements;
    const seed = Number(fields.seed.value);
    if (!/^\d+$/.test(fields.seed.value) || seed > MAX_SEED) {
      throw new Error(`seed: expected a whole number 0..${MAX_SEED} (what the page can send ` +
                      `exactly), got '${fields.seed.value}'`);
    }
    const request = { count: Number(fields.count.value), seed };
    if (model.task_kind === "conditional_generator") {
      request.class_label = Number(fields.class_label.value);
    }
    const answer = await (await postJson(modelPath(model.name, "generate"), request)).json();
    $(".grid", generator.section).replaceChildren(...answer.images.map((image, i) =>
      element("img", { src: `data:image/png;base64,${image.png}`,
                       alt: `image ${i + 1} of seed ${seed}` })));
    $(".note", generator.section).textContent =
      `${answer.images.length} images by ${answer.model} v${answer.version}, seed ${seed}`;
  });
});

// -- 4. the latent walk -----------------------------------------------------------------------

const decoder = panel("latent", (m) => ["generator", "decoder"].includes(m.task_kind) &&
  m.latent_size === 2, "decoder with a 2-D latent space");
const pad = $(".pad", decoder.section);
const decoded = $("img.decoded", decoder.section);
let wanted = null;   // the point last asked for
let shown = "";      // the model and point the image shows
let decoding = false;

const rounded = (value) => Math.round(
  Math.max(-LATENT_RANGE, Math.min(LATENT_RANGE, value)) * 100) / 100;

function moveTo(point) {
  wanted = point.map(rounded);
  const marker = $(".marker", pad);
  marker.style.left = `${(wanted[0] / LATENT_RANGE + 1) * 50}%`;
  marker.style.top = `${(1 - wanted[1] / LATENT_RANGE) * 50}%`;
  decodeWanted();
}

// One request at a time; while it runs, a drag (or another model) only changes what is wanted,
// which is decoded next.
async function decodeWanted() {
  if (decoding || !wanted) return;
  decoding = true;
  await guarded(decoder.section, async () => {
    for (;;) {
      const point = wanted;
      const asked = JSON.stringify([decoder.model.name, point]);
      if (asked === shown) return;
      const response = await postJson(modelPath(decoder.model.name, "decode"),
                                      { latents: [point] }, "image/png");
      await showBlob(decoded, await response.blob());
      shown = asked;
      decoded.dataset.latent = JSON.stringify(point);
      $(".point", decoder.section).textContent =
        `z = (${point.map((v) => v.toFixed(2)).join(", ")})`;
    }
  });
  decoding = false;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [((event.clientX - box.left) / box.width * 2 - 1) * LATENT_RANGE,
          (1 - (event.clientY - box.top) / box.height * 2) * LATENT_RANGE];
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  moveTo(padPoint(event));
});
pad.addEventListener("pointermove", (event) => {
  if (pad.hasPointerCapture(event.pointerId)) moveTo(padPoint(event));
});
pad.addEventListener("keydown", (event) => {
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
  const move = moves[event.key];
  if (!move) return;
  event.preventDefault();
  const [x, y] = wanted ?? [0, 0];
  moveTo([x + move[0] * LATENT_STEP, y + move[1] * LATENT_STEP]);
});
$("select[name=model]", decoder.section).addEventListener("change", decodeWanted);

// -- start ------------------------------------------------------------------------------------

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("#api-key").value);
  loadModels();
});
loadModels();
