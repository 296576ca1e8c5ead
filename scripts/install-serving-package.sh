#!/bin/sh
# Install the serving package alone into the virtual environment VENV: the runtime dependencies of
# pyproject.toml's [project] dependencies (no extras) and the `transformer` package. Nothing of
# `sentiment` (model building, the local stack, measurements): no `sentiment` command, no torch.
# Then leave out what the transformer never imports (measured, see below) and pip itself.
#
#   scripts/install-serving-package.sh VENV [SOURCE [STEP]]
#     SOURCE: folder with pyproject.toml and transformer/
#     STEP: dependencies | package | all (default): the image installs the dependencies in a layer of
#     their own, so that a change to the transformer alone rebuilds in seconds
#
# Dockerfile.transformer runs it; tests/deploy/test_container_image.py imports, inside the built
# image, every module a transformer run loads (measured with PYTHONPROFILEIMPORTTIME on the local
# stack), so a part removed here that the transformer does load fails there.
set -eu
venv=$1
source=${2:-.}
step=${3:-all}
requirements="$venv/serving-requirements.txt"

# Declared by kserve, kubernetes or tokenizers, never imported by the transformer (kserve's storage,
# auth and aiohttp clients; the Hugging Face Hub client of tokenizers: the tokenizer comes from the
# bundle, never from a hub; grpc's optional protoc tools; uvicorn's --env-file): uninstalled after
# pip resolved the versions of everything else. Test: every module a transformer run loads but those
# of these distributions imports in the image, and every distribution the image keeps is loaded.
NEVER_IMPORTED="aiohttp aiohappyeyeballs aiosignal frozenlist multidict yarl propcache aiohttp-retry
cryptography cffi pycparser pillow pyjwt pyasn1 pyasn1-modules rsa google-auth cachetools
huggingface_hub hf-xet httpx2 httpcore2 truststore fsspec filelock tqdm grpcio-tools python-dotenv"
# Parts of imported packages that are never loaded: kserve imports kubernetes.client, whose API and
# model classes load lazily on first use (never, here), and kubernetes' asyncio client; test suites.
NEVER_LOADED="kubernetes/aio kubernetes/client/api/*_api.py kubernetes/client/models/[a-z]*.py
pandas/tests numpy/*/tests numpy/tests numpy/_core/tests"

if [ "$step" != package ]; then
  "$venv/bin/python" - "$source/pyproject.toml" > "$requirements" <<'PYTHON'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
PYTHON
  "$venv/bin/python" -m pip install --no-cache-dir --no-compile --disable-pip-version-check --quiet --requirement "$requirements"
  # shellcheck disable=SC2086  # word splitting wanted
  "$venv/bin/python" -m pip uninstall --yes --quiet $NEVER_IMPORTED 2>&1 | grep -v "not installed" || true

  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for part in $NEVER_LOADED; do
    # shellcheck disable=SC2086  # the globs expand here
    rm -rf "$site"/$part
  done
  find "$site" -name __pycache__ -prune -exec rm -rf {} +
  # Byte-compiled once here: the image's root file system is read-only, Python cannot cache them later.
  "$venv/bin/python" -m compileall -q -j 0 "$site" > /dev/null || true
fi
[ "$step" != dependencies ] || exit 0
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/transformer"
cp -R "$source/transformer" "$site/transformer"
find "$site/transformer" -name __pycache__ -prune -exec rm -rf {} +
"$venv/bin/python" -m compileall -q "$site/transformer"  # our own code: a syntax error fails the build
