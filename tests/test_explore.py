import base64
import http.client
import io
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from fnmatch import fnmatch
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from PIL import Image

from mvq.analysis import codes as C
from mvq.analysis import explore_page
from mvq.analysis.explore import ExploreServer, make_server
from mvq.cli import main
from mvq.configuration.config import Config, DataConfig
from mvq.data import first_images
from mvq.inference.tokens import encode_dataset
from mvq.models import build_model
from mvq.saved.checkpoint import save_checkpoint
from mvq.train.prior import PriorTraining, train_prior
from mvq.values.codes import Codes


def _checkpoint(path, **kw):
    cfg = Config(model=tiny_model_config(factor=14, **kw), data=DataConfig(name="shapes"))
    return save_checkpoint(path, build_model(cfg.model), cfg, step=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("mvq") / "checkpoint")


def _serve(srv):
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def server(tokenizer):
    srv = _serve(make_server(tokenizer, port=0, images=8, timeout=1.0))
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def prior_dir(tokenizer, tmp_path_factory):
    """A class-conditional prior trained 2 steps on 16 codes of the tokenizer."""
    root = tmp_path_factory.mktemp("prior")
    tokens = encode_dataset(tokenizer, root / "tokens.safetensors", limit=16, batch_size=16,
                            device="cpu", progress=False)
    sizes = {"primary": dict(n_layer=1, n_head=2, n_embd=16),
             "secondary": dict(n_layer=1, n_head=2, n_embd=16)}
    settings = PriorTraining(steps=2, batch_size=8, sizes=sizes, val_fraction=0.25,
                             val_every=2, class_conditional=True)
    prior = train_prior(tokens, root / "prior", settings, progress=False,
                        device="cpu")["checkpoint"]
    return prior


@pytest.fixture(scope="module")
def prior_server(tokenizer, prior_dir):
    srv = _serve(make_server(tokenizer, port=0, images=8, prior=prior_dir))
    yield srv
    srv.shutdown()
    srv.server_close()


def _pixels(data_url):
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def get(server, path, host=None):
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), body


def test_listens_on_loopback_only(server):
    assert server.server_address[0] == "127.0.0.1"


def test_page_info_image_and_decode(server):
    status, kind, body = get(server, "/")
    assert status == 200 and kind.startswith("text/html") and b"mask bits" in body
    info = json.loads(get(server, "/api/info")[2])
    assert info["images"] == 8 and info["bits"] == 8
    img = json.loads(get(server, "/api/image/2")[2])
    n = info["tokens2"] * info["bits"]
    assert len(img["mask"]) == n and img["input"].startswith("data:image/png;base64,")
    zeros, ones = "0" * n, "1" * n
    a = json.loads(get(server, f"/api/decode?image=2&mask={zeros}&targets=0,1")[2])["images"]
    b = json.loads(get(server, f"/api/decode?image=2&mask={ones}&targets=0,1")[2])["images"]
    assert len(a) == 3 and a != b
    status, kind, png = get(server, f"/api/grid.png?image=2&mask={ones}&targets=0")
    assert status == 200 and kind == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"


def _page(name):
    return resources.files("mvq.analysis").joinpath("page").joinpath(name)


@pytest.mark.parametrize("path, name, kind", [("/", "index.html", "text/html"),
                                              ("/style.css", "style.css", "text/css"),
                                              ("/app.js", "app.js", "text/javascript")])
def test_the_page_is_package_data_served_as_it_is(server, path, name, kind):
    assert explore_page.FILES[path] == name and _page(name).is_file()
    status, served, body = get(server, path)
    assert status == 200 and served == f"{kind}; charset=utf-8"
    assert body == _page(name).read_bytes()
    body.decode("ascii")  # ASCII only: no charset to get wrong anywhere


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids += [attrs["id"]] if "id" in attrs else []
        self.links += [attrs[a] for a in ("src", "href") if attrs.get(a) not in (None, "#")]


def test_the_page_script_finds_every_element_it_names_and_loads_nothing_from_outside():
    page = _Ids()
    page.feed(_page("index.html").read_text())
    assert len(page.ids) == len(set(page.ids)), "an id used twice"
    assert sorted(page.links) == ["app.js", "style.css"]  # the page works offline
    named = set(re.findall(r'\$\("([\w-]+)"\)', _page("app.js").read_text()))
    assert named and named <= set(page.ids), named - set(page.ids)
    assert "http" not in _page("style.css").read_text() + _page("app.js").read_text()


def test_every_file_of_the_page_is_declared_package_data():
    """The wheel carries what pyproject.toml's package-data names (tests/test_wheel.py builds
    it; this is the quick check that no file of page/ is left out of the patterns)."""
    import tomllib  # Python 3.11+, like tests/test_docs.py

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["mvq.analysis"]
    files = sorted(f.name for f in (root / "src/mvq/analysis/page").iterdir())
    assert files == sorted(explore_page.FILES.values())
    assert all(any(fnmatch(f"page/{f}", pat) for pat in patterns) for f in files), patterns


def test_the_page_script_parses():
    """node's own parser (`node --check`) over app.js; no HTML or CSS linter is installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the script's syntax is checked by the browser tests")
    done = subprocess.run([node, "--check", str(_page("app.js"))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", ["/etc/passwd", "/../README.md", "/api/", "/api/infos",
                                  "/favicon.ico", "/page/app.js", "/index.html"])
def test_other_paths_are_404(server, path):
    assert get(server, path)[0] == 404


@pytest.mark.parametrize("host", ["evil.example:80", "127.0.0.1", "localhost:1", "0.0.0.0:{port}"])
def test_other_hosts_are_403(server, host):
    port = server.server_address[1]
    assert get(server, "/", host=host.format(port=port))[0] == 403
    assert get(server, "/", host=f"localhost:{port}")[0] == 200


@pytest.mark.parametrize("query, fragment", [
    ("image=99&mask=0", "outside [0, 8)"), ("image=x&mask=0", "integer"),
    ("image=0&mask=012", "characters 0/1")])
@pytest.mark.parametrize("api", ["decode", "atlas"])
def test_bad_requests_say_what_is_wrong(server, query, fragment, api):
    status, _, body = get(server, f"/api/{api}?{query}")
    assert status == 400 and fragment in json.loads(body)["error"]


def test_non_mvq_checkpoint_gets_a_clear_message(tmp_path, capsys):
    hvq = _checkpoint(tmp_path / "h" / "checkpoint", type="hvqvae")
    assert main(["explore", "--checkpoint", str(hvq), "--port", "0"]) == 2
    assert "holds a hvqvae checkpoint" in capsys.readouterr().err


def _api(server, path):
    status, _, body = get(server, path)
    assert status == 200, body
    return json.loads(body)


def test_atlas_shows_every_single_bit_flip_against_the_decoder(server, tokenizer):
    model, cfg = C.load_mvq(tokenizer)
    x = first_images(cfg, "test", 8)[0]
    codes = model.encode(x)[3:4]
    encoded = _api(server, "/api/image/3")["mask"]
    mask = ("1" if encoded[0] == "0" else "0") + encoded[1:]  # bit 0 already edited
    atlas = _api(server, f"/api/atlas?image=3&mask={mask}")
    flips = atlas["flips"]
    n, bits = len(mask), _api(server, "/api/info")["bits"]
    assert sorted(f["bit"] for f in flips) == list(range(n))
    changes = [f["change"] for f in flips]
    assert changes == sorted(changes, reverse=True)  # largest change first
    flat = torch.tensor([c == "1" for c in mask])
    base = C.decode(model, C.with_masks(codes, flat.view(1, *codes.mask.shape[1:])))
    for f in flips:
        k = f["bit"]
        m = flat.clone()
        m[k] = ~m[k]
        want = C.decode(model, Codes(codes.primary, codes.secondary,
                                     m.view(1, *codes.mask.shape[1:]), codes.meta))
        want8 = (want[0].permute(1, 2, 0).repeat(1, 1, 3 // want.shape[1]) * 255 + 0.5).byte()
        assert np.abs(_pixels(f["image"]).astype(int) - want8.numpy()).max() <= 1
        assert f["change"] == pytest.approx(float((want - base).abs().mean()), abs=1e-6)
        assert f["on"] == (mask[k] == "0") and f["edited"] == (k == 0)
        assert (f["token"], f["dim"]) == divmod(k, bits)
    assert atlas["top"] >= flips[0]["change"] > 0
    # the darkest pixel over all heatmaps has the colour of the largest change (HEAT, red)
    darkest = min((_pixels(f["heat"]).sum(-1).min(), f["heat"]) for f in flips)[1]
    assert tuple(_pixels(darkest).reshape(-1, 3).min(0)) == (115, 0, 13)


def test_atlas_thumbnail_is_what_the_decode_of_the_flipped_mask_serves(server):
    mask = _api(server, "/api/image/1")["mask"]
    for f in _api(server, f"/api/atlas?image=1&mask={mask}")["flips"][:3]:
        k = f["bit"]
        flipped = mask[:k] + ("0" if mask[k] == "1" else "1") + mask[k + 1:]
        shown = _api(server, f"/api/decode?image=1&mask={flipped}&targets=0,2")["images"][0]
        assert shown == f["image"]


def test_an_idle_or_half_sent_connection_does_not_block_other_requests(server):
    port = server.server_address[1]
    idle = socket.create_connection(("127.0.0.1", port))
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", "/api/info", headers={"Host": f"127.0.0.1:{port}"})
        assert conn.getresponse().status == 200  # answered while both others hang
        conn.close()
        idle.settimeout(10)
        assert idle.recv(1) == b""  # the server closes the idle one after its timeout (1 s)
    finally:
        idle.close()
        half.close()


def test_a_client_that_goes_away_is_logged_as_one_line(capsys):
    srv = ExploreServer.__new__(ExploreServer)  # handle_error needs no socket
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        srv.handle_error(None, ("127.0.0.1", 5555))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "went away" in err and "BrokenPipeError" in err
    assert "Traceback" not in err


def test_a_client_that_resets_mid_answer_leaves_the_server_serving(server, capsys):
    port = server.server_address[1]
    mask = _api(server, "/api/image/0")["mask"]
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(f"GET /api/atlas?image=0&mask={mask} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
              .encode())
    s.close()  # RST before the answer
    assert _api(server, "/api/info")["images"] == 8
    err = ""
    for _ in range(100):  # the atlas' thread finds the client gone when it writes
        err += capsys.readouterr().err
        if err:
            break
        time.sleep(0.1)
    assert err.count("\n") == 1 and "went away" in err and "Traceback" not in err


def test_prior_panel_draws_samples_and_redraws_the_mask_of_a_fixed_code(prior_server):
    info = _api(prior_server, "/api/info")
    assert info["prior"]["kind"] and info["prior"]["classes"][:2] == ["circle", "square"]
    a = _api(prior_server, "/api/prior/samples?seed=3&n=4&class=1")
    assert len(a["images"]) == 4
    assert a == _api(prior_server, "/api/prior/samples?seed=3&n=4&class=1")
    m0 = _api(prior_server, "/api/prior/masks?seed=3&n=4&class=1&pick=2&draw=0&count=5")
    m1 = _api(prior_server, "/api/prior/masks?seed=3&n=4&class=1&pick=2&draw=1&count=5")
    assert len(m0["images"]) == 5 and len(set(m0["masks"])) > 1 and m0["masks"] != m1["masks"]
    assert all(len(b) == info["tokens2"] * info["bits"] for b in m0["masks"])
    status, _, body = get(prior_server, "/api/prior/masks?seed=3&n=4&pick=9")
    assert status == 400 and "pick 9 is outside" in json.loads(body)["error"]
    for query in (f"samples?seed={2**64}&n=2", "samples?seed=-1&n=2",
                  f"masks?seed=3&n=4&pick=1&draw={2**64}"):  # was a 500 (generator's error)
        status, _, body = get(prior_server, f"/api/prior/{query}")
        assert status == 400 and "seed from 0 to 2**64 - 1" in json.loads(body)["error"]


def test_without_a_prior_the_prior_api_says_how_to_get_one(server):
    status, _, body = get(server, "/api/prior/samples?seed=0&n=2")
    assert status == 400 and "--prior" in json.loads(body)["error"]


def test_a_prior_of_another_tokenizer_is_refused_before_serving(prior_dir, tmp_path, capsys):
    other = _checkpoint(tmp_path / "other" / "checkpoint", codebook_size=32)
    assert main(["explore", "--checkpoint", str(other), "--prior", str(prior_dir),
                 "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "was trained on codes of tokenizer" in err and err.count("\n") == 1
