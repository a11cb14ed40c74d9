"""The page of `mvq explore`: HTML, its own CSS and JS, no external resources (works offline)."""

STYLE = """
:root { --ink: #1d2330; --soft: #5b6475; --line: #d5d9e0; --panel: #f6f7f9; --accent: #2456a6;
        --edited: #d9822b; --heat: rgb(115, 0, 13); }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; color: var(--ink); margin: 0; background: #fff; }
header { display: flex; align-items: baseline; gap: 1.5em; padding: 8px 16px;
         border-bottom: 1px solid var(--line); background: var(--panel); flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0; }
header p { margin: 0; color: var(--soft); }
kbd { border: 1px solid var(--line); border-radius: 3px; padding: 0 4px; background: #fff;
      font: 12px monospace; }
main { display: grid; grid-template-columns: 372px 1fr; gap: 12px; padding: 12px 16px; }
section { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
h2 { font-size: 15px; margin: 0 0 6px; }
#editor h2 { margin-top: 12px; }
.row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin-bottom: 8px; }
input[type=number] { width: 4.5em; }
button, input, select { font: inherit; }
button { border: 1px solid var(--line); border-radius: 4px; background: #fff; cursor: pointer;
         padding: 2px 8px; color: var(--ink); }
button:hover { border-color: var(--accent); }
:focus-visible, button:focus { outline: 3px solid var(--accent); outline-offset: 1px; }
figure { margin: 0; text-align: center; font-size: 12px; color: var(--soft); }
img { image-rendering: pixelated; display: block; background: #eee; }
.big img { width: 128px; height: 128px; border: 1px solid var(--line); }
.bits { display: grid; grid-template-columns: repeat(8, 1fr); gap: 3px; margin-bottom: 4px; }
.token { font-size: 12px; color: var(--soft); margin: 4px 0 2px; }
.bit { padding: 2px 0; font: 12px monospace; position: relative; }
.bit[aria-pressed="true"] { background: var(--ink); color: #fff; border-color: var(--ink); }
.edited { box-shadow: inset 0 0 0 2px var(--edited); }
.bit.edited::after, .flip.edited .name::after { content: ""; position: absolute; top: 2px;
  right: 2px; width: 7px; height: 7px; border-radius: 50%; background: var(--edited); }
.legend { color: var(--soft); font-size: 12px; margin: 0 0 8px; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: -2px;
          border: 1px solid var(--line); }
.ramp { display: inline-block; width: 70px; height: 10px; vertical-align: -1px;
        background: linear-gradient(to right, #fff, var(--heat)); border: 1px solid var(--line); }
.dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%;
       background: var(--edited); }
#flips { list-style: none; padding: 0; margin: 0; display: grid; gap: 8px;
         grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
.flip { width: 100%; padding: 4px; text-align: left; position: relative; }
.flip .name { display: block; font: 12px monospace; position: relative; padding-right: 12px; }
.flip .pair { display: flex; gap: 4px; margin: 3px 0; }
.flip img { width: 64px; height: 64px; border: 1px solid var(--line); }
.flip .size { font: 12px monospace; color: var(--soft); }
.bar { height: 3px; background: var(--heat); margin-top: 2px; }
.strip { display: flex; gap: 6px; flex-wrap: wrap; }
.strip img { width: 72px; height: 72px; border: 1px solid var(--line); }
.pick[aria-pressed="true"] img { outline: 3px solid var(--accent); }
.pick { padding: 2px; }
#error { color: #b00020; min-height: 1.2em; margin: 0 16px; }
#editor { grid-row: span 2; align-self: start; }
#atlas, #prior { grid-column: 2; }
"""

BODY = """
<header><h1>mvq explore</h1><p id="about"></p>
<p>Keys: <kbd>n</kbd>/<kbd>p</kbd> next/previous image, <kbd>r</kbd> encoded mask,
<kbd>s</kbd> save PNG; <kbd>Tab</kbd> to a bit or an atlas card, <kbd>Space</kbd> flips it.</p>
</header>
<p id="error" role="alert"></p>
<main>
<section id="editor" aria-label="the current code">
  <div class="row"><label>test image <input id="image" type="number" min="0" value="0"></label>
  <button id="prev" aria-label="previous image">&lsaquo;</button>
  <button id="next" aria-label="next image">&rsaquo;</button>
  <button id="reset">encoded mask (r)</button>
  <a id="save" download href="#">save PNG (s)</a></div>
  <div class="row big">
  <figure><img id="input" alt="input image"><figcaption>input</figcaption></figure>
  <figure><img id="recon" alt="decoded with the current mask">
  <figcaption>decoded, current mask</figcaption></figure></div>
  <h2>mask bits <span id="nbits" class="legend"></span></h2>
  <p class="legend"><span class="swatch" style="background: var(--ink)"></span> on
  <span class="swatch"></span> off <span class="dot"></span> differs from the encoded mask</p>
  <div id="bits"></div>
  <h2>the same secondary code and mask on other primary codes</h2>
  <div class="row"><label>images <input id="targets" size="14"></label></div>
  <div id="transfer" class="strip"></div>
</section>
<section id="atlas" aria-label="bit atlas">
  <h2>bit atlas: every single-bit flip of the current mask, largest change first</h2>
  <p class="legend">Each card: the decode with that one bit flipped (left) and where it differs
  from the current decode (right): <span class="ramp"></span> white = no change, dark red = the
  largest change of a pixel among these flips (|&Delta;| = <span id="top"></span>);
  &Delta; under a card = its mean |change| per pixel. <span class="dot"></span> = the bit differs
  from the encoded mask. Click or <kbd>Space</kbd> a card to apply its flip.</p>
  <ol id="flips"></ol>
</section>
<section id="prior" hidden aria-label="prior samples">
  <h2>samples from the prior <span id="priorkind" class="legend"></span></h2>
  <div class="row"><label>seed <input id="seed" type="number" value="0" min="0"></label>
  <label id="classbox" hidden>class <select id="class"></select></label>
  <button id="draw">draw samples (d)</button>
  <span class="legend">click a sample to keep its primary and secondary codes</span></div>
  <div id="samples" class="strip"></div>
  <div class="row" style="margin-top: 8px"><button id="remask" disabled>new masks (m)</button>
  <span class="legend" id="picked">the same codes under freshly drawn masks (the prior does
  not model masks: MVQ 3.4)</span></div>
  <div id="masked" class="strip"></div>
</section>
</main>
"""

SCRIPT = """
"use strict";
let info = null, mask = "", encoded = "", busy = Promise.resolve(), pick = -1, draw = 0;
const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...kids) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...kids);
  return e;
};
async function get(url) {
  const r = await fetch(url), body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function show(err) { $("error").textContent = err ? String(err.message || err) : ""; }
function index() { return Math.max(0, Math.min(info.images - 1, parseInt($("image").value) || 0)); }
function targets() { return $("targets").value.split(/[ ,]+/).filter((t) => t !== "").join(","); }
function query() { return `image=${index()}&mask=${mask}&targets=${targets()}`; }
function fmt(x) { return x >= 0.001 || x === 0 ? x.toFixed(4) : x.toExponential(1); }
function bitName(k) { return `t${Math.floor(k / info.bits)} d${k % info.bits}`; }
function renderBits() {
  const box = $("bits");
  box.textContent = "";
  for (let t = 0; t < info.tokens2; t++) {
    const grid = el("div", {className: "bits"});
    for (let d = 0; d < info.bits; d++) {
      const k = t * info.bits + d;
      const b = el("button", {className: "bit", id: `bit-${k}`, textContent: `d${d}`});
      b.setAttribute("aria-label", `token ${t} dimension ${d}`);
      b.addEventListener("click", () => toggle(k));
      grid.append(b);
    }
    box.append(el("div", {className: "token", textContent: `secondary token ${t}`}), grid);
  }
  markBits();
}
function markBits() {
  for (let k = 0; k < mask.length; k++) {
    const b = $(`bit-${k}`);
    b.setAttribute("aria-pressed", mask[k] === "1" ? "true" : "false");
    b.classList.toggle("edited", mask[k] !== encoded[k]);
  }
}
function toggle(k) {
  mask = mask.slice(0, k) + (mask[k] === "1" ? "0" : "1") + mask.slice(k + 1);
  markBits();
  return redraw();
}
function renderAtlas(a, focusBit) {
  const list = $("flips"), max = a.flips.length ? a.flips[0].change || 1 : 1;
  list.textContent = "";
  $("top").textContent = fmt(a.top);
  a.flips.forEach((f, rank) => {
    const b = el("button", {className: "flip" + (f.edited ? " edited" : ""), id: `flip-${f.bit}`},
      el("span", {className: "name",
                  textContent: `#${rank + 1} ${bitName(f.bit)} \u2192 ${f.on ? "on" : "off"}`}),
      el("span", {className: "pair"},
        el("img", {src: f.image, alt: `decode with ${bitName(f.bit)} ${f.on ? "on" : "off"}`}),
        el("img", {src: f.heat, alt: `where it changes`, className: "heat"})),
      el("span", {className: "size", textContent: `\u0394 ${fmt(f.change)}`}),
      el("div", {className: "bar", style: `width: ${Math.round(100 * f.change / max)}%`}));
    b.dataset.bit = f.bit; b.dataset.change = f.change;
    b.setAttribute("aria-label", `flip ${bitName(f.bit)} to ${f.on ? "on" : "off"}, change `
      + fmt(f.change) + (f.edited ? ", differs from the encoded mask" : ""));
    b.addEventListener("click", () => toggle(f.bit).then(() => {
      const again = $(`flip-${f.bit}`);  // the card moved: keep the keyboard focus on it
      if (again) again.focus();
    }));
    list.append(el("li", {}, b));
  });
}
function redraw() {
  busy = busy.then(async () => {
    try {
      const [d, a] = await Promise.all([get(`/api/decode?${query()}`),
                                        get(`/api/atlas?image=${index()}&mask=${mask}`)]);
      $("recon").src = d.images[0];
      const box = $("transfer"), names = targets().split(",").filter((t) => t);
      box.textContent = "";
      d.images.slice(1).forEach((src, j) => box.append(el("figure", {},
        el("img", {src, alt: `on image ${names[j]}`}),
        el("figcaption", {textContent: `on img ${names[j]}`}))));
      renderAtlas(a);
      $("save").href = `/api/grid.png?${query()}`;
      document.body.dataset.ready = mask;
      show(null);
    } catch (err) { show(err); }
  });
  return busy;
}
async function load() {
  try {
    const d = await get(`/api/image/${index()}`);
    $("input").src = d.input; mask = encoded = d.mask;
    renderBits();
    await redraw();
  } catch (err) { show(err); }
}
function step(by) {
  $("image").value = Math.max(0, Math.min(info.images - 1, index() + by));
  load();
}
function priorQuery() {
  const c = $("class").value;
  return `seed=${parseInt($("seed").value) || 0}&n=8` + (c === "" ? "" : `&class=${c}`);
}
async function drawSamples() {
  try {
    const s = await get(`/api/prior/samples?${priorQuery()}`), box = $("samples");
    box.textContent = ""; $("masked").textContent = "";
    pick = -1; draw = 0; $("remask").disabled = true;
    s.images.forEach((src, j) => {
      const b = el("button", {className: "pick", id: `sample-${j}`},
        el("img", {src, alt: `sample ${j}, primary ${s.primary[j]}`}));
      b.setAttribute("aria-pressed", "false");
      b.title = `primary code ${s.primary[j]}`;
      b.addEventListener("click", () => choose(j));
      box.append(b);
    });
    document.body.dataset.samples = priorQuery();
    show(null);
  } catch (err) { show(err); }
}
async function choose(j) {
  pick = j;
  document.querySelectorAll(".pick").forEach(
    (b) => b.setAttribute("aria-pressed", b.id === `sample-${j}` ? "true" : "false"));
  $("remask").disabled = false;
  await remask(0);
}
async function remask(by) {
  if (pick < 0) return;
  draw += by;
  try {
    const m = await get(`/api/prior/masks?${priorQuery()}&pick=${pick}&draw=${draw}&count=8`);
    const box = $("masked");
    box.textContent = "";
    m.images.forEach((src, j) => box.append(el("figure", {},
      el("img", {src, alt: `mask ${m.masks[j]}`, title: `mask ${m.masks[j]}`}),
      el("figcaption", {textContent: `mask ${j + 1}`}))));
    $("picked").textContent = `sample ${pick} under 8 masks drawn with seed ${draw}`;
    document.body.dataset.masked = `${pick}:${draw}`;
    show(null);
  } catch (err) { show(err); }
}
document.addEventListener("keydown", (ev) => {
  if (["INPUT", "SELECT"].includes(ev.target.tagName)) return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "n" || ev.key === "p") step(ev.key === "n" ? 1 : -1);
  else if (ev.key === "r") { mask = encoded; markBits(); redraw(); }
  else if (ev.key === "s") $("save").click();
  else if (ev.key === "d" && info.prior) drawSamples();
  else if (ev.key === "m" && info.prior) remask(1);
});
$("image").addEventListener("change", load);
$("prev").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));
$("targets").addEventListener("change", redraw);
$("reset").addEventListener("click", () => { mask = encoded; markBits(); redraw(); });
$("draw").addEventListener("click", drawSamples);
$("remask").addEventListener("click", () => remask(1));
(async () => {
  info = await get("/api/info");
  $("image").max = info.images - 1;
  $("targets").value = info.targets.join(",");
  $("nbits").textContent = `(${info.tokens2} secondary token(s) x ${info.bits} bits)`;
  $("about").textContent =
    `${info.model || "MVQ"} tokenizer, ${info.images} test images of ${info.size} px`;
  if (info.prior) {
    $("prior").hidden = false;
    $("priorkind").textContent = `(${info.prior.kind} prior)`;
    if (info.prior.classes.length) {
      $("classbox").hidden = false;
      $("class").append(el("option", {value: "", textContent: "all classes"}),
        ...info.prior.classes.map((c, k) => el("option", {value: k, textContent: c})));
    }
    drawSamples();
  }
  await load();
})();
"""

PAGE = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width\"><title>mvq explore</title>"
        f"<style>{STYLE}</style></head>\n<body>{BODY}<script>{SCRIPT}</script></body></html>\n")
