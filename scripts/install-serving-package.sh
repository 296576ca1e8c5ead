#!/bin/sh
# Install the serving package alone into the virtual environment VENV: the runtime dependencies of
# pyproject.toml's [project] dependencies (no extras) and the `transformer` package. Nothing of
# `sentiment` (model building, the local stack, measurements): no `sentiment` command, no torch.
#
#   scripts/install-serving-package.sh VENV [SOURCE]     SOURCE: folder with pyproject.toml and transformer/
#
# Dockerfile.transformer runs it, and tests/deploy/test_serving_image.py runs the Dockerfile's
# command from a copy holding only what the Dockerfile copies: one dependency set, tested offline.
set -eu
venv=$1
source=${2:-.}
requirements="$venv/serving-requirements.txt"

"$venv/bin/python" - "$source/pyproject.toml" > "$requirements" <<'PYTHON'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
PYTHON
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet --requirement "$requirements"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/transformer"
cp -R "$source/transformer" "$site/transformer"
find "$site/transformer" -name __pycache__ -prune -exec rm -rf {} +
"$venv/bin/python" -m compileall -q "$site/transformer"
