#!/bin/sh
# Regenerates tests/data/ref with torch + transformers in a venv at build/venv-ref
# (or $CS_REF_PYTHON). Developer machines only; CI reads the committed output.
set -e
make models
py=${CS_REF_PYTHON:-}
if [ -z "$py" ]; then
    [ -x build/venv-ref/bin/python ] || {
        python3 -m venv build/venv-ref
        build/venv-ref/bin/pip install -q torch transformers tiktoken numpy
    }
    py=build/venv-ref/bin/python
fi
"$py" tools/make_reference.py "$@"
