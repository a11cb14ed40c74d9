"""`mvq explore`: a local web page to toggle an MVQ code's mask bits and see the decode.

The server listens on 127.0.0.1 only, answers its page and a small JSON API, and refuses
any other path (404) and any Host header but 127.0.0.1:PORT / localhost:PORT (403: a page on
another site cannot reach it through DNS rebinding).

API (GET; BITS is the mask as '0'/'1', secondary token by token, D' bits each):
  /                               the page
  /api/info                       images, tokens2, bits (D'), size, default transfer targets
  /api/image/I                    test image I: its input and encoded mask
  /api/decode?image=I&mask=BITS&targets=J,K   (e, e', BITS) of image I decoded on its own
                                  primary code and on those of images J, K (data-URL PNGs)
  /api/grid.png?image=I&mask=BITS&targets=J,K   the same as one labelled PNG (a download)
"""

from __future__ import annotations

import base64
import io
import json
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch
from PIL import Image

from mvq.analysis import codes as C
from mvq.analysis import pick_distinct
from mvq.analysis.explore_page import PAGE
from mvq.codes import Codes
from mvq.errors import MvqError
from mvq.figures import Figure, png_bytes
from mvq.images import grid_array
from mvq.models.tokenizers import MVQVAE

MAX_TARGETS = 16


class Explorer:
    """The model, the test images and their codes, and the decoding the API needs."""

    def __init__(self, model: MVQVAE, images: torch.Tensor) -> None:
        self.model, self.images = model, images
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

    def decode(self, i: int, mask: str, targets: list[int]) -> torch.Tensor:
        """(1 + len(targets), C, H, W): image i's (e', mask) on its own and the targets' e."""
        i, targets = self._index(i), [self._index(t) for t in targets]
        if len(targets) > MAX_TARGETS:
            raise MvqError(f"at most {MAX_TARGETS} targets, found {len(targets)}")
        m = self._mask(mask)
        rows = [i] + targets
        config = Codes(self.codes.primary[rows], self.codes.secondary[[i] * len(rows)],
                       m.unsqueeze(0).expand(len(rows), *m.shape), self.codes.meta)
        return C.decode(self.model, config)

    def grid(self, i: int, mask: str, targets: list[int]) -> bytes:
        dec = self.decode(i, mask, targets)
        row = torch.cat([self.images[self._index(i)].unsqueeze(0).to(dec), dec])
        labels = ["input", f"img {i}"] + [f"on img {t}" for t in targets]
        return png_bytes(Figure([row], f"mask {mask} of img {i}", col_labels=labels).render())

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


def _png(img: torch.Tensor) -> str:
    """(C, H, W) in [0, 1] -> a data URL of a PNG without padding."""
    buf = io.BytesIO()
    Image.fromarray(grid_array([img.unsqueeze(0)], pad=0)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bits(mask: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in mask.flatten().tolist())


def make_handler(explorer: Explorer):
    """A request handler bound to ``explorer`` (the port is read from the server)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "mvq-explore"

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
            try:
                if url.path == "/":
                    return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                if url.path == "/api/info":
                    return self._json(200, explorer.info())
                if url.path.startswith("/api/image/"):
                    return self._json(200, explorer.image(_int(url.path.rsplit("/", 1)[1])))
                if url.path in ("/api/decode", "/api/grid.png"):
                    i, mask = _int(q.get("image", "")), q.get("mask", "")
                    targets = [_int(t) for t in q.get("targets", "").split(",") if t]
                    if url.path == "/api/grid.png":
                        return self._send(200, explorer.grid(i, mask, targets), "image/png", {
                            "Content-Disposition": f'attachment; filename="mvq-mask-img{i}.png"'})
                    dec = explorer.decode(i, mask, targets)
                    return self._json(200, {"images": [_png(d) for d in dec]})
            except MvqError as err:
                return self._json(400, {"error": str(err)})
            self._json(404, {"error": f"no such page: {url.path}"})

    return Handler


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MvqError(f"expected an integer image index, found {text[:20]!r}") from None


def make_server(checkpoint: str | Path, port: int = 8765, images: int = 64) -> HTTPServer:
    """An HTTPServer on 127.0.0.1:port (0: any free port) for an MVQ checkpoint."""
    model, cfg = C.load_mvq(checkpoint)
    explorer = Explorer(model, C.load_test_images(cfg, images))
    try:
        return HTTPServer(("127.0.0.1", port), make_handler(explorer))
    except OSError as err:
        raise MvqError(f"cannot listen on 127.0.0.1:{port} ({err.strerror or err}); "
                       "pass another --port") from None
