"""Render the DVC plots to static SVG and PNG files and an offline HTML page (no CDN, no network).

`dvc plots show` writes dvc_plots/index.html, which loads Vega from a CDN and shows blank charts
offline. This script asks DVC for the filled Vega-Lite specs (`dvc plots show --json`, or
`dvc plots diff --json REV...` with --diff) and renders each one locally with vl-convert:

    python scripts/render_plots.py                       # every plot in dvc.yaml, the workspace
    python scripts/render_plots.py roc precision_recall  # only these plot ids
    python scripts/render_plots.py --diff main           # the workspace against main, one chart per plot

Writes <out>/rendered/<plot>.svg and .png and <out>/static.html (default out: dvc_plots/); the
page embeds every image, so it can be opened, mailed or archived on its own.
Exit status: 0 when every plot rendered, 1 when there was nothing to plot or DVC/vl-convert failed;
data files missing for some plots are listed as warnings.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PNG_SCALE = 2.0  # PNGs at twice the spec's pixel size (crisp on high-density screens)


class RenderError(RuntimeError):
    """Something the user must fix; the message says what."""


@dataclass
class Rendered:
    plot_id: str
    revisions: list[str]
    svg: Path | None = None
    png: Path | None = None
    images: list[tuple[str, Path]] = field(default_factory=list)  # image plots: (revision, file)


def find_dvc() -> str:
    """The dvc executable next to this Python (a virtual environment's), else the one on PATH."""
    sibling = Path(sys.executable).with_name("dvc")
    if sibling.is_file():
        return str(sibling)
    found = shutil.which("dvc")
    if found is None:
        raise RenderError("dvc not found next to this Python or on PATH (run `make venv`)")
    return found


def collect(targets: list[str], diff: list[str] | None, out: Path, dvc: str | None = None) -> dict:
    """DVC's JSON for the plots: {"data": {plot_id: [entry, ...]}, "errors": [...]}.

    A Vega entry is {"type": "vega", "revisions": [...], "content": <Vega-Lite spec with its data>};
    an image entry is {"type": "image", "revisions": [rev], "url": <file DVC copied under out>}."""
    cmd = [dvc or find_dvc(), "plots"]
    if diff is None:
        cmd += ["show", *targets]
    else:
        cmd += ["diff", *diff] + (["--targets", *targets] if targets else [])
    # `--json` is hidden from `dvc plots --help` but is what the VS Code extension and Studio use
    cmd += ["--json", "--out", str(out / "dvc_images")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RenderError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    try:
        payload = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise RenderError(f"`{' '.join(cmd[1:])}` printed something other than JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RenderError(f"`{' '.join(cmd[1:])}` printed unexpected JSON: {proc.stdout[:200]}")
    return payload


def describe_errors(errors: list[dict]) -> list[str]:
    """One line per DVC error (a missing data file, a bad definition)."""
    lines = []
    for err in errors:
        where = " ".join(
            part
            for part in (
                f"plot {err['name']}" if err.get("name") else "",
                f"revision {err['rev']}" if err.get("rev") else "",
                f"file {err['source']}" if err.get("source") else "",
            )
            if part
        )
        what = err.get("msg") or err.get("type") or "error"
        lines.append(f"{where}: {what}" if where else what)
    return lines


def safe_name(plot_id: str) -> str:
    """A file name for a plot id (ids may be paths such as reports/x.csv)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", plot_id).strip("._")
    return name or "plot"


def render_all(payload: dict, out: Path) -> list[Rendered]:
    """Render every plot of DVC's JSON payload into out/rendered/; returns what was written.
    Raises RenderError when the payload holds no plot with data."""
    try:
        import vl_convert as vlc
    except ImportError:
        raise RenderError(
            "vl-convert-python is not installed: run `make venv` (or `pip install vl-convert-python`)"
        ) from None

    data = payload.get("data") or {}
    if not any(data.values()):
        problems = describe_errors(payload.get("errors") or [])
        hint = (
            "no plots are defined (dvc.yaml has no `plots:` and no stage marks an output as a plot)"
            if not data
            else "the plots' data files do not exist yet; "
            "run the pipeline first (`make pipeline` or `dvc repro`)"
        )
        detail = "".join(f"\n  {line}" for line in problems)
        raise RenderError(f"nothing to plot: {hint}{detail}")

    folder = out / "rendered"
    folder.mkdir(parents=True, exist_ok=True)
    rendered: list[Rendered] = []
    used: set[str] = set()
    for plot_id, entries in data.items():
        if not entries:
            continue
        stem = safe_name(plot_id)
        while stem in used:
            stem += "_"
        used.add(stem)
        item = Rendered(plot_id=plot_id, revisions=[])
        for entry in entries:
            revisions = [str(rev) for rev in entry.get("revisions") or []]
            item.revisions += [rev for rev in revisions if rev not in item.revisions]
            if entry.get("type") == "vega":
                spec = entry["content"]
                try:
                    # allowed_base_urls=[]: a spec may not fetch anything; DVC inlines all data
                    svg = vlc.vegalite_to_svg(spec, allowed_base_urls=[])
                    png = vlc.vegalite_to_png(spec, scale=PNG_SCALE, allowed_base_urls=[])
                except Exception as exc:  # vl-convert raises plain ValueError/RuntimeError
                    raise RenderError(f"plot {plot_id}: vl-convert could not render it: {exc}") from None
                item.svg = folder / f"{stem}.svg"
                item.png = folder / f"{stem}.png"
                item.svg.write_text(svg, encoding="utf-8")
                item.png.write_bytes(png)
            elif entry.get("type") == "image":
                src = Path(entry.get("url", ""))
                if src.is_file():
                    dest = folder / f"{stem}_{safe_name('_'.join(revisions))}{src.suffix}"
                    shutil.copyfile(src, dest)
                    item.images.append((", ".join(revisions), dest))
        rendered.append(item)
    return rendered


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
section {{ display: inline-block; vertical-align: top; margin: 0 2rem 2rem 0; }}
h2 {{ font-size: 1rem; margin: 0 0 .3rem; }}
p.meta {{ font-size: .8rem; color: #666; margin: 0 0 .5rem; }}
p.warn {{ color: #a33; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="meta">{subtitle}</p>
{warnings}
{sections}
</body>
</html>
"""


def _data_uri(path: Path) -> str:
    mime = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower(), "application/octet-stream"
    )
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def write_html(rendered: list[Rendered], warnings: list[str], out: Path, title: str) -> Path:
    """out/static.html: every image inlined as a data: URI (each SVG stays isolated, so the ids
    inside one chart never clash with another's), links to the SVG/PNG files beside it."""
    sections = []
    for item in rendered:
        esc_id = html.escape(item.plot_id)
        revs = html.escape(", ".join(item.revisions))
        body = []
        if item.svg is not None:
            links = " · ".join(
                f'<a href="{html.escape(p.relative_to(out).as_posix())}">{p.suffix[1:].upper()}</a>'
                for p in (item.svg, item.png)
                if p is not None
            )
            body.append(f'<img src="{_data_uri(item.svg)}" alt="{esc_id}">')
            body.append(f'<p class="meta">revisions: {revs} · {links}</p>')
        for rev, path in item.images:
            body.append(f'<img src="{_data_uri(path)}" alt="{esc_id} ({html.escape(rev)})">')
            body.append(f'<p class="meta">revision: {html.escape(rev)}</p>')
        sections.append(f"<section>\n<h2>{esc_id}</h2>\n" + "\n".join(body) + "\n</section>")
    warn_html = "".join(f'<p class="warn">{html.escape(line)}</p>\n' for line in warnings)
    page = _PAGE.format(
        title=html.escape(title),
        subtitle="Rendered offline from <code>dvc plots --json</code> by scripts/render_plots.py.",
        warnings=warn_html,
        sections="\n".join(sections),
    )
    path = out / "static.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="plot ids or data files (default: every plot)")
    parser.add_argument("-o", "--out", default="dvc_plots", help="output folder (default: dvc_plots)")
    parser.add_argument(
        "--diff",
        nargs="*",
        metavar="REV",
        default=None,
        help="`dvc plots diff` these revisions instead of showing the workspace (none: HEAD vs workspace)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        payload = collect(args.targets, args.diff, out)
        rendered = render_all(payload, out)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    warnings = describe_errors(payload.get("errors") or [])
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    title = "DVC plots" if args.diff is None else f"DVC plots: diff {' '.join(args.diff) or 'HEAD'}"
    page = write_html(rendered, warnings, out, title)
    for item in rendered:
        files = [p for p in (item.svg, item.png) if p is not None] + [p for _, p in item.images]
        print(f"{item.plot_id}: {', '.join(str(p) for p in files)}")
    print(f"-> {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
