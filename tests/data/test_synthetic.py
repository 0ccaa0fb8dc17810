"""retinaseg.data.synthetic: deterministic, fundus-like samples with exact masks; dataset, montage, stage."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

import retinaseg.data.synthetic as synthetic
from retinaseg.cli import main as cli_main
from retinaseg.core.config import SyntheticParams
from retinaseg.data.io import read_image, read_mask
from retinaseg.data.sources import scan_source
from retinaseg.data.synthetic import generate_dataset, generate_sample, sample_seed, write_montage


def test_same_seed_same_sample_different_seed_different_sample():
    a = generate_sample(3, 96)
    b = generate_sample(3, 96)
    c = generate_sample(4, 96)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_shapes_types_and_values():
    image, mask, fov = generate_sample(0, 80)
    assert image.shape == (80, 80, 3) and image.dtype == np.uint8
    assert mask.shape == fov.shape == (80, 80) and mask.dtype == fov.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1} and set(np.unique(fov)) == {0, 1}
    assert not (mask & (1 - fov)).any()  # mask clipped to the FOV
    outside = cv2.erode(1 - fov, np.ones((3, 3), np.uint8)).astype(bool)
    assert image[outside].max() == 0  # black outside the FOV


def test_too_small_size_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        generate_sample(0, 16)


@pytest.mark.parametrize("size", [256, 512])
def test_vessel_fraction_inside_fov_like_drive(size):
    seeds = range(6) if size == 256 else range(2)
    fractions = [m.sum() / f.sum() for _, m, f in (generate_sample(s, size) for s in seeds)]
    assert all(0.07 <= fr <= 0.14 for fr in fractions), fractions


def test_looks_like_a_fundus():
    image, mask, fov = generate_sample(11, 256)
    img = image.astype(float)
    background = fov.astype(bool) & ~cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)
    r, g, b = (img[..., c][background].mean() for c in range(3))
    assert r > g > b  # orange-red
    # vessels are darker than the background, most of all (relatively) in the green channel
    vessel = mask.astype(bool)
    contrast = [1 - img[..., c][vessel].mean() / img[..., c][background].mean() for c in range(3)]
    assert contrast[1] > 0.2 and contrast[1] > contrast[0], contrast
    # illumination falls off toward the rim
    yy, xx = np.mgrid[0:256, 0:256]
    cy, cx = np.argwhere(fov).mean(axis=0)
    radius = np.sqrt(fov.sum() / np.pi)
    rr = np.hypot(yy - cy, xx - cx) / radius
    centre = background & (rr < 0.3)
    rim = background & (rr > 0.85)
    assert img[..., 0][centre].mean() > 1.15 * img[..., 0][rim].mean()
    # the optic disc is the brightest, yellowest region: it sits off-centre
    luminance = cv2.GaussianBlur(img.mean(axis=2), (0, 0), 6)
    dy, dx = np.unravel_index(np.argmax(luminance), luminance.shape)
    assert np.hypot(dy - cy, dx - cx) > 0.3 * radius
    assert image[dy, dx, 1] > 150  # yellowish: strong green where the background's green is ~80


def test_main_vessels_taper_from_about_8_px_at_512():
    _, mask, _ = generate_sample(5, 512)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    ridge = (dist > 0) & (dist >= cv2.dilate(dist, np.ones((3, 3), np.float32)))  # centre lines
    widths = 2 * dist[ridge]  # a 1-px vessel measures 2 here (distance 1 to the background)
    assert 6 <= np.percentile(widths, 99) <= 11  # trunks near the disc
    assert np.median(widths) <= 3  # most of the tree is thin branches


_HASH_DEFAULT_DATASET = """
import hashlib, sys
import cv2
if sys.argv[1] == "opencv-scalar":
    cv2.setUseOptimized(False)
from retinaseg.data.synthetic import generate_sample, sample_seed
digest = hashlib.sha256()
for k in range(26):  # params.yaml's default dataset: seed 7, 20 + 6 samples of 256 px
    for array in generate_sample(sample_seed(7, k), 256):
        digest.update(array.tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_same_bytes_whichever_simd_kernels_numpy_and_opencv_pick(monkeypatch):
    """The default dataset's bytes do not depend on the processor's vector instructions.

    NumPy and OpenCV choose SIMD kernels by CPU; on an AVX-512 machine and an AVX2-only one they
    gave images that differed in a few pixels (float32 fields). Here the same 26 samples are made
    with the best kernels this CPU has, with NumPy held to its x86-64-v2 baseline, and with
    OpenCV's optimised paths off: all three must be byte-identical.
    """
    monkeypatch.delenv("NPY_DISABLE_CPU_FEATURES", raising=False)

    def digest(mode: str, **env: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", _HASH_DEFAULT_DATASET, mode],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    best = digest("default")
    numpy_baseline = digest("default", NPY_DISABLE_CPU_FEATURES="AVX512_SPR AVX512_ICL X86_V4 X86_V3")
    opencv_scalar = digest("opencv-scalar")
    assert best == numpy_baseline == opencv_scalar


def test_sample_seed_is_independent_of_dataset_size():
    assert sample_seed(7, 3) == sample_seed(7, 3) != sample_seed(7, 4)
    assert sample_seed(7, 3) != sample_seed(8, 3)


def test_generate_dataset_layout_and_stability(tmp_path):
    small, large = tmp_path / "a", tmp_path / "b"
    generate_dataset(small, SyntheticParams(n_train=2, n_test=1, size=48, seed=5))
    generate_dataset(large, SyntheticParams(n_train=3, n_test=1, size=48, seed=5))
    assert sorted(p.name for p in (small / "train" / "images").iterdir()) == ["syn_000.png", "syn_001.png"]
    assert sorted(p.name for p in (small / "test" / "masks").iterdir()) == ["syn_002.png"]
    # sample 2 is the same whether it lands in test (n_train=2) or train (n_train=3)
    for folder in ("images", "masks", "fov"):
        a = (small / "test" / folder / "syn_002.png").read_bytes()
        assert a == (large / "train" / folder / "syn_002.png").read_bytes()
    mask = np.asarray(Image.open(small / "train" / "masks" / "syn_000.png"))
    assert set(np.unique(mask)) == {0, 255}
    image, expected_mask, _ = generate_sample(sample_seed(5, 0), 48)
    np.testing.assert_array_equal(read_image(small / "train" / "images" / "syn_000.png"), image)
    np.testing.assert_array_equal(read_mask(small / "train" / "masks" / "syn_000.png"), expected_mask * 255)
    assert len(scan_source("synthetic", small).pairs) == 3


def test_generate_dataset_replaces_atomically(tmp_path, monkeypatch):
    root = tmp_path / "syn"
    generate_dataset(root, SyntheticParams(n_train=1, n_test=1, size=48, seed=1))
    before = sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*.png"))

    calls = {"n": 0}
    real = synthetic.generate_sample

    def failing(seed, size):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(seed, size)

    monkeypatch.setattr(synthetic, "generate_sample", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_dataset(root, SyntheticParams(n_train=3, n_test=1, size=48, seed=2))
    assert sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*.png")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temp folders left behind

    monkeypatch.setattr(synthetic, "generate_sample", real)
    generate_dataset(root, SyntheticParams(n_train=2, n_test=0, size=48, seed=2))
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    assert len(list((root / "train" / "images").iterdir())) == 2
    assert not any((root / "test" / "images").iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]


def test_generate_dataset_rejects_no_samples(tmp_path):
    with pytest.raises(ValueError, match="at least one sample"):
        generate_dataset(tmp_path / "x", SyntheticParams(n_train=0, n_test=0, size=48, seed=1))


def test_write_montage(synthetic_root, tmp_path):
    out = tmp_path / "m.png"
    write_montage(synthetic_root, out, n=3)
    montage = read_image(out)
    # 3 pairs, 2 per row → 2 rows of (image | mask | image | mask), 64 px tiles
    assert montage.shape == (128, 256, 3)
    np.testing.assert_array_equal(montage[:64, :64], read_image(synthetic_root / "train/images/syn_000.png"))
    assert montage[64:, 128:].max() == 0  # the empty cell


def test_cli_generate(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"synthetic": {"n_train": 2, "n_test": 1, "size": 40, "seed": 3}}))
    out, montage = tmp_path / "syn", tmp_path / "m.png"
    assert cli_main(["generate", "--out", str(out), "--params", str(params), "--montage", str(montage)]) == 0
    assert len(scan_source("synthetic", out).pairs) == 3 and montage.is_file()
    assert "2 train + 1 test" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_stage_script(tmp_path, repo_root):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"synthetic": {"n_train": 2, "n_test": 1, "size": 40, "seed": 3}}))
    result = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "generate.py"), "--params", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reports" / "synthetic_montage.png").is_file()
    assert len(scan_source("synthetic", tmp_path / "data" / "raw" / "synthetic").pairs) == 3
    params.write_text(yaml.safe_dump({"synthetic": {"n_train": "two"}}))
    bad = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "generate.py"), "--params", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "synthetic.n_train" in bad.stderr
