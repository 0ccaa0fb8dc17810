"""Peak resident memory of the training input pipeline over a FIVES-sized set (800 images at 2048²).

Generates a synthetic processed split in a temporary folder (``benchmarks/synthetic_split.py``: the
layout the preprocess stage writes, PNG), builds the training dataset and its DataLoader exactly as
the engine does (:func:`retinaseg.training.engine._build_data`: per-item decoding, the decoded-image
cache of ``base.cache_mb`` divided among the ``--workers`` persistent workers, prefetch), iterates one
epoch, and samples the resident set (VmRSS) of the process and its worker processes every 50 ms. The
peak of that sum must stay under ``--limit-gb`` (4 GB), measured as proportional set size (PSS:
pages shared by the forked workers counted once; the plain sum of RSS is reported too): the dataset
holds at most the cache's budget of decoded images, so it does not grow with the number of images.

    python benchmarks/fives_rss.py                  # 800 × 2048², about 10 minutes on 2 cores
    python benchmarks/fives_rss.py --n 40 --size 1024
    python benchmarks/fives_rss.py --quick          # smoke test: 8 × 256²

Prints the figures and writes ``reports/benchmarks/fives_rss.json``. Exit status 1 when the peak is
over the limit.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_split import write_split  # noqa: E402

from retinaseg.core.config import load_params  # noqa: E402
from retinaseg.core.fileio import write_json  # noqa: E402
from retinaseg.training.distributed import DistInfo  # noqa: E402
from retinaseg.training.engine import _build_data, build_train_dataset  # noqa: E402

DEFAULT_OUT = Path("reports/benchmarks/fives_rss.json")


def _memory_bytes(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process: PSS shares each page among the processes mapping it, so the PSS of
    forked workers does not count the parent's copy-on-write pages again."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":", 1)[0] + ":"
            if key in values:
                values[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values["Rss:"], values["Pss:"]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree_memory(pid: int | None = None) -> tuple[int, int]:
    """(RSS, PSS) bytes of ``pid`` (default: this process) and all its descendants, summed."""
    pid = os.getpid() if pid is None else pid
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        r, q = _memory_bytes(p)
        rss, pss = rss + r, pss + q
        todo += _children(p)
    return rss, pss


class PeakSampler:
    """Samples :func:`tree_memory` in a background thread; ``peak_rss``/``peak_pss``: the largest seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self._stop = interval, threading.Event()
        self.peak_rss, self.peak_pss = tree_memory()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, pss = tree_memory()
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def generate(root: Path, n: int, size: int, jobs: int) -> float:
    """Write the synthetic split ``root/train`` with ``jobs`` processes; returns the seconds taken."""
    start = time.perf_counter()
    split = root / "train"
    chunks = [(k, min(n, k + max(1, n // jobs))) for k in range(0, n, max(1, n // jobs))]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        parts = [pool.submit(write_split, root / f"part{a}", b - a, size, a) for a, b in chunks]
        for f in parts:
            f.result()
    header, rows = None, []
    for sub in ("images", "masks", "fov"):
        (split / sub).mkdir(parents=True, exist_ok=True)
    for a, _ in chunks:  # merge the parts (renames; ids made unique by the part's offset)
        part = root / f"part{a}"
        lines = (part / "index.csv").read_text().splitlines()
        header = lines[0]
        for line in lines[1:]:
            sid = line.split(",", 1)[0]
            new = f"p{a}_{sid}"
            for sub in ("images", "masks", "fov"):
                (part / sub / f"{sid}.png").rename(split / sub / f"{new}.png")
            rows.append(line.replace(sid, new))
    (split / "index.csv").write_text("\n".join([header, *rows]) + "\n")
    return time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=800, help="images (FIVES: 800)")
    p.add_argument("--size", type=int, default=2048, help="image side (FIVES: 2048)")
    p.add_argument("--crop", type=int, default=512, help="augment.crop_size (0 = whole images)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (base.workers)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating the set")
    p.add_argument("--limit-gb", type=float, default=4.0)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument(
        "--dir", type=Path, default=None, help="generate here (kept, reused) instead of a temp dir"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 8 images of 256², crop 128")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.size, args.crop = 8, 256, 128
    return args


def _already_there(root: Path, n: int, size: int) -> bool:
    index = root / "train" / "index.csv"
    if not index.is_file():
        return False
    rows = index.read_text().splitlines()[1:]
    return len(rows) == n and all(r.split(",")[6] == str(size) for r in rows)


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    # a kept --dir holding the same set is reused (generation takes most of the run's time)
    reuse = args.dir is not None and _already_there(root, args.n, args.size)
    gen_s = 0.0 if reuse else generate(root, args.n, args.size, max(1, args.jobs))
    disk = sum(f.stat().st_size for f in (root / "train").rglob("*.png"))
    params = load_params(
        args.params,
        {
            "base.device": "cpu",
            "base.workers": args.workers,
            "preprocess.size": args.size,
            "augment.crop_size": args.crop,
            "train.batch_size": args.batch,
        },
    )
    baseline_rss, baseline_pss = tree_memory()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        train = build_train_dataset(params, root / "train", args.workers)
        data = _build_data(params, train, train, "-", torch.device("cpu"), DistInfo())
        data.sampler.set_epoch(1)
        images = 0
        for batch in data.train_loader:
            images += len(batch["image"])
        del data
    seconds = time.perf_counter() - start
    peak = sampler.peak_pss
    return {
        "n": args.n,
        "size": args.size,
        "crop": args.crop,
        "batch": args.batch,
        "workers": args.workers,
        "cache_mb": params.base.cache_mb,
        "images_seen": images,
        "png_bytes_on_disk": disk,
        "decoded_bytes_if_held": args.n * args.size * args.size * 5,  # RGB + mask + fov, uint8
        "generate_seconds": round(gen_s, 1),
        "epoch_seconds": round(seconds, 1),
        "images_per_s": round(images / seconds, 2),
        "pss_before_mb": round(baseline_pss / 2**20, 1),
        "rss_before_mb": round(baseline_rss / 2**20, 1),
        "peak_pss_mb": round(peak / 2**20, 1),
        "peak_rss_sum_mb": round(sampler.peak_rss / 2**20, 1),
        "limit_mb": round(args.limit_gb * 1024, 1),
        "under_limit": peak < args.limit_gb * 2**30,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        result = measure(args, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="fives_rss_") as tmp:
            result = measure(args, Path(tmp))
    report = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "quick": args.quick,
        "measured": (
            "peak memory of this process + its DataLoader workers, sampled every 50 ms: PSS (the limit's "
            "measure: shared pages counted once) and the plain sum of RSS (counts the parent's pages "
            "again in every forked worker)"
        ),
        **result,
    }
    write_json(args.out, report)
    print(
        f"{result['n']} images {result['size']}² (PNG {result['png_bytes_on_disk'] / 2**30:.2f} GiB on disk, "
        f"{result['decoded_bytes_if_held'] / 2**30:.1f} GiB if held decoded): one epoch "
        f"({result['images_seen']} crops of {result['crop']}, {result['workers']} workers) in "
        f"{result['epoch_seconds']} s, {result['images_per_s']} images/s; peak PSS "
        f"{result['peak_pss_mb']} MB (before: {result['pss_before_mb']} MB; limit {result['limit_mb']} MB; "
        f"sum of RSS {result['peak_rss_sum_mb']} MB) -> "
        f"{'ok' if result['under_limit'] else 'OVER THE LIMIT'}"
    )
    print(f"wrote {args.out}")
    return 0 if result["under_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
