"""retinaseg.data.offline_docs: Great Expectations Data Docs rewritten to load vendored files only."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / "src" / "retinaseg" / "data" / "vendor" / "gx-data-docs"
CHROMIUM = Path("/usr/bin/chromium")


from retinaseg.data import offline_docs  # noqa: E402


def _gx_templates() -> Path:
    spec = importlib.util.find_spec("great_expectations")
    if spec is None or spec.origin is None:
        pytest.skip("great_expectations is not installed")
    return Path(spec.origin).parent / "render" / "view" / "templates"


def test_vendored_files_are_the_upstream_bytes():
    listed = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    on_disk = {
        p.relative_to(VENDOR).as_posix()
        for p in VENDOR.rglob("*")
        if p.is_file() and not p.name.startswith("LICENSE") and p.name not in {"README.md", "SHA256SUMS"}
    }
    assert on_disk == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    # every package travels with its licence
    for package in {Path(name).parts[0] for name in listed}:
        assert list((VENDOR / package).glob("LICENSE*")), package


def test_vendored_files_match_the_integrity_hashes_gx_pins():
    pinned = re.findall(
        r'src="(https://[^"]+)"\s+integrity="sha384-([^"]+)"',
        (_gx_templates() / "js_script_imports.j2").read_text(),
    )
    assert pinned, "GX no longer pins any script with an SRI hash; update this test"
    for url, expected in pinned:
        data = (VENDOR / offline_docs.ASSETS[url]).read_bytes()
        assert base64.b64encode(hashlib.sha384(data).digest()).decode() == expected, url


def test_every_cdn_url_in_the_installed_gx_templates_is_handled():
    """Fails after a GX upgrade that changes a CDN URL: vendor the new file (see vendor/gx-data-docs)."""
    urls = set()
    for template in _gx_templates().glob("*.j2"):
        text = template.read_text()
        urls |= set(re.findall(r'<script\b[^>]*\bsrc="(https?://[^"]+)"', text))
        urls |= set(re.findall(r'<link\b[^>]*\bhref="(https?://[^"]+)"', text))
    assert urls, "no CDN URL found in the GX templates; has their location changed?"
    unhandled = sorted(urls - set(offline_docs.ASSETS) - set(offline_docs.CHART_SCRIPTS))
    assert not unhandled


S3 = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com"
PAGE = """<html><head>
<link href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" rel="stylesheet">
<style>.navbar-brand a { background: url('{S3}/full_logo_dark.png') 0 0 no-repeat; }</style>
<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>
<link rel="stylesheet" href="https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css">
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js"
  integrity="sha384-x" crossorigin="anonymous"></script>
<link rel="shortcut icon" href="../../static/images/favicon.ico" type="image/x-icon"/>
</head><body>
<img src="{S3}/logo-long.png?d=20260101T000000Z">
<a href="https://greatexpectations.io">a link loads nothing</a>
{body}
</body></html>
"""


def _site(root: Path, body: str = "") -> Path:
    docs = root / "docs"
    (docs / "validations" / "suite" / "run").mkdir(parents=True)
    page = PAGE.replace("{S3}", S3).replace("{body}", body)
    (docs / "index.html").write_text(page)
    (docs / "validations" / "suite" / "run" / "batch.html").write_text(page)
    return docs


def test_rewrites_cdn_urls_to_relative_vendored_copies(tmp_path):
    docs = _site(tmp_path)
    report = offline_docs.make_docs_offline(docs)
    assert report.pages == 2 and report.unresolved == {}
    nested = (docs / "validations" / "suite" / "run" / "batch.html").read_text()
    assert '<script src="../../../static/vendor/jquery-3.7.1/jquery.min.js"></script>' in nested
    assert '<script src="../../../static/vendor/bootstrap-4.3.1/js/bootstrap.min.js"></script>' in nested
    assert 'src="../../../static/images/logo-long.png"' in nested
    assert 'href="../../../static/images/favicon.ico"' in nested  # GX's wrong depth, corrected
    assert 'href="./static/images/favicon.ico"' in (docs / "index.html").read_text()
    index = (docs / "index.html").read_text()
    assert '<link rel="stylesheet" href="static/vendor/bootstrap-4.3.1/css/bootstrap.min.css">' in index
    for page in (index, nested):
        assert "integrity=" not in page and "crossorigin" not in page  # file:// refuses CORS scripts
        assert "vega" not in page  # no chart on the page: the 1 MB of Vega is not loaded
        assert "background: none 0 0 no-repeat" in page
        assert '<a href="https://greatexpectations.io">' in page  # links stay
        assert offline_docs.remote_resources(page) == []
    vendored = docs / "static" / "vendor"
    for rel in (
        "jquery-3.7.1/jquery.min.js",
        "jquery-3.7.1/LICENSE.txt",
        "fontawesome-free-6.6.0/webfonts/fa-solid-900.woff2",  # loaded by all.min.css
        "fontawesome-free-6.6.0/LICENSE.txt",
    ):
        assert (vendored / rel).is_file(), rel
    assert not (vendored / "bootstrap-datepicker-1.9.0").exists()  # only what the pages use
    # idempotent
    again = offline_docs.make_docs_offline(docs)
    assert again.pages == 0 and again.unresolved == {}
    assert (docs / "index.html").read_text() == index


def test_a_page_that_draws_a_chart_keeps_vega_and_is_reported(tmp_path):
    docs = _site(tmp_path, body="<script>vegaEmbed('#chart', spec);</script>")
    report = offline_docs.make_docs_offline(docs)
    assert report.unresolved["index.html"] == ["https://cdn.jsdelivr.net/npm/vega@5"]
    assert "index.html: still loads https://cdn.jsdelivr.net/npm/vega@5" in report.lines()


def test_unknown_cdn_urls_are_reported_not_dropped(tmp_path):
    docs = _site(tmp_path, body='<script src="https://example.org/new-lib@2.js"></script>')
    report = offline_docs.make_docs_offline(docs)
    assert report.unresolved["index.html"] == ["https://example.org/new-lib@2.js"]
    assert "https://example.org/new-lib@2.js" in (docs / "index.html").read_text()


def test_refuses_a_folder_that_is_not_a_data_docs_site(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a built Data Docs site"):
        offline_docs.make_docs_offline(tmp_path)


@pytest.fixture(scope="module")
def real_docs(tmp_path_factory) -> Path:
    """Data Docs as the project's own generate + validate stages build them (tiny synthetic set)."""
    root = tmp_path_factory.mktemp("gx-site")
    shutil.copytree(REPO / "stages", root / "stages")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(n_train=4, n_test=2, size=128)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
    for stage in ("generate", "validate"):
        proc = subprocess.run(
            [sys.executable, f"stages/{stage}.py"], cwd=root, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "reports" / "validation" / "docs"  # made offline by the validate stage itself


@pytest.mark.slow
def test_real_data_docs_load_only_local_files(real_docs):
    pages = sorted(real_docs.rglob("*.html"))
    assert len(pages) >= 3  # index, expectation suite, validation result
    for page in pages:
        text = page.read_text()
        assert offline_docs.remote_resources(text) == [], page
        for ref in re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"#]+)"', text):
            if "://" not in ref:
                assert (page.parent / ref).resolve().is_file(), (page, ref)


@pytest.mark.browser
@pytest.mark.slow
def test_real_data_docs_render_in_a_browser_without_network(real_docs):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found: CI must install Chromium (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found; install it with `apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    pages = [real_docs / "index.html", *sorted((real_docs / "validations").rglob("*.html"))]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
        try:
            for path in pages:
                page = browser.new_page()
                remote, errors = [], []

                def offline(route, remote=remote):
                    if route.request.url.startswith(("file:", "data:")):
                        route.continue_()
                    else:
                        remote.append(route.request.url)
                        route.abort()

                page.route("**/*", offline)
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.goto(path.as_uri())
                # bootstrap-table fills the tables in the browser: rows appear only when the scripts ran
                rows = "table[data-toggle='table'] tbody tr"
                page.wait_for_selector(rows, state="attached", timeout=15_000)
                assert page.evaluate("typeof jQuery === 'function' && typeof jQuery.fn.bootstrapTable"), path
                assert remote == [] and errors == [], (path, remote, errors)
                page.close()
        finally:
            browser.close()
