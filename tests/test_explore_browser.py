"""The explorer in a real browser: Debian's chromium + chromium-driver driven by selenium.

`make test` installs chromium (scripts/install-browser.sh, as root); without it this skips
and says so. The screenshot lands in tests/artifacts/ (git-ignored)."""

import json
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_model_config

from mvq.analysis.explore import make_server
from mvq.configuration.config import Config, DataConfig
from mvq.inference.tokens import encode_dataset
from mvq.models import build_model
from mvq.saved.checkpoint import save_checkpoint
from mvq.train.prior import PriorTraining, train_prior

ARTIFACTS = Path(__file__).parent / "artifacts"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium / chromedriver not installed: run `make setup` as root, or "
                    "apt-get install chromium chromium-driver")
    return browser, driver


@pytest.fixture()
def browser():
    path, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed "
                                    "(pip install -r requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = path
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    drv.set_page_load_timeout(60)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # a 1280x800 page
        "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    yield drv
    drv.quit()


@pytest.fixture()
def server(tmp_path):
    cfg = Config(model=tiny_model_config(factor=14), data=DataConfig(name="shapes"))
    ck = save_checkpoint(tmp_path / "checkpoint", build_model(cfg.model), cfg, step=0)
    srv = make_server(ck, port=0, images=8)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def prior_server(tmp_path):
    cfg = Config(model=tiny_model_config(factor=14), data=DataConfig(name="shapes"))
    ck = save_checkpoint(tmp_path / "checkpoint", build_model(cfg.model), cfg, step=0)
    tokens = encode_dataset(ck, tmp_path / "tokens.safetensors", limit=16, batch_size=16,
                            device="cpu", progress=False)
    sizes = {"primary": dict(n_layer=1, n_head=2, n_embd=16),
             "secondary": dict(n_layer=1, n_head=2, n_embd=16)}
    settings = PriorTraining(steps=2, batch_size=8, sizes=sizes, val_fraction=0.25, val_every=2)
    prior = train_prior(tokens, tmp_path / "prior", settings, progress=False, device="cpu")
    srv = make_server(ck, port=0, images=8, prior=prior["checkpoint"])
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _api(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_toggling_a_bit_in_the_browser_changes_the_decoded_image(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = f"http://127.0.0.1:{server.server_address[1]}"
    mask = _api(f"{base}/api/image/0")["mask"]
    shown = _api(f"{base}/api/decode?image=0&mask={mask}")["images"][0]
    for k in range(len(mask)):  # a bit whose flip changes the 8-bit image of this tiny model
        flipped = mask[:k] + ("0" if mask[k] == "1" else "1") + mask[k + 1:]
        if _api(f"{base}/api/decode?image=0&mask={flipped}")["images"][0] != shown:
            break
    else:
        pytest.fail("no single bit changes the decoded image of this model")

    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == mask)
    before = browser.find_element(By.ID, "recon").get_attribute("src")
    assert before == shown
    button = browser.find_element(By.ID, f"bit-{k}")
    button.send_keys(" ")  # from the keyboard: Space on the focused bit toggles it
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == flipped)
    after = browser.find_element(By.ID, "recon").get_attribute("src")
    assert after != before
    assert button.get_attribute("aria-pressed") == ("true" if flipped[k] == "1" else "false")
    assert browser.find_element(By.ID, "error").text == ""
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "explore.png"))


def test_the_atlas_thumbnail_of_a_bit_is_what_toggling_that_bit_shows(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = f"http://127.0.0.1:{server.server_address[1]}"
    mask = _api(f"{base}/api/image/0")["mask"]
    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)

    def ready(want):
        return lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == want

    wait.until(ready(mask))
    cards = browser.find_elements(By.CSS_SELECTOR, "#flips .flip")
    assert len(cards) == len(mask)
    changes = [float(c.get_attribute("data-change")) for c in cards]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    assert "dark red = the" in browser.find_element(By.ID, "atlas").text  # the legend
    for rank in (0, len(cards) // 2):  # the largest change and one from the middle
        card = browser.find_elements(By.CSS_SELECTOR, "#flips .flip")[rank]
        k = int(card.get_attribute("data-bit"))
        thumb = card.find_element(By.TAG_NAME, "img").get_attribute("src")
        flipped = mask[:k] + ("0" if mask[k] == "1" else "1") + mask[k + 1:]
        assert thumb == _api(f"{base}/api/decode?image=0&mask={flipped}")["images"][0]
        card.send_keys(" ")  # from the keyboard: Space on the focused card applies its flip
        wait.until(ready(flipped))
        assert browser.find_element(By.ID, "recon").get_attribute("src") == thumb
        bit = browser.find_element(By.ID, f"bit-{k}")
        assert "edited" in bit.get_attribute("class")  # marked: differs from the encoded mask
        back = browser.find_element(By.ID, f"flip-{k}")  # its card now flips it back
        assert "edited" in back.get_attribute("class")
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "explore_atlas.png"))
        browser.find_element(By.TAG_NAME, "body").send_keys("r")  # back to the encoded mask
        wait.until(ready(mask))
    assert browser.find_element(By.ID, "error").text == ""



def test_prior_panel_keeps_a_sample_and_redraws_its_masks(browser, prior_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = f"http://127.0.0.1:{prior_server.server_address[1]}"
    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)

    def body(key, want):
        return lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(f"data-{key}") == want

    wait.until(body("samples", "seed=0&n=8"))
    want = _api(f"{base}/api/prior/samples?seed=0&n=8")["images"]
    shown = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, "#samples img")]
    assert shown == want
    browser.find_element(By.ID, "sample-2").send_keys(" ")
    wait.until(body("masked", "2:0"))
    browser.find_element(By.TAG_NAME, "body").send_keys("m")  # new masks from the keyboard
    wait.until(body("masked", "2:1"))
    got = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, "#masked img")]
    assert got == _api(f"{base}/api/prior/masks?seed=0&n=8&pick=2&draw=1&count=8")["images"]
    assert browser.find_element(By.ID, "error").text == ""
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "explore_prior.png"))
