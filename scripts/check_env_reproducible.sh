#!/usr/bin/env bash
# Two environments built from the same lock must hold the same packages at the same versions.
#   bash scripts/check_env_reproducible.sh .venv /tmp/second-venv
# The second venv is built here from scratch (make venv VENV=...), at another time than the first;
# then both `pip freeze` listings must equal each other and the lock's pins.
set -euo pipefail
first=${1:?usage: check_env_reproducible.sh FIRST_VENV SECOND_VENV}
second=${2:?usage: check_env_reproducible.sh FIRST_VENV SECOND_VENV}
python=${PYTHON:-python3.11}

rm -rf "$second"
make --no-print-directory venv VENV="$second" PYTHON="$python"

freeze() { "$1/bin/python" -m pip freeze --exclude-editable --all | grep -v '^\(pip\|retinaseg\)[= ]' | LC_ALL=C sort; }
pins() {  # name==version of every entry in the lock, spelled as pip freeze spells it
  "$1/bin/python" - "$2" <<'PY'
import re, sys
from importlib.metadata import distributions
names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.metadata["Name"] for d in distributions()}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
    if m:
        key = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        print(f"{names.get(key, m.group(1))}=={m.group(2)}")
PY
}
lock="requirements/lock-py$("$first/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])').txt"
freeze "$first" > "$second/freeze-first.txt"
freeze "$second" > "$second/freeze-second.txt"
pins "$first" "$lock" | LC_ALL=C sort > "$second/lock-pins.txt"
if ! diff -u "$second/freeze-first.txt" "$second/freeze-second.txt"; then
  echo "error: $first and $second differ although both were installed from $lock"; exit 1
fi
if ! diff -u "$second/lock-pins.txt" "$second/freeze-first.txt"; then
  echo "error: the installed packages differ from the pins in $lock"; exit 1
fi
echo ">> $(wc -l < "$second/freeze-first.txt") packages, identical in $first and $second and equal to $lock"
echo ">> pip freeze sha256: $(sha256sum < "$second/freeze-first.txt" | cut -c1-16)"
