#!/usr/bin/env bash
# `make upgrade-lock`: install the newest releases that pyproject.toml allows into a throwaway venv, run the whole
# test suite there, and rewrite requirements/constraints.txt from that venv only if the suite passes.
# The torch pin ($1) stays as the Makefile sets it; torch, torchvision and the CUDA wheels they bring are not locked
# here (they depend on the machine), everything else is, pip included.
set -euo pipefail
torch_pin=${1:?usage: upgrade-lock.sh "torch==X torchvision==Y"}
cd "$(dirname "$0")/.."
lock=requirements/constraints.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
python="$work/venv/bin/python"

echo "upgrade-lock: resolving the newest releases in a throwaway venv ($work/venv)"
"$python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # the pin is two requirements
"$python" -m pip install --quiet $torch_pin
"$python" -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]' $torch_pin

echo "upgrade-lock: running the test suite against them"
if ! "$python" -m pytest -q -p no:cacheprovider tests; then
    echo "upgrade-lock: the suite FAILED with the newest releases; $lock is unchanged" >&2
    exit 1
fi

{
    echo "# The exact versions the test suite passed with. Regenerate with \`make upgrade-lock\` (docs: reference/dependencies);"
    echo "# \`make install\` installs through this file. torch/torchvision: the Makefile's TORCH_PIN."
    "$python" -m pip freeze --all --exclude-editable \
        | grep -viE '^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*)==' | LC_ALL=C sort -f
} > "$work/constraints.txt"
if cmp -s "$work/constraints.txt" "$lock"; then
    echo "upgrade-lock: the suite passed; nothing newer than $lock was released"
else
    diff -u "$lock" "$work/constraints.txt" | grep -E '^[-+][^-+#]' || true
    mv "$work/constraints.txt" "$lock"
    echo "upgrade-lock: the suite passed; $lock rewritten (changes above)"
fi
