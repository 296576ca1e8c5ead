#!/bin/sh
# Upload the Triton model repository (numbered versions, each with its transformer bundle) for
# KServe's storageUri.
#
#   scripts/upload-model-repository.sh s3://BUCKET/PREFIX [REPOSITORY]
#   scripts/upload-model-repository.sh gs://BUCKET/PREFIX [REPOSITORY]
#
# REPOSITORY defaults to model_repository/. It is checked first (`sentiment model check`: the three
# Triton configurations against each served version's ONNX graph and bundle). One PREFIX holds the
# repository for good: each version folder (sentiment/<N>/) is uploaded once and never changed
# (a version already at PREFIX is left as it is, unless FORCE=1); the configurations (which
# versions Triton serves) are uploaded every time. A rollout adds a version this way, then rolls
# the pods (README, "Roll out a new model version"). Prints the storageUri to set in the overlay
# (both spec.predictor.model.storageUri and the transformer's STORAGE_URI).
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
    s3://*) command -v aws > /dev/null 2>&1 || { echo "error: the aws CLI is not installed" >&2; exit 1; } ;;
    gs://*) command -v gsutil > /dev/null 2>&1 || { echo "error: gsutil is not installed" >&2; exit 1; } ;;
esac

remote_has() {  # remote_has PATH: something is stored under PATH/
    case $destination in
        s3://*) [ -n "$(aws s3 ls "$1/" 2> /dev/null | head -n 1)" ] ;;
        gs://*) [ -n "$(gsutil ls "$1/" 2> /dev/null | head -n 1)" ] ;;
    esac
}

copy_tree() {  # copy_tree LOCAL REMOTE
    case $destination in
        s3://*) aws s3 sync "$1/" "$2/" --exclude '*__pycache__/*' --exclude '*.pyc' ;;
        gs://*) gsutil -m rsync -r -x '.*__pycache__/.*|.*\.pyc$' "$1" "$2" ;;
    esac
}

copy_file() {  # copy_file LOCAL REMOTE
    case $destination in
        s3://*) aws s3 cp "$1" "$2" ;;
        gs://*) gsutil cp "$1" "$2" ;;
    esac
}

for version_dir in "$repository"/sentiment/[0-9]*; do
    [ -d "$version_dir" ] || continue
    version=$(basename "$version_dir")
    if [ "$force" != 1 ] && remote_has "$destination/sentiment/$version"; then
        echo "version $version is already at $destination: left as it is (a version never changes; FORCE=1 overrides)"
        continue
    fi
    copy_tree "$version_dir" "$destination/sentiment/$version"
done
for file in config.pbtxt repository.json configs/local.pbtxt configs/gpu.pbtxt; do
    [ -f "$repository/sentiment/$file" ] && copy_file "$repository/sentiment/$file" "$destination/sentiment/$file"
done

echo
echo "uploaded $repository to $destination"
echo "storageUri: $destination"
echo "set it in your overlay's model.yaml (spec.predictor.model.storageUri and STORAGE_URI), e.g."
echo "inferenceservice/overlays/prod/model.yaml; after a new version, roll the pods as the README's rollout says"
