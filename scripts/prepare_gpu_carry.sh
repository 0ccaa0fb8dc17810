#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on a GPU machine without network, on a connected machine:
#   bash scripts/prepare_gpu_carry.sh /path/to/DRIVE
# writes .whl/ (the wheels of requirements/device-packages.txt at the versions of
# requirements/lock-py3.12.txt: scripts/build_device_wheels.sh) and .gpu-data/DRIVE (DRIVE with its
# TIFF photographs re-encoded as lossless PNG: 15 MiB instead of 30), both git-ignored, and prints the
# total that travels with the working tree. Copy the repository, .whl and .gpu-data to the GPU machine
# (or name .whl and .gpu-data in the device tool's carry) and run: bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
drive=${1:?usage: bash scripts/prepare_gpu_carry.sh /path/to/DRIVE}
test -d "$drive/training/images" -a -d "$drive/test/images" || { echo "error: $drive is not a DRIVE folder" >&2; exit 1; }
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

[ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 || bash scripts/build_device_wheels.sh .whl

rm -rf .gpu-data/DRIVE.tmp && mkdir -p .gpu-data/DRIVE.tmp
"$PY" - "$drive" .gpu-data/DRIVE.tmp <<'PY'
import shutil, sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for split in ("training", "test"):
    for folder in ("images", "1st_manual", "mask"):
        for f in sorted((src / split / folder).iterdir()):
            out = dst / split / folder / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix.lower() in (".tif", ".tiff"):
                with Image.open(f) as im:
                    im.save(out.with_suffix(".png"), optimize=True)  # lossless: the same pixels
            else:
                shutil.copy2(f, out)
PY
rm -rf .gpu-data/DRIVE && mv .gpu-data/DRIVE.tmp .gpu-data/DRIVE

tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -sb .whl | cut -f1); data=$(du -sb .gpu-data | cut -f1)
awk -v t="$tracked" -v w="$wheels" -v d="$data" 'BEGIN { m = 1048576;
  printf(">> travels: tracked %.1f MiB + .whl %.1f MiB + .gpu-data %.1f MiB = %.1f MiB (device limit 64 MiB)\n",
         t/m, w/m, d/m, (t+w+d)/m) }'
