"""/text/simple-gen and `cserve generate` against transformers' text-generation pipeline.

tests/data/ref/pipeline/pipeline-4.57.json (transformers 4.57.6, the release the seed's pin
`transformers>=4.52.4` installs) and pipeline-4.51.json (4.51.3, served with
`--pipeline-defaults 4.51`) hold what `pipeline("text-generation")(input, **fields)` answers
on model directories that tools/make_pipeline_ref.py makes from build/models by copying and
deleting or adding files; the recipe is in the JSON and this test builds the same
directories. Greedy cases (do_sample: false) must give the same text, character for
character; where transformers raises, cserve must answer 422 saying what fits; the seed's
own request {"input": ...} (sampled) must generate as many tokens as the pipeline did.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_pipeline.py
"""
import concurrent.futures as cf
import json
import os
import shutil
import subprocess

import pytest
import requests

from test_api import BIN, ROOT, Server, sse_events, stop_clean

REF_DIR = ROOT / "tests" / "data" / "ref" / "pipeline"
MODELS = ROOT / "build" / "models"
REFS = {"4.57": REF_DIR / "pipeline-4.57.json", "4.51": REF_DIR / "pipeline-4.51.json"}
T = 600  # client timeout (s): 256 tokens of the distilgpt2-shaped model on a busy machine
QUICK = os.environ.get("CS_TEST_QUICK") == "1"  # make asan: fewer 1024-position generations (see quick_skip)

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and (MODELS / "tiny").is_dir()
                                     and (MODELS / "distil").is_dir()),
                                reason="needs the cserve binary and build/models (make models)")


def quick_skip(series, name, ref):
    """Under `make asan` each 256-token run of a 1024-position model takes minutes. The variants differ
    only in their config files (read by the same code), so ASan runs one of them, with one case; the
    plain `make test` runs them all."""
    if QUICK and ref["n_positions"] >= 1024 and series == "4.57" and name != "distil":
        pytest.skip("make asan: one 256-token variant of the distilgpt2-shaped model is enough")


def load(series):
    with open(REFS[series], encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """Model directories as the reference script made them (the union of both files' recipes)."""
    root = tmp_path_factory.mktemp("pipeline-models")
    out = {}
    for series in REFS:
        for name, v in load(series)["variants"].items():
            if name in out:
                continue
            d = root / name
            shutil.copytree(MODELS / v["base"], d)
            for f in v["delete"]:
                (d / f).unlink()
            for f, content in v["add"].items():
                (d / f).write_text(json.dumps(content))
            out[name] = str(d)
    return out


def params():
    out = []
    for series in REFS:
        for name in load(series)["models"]:
            out.append(pytest.param(series, name, id=f"{series}-{name}"))
    return out


def metric(s, name):
    for line in requests.get(s.url("/metrics"), timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name + " not in /metrics")


def check_error(status, message, case):
    assert status == 422, (case, status, message)
    # what fits: the context or max_length, in numbers
    assert any(w in message for w in ("context", "max_length")), message


@pytest.mark.parametrize("series,name", params())
def test_simple_gen_equals_pipeline(series, name, variants, tmp_path):
    ref = load(series)["models"][name]
    quick_skip(series, name, ref)
    if QUICK and ref["n_positions"] >= 1024:
        ref = dict(ref, cases=ref["cases"][:1 if series == "4.57" else 2], default_request=[])
    args = ["--pipeline-defaults", series] if series == "4.51" else []
    # 256 new tokens of the 1024-position model take minutes under `make asan`: the server's
    # request timeout (60 s by default) must not cut them
    s = Server(*args, "--max-ongoing-requests", "8", "--request-timeout-s", "600", model=variants[name],
               env={"CS_CACHE_DIR": str(tmp_path / "pack")})
    try:
        def one(case):
            r = requests.post(s.url("/text/simple-gen"), json=case["request"], timeout=T)
            return case, r.status_code, r.text
        with cf.ThreadPoolExecutor(8) as ex:
            results = list(ex.map(one, ref["cases"]))
        n_ok = 0
        for case, status, body in results:
            if "error" in case:
                check_error(status, json.loads(body)["error"]["message"], case)
            else:
                assert status == 200, (case["request"], body)
                got = [x["generated_text"] for x in json.loads(body)]
                assert got == case["generated_text"], case["request"]
                n_ok += 1
        assert n_ok > 0
        # streaming sends the same text, the clean-up included
        for case in ref["cases"][:9] if ref["n_positions"] < 1024 else []:
            if "error" in case:
                continue
            body = dict(case["request"], stream=True)
            with requests.post(s.url("/text/simple-gen"), json=body, stream=True, timeout=T) as r:
                ev = sse_events(r)
            assert ev[-1] == "[DONE]"
            text = "".join(json.loads(e)["text"] for e in ev[:-1])
            assert text == case["generated_text"][0], body
        # the seed's request: sampled, as many new tokens as the pipeline generated
        for d in ref["default_request"]:
            before = metric(s, "cserve_generation_tokens_total")
            r = requests.post(s.url("/text/simple-gen"), json={"input": d["input"]}, timeout=T)
            if "error" in d:
                check_error(r.status_code, r.json()["error"]["message"], d)
                continue
            assert r.status_code == 200, r.text
            assert metric(s, "cserve_generation_tokens_total") - before == d["n_new"], d
    finally:
        stop_clean(s)


def cli_args(req):
    a = []
    if req.get("do_sample") is False:
        a.append("--greedy")
    if "max_new_tokens" in req:
        a += ["--max-new-tokens", str(req["max_new_tokens"])]
    if "max_length" in req:
        a += ["--max-length", str(req["max_length"])]
    if req.get("return_full_text") is False:
        a.append("--no-prompt")
    return a


@pytest.mark.parametrize("series,name", params())
def test_cli_generate_equals_pipeline(series, name, variants, tmp_path):
    ref = load(series)["models"][name]
    quick_skip(series, name, ref)
    cases = ref["cases"]
    if ref["n_positions"] >= 1024:  # 256 tokens per run: a few do
        cases = [c for c in cases if c["n_prompt"] < 60][:1 if QUICK else 3]
    env = dict(os.environ, CS_CACHE_DIR=str(tmp_path / "pack"))
    for case in cases:
        req = case["request"]
        cmd = [BIN, "generate", "--model", variants[name], "--threads", "1", "--json", "--pipeline-defaults", series,
               *cli_args(req), req["input"]]
        p = subprocess.run(cmd, capture_output=True, timeout=T, env=env, cwd=ROOT)
        if "error" in case:
            assert p.returncode == 1, (req, p.stdout)
            msg = p.stderr.decode()
            assert "context" in msg or "max_length" in msg, msg
        else:
            assert p.returncode == 0, (req, p.stderr.decode())
            got = [x["generated_text"] for x in json.loads(p.stdout)]
            assert got == case["generated_text"], req
