#!/bin/sh
# Regenerates tests/data/ref with torch + transformers in a venv at build/venv-ref
# (or $CS_REF_PYTHON). Developer machines only; CI reads the committed output.
# tests/data/ref/pipeline/ holds the text-generation pipeline's answers of two releases:
# transformers 4.57.6 (what the seed's pin >=4.52.4 installs: cserve's defaults) and
# 4.51.3 (the --pipeline-defaults 4.51 option), the latter from build/ref451-site, a
# --target install that shadows the venv's transformers and tokenizers on PYTHONPATH.
set -e
make models
py=${CS_REF_PYTHON:-}
if [ -z "$py" ]; then
    [ -x build/venv-ref/bin/python ] || {
        python3 -m venv build/venv-ref
        build/venv-ref/bin/pip install -q torch "transformers==4.57.6" tokenizers tiktoken numpy
    }
    py=build/venv-ref/bin/python
fi
"$py" tools/make_reference.py "$@"
"$py" tools/make_pipeline_ref.py
[ -d build/ref451-site/transformers ] ||
    "$py" -m pip install -q --no-deps --target build/ref451-site "transformers==4.51.3" "tokenizers>=0.21,<0.22"
PYTHONPATH="$PWD/build/ref451-site" "$py" tools/make_pipeline_ref.py
