"""The Streamlit demo: rendered with Streamlit's AppTest, and driven in real headless Chromium."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retinaseg.core.fileio import atomic_path
from retinaseg.inference.loading import model_choices
from retinaseg.serving import load_served_mask
from tests.serving.helpers import png_bytes, png_header_only, stop_process_group, toy_fundus, wait_for_http_ok

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def image_captions(at) -> list[str]:
    """Captions of every st.image on the page, in order."""
    return [caption for image in at.get("image") for caption in image.captions]


@pytest.fixture()
def app_test(tiny_model_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RETINASEG_MODEL", str(tiny_model_dir))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_model_choices_put_the_default_first(tmp_path):
    models = tmp_path / "models"
    for name, complete in (("unet", True), ("attention_unet", True), ("half", False)):
        (models / name).mkdir(parents=True)
        (models / name / "model.json").write_text("{}")
        if complete:
            (models / name / "model.pt").write_bytes(b"x")
    assert model_choices("models:/retinaseg-vessels@champion", models) == [
        "models:/retinaseg-vessels@champion",
        str(models / "attention_unet"),
        str(models / "unet"),
    ]
    assert model_choices(str(models / "unet"), models) == [
        str(models / "unet"),
        str(models / "attention_unet"),
    ]


def test_app_renders_and_segments_an_example(app_test, tiny_model_dir):
    at = app_test
    assert at.title[0].value == "Retinal vessel segmentation"
    assert at.sidebar.selectbox[0].value == str(tiny_model_dir)  # RETINASEG_MODEL is the default
    assert at.sidebar.slider[0].value == 0.5  # the model card's threshold
    assert len(at.file_uploader) == 1 and not at.error
    at.radio(key="source").set_value("Bundled example").run()
    assert not at.exception and not at.error
    captions = image_captions(at)
    assert len(captions) == 3, captions
    assert captions[0].startswith("Original (256x256)") and captions[2] == "Overlay (threshold 0.50)"
    assert at.get("download_button")[0].label.startswith("Download the mask")
    # moving the threshold re-renders without recomputing the model output
    at.sidebar.slider[0].set_value(0.8).run()
    assert image_captions(at)[2] == "Overlay (threshold 0.80)"


@pytest.mark.slow
def test_app_explains_a_missing_champion(mlflow_uri, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("RETINASEG_MODEL", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception
    assert "Cannot load the model models:/retinaseg-vessels@champion" in at.sidebar.error[0].value
    assert "RETINASEG_MODEL" in at.sidebar.error[0].value
    assert not at.file_uploader  # the page stops: nothing to upload into


def test_app_rejects_a_bad_upload(app_test):
    at = app_test
    at.file_uploader[0].set_value(("notes.png", b"this is text, not a picture", "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1
    assert "notes.png" in at.error[0].value and "not an image" in at.error[0].value
    assert not image_captions(at)


def test_app_accepts_a_good_upload(app_test):
    at = app_test
    at.file_uploader[0].set_value(("eye.png", png_bytes(toy_fundus(4, 70, 90)[0]), "image/png")).run()
    assert not at.exception and not at.error
    assert image_captions(at) == ["Original (90x70)", "Vessel probability", "Overlay (threshold 0.50)"]
    assert at.get("download_button")[0].label.startswith("Download the mask")


def test_app_refuses_too_many_pixels_before_decoding(app_test):
    at = app_test
    # a header claiming 10000 x 6000 (60 MP) and no pixel data: refused by the header check (had it
    # been decoded, the error would say "truncated")
    at.file_uploader[0].set_value(("huge.png", png_header_only(10_000, 6_000), "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1
    assert (
        "huge.png" in at.error[0].value and "60,000,000 pixels; the limit is 50,000,000" in at.error[0].value
    )
    assert not image_captions(at)


def test_app_draws_a_large_image_smaller_and_keeps_the_upload_limit(app_test):
    at = app_test
    at.file_uploader[0].set_value(("big.png", png_bytes(toy_fundus(6, 1700, 2000)[0]), "image/png")).run()
    assert not at.exception and not at.error
    assert image_captions(at)[0] == "Original (2000x1700), shown at 1600x1360"
    assert at.file_uploader[0].proto.max_upload_size_mb == 50  # MAX_FILE_BYTES, in MiB


# ---------------------------------------------------------------------------------------------
# the real thing: streamlit run + headless Chromium
# ---------------------------------------------------------------------------------------------


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} not found: CI must install Chromium (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not found; install it with `apt-get install chromium` to run the browser test")


def _click_and_download(page, button) -> bytes:
    """Click the download button and return the file's bytes (the mask is encoded on the click, at
    the image's full size). Under a loaded machine (the whole suite, a training beside it) a click
    that lands while Streamlit is still finishing its rerun can be dropped, and no download starts
    (seen once in a full `make test`): then one more click, and a download must follow it. Streamlit
    also disables every widget while its page is reconnecting to a busy server (seen once with a
    training and the suite on two cores): each click waits for the button to be enabled first."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    try:
        expect(button).to_be_enabled(timeout=120_000)
        with page.expect_download(timeout=45_000) as fetched:
            button.click()
    except PlaywrightTimeoutError:
        expect(button).to_be_enabled(timeout=120_000)
        with page.expect_download(timeout=90_000) as fetched:
            button.click()
    return Path(fetched.value.path()).read_bytes()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_upload_shows_the_overlay(tiny_model_dir, free_port, tmp_path, repo_root):
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    from retinaseg.data.synthetic import generate_sample

    upload = tmp_path / "my_eye.png"
    upload.write_bytes(png_bytes(generate_sample(seed=11, size=192)[0][:150, :]))  # 150 x 192
    streamlit = Path(sys.executable).with_name("streamlit")
    cmd = [
        str(streamlit),
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(free_port),
        "--browser.gatherUsageStats",
        "false",
    ]
    env = {**os.environ, "RETINASEG_MODEL": str(tiny_model_dir)}
    log = tmp_path / "streamlit.log"
    screenshot = repo_root / "reports" / "screenshots" / "app.png"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            cmd, env=env, cwd=repo_root, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_http_ok(f"http://127.0.0.1:{free_port}/_stcore/health", proc, log, "streamlit", 60)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.goto(f"http://127.0.0.1:{free_port}/", wait_until="domcontentloaded")
                    expect(page.get_by_text("Retinal vessel segmentation")).to_be_visible(timeout=60_000)
                    page.locator("input[type='file']").set_input_files(str(upload))
                    overlay = page.locator("img[alt='overlay']")
                    expect(overlay).to_be_visible(timeout=90_000)
                    expect(page.get_by_text("Original (192x150)")).to_be_visible()
                    expect(page.get_by_text("Overlay (threshold 0.50)")).to_be_visible()
                    download = page.get_by_role("button", name="Download the mask (PNG, 0/255)")
                    expect(download).to_be_visible()
                    assert page.locator("img[alt='probability']").count() == 1
                    mask_png = _click_and_download(page, download)
                    with atomic_path(screenshot) as tmp:
                        page.screenshot(path=str(tmp), type="png", full_page=True)
                finally:
                    browser.close()
        finally:
            stop_process_group(proc)
    assert screenshot.stat().st_size > 10_000
    mask = load_served_mask(base64.b64encode(mask_png).decode())
    assert mask.shape == (150, 192) and set(np.unique(mask)) <= {0, 255}
