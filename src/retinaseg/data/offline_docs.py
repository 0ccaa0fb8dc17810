"""Make Great Expectations Data Docs work offline: CDN scripts and styles -> vendored copies.

GX (1.x) writes every Data Docs page with <script>/<link> tags that load jQuery, Bootstrap,
bootstrap-table, bootstrap-datepicker, Font Awesome and Vega from CDNs. Offline the pages stay blank:
their tables are built in the browser by bootstrap-table. :func:`make_docs_offline` rewrites a
built Data Docs folder in place:

* each known CDN URL -> the byte-identical copy under ``retinaseg/data/vendor/gx-data-docs/`` (fetched with
  ``npm pack``, see its README.md), copied with its licence into ``<docs>/static/vendor/`` so the
  folder stays self-contained; ``integrity``/``crossorigin`` attributes are dropped (browsers refuse
  ``crossorigin`` scripts from file:// URLs; the vendored files are checked against those
  hashes by the tests instead);
* Vega, Vega-Lite and Vega-Embed (about 1 MB) are only loaded by pages that draw a chart
  (``vegaEmbed(``): on other pages their tags are removed; on a page that draws one they are left as
  they are and reported;
* GX's logo from its S3 bucket -> the copy GX already writes to ``static/images/``; the dark-mode
  logo (not shipped by GX) -> ``none``; links into that ``static/`` folder are made relative to the
  docs root again (GX gets the favicon's depth wrong on validation pages).

Links (``<a href>``) are left alone: they load nothing. Anything else fetched from the network is
returned as "unresolved", so a GX upgrade that changes its CDN URLs is noticed (by the tests, and by
the caller, which should print the list as a warning).

Called by :mod:`retinaseg.data.validation` on every Data Docs build (the validate stage and
``retinaseg validate``); what stays remote is reported as a validation warning.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent / "vendor" / "gx-data-docs"
VENDOR_SUBDIR = "static/vendor"  # inside the Data Docs folder

# CDN URL (as GX 1.x writes it) -> file under VENDOR_DIR
ASSETS: dict[str, str] = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper.js-1.12.9/umd/popper.min.js"
    ),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap-4.3.1/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap-4.3.1/js/bootstrap.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table-1.19.1/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table-1.19.1/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (  # noqa: E501
        "bootstrap-table-1.19.1/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    # the index page asks for the minified file, the other pages for the plain one: same rules
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (  # noqa: E501
        "bootstrap-table-1.19.0/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (  # noqa: E501
        "bootstrap-table-1.19.0/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker-1.9.0/js/bootstrap-datepicker.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker-1.9.0/css/bootstrap-datepicker.min.css"
    ),
    # Font Awesome: the pages and bootstrap-table use solid icons only; fa-solid-900.woff2 is vendored
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome-free-6.6.0/css/all.min.css"
    ),
    # the same rules minified (the CDN file is the 880 KB unminified build)
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "bootstrap-dark-1.1.0/css/bootstrap-prefers-dark.min.css"
    ),
}
# files a vendored file loads itself (relative to VENDOR_DIR)
COMPANIONS: dict[str, tuple[str, ...]] = {
    "fontawesome-free-6.6.0/css/all.min.css": ("fontawesome-free-6.6.0/webfonts/fa-solid-900.woff2",),
}
# only needed by pages that draw a chart
CHART_SCRIPTS = (
    "https://cdn.jsdelivr.net/npm/vega@5",
    "https://cdn.jsdelivr.net/npm/vega-lite@5",
    "https://cdn.jsdelivr.net/npm/vega-embed@6",
)
_GX_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
_GX_LOGO = re.compile(re.escape(_GX_ASSETS) + r"logo-long\.png(\?[^\"'\s)]*)?")
_GX_DARK_LOGO = re.compile(r"url\(\s*['\"]?" + re.escape(_GX_ASSETS) + r"full_logo_dark\.png['\"]?\s*\)")

# GX's own static/ folder, at the docs root (GX 1.x gets the depth wrong for the favicon of a
# validation page: ../../../ instead of ../../../../)
_LOCAL_STATIC = re.compile(r"\b(?P<attr>src|href)=\"(?:\./|(?:\.\./)+)static/")
_SCRIPT = re.compile(r"<script\b[^>]*?\bsrc=\"(?P<url>https?://[^\"]+)\"[^>]*>\s*</script>", re.I)
_LINK = re.compile(r"<link\b[^>]*?\bhref=\"(?P<url>https?://[^\"]+)\"[^>]*>", re.I)
# what is still fetched from the network after the rewrite (links <a href> load nothing)
_REMOTE = re.compile(
    r"<(?:script|img|iframe|source|embed)\b[^>]*?\bsrc=[\"']?(?P<src>(?:https?:)?//[^\"'\s>]+)"
    r"|<link\b[^>]*?\bhref=[\"']?(?P<href>(?:https?:)?//[^\"'\s>]+)"
    r"|url\(\s*[\"']?(?P<url>(?:https?:)?//[^\"')\s]+)"
    r"|@import\s+[\"'](?P<imp>(?:https?:)?//[^\"']+)",
    re.I,
)


@dataclass
class OfflineReport:
    pages: int = 0  # HTML pages rewritten
    assets: list[str] = field(default_factory=list)  # vendored files copied (relative to VENDOR_DIR)
    unresolved: dict[str, list[str]] = field(default_factory=dict)  # page -> remote URLs still loaded

    def lines(self) -> list[str]:
        return [f"{page}: still loads {url}" for page, urls in self.unresolved.items() for url in urls]


def remote_resources(page: str) -> list[str]:
    """URLs a page would fetch from the network (scripts, styles, images, CSS url()/@import)."""
    found = []
    for match in _REMOTE.finditer(page):
        url = next(group for group in match.groups() if group)
        if url not in found:
            found.append(url)
    return found


def _rewrite_page(text: str, rel_vendor: str, rel_docs: str, used: set[str]) -> str:
    draws_charts = "vegaEmbed(" in text

    def script(match: re.Match[str]) -> str:
        url = match["url"]
        if url in ASSETS:
            used.add(ASSETS[url])
            return f'<script src="{rel_vendor}/{ASSETS[url]}"></script>'
        if url in CHART_SCRIPTS and not draws_charts:
            return ""
        return match[0]

    def link(match: re.Match[str]) -> str:
        url = match["url"]
        if url in ASSETS and re.search(r"\brel=\"?stylesheet", match[0], re.I):
            used.add(ASSETS[url])
            return f'<link rel="stylesheet" href="{rel_vendor}/{ASSETS[url]}">'
        return match[0]

    text = _SCRIPT.sub(script, text)
    text = _LINK.sub(link, text)
    text = _LOCAL_STATIC.sub(lambda m: f'{m["attr"]}="{rel_docs}/static/', text)
    text = _GX_LOGO.sub(f"{rel_docs}/static/images/logo-long.png", text)
    return _GX_DARK_LOGO.sub("none", text)


def make_docs_offline(docs_dir: str | Path, vendor_dir: str | Path = VENDOR_DIR) -> OfflineReport:
    """Rewrite every ``*.html`` under ``docs_dir`` (a built GX Data Docs site) to load only local
    files, and copy the vendored files they use into ``docs_dir/static/vendor/``. Idempotent.

    Returns an :class:`OfflineReport`; ``report.unresolved`` (page -> URLs) lists what a page still
    loads from the network (empty when the site works offline). Raises FileNotFoundError when
    ``docs_dir`` has no ``index.html`` or a vendored file is missing."""
    docs_dir, vendor_dir = Path(docs_dir), Path(vendor_dir)
    if not (docs_dir / "index.html").is_file():
        raise FileNotFoundError(f"{docs_dir}: no index.html; not a built Data Docs site")
    needed = set(ASSETS.values()) | {extra for extras in COMPANIONS.values() for extra in extras}
    missing = sorted(rel for rel in needed if not (vendor_dir / rel).is_file())
    if missing:
        raise FileNotFoundError(f"{vendor_dir}: vendored files missing: {', '.join(missing)}")

    report = OfflineReport()
    used: set[str] = set()
    for page in sorted(docs_dir.rglob("*.html")):
        rel_docs = Path(os.path.relpath(docs_dir, page.parent)).as_posix()
        rel_vendor = f"{rel_docs}/{VENDOR_SUBDIR}" if rel_docs != "." else VENDOR_SUBDIR
        text = page.read_text(encoding="utf-8")
        new = _rewrite_page(text, rel_vendor, rel_docs, used)
        if new != text:
            page.write_text(new, encoding="utf-8")
            report.pages += 1
        remote = remote_resources(new)
        if remote:
            report.unresolved[page.relative_to(docs_dir).as_posix()] = remote

    target = docs_dir / VENDOR_SUBDIR
    files = sorted(used | {extra for rel in used for extra in COMPANIONS.get(rel, ())})
    packages = sorted({Path(rel).parts[0] for rel in files})
    licences = [f"{pkg}/{name}" for pkg in packages for name in ("LICENSE", "LICENSE.txt")]
    for rel in files + [lic for lic in licences if (vendor_dir / lic).is_file()]:  # licences travel along
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vendor_dir / rel, target / rel)
    report.assets = files
    return report
