"""The page of `mvq explore` (plain HTML + JS, no external resources)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mvq explore</title>
<style>
body { font: 14px sans-serif; margin: 1em; }
img { width: 112px; height: 112px; image-rendering: pixelated; border: 1px solid #888; }
figure { display: inline-block; margin: 0 8px 8px 0; text-align: center; }
.token { margin: 4px 0; }
.bit { width: 2.6em; margin: 1px; }
.bit[aria-pressed="true"] { background: #246; color: white; }
button:focus, input:focus { outline: 3px solid #f90; }
#error { color: #b00; }
</style></head>
<body>
<h1>mvq explore</h1>
<p>Keys: <kbd>n</kbd> / <kbd>p</kbd> next / previous image, <kbd>r</kbd> the encoded mask,
<kbd>s</kbd> save the grid as PNG; <kbd>Tab</kbd> to a bit and <kbd>Space</kbd> toggles it.</p>
<p><label>test image <input id="image" type="number" min="0" value="0"></label>
<label>apply the mask to images <input id="targets" size="14"></label>
<button id="reset">encoded mask (r)</button>
<a id="save" download href="#">save grid as PNG (s)</a></p>
<p id="error" role="alert"></p>
<div><figure><img id="input" alt="input image"><figcaption>input</figcaption></figure>
<figure><img id="recon" alt="decoded with the current mask"><figcaption>decoded</figcaption></figure></div>
<h2>mask bits (<span id="nbits"></span>)</h2><div id="bits"></div>
<h2>the same (e', mask) on other primary codes</h2><div id="transfer"></div>
<script>
"use strict";
let info = null, mask = "", encoded = "", busy = Promise.resolve();
const $ = (id) => document.getElementById(id);
async function get(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function show(err) { $("error").textContent = err ? String(err.message || err) : ""; }
function index() { return Math.max(0, Math.min(info.images - 1, parseInt($("image").value) || 0)); }
function targets() { return $("targets").value.split(/[ ,]+/).filter((t) => t !== "").join(","); }
function query() { return `image=${index()}&mask=${mask}&targets=${targets()}`; }
function renderBits() {
  const box = $("bits");
  box.textContent = "";
  for (let t = 0; t < info.tokens2; t++) {
    const row = document.createElement("div");
    row.className = "token";
    row.append(`token ${t}: `);
    for (let d = 0; d < info.bits; d++) {
      const k = t * info.bits + d, b = document.createElement("button");
      b.className = "bit"; b.id = `bit-${k}`; b.textContent = `d${d}`;
      b.setAttribute("aria-pressed", mask[k] === "1" ? "true" : "false");
      b.setAttribute("aria-label", `token ${t} dimension ${d}`);
      b.addEventListener("click", () => toggle(k));
      row.append(b);
    }
    box.append(row);
  }
}
function toggle(k) {
  mask = mask.slice(0, k) + (mask[k] === "1" ? "0" : "1") + mask.slice(k + 1);
  $(`bit-${k}`).setAttribute("aria-pressed", mask[k] === "1" ? "true" : "false");
  redraw();
}
function redraw() {
  busy = busy.then(async () => {
    try {
      const d = await get(`/api/decode?${query()}`);
      $("recon").src = d.images[0];
      const box = $("transfer"), names = targets().split(",").filter((t) => t);
      box.textContent = "";
      d.images.slice(1).forEach((src, j) => {
        const f = document.createElement("figure"), img = document.createElement("img");
        img.src = src; img.alt = `on image ${names[j]}`;
        const c = document.createElement("figcaption"); c.textContent = `on img ${names[j]}`;
        f.append(img, c); box.append(f);
      });
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
document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "n" || ev.key === "p") {
    $("image").value = Math.max(0, Math.min(info.images - 1, index() + (ev.key === "n" ? 1 : -1)));
    load();
  } else if (ev.key === "r") { mask = encoded; renderBits(); redraw(); }
  else if (ev.key === "s") { $("save").click(); }
});
$("image").addEventListener("change", load);
$("targets").addEventListener("change", redraw);
$("reset").addEventListener("click", () => { mask = encoded; renderBits(); redraw(); });
(async () => {
  info = await get("/api/info");
  $("image").max = info.images - 1;
  $("targets").value = info.targets.join(",");
  $("nbits").textContent = `${info.tokens2} token(s) x ${info.bits} bits`;
  await load();
})();
</script></body></html>
"""
