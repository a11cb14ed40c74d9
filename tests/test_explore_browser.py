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
from mvq.checkpoint import save_checkpoint
from mvq.config import Config, DataConfig
from mvq.models import build_model

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
                "--window-size=1200,900"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    drv.set_page_load_timeout(60)
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
