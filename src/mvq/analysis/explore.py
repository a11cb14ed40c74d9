"""`mvq explore`: a local web page to toggle an MVQ code's mask bits and see the decode.

The server listens on 127.0.0.1 only, answers its page and a small JSON API, and refuses
any other path (404) and any Host header but 127.0.0.1:PORT / localhost:PORT (403: a page on
another site cannot reach it through DNS rebinding). Each connection has its own thread and a
socket timeout, so an idle or half-sent connection holds up no other request; a client that
goes away mid-answer is logged as one line.

API (GET; BITS is the mask as '0'/'1', secondary token by token, D' bits each):
  /, /style.css, /app.js          the page (package data: analysis/page/)
  /api/info                       images, tokens2, bits (D'), size, default transfer targets
  /api/image/I                    test image I: its input and encoded mask
  /api/decode?image=I&mask=BITS&targets=J,K   (e, e', BITS) of image I decoded on its own
                                  primary code and on those of images J, K (data-URL PNGs)
  /api/atlas?image=I&mask=BITS    every single-bit flip of BITS: its decode, a heatmap of
                                  where it differs from BITS' decode, the mean change; largest first
  /api/grid.png?image=I&mask=BITS&targets=J,K   the same as one labelled PNG (a download)
  /api/prior/samples?seed=S&n=N   (with --prior) N codes drawn from the prior, decoded
  /api/prior/masks?seed=S&n=N&pick=J&draw=R&count=M   sample J of that draw with its primary
                                  and secondary codes fixed under M fresh masks (seed R)
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch
from PIL import Image

from mvq.analysis import codes as C
from mvq.analysis import explore_page, pick_distinct
from mvq.configuration.config import model_hash
from mvq.data import class_names, first_images
from mvq.errors import MvqError
from mvq.files.figures import Figure, change_heatmap, change_size, png_bytes, to_uint8
from mvq.inference.sample import check_same_tokenizer, class_labels
from mvq.models.tokenizers import MVQVAE
from mvq.saved.pretrained import load_prior
from mvq.values import argtypes
from mvq.values.codes import Codes

MAX_TARGETS = 16
MAX_SAMPLES = 32  # prior samples or masks per request
SOCKET_TIMEOUT = 10.0  # seconds a connection may sit idle or half-sent before it is closed


class Explorer:
    """The model, the test images and their codes, and the decoding the API needs.

    Every decode is of one code at a time (`decode_each`), so an image shows the same
    pixels whichever request computed it (the atlas' thumbnail and the toggled bit agree)."""

    def __init__(self, model: MVQVAE, images: torch.Tensor) -> None:
        self.model, self.images = model, images
        self.lock = threading.Lock()  # one forward pass at a time; I/O stays concurrent
        with torch.no_grad():
            self.codes = model.encode(images)
        self.tokens2, self.bits = self.codes.mask.shape[1] * self.codes.mask.shape[2], \
            self.codes.mask.shape[3]
        self.targets = pick_distinct(self.codes.primary, 5)[1:]

    def info(self) -> dict:
        return {"images": len(self.images), "tokens2": self.tokens2, "bits": self.bits,
                "size": self.images.shape[-1], "targets": self.targets,
                "model": self.codes.meta.get("model")}

    def image(self, i: int) -> dict:
        i = self._index(i)
        return {"index": i, "input": _png(self.images[i]), "mask": _bits(self.codes.mask[i])}

    def decode_each(self, codes: Codes) -> torch.Tensor:
        """(N, C, H, W) in [0, 1]: each of the N codes decoded on its own (batch of one)."""
        with self.lock:
            return torch.cat([C.decode(self.model, codes[k : k + 1]) for k in range(len(codes))])

    def decode(self, i: int, mask: str, targets: list[int]) -> torch.Tensor:
        """(1 + len(targets), C, H, W): image i's (e', mask) on its own and the targets' e."""
        i, targets = self._index(i), [self._index(t) for t in targets]
        if len(targets) > MAX_TARGETS:
            raise MvqError(f"at most {MAX_TARGETS} targets, found {len(targets)}")
        m = self._mask(mask)
        rows = [i] + targets
        config = Codes(self.codes.primary[rows], self.codes.secondary[[i] * len(rows)],
                       m.unsqueeze(0).expand(len(rows), *m.shape), self.codes.meta)
        return self.decode_each(config)

    def atlas(self, i: int, mask: str) -> dict:
        """Every single-bit flip of ``mask`` on image i: per bit its decode, a heatmap of
        |decode(flipped) - decode(mask)| (white: none, dark: the largest over all flips, ``top``)
        and the mean change per pixel; the flips sorted by that change, largest first."""
        i, m = self._index(i), self._mask(mask)
        n = self.tokens2 * self.bits
        flips = m.flatten().unsqueeze(0).repeat(n + 1, 1)
        flips[1:] ^= torch.eye(n, dtype=torch.bool)
        masks = flips.view(n + 1, *m.shape)
        dec = self.decode_each(C.with_masks(self.codes[i : i + 1], masks))
        base, flipped = dec[:1], dec[1:]
        sizes = change_size(flipped, base.expand_as(flipped))
        top = float((flipped - base).abs().mean(1).max())
        heat = change_heatmap(flipped, base.expand_as(flipped), top)
        encoded = _bits(self.codes.mask[i])
        order = sorted(range(n), key=lambda k: (-float(sizes[k]), k))
        return {"top": top, "flips": [
            {"bit": k, "token": k // self.bits, "dim": k % self.bits, "on": mask[k] == "0",
             "edited": mask[k] != encoded[k], "change": float(sizes[k]),
             "image": _png(flipped[k]), "heat": _png(heat[k])} for k in order]}

    def grid(self, i: int, mask: str, targets: list[int]) -> bytes:
        dec = self.decode(i, mask, targets)
        row = torch.cat([self.images[self._index(i)].unsqueeze(0).to(dec), dec])
        labels = ["input", f"img {i}"] + [f"on img {t}" for t in targets]
        return png_bytes(Figure([row], f"mvq explore: image {i}'s secondary code under mask "
                                f"{mask}, on its own and on other images' primary codes",
                                col_labels=labels).render())

    def _index(self, i: int) -> int:
        if not 0 <= i < len(self.images):
            raise MvqError(f"image index {i} is outside [0, {len(self.images)})")
        return i

    def _mask(self, bits: str) -> torch.Tensor:
        n = self.tokens2 * self.bits
        if len(bits) != n or set(bits) - {"0", "1"}:
            raise MvqError(f"mask must be {n} characters 0/1 ({self.tokens2} tokens x "
                           f"{self.bits} bits), found {bits[:80]!r}")
        flat = torch.tensor([c == "1" for c in bits])
        return flat.view(*self.codes.mask.shape[1:])


class PriorPanel:
    """A prior trained on the explorer's tokenizer: draw codes, then keep one's primary and
    secondary codes and draw fresh masks for it (the prior does not model masks: MVQ 3.4)."""

    def __init__(self, explorer: Explorer, prior, names: tuple[str, ...]) -> None:
        self.explorer, self.prior, self.names = explorer, prior, names

    def info(self) -> dict:
        return {"kind": self.prior.kind, "classes": list(self.names[: self.prior.num_classes])
                or [f"class {k}" for k in range(self.prior.num_classes)]}

    def draw(self, seed: int, n: int, cls: int | None = None) -> Codes:
        """n codes from the prior, seeded (the same seed draws the same codes)."""
        _count(n)
        labels = class_labels(self.prior, n, None if cls is None else [cls])
        with self.explorer.lock, torch.no_grad():
            return self.prior.sample(n, labels, torch.Generator().manual_seed(seed))

    def samples(self, seed: int, n: int, cls: int | None = None) -> dict:
        codes = self.draw(seed, n, cls)
        images = self.explorer.decode_each(codes)
        return {"images": [_png(x) for x in images],
                "primary": [" ".join(map(str, p.flatten().tolist())) for p in codes.primary]}

    def masks(self, seed: int, n: int, pick: int, draw: int, count: int,
              cls: int | None = None) -> dict:
        """Sample ``pick`` of the draw (seed, n) under ``count`` masks drawn from ``draw``."""
        _count(count)
        if not 0 <= pick < n:
            raise MvqError(f"pick {pick} is outside the {n} samples drawn; pick one of 0..{n - 1}")
        one = self.draw(seed, n, cls)[pick : pick + 1]
        masks = C.random_masks(one, count, draw)
        images = self.explorer.decode_each(C.with_masks(one, masks))
        return {"images": [_png(x) for x in images], "masks": [_bits(m) for m in masks]}


def _count(n: int) -> None:
    if not 1 <= n <= MAX_SAMPLES:
        raise MvqError(f"expected 1..{MAX_SAMPLES} samples or masks, found {n}")


def _png(img: torch.Tensor) -> str:
    """(C, H, W) in [0, 1] -> a data URL of a PNG without padding."""
    data = png_bytes(Image.fromarray(to_uint8(img.unsqueeze(0))[0]))
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _bits(mask: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in mask.flatten().tolist())


def _routes(explorer: Explorer, panel: PriorPanel | None):
    """path -> function(query dict) -> (status, body bytes, content type, extra headers)."""
    def js(obj: dict) -> tuple:
        return 200, json.dumps(obj).encode(), "application/json", {}

    def mask_query(q: dict) -> tuple[int, str, list[int]]:
        targets = [_int(t) for t in q.get("targets", "").split(",") if t]
        return _int(q.get("image", "")), q.get("mask", ""), targets

    def grid(q: dict) -> tuple:
        i, mask, targets = mask_query(q)
        return 200, explorer.grid(i, mask, targets), "image/png", {
            "Content-Disposition": f'attachment; filename="mvq-mask-img{i}.png"'}

    def need_panel() -> PriorPanel:
        if panel is None:
            raise MvqError("no prior loaded: start mvq explore with --prior PRIOR_DIR")
        return panel

    def cls(q: dict) -> int | None:
        return _int(q["class"]) if q.get("class", "") != "" else None

    def static(body: bytes, kind: str):
        return lambda q: (200, body, kind, {})

    page = {path: static(*file) for path, file in explore_page.files().items()}
    return {
        **page,
        "/api/info": lambda q: js({**explorer.info(),
                                   "prior": panel.info() if panel else None}),
        "/api/decode": lambda q: js({"images": [_png(d) for d in
                                                explorer.decode(*mask_query(q))]}),
        "/api/atlas": lambda q: js(explorer.atlas(*mask_query(q)[:2])),
        "/api/grid.png": grid,
        "/api/prior/samples": lambda q: js(need_panel().samples(
            _seed(q.get("seed", "0")), _int(q.get("n", "8")), cls(q))),
        "/api/prior/masks": lambda q: js(need_panel().masks(
            _seed(q.get("seed", "0")), _int(q.get("n", "8")), _int(q.get("pick", "0")),
            _seed(q.get("draw", "0")), _int(q.get("count", "8")), cls(q))),
    }


def make_handler(explorer: Explorer, panel: PriorPanel | None = None,
                 timeout: float = SOCKET_TIMEOUT):
    """A request handler bound to ``explorer`` (and a prior ``panel``); ``timeout``: seconds a
    connection may stay idle or half-sent (the port is read from the server)."""
    routes = _routes(explorer, panel)

    class Handler(BaseHTTPRequestHandler):
        server_version = "mvq-explore"

        def setup(self) -> None:
            self.timeout = timeout  # StreamRequestHandler sets it on the socket
            super().setup()

        def log_message(self, *args) -> None:  # quiet: the terminal shows the URL only
            pass

        def _send(self, code: int, body: bytes, kind: str, extra: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            port = self.server.server_address[1]
            if self.headers.get("Host") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
                return self._json(403, {"error": "this server answers only Host 127.0.0.1:"
                                        f"{port} or localhost:{port}"})
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            path = "/api/image" if url.path.startswith("/api/image/") else url.path
            try:
                if path == "/api/image":
                    return self._json(200, explorer.image(_int(url.path.rsplit("/", 1)[1])))
                if path in routes:
                    return self._send(*routes[path](q))
            except MvqError as err:
                return self._json(400, {"error": str(err)})
            except (ConnectionError, TimeoutError):
                raise  # the client went away: ExploreServer logs one line
            except Exception as err:  # a bug: the page and the terminal get one line each
                self._json(500, {"error": f"internal error: {type(err).__name__}: {err}"})
                raise
            self._json(404, {"error": f"no such page: {url.path}"})

    return Handler


class ExploreServer(ThreadingHTTPServer):
    """A thread per connection (daemon threads: Ctrl-C is not held up by open connections);
    a connection's failure is logged as one line on stderr, not a traceback."""

    daemon_threads = True

    def handle_error(self, _request, client_address) -> None:
        err = sys.exc_info()[1]
        what = ("went away" if isinstance(err, (ConnectionError, TimeoutError))
                else "failed")
        print(f"mvq explore: request from {client_address[0]}:{client_address[1]} {what}: "
              f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MvqError(f"expected an integer, found {text[:20]!r}") from None


def _seed(text: str) -> int:
    """A seed of the prior panel, checked as the command line checks one (argtypes.seed)."""
    try:
        return argtypes.seed(text)
    except argparse.ArgumentTypeError as err:
        raise MvqError(str(err)) from None


def make_server(checkpoint: str | Path, port: int = 8765, images: int = 64,
                prior: str | Path | None = None, force: bool = False,
                timeout: float = SOCKET_TIMEOUT) -> ExploreServer:
    """An `ExploreServer` on 127.0.0.1:port (0: any free port) for an MVQ checkpoint and,
    optionally, a prior trained on its codes (``force``: other weights of the same tokenizer)."""
    model, cfg = C.load_mvq(checkpoint)
    explorer = Explorer(model, first_images(cfg, "test", images)[0])
    panel = None
    if prior is not None:
        loaded, info = load_prior(prior)
        check_same_tokenizer(info, model_hash(cfg.model), prior, model, force)
        panel = PriorPanel(explorer, loaded, class_names(cfg.data.name))
    try:
        return ExploreServer(("127.0.0.1", port), make_handler(explorer, panel, timeout))
    except OSError as err:
        raise MvqError(f"cannot listen on 127.0.0.1:{port} ({err.strerror or err}); "
                       "pass another --port") from None
