"""A synthetic processed split (the layout ``retinaseg.data.preprocess.run_preprocess`` writes), fast to
generate at any size, for the data-loader and memory benchmarks: an orange disc (the field of view)
with a few dark lines (the vessels) and one bit of pixel noise, written as PNG with low compression.

Not a stand-in for real photographs: only the shapes, the layout and a realistic PNG size matter here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

INDEX_HEADER = "id,orig_h,orig_w,scale,pad_top,pad_left,size,image_path,mask_path,fov_path,fov_derived\n"


def write_split(split_dir: Path, n: int, size: int, seed: int = 0, compression: int = 1) -> Path:
    """Write ``n`` samples of ``size``² into ``split_dir/{images,masks,fov}`` + ``index.csv``."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "fov"):
        (split_dir / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.ogrid[:size, :size]
    c = (size - 1) / 2
    fov = (((yy - c) ** 2 + (xx - c) ** 2) <= (0.47 * size) ** 2).astype(np.uint8)
    shade = (1.0 - 0.4 * np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / size).astype(np.float32)
    base = (np.array([40, 90, 200], np.float32)[None, None] * shade[..., None] * fov[..., None]).astype(
        np.uint8
    )  # BGR, for cv2.imwrite
    noisy = base + rng.integers(0, 2, base.shape, dtype=np.uint8) * fov[..., None]  # one bit of noise
    png = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    rows = []
    for k in range(n):
        sid = f"s{k:05d}"
        mask = np.zeros((size, size), np.uint8)
        image = noisy.copy()
        for _ in range(12):
            p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
            ends = (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1]))
            width = int(rng.integers(1, max(2, size // 200) + 1))
            cv2.line(mask, *ends, 1, thickness=width)
            cv2.line(image, *ends, (20, 45, 100), thickness=width)
        mask = cv2.bitwise_and(mask, fov)
        image = cv2.bitwise_and(image, image, mask=fov)
        cv2.imwrite(str(split_dir / "images" / f"{sid}.png"), image, png)
        cv2.imwrite(str(split_dir / "masks" / f"{sid}.png"), mask * 255, png)
        cv2.imwrite(str(split_dir / "fov" / f"{sid}.png"), fov * 255, png)
        rows.append(f"{sid},{size},{size},1.0,0,0,{size},i/{sid}.png,m/{sid}.png,f/{sid}.png,False\n")
    (split_dir / "index.csv").write_text(INDEX_HEADER + "".join(rows))
    return split_dir
