// `mvq explore`'s page: its controls over the JSON API of mvq/analysis/explore.py.
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
