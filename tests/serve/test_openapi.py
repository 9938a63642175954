"""GET /openapi.json and /docs, and what the document promises: schemathesis drives a live
`cserve serve` from the served document (no 5xx, every response as documented), the OpenAI
client sees validation errors as 400 (BadRequestError) and does not retry a 408.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_openapi.py
(needs build/models/tiny; the 408 tests also build/models/distil.)
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_api import BIN, CTX, DISTIL, KEYS, ROOT, T, TINY, Server, stop_clean  # noqa: E402
from test_control import ControlServer, app_cfg, config, metric_sum  # noqa: E402
from test_control import stop_clean as stop_clean_ctl  # noqa: E402

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")

SOURCE = ROOT / "src" / "serve" / "openapi" / "openapi.json"
PAGE = ROOT / "src" / "serve" / "openapi" / "docs.html"
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
# schemathesis: test cases per operation and phase; about 900 requests in all, 20-40 s on one core
# (make asan, CS_TEST_QUICK=1: 10, the same operations and phases; the plain run does the full 25)
ST_EXAMPLES = int(os.environ.get("CS_OPENAPI_EXAMPLES", "10" if os.environ.get("CS_TEST_QUICK") == "1" else "25"))


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    stop_clean(s)


@pytest.fixture(scope="module")
def srv_keys():
    s = Server(env={"CSERVE_API_KEYS": ",".join(KEYS)})
    yield s
    stop_clean(s)


def get(s, path, **kw):
    return requests.get(s.url(path), timeout=T, **kw)


def operations(doc):
    return {(m, p) for p, item in doc["paths"].items() for m in item}


# ------------------------------------------------------------ the document

def test_source_is_openapi_31():
    """The source file loads as OpenAPI 3.1 (schemathesis validates it against the 3.1 schema)."""
    import schemathesis
    doc = json.loads(SOURCE.read_text())
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    ops = {(r.ok().method.lower(), r.ok().path) for r in schema.get_all_operations()}
    assert ops == operations(doc)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def header_limits():
    h = (ROOT / "src" / "serve" / "api.h").read_text()
    return {k: int(v) for k, v in re.findall(r"#define (CS_API_MAX_\w+) \(?(\d+)\)?", h)}


def test_limits_match_api_h():
    """The numbers written in the document are the constants the server enforces."""
    lim = header_limits()
    sc = json.loads(SOURCE.read_text())["components"]["schemas"]
    sg, cr = sc["SimpleGenRequest"]["properties"], sc["CompletionRequest"]["properties"]
    assert sg["num_return_sequences"]["maximum"] == lim["CS_API_MAX_N"]
    assert cr["n"]["maximum"] == cr["best_of"]["maximum"] == lim["CS_API_MAX_N"]
    assert sc["SimpleGenResponse"]["maxItems"] == lim["CS_API_MAX_N"]
    assert cr["prompt"]["anyOf"][2]["maxItems"] == lim["CS_API_MAX_PROMPTS"]
    stop_list = cr["stop"]["anyOf"][2]
    assert stop_list["maxItems"] == lim["CS_API_MAX_STOP"]
    assert stop_list["items"]["maxLength"] == cr["stop"]["anyOf"][1]["maxLength"] == lim["CS_API_MAX_STOP_BYTES"]
    rid = json.loads(SOURCE.read_text())["components"]["headers"]["X-Request-Id"]["schema"]
    assert rid["maxLength"] == lim["CS_API_MAX_REQUEST_ID"]


def test_served_document(srv):
    r = get(srv, "/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    src = json.loads(SOURCE.read_text())
    assert operations(doc) == operations(src)
    assert "security" not in doc  # no keys: no route needs one
    assert doc["info"] == src["info"] and doc["components"]["responses"] == src["components"]["responses"]
    # the served model's limits, which the source gives in words
    sc = doc["components"]["schemas"]
    assert sc["SimpleGenRequest"]["properties"]["max_new_tokens"]["maximum"] == CTX
    assert sc["CompletionRequest"]["properties"]["max_tokens"]["maximum"] == CTX
    assert sc["TokenIds"]["maxItems"] == CTX and sc["TokenIds"]["items"]["maximum"] == 50256
    for k in ("max_new_tokens", "max_length"):
        assert "maximum" not in src["components"]["schemas"]["SimpleGenRequest"]["properties"][k]
    assert get(srv, "/docs").status_code == 200
    r = requests.post(srv.url("/openapi.json"), timeout=T)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


def test_route_prefix():
    """Under --route-prefix the application routes (and /openapi.json, /docs) move; /-/ and /metrics do not."""
    s = Server("--route-prefix", "/gpt/")
    try:
        doc = get(s, "/gpt/openapi.json").json()
        paths = set(doc["paths"])
        assert {"/gpt/text/simple-gen", "/gpt/v1/completions", "/gpt/v1/chat/completions", "/gpt/v1/models",
                "/gpt/v1/models/{model}",
                "/gpt/openapi.json", "/gpt/docs", "/-/healthz", "/-/routes", "/metrics"} == paths
        assert get(s, "/openapi.json").status_code == 404
        page = get(s, "/gpt/docs")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        # every documented GET answers where the document says
        for p in paths - {"/gpt/v1/models/{model}"}:
            if "get" in doc["paths"][p]:
                assert get(s, p).status_code == 200, p
    finally:
        stop_clean(s)


def test_keys(srv_keys):
    """With API keys: /docs stays open (it holds no data), /openapi.json needs one and says so."""
    page = get(srv_keys, "/docs")
    assert page.status_code == 200
    assert get(srv_keys, "/openapi.json").status_code == 401
    doc = get(srv_keys, "/openapi.json", headers=AUTH).json()
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/-/healthz"]["get"]["security"] == [] and doc["paths"]["/docs"]["get"]["security"] == []


def test_docs_page_is_self_contained(srv):
    """The page works offline: no script, style, font or image from anywhere else."""
    r = get(srv, "/docs")
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    html = r.text
    assert html == PAGE.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I), "the page loads something remote"
    assert not re.search(r"@import|url\(", html), "the page's CSS loads something"
    assert 'fetch("openapi.json"' in html  # relative: works under any route prefix
    assert len(html.encode()) < 64 * 1024


# ------------------------------------------------------------ schemathesis

def schemathesis_cli():
    exe = Path(sys.executable).with_name("schemathesis")
    assert exe.exists(), f"{exe} missing: schemathesis is in tests/requirements.txt (make deps)"
    return str(exe)


def run_schemathesis(base_url, doc, tmp_path, headers=(), examples=ST_EXAMPLES, extra=()):
    """schemathesis against base_url with doc (as served); returns (exit status, output)."""
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(doc))
    cmd = [schemathesis_cli(), "run", str(spec), "--url", base_url,
           # every check but positive_data_acceptance: a request can be valid by the document and
           # still not fit the model's context (prompt + new tokens), which no schema can say
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--max-examples", str(examples), "--seed", "20261201", "--generation-database", "none",
           # one worker: Python 3.11's ast.parse is not thread-safe and hypothesis calls it
           "--workers", "1", "--request-timeout", "60", "--no-color", "--suppress-health-check", "all",
           *[a for h in headers for a in ("-H", h)], *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    return p.returncode, p.stdout + p.stderr


def test_schemathesis(srv_keys, tmp_path):
    """No 5xx and no response that breaks the document: statuses, content types, bodies (SSE
    events too), required headers, 405 for other methods, 401 without the key."""
    doc = get(srv_keys, "/openapi.json", headers=AUTH).json()
    t0 = time.time()
    rc, out = run_schemathesis(srv_keys.url(""), doc, tmp_path, headers=[f"Authorization: Bearer {KEYS[0]}"])
    took = time.time() - t0
    print(out[-3000:])
    assert rc == 0, out[-20000:]
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and int(m.group(1)) == int(m.group(2)) and int(m.group(1)) >= len(operations(doc)) * ST_EXAMPLES, out[-3000:]
    assert f"Tested: {len(operations(doc))}" in out, out[-3000:]  # every operation
    print(f"schemathesis: {m.group(1)} cases in {took:.1f} s")
    with open(srv_keys.logf.name, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log


# ------------------------------------------------------------ /v1 errors are 400

V1_400 = [
    {"prompt": "x", "max_tokens": 0},
    {"prompt": 5},
    {"prompt": "x", "logprobs": ""},   # only null or 0 (any value "neutral" for any field was let through)
    {"prompt": "x", "suffix": 0},
    {"prompt": "x", "logit_bias": ""},
    {"prompt": "x", "user": 5},        # typed as OpenAI has it (was ignored whatever its type)
]


@pytest.mark.parametrize("body", V1_400)
def test_v1_validation_is_400(srv, body):
    r = requests.post(srv.url("/v1/completions"), json=body, timeout=T)
    assert r.status_code == 400, (r.status_code, r.text)
    e = r.json()["error"]
    assert e["type"] == "invalid_request_error" and e["param"] in body and e["code"], e


def test_openai_client_bad_request(srv):
    """The official client raises BadRequestError (400), not UnprocessableEntityError (422); the
    seed's route keeps FastAPI's 422."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=srv.url("/v1"), api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model="tiny", prompt="x", max_tokens=100000)
    assert ei.value.status_code == 400 and "max_tokens" in str(ei.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", n=1000)
    r = requests.post(srv.url("/text/simple-gen"), json={"input": "x", "max_new_tokens": 0}, timeout=T)
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"


# ------------------------------------------------------------ 408 is not retried

def slow_completion(base_url, key="none"):
    """One long non-streamed completion with the client's default retries (2); returns the error."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=base_url, api_key=key, timeout=120)
    assert client.max_retries == 2  # the default: a plain 408 would be sent three times
    with pytest.raises(openai.APIStatusError) as ei:
        client.completions.create(model="distil", prompt="slow", max_tokens=900, temperature=0,
                                  extra_body={"ignore_eos": True})
    return ei.value


def test_openai_client_does_not_retry_408():
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    s = Server("--request-timeout-s", "1", model=DISTIL)
    try:
        e = slow_completion(s.url("/v1"))
        n = metric_sum(s, "cserve_http_requests", route="/v1/completions", status="408")
        assert n == 1, f"the client sent the request {n:.0f} times"
        assert e.status_code == 408 and e.response.headers.get("x-should-retry") == "false", e
    finally:
        stop_clean(s)


# ------------------------------------------------------------ the control-plane proxy

def test_proxy_document_and_408(tmp_path):
    """Behind `cserve serve --config`, the proxy answers /openapi.json and /docs itself, for every
    application under its prefix (and the root OpenAI routes it answers by model); its own 408
    (http_options.request_timeout_s) is not retried by the OpenAI client either."""
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    s = ControlServer(config(app_cfg(name="tiny", prefix="/small", model=TINY),
                             app_cfg(name="distil", prefix="/big", model=DISTIL),
                             http_options={"request_timeout_s": 1}))
    try:
        doc = requests.get(s.url("/openapi.json"), timeout=T).json()
        paths = set(doc["paths"])
        for pre in ("/small", "/big"):
            assert {pre + "/text/simple-gen", pre + "/v1/completions", pre + "/docs"} <= paths
        assert {"/v1/completions", "/v1/models", "/openapi.json", "/docs", "/-/healthz"} <= paths
        assert "/text/simple-gen" not in paths  # no application at the root
        ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
        assert len(ids) == len(set(ids)), ids
        assert requests.get(s.url("/small/openapi.json"), timeout=T).json() == doc
        page = requests.get(s.url("/big/docs"), timeout=T)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        # what the document says holds behind the proxy too: an application's routes and the
        # proxy's own (/-/healthz, /-/routes, /metrics and the root /v1/models answered 200 to TRACE,
        # or 405 without Allow, before they were checked here)
        rc, out = run_schemathesis(s.url(""), doc, tmp_path, examples=5,
                                   extra=["--include-path-regex",
                                          "^/small/|^/openapi.json$|^/docs$|^/-/|^/metrics$|^/v1/models$"])
        assert rc == 0, out[-20000:]
        e = slow_completion(s.url("/big/v1"))
        n = metric_sum(s, "ray_serve_num_http_requests", application="distil", status_code="408")
        assert n == 1, f"the client sent the request {n:.0f} times"
        assert e.status_code == 408 and e.response.headers.get("x-should-retry") == "false", e
    finally:
        stop_clean_ctl(s)
