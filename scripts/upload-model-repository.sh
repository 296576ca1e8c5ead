#!/bin/sh
# Upload the Triton model repository (model + transformer bundle) for KServe's storageUri.
#
#   scripts/upload-model-repository.sh s3://BUCKET/PREFIX [REPOSITORY]
#   scripts/upload-model-repository.sh gs://BUCKET/PREFIX [REPOSITORY]
#
# REPOSITORY defaults to model_repository/. It is checked first (`sentiment model check`: both
# Triton configs against the ONNX graph and the bundle), then copied with `aws s3 sync` or
# `gsutil rsync`. A model version is immutable: give each upload a new PREFIX (e.g. .../v2);
# an existing non-empty PREFIX is refused unless FORCE=1. Prints the storageUri to set in the
# overlay (both spec.predictor.model.storageUri and the transformer's STORAGE_URI).
#
# Environment: SENTIMENT (the sentiment CLI; default .venv/bin/sentiment, else `sentiment` on
# PATH), AWS_* / gcloud credentials as the aws and gsutil tools expect them.
set -eu

usage() {
    echo "usage: $0 s3://BUCKET/PREFIX|gs://BUCKET/PREFIX [REPOSITORY]" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
destination=${1%/}
repository=${2:-model_repository}
repository=${repository%/}

case $destination in
    s3://?*/?* | gs://?*/?*) ;;
    *) echo "error: the destination must be s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, got '$1'" >&2; usage ;;
esac

if [ ! -f "$repository/sentiment/config.pbtxt" ]; then
    echo "error: $repository/sentiment/config.pbtxt not found: build the model first (make model)" >&2
    exit 1
fi

if [ -z "${SENTIMENT:-}" ]; then
    if [ -x .venv/bin/sentiment ]; then SENTIMENT=.venv/bin/sentiment; else SENTIMENT=sentiment; fi
fi
"$SENTIMENT" model check --repository "$repository"

force=${FORCE:-0}
case $destination in
    s3://*)
        command -v aws > /dev/null 2>&1 || { echo "error: the aws CLI is not installed" >&2; exit 1; }
        if [ "$force" != 1 ] && [ -n "$(aws s3 ls "$destination/" 2> /dev/null | head -n 1)" ]; then
            echo "error: $destination/ is not empty; upload a new version to a new prefix (or FORCE=1)" >&2
            exit 1
        fi
        aws s3 sync "$repository/" "$destination/" \
            --exclude README.md --exclude '*__pycache__/*' --exclude '*.pyc'
        ;;
    gs://*)
        command -v gsutil > /dev/null 2>&1 || { echo "error: gsutil is not installed" >&2; exit 1; }
        if [ "$force" != 1 ] && [ -n "$(gsutil ls "$destination/" 2> /dev/null | head -n 1)" ]; then
            echo "error: $destination/ is not empty; upload a new version to a new prefix (or FORCE=1)" >&2
            exit 1
        fi
        gsutil -m rsync -r -x '^README\.md$|.*__pycache__/.*|.*\.pyc$' "$repository" "$destination"
        ;;
esac

echo
echo "uploaded $repository to $destination"
echo "storageUri: $destination"
echo "set it in your overlay's model.yaml (spec.predictor.model.storageUri and STORAGE_URI), e.g."
echo "inferenceservice/overlays/prod/model.yaml, then: kubectl apply -k inferenceservice/overlays/prod"
