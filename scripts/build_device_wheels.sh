#!/usr/bin/env bash
# Build the wheel folder for a GPU machine without network (Python 3.12, Linux x86_64, torch preinstalled):
#   bash scripts/build_device_wheels.sh [.whl]
# Downloads, hash-checked, exactly the versions pinned in requirements/lock-py3.12.txt of the packages
# listed in requirements/device-packages.txt. On the GPU machine:
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
lock=requirements/lock-py3.12.txt
mkdir -p "$out"
req=$(mktemp); trap 'rm -f "$req"' EXIT
mapfile -t names < <(grep -v '^\s*#' requirements/device-packages.txt | grep -v '^\s*$')
python3 scripts/lock_subset.py "$lock" "${names[@]}" > "$req"
# antlr4-python3-runtime (dvc -> hydra-core) is published as an sdist only: build its wheel here
python3 - "$req" "$req.wheels" "$req.sdist" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r"\n(?=\S)", text.strip())
with open(sys.argv[2], "w") as wheels, open(sys.argv[3], "w") as sdist:
    for block in blocks:
        (sdist if block.startswith("antlr4-python3-runtime==") else wheels).write(block + "\n")
PY
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$out" -r "$req.wheels"
if [ -s "$req.sdist" ]; then
  python3 -m pip wheel --quiet --no-deps --require-hashes -w "$out" -r "$req.sdist"
fi
rm -f "$req.wheels" "$req.sdist"
echo ">> $(ls "$out"/*.whl | wc -l) wheels, $(du -sm "$out" | cut -f1) MiB in $out (from $lock)"
