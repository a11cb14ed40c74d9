import http.client
import json
import threading

import pytest

from conftest import tiny_model_config
from mvq.analysis.explore import make_server
from mvq.checkpoint import save_checkpoint
from mvq.cli import main
from mvq.config import Config, DataConfig
from mvq.models import build_model


def _checkpoint(path, **kw):
    cfg = Config(model=tiny_model_config(factor=14, **kw), data=DataConfig(name="shapes"))
    return save_checkpoint(path, build_model(cfg.model), cfg, step=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = make_server(_checkpoint(tmp_path_factory.mktemp("mvq") / "checkpoint"), port=0, images=8)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


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


@pytest.mark.parametrize("path", ["/etc/passwd", "/../README.md", "/api/", "/api/infos",
                                  "/favicon.ico"])
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
def test_bad_requests_say_what_is_wrong(server, query, fragment):
    status, _, body = get(server, f"/api/decode?{query}")
    assert status == 400 and fragment in json.loads(body)["error"]


def test_non_mvq_checkpoint_gets_a_clear_message(tmp_path, capsys):
    hvq = _checkpoint(tmp_path / "h" / "checkpoint", type="hvqvae")
    assert main(["explore", "--checkpoint", str(hvq), "--port", "0"]) == 2
    assert "holds a hvqvae checkpoint" in capsys.readouterr().err
