#!/bin/sh
# Builds every synthetic checkpoint listed in tests/data/ref/models.txt under $1
# (default build/models). Skips a model whose files are newer than the generator.
set -e
out=${1:-build/models}
synth=${CS_SYNTH:-build/cs-synth}
mkdir -p "$out"
grep -v '^#' tests/data/ref/models.txt | while read -r name args; do
    [ -n "$name" ] || continue
    dir="$out/$name"
    if [ -f "$dir/model.safetensors" ] && [ "$dir/model.safetensors" -nt "$synth" ] \
        && [ "$dir/model.safetensors" -nt tests/data/ref/models.txt ]; then
        continue
    fi
    echo "models: $name"
    # shellcheck disable=SC2086
    "$synth" --out "$dir" --tokenizer tests/data/gpt2-tokenizer $args
done
# The committed reference numbers belong to these exact files: say so clearly if
# the generator changed without `make reference` being rerun.
if [ -f tests/data/ref/SHA256SUMS ]; then
    if ! (ref=$(pwd)/tests/data/ref/SHA256SUMS && cd "$out" && sha256sum --quiet -c "$ref"); then
        echo "models: checkpoints differ from tests/data/ref/SHA256SUMS; rerun 'make reference'" >&2
        exit 1
    fi
fi
