"""A synthetic fundus generator: images that look like retinal photographs, with exact vessel masks.

The built-in default dataset, so the whole pipeline runs without downloading anything. Each sample is a
pure function of ``(seed, size)``:

- a circular field of view (FOV), black outside;
- an orange-red background with illumination falling off toward the rim and fine choroidal texture;
- a bright yellowish optic disc on one side (left or right eye) and a darker macula about 2.5 disc
  diameters away on the other side;
- arteries (lighter, redder) and veins (darker) grown recursively from the disc: four arcades (the two
  temporal ones arching around the macula) plus smaller nasal vessels, with curved branches that taper
  (about 8 px → 1 px at 512 px, scaled with ``size``) and split at realistic angles with Murray's law
  (``w³ = w₁³ + w₂³``);
- vessels drawn 4× supersampled with OpenCV and area-downsampled, so edges are anti-aliased; they are
  darker than the background, most of all in the green channel.

The mask is the rasterised tree (coverage ≥ 0.5), clipped to the FOV. Vessels cover about 7–14 % of
the FOV, like DRIVE (12.7 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from retinaseg.core.config import SyntheticParams
from retinaseg.core.fileio import atomic_dir, write_png
from retinaseg.data.io import read_image, read_mask
from retinaseg.data.sources import scan_source

_SUPERSAMPLE = 4
_ARTERY, _VEIN = 0, 1
# Every field is float64, so the same seed gives the same bytes whichever SIMD kernels run. NumPy and
# OpenCV pick SIMD kernels by CPU (AVX2, AVX-512, ...) whose exp, tanh, pow and blur sums differ in
# the last bit. In float32 that pushed a few values in a million across a rounding edge, enough to
# change 4-6 of the 26 default images (a fresh `make pipeline` on an AVX2-only EPYC generated other
# images than on an AVX-512 one). In float64 the same last-bit differences are ~1e-13 of a grey
# level and do not reach the final rounding.
# tests/data/test_synthetic.py checks the bytes with NumPy's and OpenCV's SIMD paths switched off
# (x86-64-v3 against v2 on the machine that runs it; AVX-512 against v2 where the CPU has it).
_FLOAT = np.float64


@dataclass
class _Segment:
    x0: float
    y0: float
    x1: float
    y1: float
    width: float
    kind: int


@dataclass
class _Eye:
    """Geometry of one synthetic eye, in pixels of the output image."""

    size: int
    cx: float
    cy: float
    radius: float  # FOV radius
    disc: tuple[float, float]
    disc_diameter: float
    macula: tuple[float, float]
    axis: float  # angle (radians) of the disc → macula direction
    scale: float  # size / 512


def _eye_geometry(rng: np.random.Generator, size: int) -> _Eye:
    cx = size / 2 + rng.uniform(-0.01, 0.01) * size
    cy = size / 2 + rng.uniform(-0.01, 0.01) * size
    radius = size * rng.uniform(0.45, 0.48)
    disc_d = radius * rng.uniform(0.33, 0.38)  # ~1/5.5 of the FOV diameter in 45° photographs
    side = 1.0 if rng.random() < 0.5 else -1.0  # disc on the right (+1) or left (-1)
    disc = (cx + side * radius * rng.uniform(0.40, 0.48), cy + radius * rng.uniform(-0.06, 0.06))
    axis = math.pi if side > 0 else 0.0
    axis += rng.uniform(-0.12, 0.12)  # macula slightly below/above the disc
    dist = 2.5 * disc_d * rng.uniform(0.95, 1.05)
    macula = (disc[0] + dist * math.cos(axis), disc[1] + dist * math.sin(axis))
    return _Eye(size, cx, cy, radius, disc, disc_d, macula, axis, size / 512.0)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise field (low-frequency for large sigma)."""
    field = rng.standard_normal((size, size))  # float64, like every field here (see _FLOAT)
    field = cv2.GaussianBlur(field, (0, 0), sigmaX=max(sigma, 0.3))
    return (field - field.mean()) / (field.std() + 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _background(rng: np.random.Generator, eye: _Eye) -> np.ndarray:
    """Float RGB in [0, 255]: fundus colour, vignetting, disc, macula, texture (no vessels yet)."""
    size = eye.size
    yy, xx = np.mgrid[0:size, 0:size].astype(_FLOAT)
    r = np.hypot(xx - eye.cx, yy - eye.cy) / eye.radius

    base = np.array(
        [rng.uniform(190, 225), rng.uniform(75, 105), rng.uniform(25, 45)], dtype=_FLOAT
    )  # orange-red
    falloff = rng.uniform(0.40, 0.55)
    illum = 1.0 - falloff * np.clip(r, 0, 1.2) ** 2.2
    illum *= 1.0 + 0.06 * _smooth_noise(rng, size, size / 6)  # uneven illumination
    img = base[None, None, :] * illum[..., None]

    # choroidal texture: mid-frequency mottling, stronger in red, plus fine grain
    mottle = _smooth_noise(rng, size, 2.5 * eye.scale + 0.8)
    img *= 1.0 + np.array([0.035, 0.05, 0.05], _FLOAT)[None, None, :] * mottle[..., None]

    # macula: darker, a little browner; a small darker fovea at its centre
    dm = np.hypot(xx - eye.macula[0], yy - eye.macula[1])
    sig = 0.75 * eye.disc_diameter
    mac = np.exp(-(dm**2) / (2 * sig**2))
    fov_spot = np.exp(-(dm**2) / (2 * (0.18 * eye.disc_diameter) ** 2))
    img *= 1.0 - np.array([0.28, 0.45, 0.40], _FLOAT) * (mac[..., None] * 0.8 + 0.2 * fov_spot[..., None])

    # optic disc: bright yellowish, soft rim, brighter cup slightly off-centre
    dd = np.hypot(xx - eye.disc[0], (yy - eye.disc[1]) / 1.08) / (eye.disc_diameter / 2)
    disc = _sigmoid((1.0 - dd) * 9.0)
    cup_c = (eye.disc[0] + 0.1 * eye.disc_diameter * math.cos(eye.axis), eye.disc[1])
    dc = np.hypot(xx - cup_c[0], yy - cup_c[1]) / (0.45 * eye.disc_diameter / 2)
    cup = _sigmoid((1.0 - dc) * 5.0)
    disc_col = np.array([250, 215, 150], _FLOAT)
    cup_col = np.array([255, 240, 205], _FLOAT)
    img = img * (1 - disc[..., None]) + disc_col * disc[..., None]
    img = img * (1 - 0.7 * cup[..., None]) + cup_col * 0.7 * cup[..., None]
    # peripapillary halo
    halo = np.exp(-((dd - 1.0) ** 2) / 0.25) * (dd > 1.0)
    img *= 1.0 + 0.12 * halo[..., None]
    return img


class _TreeGrower:
    """Grows vessel trees as polylines of tapering segments (continuous coordinates)."""

    def __init__(self, rng: np.random.Generator, eye: _Eye) -> None:
        self.rng = rng
        self.eye = eye
        self.segments: list[_Segment] = []
        self.min_width = max(1.0 * eye.scale, 0.7)
        self.step = max(1.5 * eye.scale, 1.0)
        self.max_depth = 6

    def _inside(self, x: float, y: float) -> bool:
        return math.hypot(x - self.eye.cx, y - self.eye.cy) < self.eye.radius * 1.01

    def _near_fovea(self, x: float, y: float) -> bool:
        return math.hypot(x - self.eye.macula[0], y - self.eye.macula[1]) < 0.28 * self.eye.disc_diameter

    def grow(
        self,
        x: float,
        y: float,
        theta: float,
        width: float,
        kind: int,
        depth: int = 0,
        target: float | None = None,
        turn_rate: float = 0.0,
    ) -> None:
        """Grow one branch; spawn children along it. ``target``: heading the branch bends toward."""
        rng, eye = self.rng, self.eye
        rel = width / (8 * eye.scale)  # 1 for a main trunk
        if depth == 0:
            length = eye.radius * rng.uniform(1.2, 1.6)
        else:
            length = eye.radius * rng.uniform(0.35, 0.7) * rel**0.4
        taper = (width - self.min_width) * rng.uniform(0.3, 0.6) / max(length, 1.0)
        kappa = 0.0
        travelled = 0.0
        next_branch = rng.uniform(0.12, 0.25) * eye.radius * max(rel, 0.3) ** 0.3
        side = 1 if rng.random() < 0.5 else -1
        while travelled < length and width >= self.min_width:
            kappa = 0.85 * kappa + rng.normal(0.0, 0.015 if depth == 0 else 0.03)
            theta += kappa * (self.step / 2.0)
            if target is not None:
                diff = math.atan2(math.sin(target - theta), math.cos(target - theta))
                theta += turn_rate * diff * self.step
            nx, ny = x + self.step * math.cos(theta), y + self.step * math.sin(theta)
            if not self._inside(nx, ny) or (depth > 0 and self._near_fovea(nx, ny)):
                break
            self.segments.append(_Segment(x, y, nx, ny, width, kind))
            x, y = nx, ny
            travelled += self.step
            width -= taper * self.step
            if travelled >= next_branch and depth < self.max_depth and width > 1.4 * self.min_width:
                frac = rng.uniform(0.45, 0.85)
                child_w = width * frac
                width = max((width**3 - child_w**3) ** (1 / 3), self.min_width)  # Murray's law
                angle = math.radians(rng.uniform(35, 75)) * side
                side = -side if rng.random() < 0.8 else side
                # the thinner daughter deviates more; the parent bends slightly the other way
                theta -= angle * 0.2 * frac
                self.grow(x, y, theta + angle, child_w, kind, depth + 1)
                rel = width / (8 * eye.scale)
                next_branch = travelled + rng.uniform(0.13, 0.27) * eye.radius * max(rel, 0.3) ** 0.3

    def grow_retina(self) -> None:
        """The four arcades (artery + vein each) and a few small vessels, all leaving the disc."""
        rng, eye = self.rng, self.eye
        s = eye.scale
        axis = eye.axis
        r0 = 0.15 * eye.disc_diameter
        for vertical in (-1.0, 1.0):
            for kind, w in ((_VEIN, 8.0), (_ARTERY, 6.5)):
                jitter = rng.uniform(-0.12, 0.12)
                # temporal arcade: leaves steeply, then arches around the macula
                start = axis + vertical * (math.radians(rng.uniform(70, 95)) + jitter)
                target = axis + vertical * math.radians(rng.uniform(5, 20))
                x0 = eye.disc[0] + r0 * math.cos(start) + rng.uniform(-0.1, 0.1) * eye.disc_diameter
                y0 = eye.disc[1] + r0 * math.sin(start)
                self.grow(x0, y0, start, w * s * rng.uniform(0.9, 1.1), kind, 0, target, 0.012 / max(s, 0.25))
                # nasal vessel
                start = axis + math.pi - vertical * math.radians(rng.uniform(40, 70))
                x0 = eye.disc[0] + r0 * math.cos(start)
                y0 = eye.disc[1] + r0 * math.sin(start)
                self.grow(x0, y0, start, w * 0.7 * s * rng.uniform(0.9, 1.1), kind, 1)
        # small macular branches straight toward the macula
        for _ in range(int(rng.integers(2, 4))):
            start = axis + rng.uniform(-0.35, 0.35)
            kind = _ARTERY if rng.random() < 0.5 else _VEIN
            self.grow(eye.disc[0], eye.disc[1], start, 3.0 * s * rng.uniform(0.8, 1.2), kind, 2)


def _rasterise(segments: list[_Segment], size: int, kind: int) -> np.ndarray:
    """Coverage (float64 in [0, 1]) of one vessel kind: drawn supersampled, area-averaged down."""
    ss = _SUPERSAMPLE
    canvas = np.zeros((size * ss, size * ss), np.uint8)
    shift = 4  # cv2 fixed-point coordinates: 4 fractional bits
    for seg in segments:
        if seg.kind != kind:
            continue
        p0 = (int(round(seg.x0 * ss * 16)), int(round(seg.y0 * ss * 16)))
        p1 = (int(round(seg.x1 * ss * 16)), int(round(seg.y1 * ss * 16)))
        cv2.line(
            canvas,
            p0,
            p1,
            255,
            thickness=max(1, int(round(seg.width * ss))),
            lineType=cv2.LINE_8,
            shift=shift,
        )
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(_FLOAT) / 255.0


def generate_sample(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus photograph: ``(image H×W×3 uint8 RGB, mask H×W {0,1}, fov H×W {0,1})``.

    Deterministic: the same ``(seed, size)`` gives the same arrays.
    """
    if size < 32:
        raise ValueError(f"synthetic size must be at least 32 px, got {size}")
    rng = np.random.default_rng(seed)
    eye = _eye_geometry(rng, size)
    img = _background(rng, eye)

    grower = _TreeGrower(rng, eye)
    grower.grow_retina()
    artery = _rasterise(grower.segments, size, _ARTERY)
    vein = _rasterise(grower.segments, size, _VEIN)
    edge_sigma = 0.45 * max(eye.scale, 0.5) + 0.2
    artery_soft = cv2.GaussianBlur(artery, (0, 0), edge_sigma)
    vein_soft = cv2.GaussianBlur(vein, (0, 0), edge_sigma)
    # absorption per channel: veins darker, arteries lighter and redder; green shows most contrast
    a_abs = np.array([0.18, 0.42, 0.30], _FLOAT) * rng.uniform(0.9, 1.1)
    v_abs = np.array([0.35, 0.55, 0.45], _FLOAT) * rng.uniform(0.9, 1.1)
    img *= 1.0 - np.clip(artery_soft[..., None] * a_abs + vein_soft[..., None] * v_abs, 0, 0.85)

    img += rng.normal(0.0, 1.8, img.shape)  # sensor noise

    yy, xx = np.mgrid[0:size, 0:size].astype(_FLOAT)
    dist = np.hypot(xx - eye.cx, yy - eye.cy)
    fov = (dist <= eye.radius).astype(np.uint8)
    soft_edge = np.clip(eye.radius + 0.5 - dist, 0.0, 1.0)  # one anti-aliased pixel at the rim
    img *= soft_edge[..., None]
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    mask = (np.maximum(artery, vein) >= 0.5).astype(np.uint8) * fov
    return image, mask, fov


def sample_seed(base_seed: int, index: int) -> int:
    """The seed of sample ``index`` of a dataset: independent of how many samples are generated."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def _write_dataset(out_root: Path, params: SyntheticParams) -> None:
    splits = [
        ("train", range(params.n_train)),
        ("test", range(params.n_train, params.n_train + params.n_test)),
    ]
    for split, indices in splits:
        for folder in ("images", "masks", "fov"):
            (out_root / split / folder).mkdir(parents=True, exist_ok=True)
        for k in indices:
            image, mask, fov = generate_sample(sample_seed(params.seed, k), params.size)
            sid = f"syn_{k:03d}"
            write_png(out_root / split / "images" / f"{sid}.png", image)
            write_png(out_root / split / "masks" / f"{sid}.png", mask * 255)
            write_png(out_root / split / "fov" / f"{sid}.png", fov * 255)


def generate_dataset(out_root: str | Path, params: SyntheticParams) -> None:
    """Write ``out_root/{train,test}/{images,masks,fov}/syn_NNN.png`` (masks and FOV as 0/255).

    Samples ``syn_000 … syn_{n_train-1}`` go to train/, the next ``n_test`` to test/; sample k depends
    only on ``(params.seed, k, params.size)``. The dataset is written into a temporary folder beside
    ``out_root`` and swapped in at the end (:func:`~retinaseg.core.fileio.atomic_dir`), so an
    interrupted run leaves the old dataset intact.
    """
    if params.n_train < 0 or params.n_test < 0 or params.n_train + params.n_test == 0:
        raise ValueError(f"synthetic: need n_train, n_test >= 0 and at least one sample, got {params}")
    with atomic_dir(out_root) as tmp:
        _write_dataset(tmp, params)


def _tile(array: np.ndarray, tile: int) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return cv2.resize(array, (tile, tile), interpolation=cv2.INTER_AREA)


def write_montage(root: str | Path, path: str | Path, n: int = 8) -> None:
    """A PNG of the first ``n`` samples under synthetic dataset ``root``: image | mask pairs, tiled."""
    pairs = scan_source("synthetic", root).pairs[:n]
    if not pairs:
        raise ValueError(f"{root}: no samples to put in a montage")
    first = read_image(pairs[0].image)
    tile = min(256, first.shape[0])
    per_row = 2 if len(pairs) <= 4 else 4
    rows = []
    cells = []
    for pair in pairs:
        cells.append(
            np.concatenate([_tile(read_image(pair.image), tile), _tile(read_mask(pair.mask), tile)], 1)
        )
    blank = np.zeros_like(cells[0])
    while len(cells) % per_row:
        cells.append(blank)
    for i in range(0, len(cells), per_row):
        rows.append(np.concatenate(cells[i : i + per_row], axis=1))
    write_png(path, np.concatenate(rows, axis=0))
