"""Regenerate the web demo's bundled example images (``app/examples/*.png``).

They come from the project's synthetic fundus generator with fixed seeds, so the files are
reproducible: ``python app/make_examples.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retinaseg.core.fileio import write_png
from retinaseg.data.synthetic import generate_sample

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLES = {"synthetic_eye_1": 101, "synthetic_eye_2": 202, "synthetic_eye_3": 303}  # name -> seed
SIZE = 256


def make_examples(out_dir: Path = EXAMPLES_DIR, size: int = SIZE) -> list[Path]:
    """Write one PNG per entry of ``EXAMPLES`` into ``out_dir``; returns the paths."""
    paths = []
    for name, seed in EXAMPLES.items():
        image, _, _ = generate_sample(seed=seed, size=size)
        path = out_dir / f"{name}.png"
        write_png(path, image)
        paths.append(path)
    return paths


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    parser.add_argument("--size", type=int, default=SIZE)
    args = parser.parse_args()
    for path in make_examples(args.out, args.size):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
