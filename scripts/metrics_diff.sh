#!/usr/bin/env bash
# Markdown report of what changed against a base revision: `dvc metrics diff` and `dvc params diff`.
# Usage: scripts/metrics_diff.sh [BASE]   (default: main). Run from the repository root with dvc on PATH.
# Metrics JSON files are committed (cache: false), so this needs git only: no DVC remote, no GPU.
# Exit status: 0 when a report was printed (also for an empty diff or a missing base), 1 when dvc fails.
set -euo pipefail

base="${1:-main}"

if ! command -v dvc >/dev/null 2>&1; then
  echo "error: dvc not found on PATH (run 'make metrics-diff', which puts .venv/bin first)" >&2
  exit 1
fi

echo "## Metrics and params against \`${base}\`"
echo

if ! git rev-parse --verify --quiet "${base}^{commit}" >/dev/null; then
  echo "base revision '${base}' not found; nothing to compare"
  exit 0
fi

# dvc prints a header-only table when nothing changed: a diff is empty without rows below the header.
has_rows() { [[ "$(grep -c '^|' <<<"$1" || true)" -gt 2 ]]; }

metrics="$(dvc metrics diff "${base}" --md --precision 4)"
params="$(dvc params diff "${base}" --md)"

echo "### Metrics"
echo
if ! has_rows "${metrics}"; then
  echo "no metric changes against ${base}"
else
  echo "${metrics}"
fi
echo
echo "### Params"
echo
if ! has_rows "${params}"; then
  echo "no param changes against ${base}"
else
  echo "${params}"
fi
