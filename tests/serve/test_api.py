"""End-to-end tests of `cserve serve`: the real binary on 127.0.0.1, the synthetic
models from `make models` (tiny: real GPT-2 tokenizer, random weights, 128 positions;
distil: distilgpt2-shaped, slow enough to keep requests in flight).

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve
"""
import concurrent.futures as cf
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = str(ROOT / "build" / "models" / "tiny")
DISTIL = str(ROOT / "build" / "models" / "distil")
KEYS = ("test-key-123", "second-key")
CTX = 128  # tiny's n_positions
T = 30  # client timeout (s) for anything that should be quick

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")


class Server:
    """A `cserve serve` process on a free port; its stderr goes to a file."""

    def __init__(self, *args, model=TINY, env=None):
        self.logf = tempfile.NamedTemporaryFile(prefix="cserve-serve-", suffix=".log", delete=False)
        e = dict(os.environ)
        e.pop("CSERVE_API_KEYS", None)
        e.update(env or {})
        cmd = [BIN, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.logf, env=e, cwd=ROOT)
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline and self.port is None:
            m = re.search(r"listening on [^\"]*:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.log())
            else:
                time.sleep(0.02)
        assert self.port, "server did not start: " + self.log()
        while time.time() < deadline:
            try:
                if requests.get(self.url("/-/healthz"), timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, self.log()
            time.sleep(0.02)
        raise RuntimeError("server not ready: " + self.log())

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self):
        with open(self.logf.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not exit after SIGTERM: " + self.log()[-3000:])


def stop_clean(s):
    rc = s.stop()
    log = s.log()
    os.unlink(s.logf.name)
    assert rc == 0, f"exit status {rc}:\n{log[-5000:]}"
    assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log[-5000:]
    assert "ERROR: LeakSanitizer" not in log, log[-5000:]


def test_int8_server_exits_clean():
    """An int8 server frees its engine thread's activation scratch on exit: under `make asan`
    LeakSanitizer reported the buffer (and a non-zero exit) before the engine thread released it."""
    s = Server("--dtype", "int8")
    try:
        r = requests.post(s.url("/text/simple-gen"), json={"input": "Once upon a time", "max_new_tokens": 8}, timeout=T)
        assert r.status_code == 200, r.text
    finally:
        stop_clean(s)


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    stop_clean(s)


@pytest.fixture(scope="module")
def srv_legacy():
    s = Server("--pipeline-defaults", "4.51")
    yield s
    stop_clean(s)


@pytest.fixture(scope="module")
def srv_auth():
    s = Server(env={"CSERVE_API_KEYS": ",".join(KEYS)})
    yield s
    stop_clean(s)


@pytest.fixture(scope="module")
def srv_small():
    s = Server("--max-ongoing-requests", "2", "--max-queued-requests", "2")
    yield s
    stop_clean(s)


@pytest.fixture(scope="module")
def srv_distil():
    if not os.path.isdir(DISTIL):
        pytest.skip("needs build/models/distil")
    s = Server("--request-timeout-s", "1", model=DISTIL)
    yield s
    stop_clean(s)


# ------------------------------------------------------------------ helpers

_cli_cache = {}


def cli_greedy(prompt, n):
    """Continuation that `cserve generate --greedy` prints for prompt."""
    key = (prompt, n)
    if key not in _cli_cache:
        out = subprocess.run([BIN, "generate", "--model", TINY, "--greedy", "--max-new-tokens", str(n), "--no-prompt",
                              "--threads", "1", prompt], capture_output=True, check=True, timeout=60).stdout
        text = out.decode("utf-8", errors="replace")
        assert text.endswith("\n")
        _cli_cache[key] = text[:-1]
    return _cli_cache[key]


def post(s, path, body, **kw):
    kw.setdefault("timeout", T)
    return requests.post(s.url(path), json=body, **kw)


def sse_events(resp):
    """Payloads of the data: lines of a text/event-stream response."""
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            out.append(line[6:].decode("utf-8"))
    return out


def metric(s, name, headers=None):
    text = requests.get(s.url("/metrics"), headers=headers, timeout=T).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def wait_idle(s, headers=None, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if metric(s, "cserve_requests_in_flight", headers) == 0 and metric(s, "cserve_scheduler_running", headers) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("requests still in flight: " + requests.get(s.url("/metrics"), headers=headers).text)


def raw(port, data, timeout=10, until_close=True):
    """Sends raw bytes, returns everything read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(data)
        buf = b""
        end = time.time() + timeout
        while time.time() < end:
            try:
                chunk = c.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            if not until_close and b"\r\n\r\n" in buf:
                break
        return buf


def status_of(resp_bytes):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", resp_bytes)
    assert m, resp_bytes[:200]
    return int(m.group(1))


def body_of(resp_bytes):
    return resp_bytes.split(b"\r\n\r\n", 1)[1]


def check_plain_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert isinstance(e["type"], str) and e["type"] and isinstance(e["message"], str) and e["message"]
    return e


def check_v1_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert set(e) >= {"message", "type", "param", "code"}, e
    return e


# ---------------------------------------------------------------- endpoints

def test_healthz_routes_models(srv):
    r = requests.get(srv.url("/-/healthz"), timeout=T)
    assert r.status_code == 200 and r.text == "success"
    assert requests.head(srv.url("/-/healthz"), timeout=T).status_code == 200
    assert requests.get(srv.url("/-/routes"), timeout=T).json() == {"/": "transformer-app"}
    m = requests.get(srv.url("/v1/models"), timeout=T).json()
    assert m["object"] == "list" and [d["id"] for d in m["data"]] == ["tiny"]
    assert m["data"][0]["object"] == "model"
    assert requests.get(srv.url("/v1/models/tiny"), timeout=T).json()["id"] == "tiny"
    e = check_v1_error(requests.get(srv.url("/v1/models/nope"), timeout=T), 404)
    assert e["code"] == "model_not_found"


def test_seed_curl(srv_legacy):
    """The seed's documented request, byte for byte (curl when present); tiny cannot hold the 256
    new tokens of transformers >= 4.52's defaults, so the server has 4.51's."""
    srv = srv_legacy
    body = '{"input":"Once upon a time"}'
    try:
        out = subprocess.run(["curl", "-s", "-X", "POST", srv.url("/text/simple-gen"), "-H",
                              "Content-Type: application/json", "-d", body], capture_output=True, timeout=T).stdout
    except FileNotFoundError:
        out = requests.post(srv.url("/text/simple-gen"), data=body, headers={"Content-Type": "application/json"},
                            timeout=T).content
    d = json.loads(out)
    assert isinstance(d, list) and len(d) == 1 and set(d[0]) == {"generated_text"}
    assert d[0]["generated_text"].startswith("Once upon a time")
    assert len(d[0]["generated_text"]) > len("Once upon a time")


def test_metrics(srv):
    post(srv, "/text/simple-gen", {"input": "metrics", "max_new_tokens": 3}).raise_for_status()
    text = requests.get(srv.url("/metrics"), timeout=T).text
    for family in ("cserve_http_requests_total", "cserve_http_request_duration_seconds_bucket",
                   "cserve_time_to_first_token_seconds_bucket", "cserve_prompt_tokens_total",
                   "cserve_generation_tokens_total", "cserve_requests_in_flight", "cserve_scheduler_queue_depth",
                   "cserve_batch_size"):
        assert family in text, family
    assert re.search(r'cserve_http_requests_total\{route="/text/simple-gen",method="POST",status="200"\} [1-9]', text)
    assert metric(srv, "cserve_generation_tokens_total") >= 3
    assert metric(srv, "cserve_ready") == 1


# --------------------------------------------------------------- generation

PROMPTS = ["Once upon a time", "Hello, world", "The quick brown fox", "In 1492, Columbus",
           "def main():", "Ünïcödé ✓ 🙂", "a", "What is the meaning of life?"]


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_equals_cli(srv, prompt):
    n = 24
    want = cli_greedy(prompt, n)
    r = post(srv, "/text/simple-gen", {"input": prompt, "do_sample": False, "max_new_tokens": n})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": prompt + want}]
    r = post(srv, "/text/simple-gen", {"input": prompt, "do_sample": False, "max_new_tokens": n,
                                       "return_full_text": False})
    assert r.json() == [{"generated_text": want}]
    r = post(srv, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "text_completion" and d["model"] == "tiny" and d["id"].startswith("cmpl-")
    assert isinstance(d["created"], int)
    assert d["choices"] == [{"text": want, "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert d["usage"]["completion_tokens"] == n
    assert d["usage"]["total_tokens"] == d["usage"]["prompt_tokens"] + n


def test_pipeline_defaults(srv, srv_legacy):
    """No options: the pipeline defaults of transformers >= 4.52 (256 new tokens, sampled), which
    tiny's 128 positions cannot hold: 422 saying what fits. --pipeline-defaults 4.51: generate()'s
    own 20 new tokens, greedy (tiny has no task_specific_params)."""
    r = post(srv, "/text/simple-gen", {"input": "Once upon a time"})
    assert r.status_code == 422 and "at most 125 new tokens" in r.json()["error"]["message"], r.text
    r = post(srv_legacy, "/text/simple-gen", {"input": "Once upon a time"})
    g20 = post(srv, "/text/simple-gen", {"input": "Once upon a time", "max_new_tokens": 20, "do_sample": False})
    assert r.json() == g20.json()
    # max_length counts the prompt; one that already reaches it is refused (transformers raises)
    r = post(srv_legacy, "/text/simple-gen", {"input": "Once upon a time", "max_length": 4})
    assert r.status_code == 422 and "max_length" in r.json()["error"]["message"], r.text


def test_seed_reproducible(srv):
    body = {"input": "Tell me", "do_sample": True, "top_k": 0, "temperature": 1.5, "max_new_tokens": 20, "seed": 7}
    a = post(srv, "/text/simple-gen", body).json()
    b = post(srv, "/text/simple-gen", body).json()
    c = post(srv, "/text/simple-gen", dict(body, seed=8)).json()
    assert a == b and a != c
    v1 = {"prompt": "Tell me", "max_tokens": 20, "temperature": 1.0, "seed": 42, "n": 3}
    x = post(srv, "/v1/completions", v1).json()["choices"]
    y = post(srv, "/v1/completions", v1).json()["choices"]
    assert [c["text"] for c in x] == [c["text"] for c in y]
    assert len({c["text"] for c in x}) > 1  # the n samples differ from each other
    assert [c["index"] for c in x] == [0, 1, 2]


def test_num_return_sequences(srv):
    r = post(srv, "/text/simple-gen", {"input": "Hi", "num_return_sequences": 4, "max_new_tokens": 5, "seed": 1,
                                       "do_sample": True})
    d = r.json()
    assert len(d) == 4 and all(x["generated_text"].startswith("Hi") for x in d)


def test_stream_simple_gen(srv):
    prompt, n = "Streaming is", 30
    full = post(srv, "/text/simple-gen", {"input": prompt, "do_sample": False, "max_new_tokens": n}).json()
    with requests.post(srv.url("/text/simple-gen"), json={"input": prompt, "do_sample": False, "max_new_tokens": n,
                                                          "stream": True}, stream=True, timeout=T) as r:
        assert r.status_code == 200 and r.headers.get("X-Request-Id")
        ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert len(chunks) >= n // 2  # token by token, not all at once
    assert "".join(c["text"] for c in chunks) == full[0]["generated_text"]
    assert chunks[-1]["finish_reason"] == "length"


def test_stream_v1(srv):
    prompt, n = "Streams of tokens", 40
    want = cli_greedy(prompt, n)
    with requests.post(srv.url("/v1/completions"), json={"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                         "stream": True, "stream_options": {"include_usage": True}},
                       stream=True, timeout=T) as r:
        ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == n
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_strings(srv):
    prompt, n = "Once upon a time", 40
    full = cli_greedy(prompt, n)
    stop = full[len(full) // 2:len(full) // 2 + 5]
    want = full[:full.index(stop)]
    r = post(srv, "/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0, "stop": [stop, "\x00zz"]})
    c = r.json()["choices"][0]
    assert c["text"] == want and c["finish_reason"] == "stop"
    with requests.post(srv.url("/v1/completions"), json={"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                         "stop": stop, "stream": True}, stream=True, timeout=T) as r:
        ev = sse_events(r)
    chunks = [json.loads(e) for e in ev[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_echo_prompt_list_token_ids(srv):
    n = 6
    r = post(srv, "/v1/completions", {"prompt": "Echo me", "max_tokens": n, "temperature": 0, "echo": True})
    assert r.json()["choices"][0]["text"] == "Echo me" + cli_greedy("Echo me", n)
    r = post(srv, "/v1/completions", {"prompt": ["one", "two"], "max_tokens": n, "temperature": 0, "n": 2})
    ch = r.json()["choices"]
    assert [c["index"] for c in ch] == [0, 1, 2, 3]
    assert [c["text"] for c in ch] == [cli_greedy("one", n)] * 2 + [cli_greedy("two", n)] * 2
    ids = json.loads(subprocess.run([BIN, "tokenize", "--model", TINY, "Hello world"], capture_output=True,
                                    check=True).stdout)
    a = post(srv, "/v1/completions", {"prompt": ids, "max_tokens": n, "temperature": 0}).json()
    b = post(srv, "/v1/completions", {"prompt": [ids], "max_tokens": n, "temperature": 0}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == cli_greedy("Hello world", n)
    assert a["usage"]["prompt_tokens"] == len(ids)


def test_openai_client(srv_auth):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv_auth.port}/v1", api_key=KEYS[0], max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    prompt, n = "The OpenAI client", 12
    want = cli_greedy(prompt, n)
    c = client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0)
    assert c.choices[0].text == want and c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == n
    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in stream if ch.choices) == want
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{srv_auth.port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny", prompt=prompt, max_tokens=2)


def test_api_keys(srv_auth):
    assert requests.get(srv_auth.url("/-/healthz"), timeout=T).status_code == 200  # never needs a key
    body = {"input": "secret", "max_new_tokens": 2}
    r = post(srv_auth, "/text/simple-gen", body)
    check_plain_error(r, 401)
    assert r.headers.get("WWW-Authenticate") == "Bearer"
    check_plain_error(post(srv_auth, "/text/simple-gen", body, headers={"Authorization": "Bearer nope"}), 401)
    check_plain_error(post(srv_auth, "/text/simple-gen", body, headers={"Authorization": "Basic " + KEYS[0]}), 401)
    check_v1_error(requests.get(srv_auth.url("/v1/models"), timeout=T), 401)
    check_plain_error(requests.get(srv_auth.url("/metrics"), timeout=T), 401)
    for k in KEYS:
        assert post(srv_auth, "/text/simple-gen", body, headers={"Authorization": f"Bearer {k}"}).status_code == 200


def test_route_prefix_and_key_file(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# keys\n  file-key-1  \n\nfile-key-2\n")
    s = Server("--route-prefix", "/gpt/", "--api-key-file", str(keyfile), env={"CSERVE_API_KEYS": "env-key"})
    try:
        h = {"Authorization": "Bearer file-key-1"}
        assert requests.get(s.url("/-/routes"), headers=h, timeout=T).json() == {"/gpt": "transformer-app"}
        r = post(s, "/gpt/text/simple-gen", {"input": "prefixed", "max_new_tokens": 3, "do_sample": False}, headers=h)
        assert r.json() == [{"generated_text": "prefixed" + cli_greedy("prefixed", 3)}]
        check_plain_error(post(s, "/text/simple-gen", {"input": "x"}, headers=h), 404)
        check_plain_error(post(s, "/gptx/text/simple-gen", {"input": "x"}, headers=h), 404)
        for k in ("file-key-2", "env-key"):
            r = post(s, "/gpt/v1/completions", {"prompt": "x", "max_tokens": 2}, headers={"Authorization": "Bearer " + k})
            assert r.status_code == 200, r.text
        check_v1_error(post(s, "/gpt/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer # keys"}), 401)
        openai = pytest.importorskip("openai")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/gpt/v1", api_key="file-key-2", max_retries=0)
        assert c.completions.create(model="tiny", prompt="prefixed", max_tokens=3, temperature=0).choices[0].text == \
            cli_greedy("prefixed", 3)
    finally:
        stop_clean(s)


def test_concurrent_64(srv):
    n = 12
    want = {p: p + cli_greedy(p, n) for p in PROMPTS}
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(64)]
    barrier = threading.Barrier(len(jobs))

    def one(p):
        barrier.wait(timeout=T)
        r = post(srv, "/text/simple-gen", {"input": p, "do_sample": False, "max_new_tokens": n}, timeout=120)
        return p, r.status_code, r.json()

    with cf.ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(one, jobs))
    for p, status, body in results:
        assert status == 200, body
        assert body == [{"generated_text": want[p]}]
    wait_idle(srv)


def test_client_disconnect_cancels(srv):
    before = metric(srv, "cserve_generation_tokens_total")
    body = json.dumps({"prompt": "cancel me", "max_tokens": 120, "ignore_eos": True, "temperature": 0,
                       "stream": True}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    with socket.create_connection(("127.0.0.1", srv.port), timeout=T) as c:
        c.sendall(req)
        buf = b""
        while buf.count(b"data: ") < 2:
            chunk = c.recv(4096)
            assert chunk, buf
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 200")
    # also a non-streamed request whose client leaves while it waits
    body = json.dumps({"prompt": "cancel me too", "max_tokens": 120, "ignore_eos": True, "n": 4}).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=T) as c:
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    wait_idle(srv)
    assert metric(srv, "cserve_generation_tokens_total") - before < 120 + 4 * 120
    r = post(srv, "/v1/completions", {"prompt": "still alive", "max_tokens": 4, "temperature": 0})
    assert r.json()["choices"][0]["text"] == cli_greedy("still alive", 4)


def test_overload_503(srv_small):
    barrier = threading.Barrier(30)

    def one(i):
        barrier.wait(timeout=T)
        return post(srv_small, "/v1/completions", {"prompt": f"load {i}", "max_tokens": 100, "ignore_eos": True,
                                                   "temperature": 0}, timeout=120)

    with cf.ThreadPoolExecutor(30) as ex:
        rs = list(ex.map(one, range(30)))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 2, codes
    for r in rs:
        if r.status_code == 503:
            assert r.headers["Retry-After"].isdigit()
            check_v1_error(r, 503)
        else:
            ch = r.json()["choices"][0]
            assert ch["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 100
    wait_idle(srv_small)
    assert metric(srv_small, "cserve_scheduler_queue_depth") == 0
    assert post(srv_small, "/v1/completions", {"prompt": "after", "max_tokens": 2}).status_code == 200


# ------------------------------------------------------------ bad requests

LONG = "word " * 200  # more than 128 tokens

PLAIN_BAD = [
    ('{"input": ', 400),
    ("[1, 2]", 422),
    ("{}", 422),
    ('{"input": 5}', 422),
    ('{"input": null}', 422),
    ('{"input": ""}', 422),
    ('{"input": "x", "max_new_tokens": "many"}', 422),
    ('{"input": "x", "max_new_tokens": -1}', 422),
    ('{"input": "x", "max_new_tokens": 0}', 422),
    ('{"input": "x", "max_new_tokens": 1000000}', 422),
    ('{"input": "x", "max_new_tokens": 1e30}', 422),
    ('{"input": "x", "max_new_tokens": 2.5}', 422),
    ('{"input": "x", "max_length": 0}', 422),
    ('{"input": "x", "temperature": -1}', 422),
    ('{"input": "x", "temperature": 0}', 422),
    ('{"input": "x", "top_p": 0}', 422),
    ('{"input": "x", "temperature": 1e-50}', 422),
    ('{"input": "x", "top_p": 1e-50}', 422),
    ('{"input": "x", "top_p": 1.5}', 422),
    ('{"input": "x", "top_k": -3}', 422),
    ('{"input": "x", "do_sample": "yes"}', 422),
    ('{"input": "x", "num_return_sequences": 1000}', 422),
    ('{"input": "x", "seed": -1}', 422),
    ('{"input": "x", "seed": 123456789012345678901234567890}', 400),
    (json.dumps({"input": LONG}), 422),
    (json.dumps({"input": "x", "max_new_tokens": 127, "do_sample": False}) + " ", 200),
    # prompt + new tokens may reach n_positions + 1 (the last one is never fed back), as in transformers
    (json.dumps({"input": "x y", "max_new_tokens": 127, "do_sample": False}), 200),
    (json.dumps({"input": "x y", "max_new_tokens": 128}), 422),
    ('{"input": ' + "[" * 100 + "]" * 100 + "}", 422),
    ("", 400),
    ("null", 422),
]


@pytest.mark.parametrize("body,status", PLAIN_BAD)
def test_bad_simple_gen(srv, body, status):
    r = requests.post(srv.url("/text/simple-gen"), data=body.encode(), headers={"Content-Type": "application/json"},
                      timeout=T)
    if status == 200:
        assert r.status_code == 200, r.text
        return
    e = check_plain_error(r, status)
    if "max_new_tokens\": 1000000" in body:
        assert "max_new_tokens" in e["message"] and "128" in e["message"]
    if "1e-50" in body:  # positive, but zero once it is a float: named in the message
        assert ("temperature" in body) == ("temperature" in e["message"]) and "1e-50" in e["message"], e
    if "[[[[" in body:
        assert "nesting" in e["message"] and "32" in e["message"]
    if body == json.dumps({"input": LONG}):
        assert "context" in e["message"] and "128" in e["message"]


# Under /v1 a request that does not validate is a 400 (OpenAI's BadRequestError), not FastAPI's 422.
V1_BAD = [
    ({}, 400, "prompt"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[]]}, 400, "prompt"),
    ({"prompt": [1, "a"]}, 400, "prompt"),
    ({"prompt": [-1]}, 400, "prompt"),
    ({"prompt": [50257]}, 400, "prompt"),
    ({"prompt": ["a"] * 17}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": LONG}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 128}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "16"}, 400, "max_tokens"),
    ({"prompt": "x", "n": 1000}, 400, "n"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"prompt": "x", "top_p": -0.5}, 400, "top_p"),
    ({"prompt": "x", "top_p": 1e-50}, 400, "top_p"),
    ({"prompt": "x", "repetition_penalty": 1e-60}, 400, "repetition_penalty"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "x", "stop": [""]}, 400, "stop"),
    ({"prompt": "x", "stop": 5}, 400, "stop"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "logprobs": 5}, 400, "logprobs"),
    ({"prompt": "x", "presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"prompt": "x", "best_of": 3}, 400, "best_of"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "x", "model": 7}, 400, "model"),
]


@pytest.mark.parametrize("body,status,param", V1_BAD)
def test_bad_completions(srv, body, status, param):
    e = check_v1_error(post(srv, "/v1/completions", body), status)
    assert e["param"] == param, e
    if body.get("max_tokens") == 100000:
        assert "128" in e["message"]
    if body.get("n") == 1000:
        assert "16" in e["message"]


def test_bad_json_v1(srv):
    r = requests.post(srv.url("/v1/completions"), data=b'{"prompt": "x",,}', timeout=T)
    e = check_v1_error(r, 400)
    assert e["type"] == "invalid_request_error"


def test_invalid_utf8_is_replaced(srv):
    body = b'{"input": "Hi \xff\xfe th\xc3ere", "max_new_tokens": 3, "do_sample": false}'
    r = requests.post(srv.url("/text/simple-gen"), data=body, timeout=T)
    assert r.status_code == 200, r.text
    text = r.json()[0]["generated_text"]
    assert text.startswith("Hi \ufffd\ufffd th\ufffdere")
    assert text == "Hi \ufffd\ufffd th\ufffdere" + cli_greedy("Hi \ufffd\ufffd th\ufffdere", 3)


def test_body_too_large(srv):
    big = json.dumps({"input": "x" * (1 << 20)}).encode()
    # announced size: refused before the body is read
    resp = raw(srv.port, b"POST /text/simple-gen HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big))
    assert status_of(resp) == 413 and json.loads(body_of(resp))["error"]["type"] == "payload_too_large"
    # chunked upload: refused once the limit is crossed
    try:
        r = requests.post(srv.url("/text/simple-gen"), data=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                          timeout=T)
        check_plain_error(r, 413)
    except requests.ConnectionError:
        pass  # the server may close before the client has finished sending
    assert requests.get(srv.url("/-/healthz"), timeout=T).status_code == 200


def test_headers_too_large(srv):
    r = requests.get(srv.url("/-/routes"), headers={"X-Big": "a" * 20000}, timeout=T)
    check_plain_error(r, 431)
    resp = raw(srv.port, b"GET /-/routes HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"b" * 200000 + b"\r\n\r\n")
    assert resp == b"" or status_of(resp) == 431
    assert requests.get(srv.url("/-/healthz"), timeout=T).status_code == 200


def test_unknown_path_and_method(srv):
    e = check_plain_error(requests.get(srv.url("/nope"), timeout=T), 404)
    assert e["type"] == "not_found"
    check_v1_error(requests.post(srv.url("/v1/chat/nothing"), json={}, timeout=T), 404)
    r = requests.get(srv.url("/text/simple-gen"), timeout=T)
    check_plain_error(r, 405)
    assert r.headers["Allow"] == "POST"
    r = requests.post(srv.url("/v1/models"), timeout=T)
    check_v1_error(r, 405)
    assert "GET" in r.headers["Allow"]
    check_plain_error(requests.delete(srv.url("/-/healthz"), timeout=T), 405)


def test_request_id_and_access_log(srv):
    r = requests.get(srv.url("/-/routes"), headers={"X-Request-Id": "my-req.42"}, timeout=T)
    assert r.headers["X-Request-Id"] == "my-req.42"
    r = post(srv, "/text/simple-gen", {"input": "logged", "max_new_tokens": 2}, headers={"X-Request-Id": "gen-1"})
    assert r.headers["X-Request-Id"] == "gen-1"
    gen = requests.get(srv.url("/-/routes"), headers={"X-Request-Id": "bad id with spaces"}, timeout=T)
    assert re.fullmatch(r"[0-9a-f]{32}", gen.headers["X-Request-Id"])
    end = time.time() + 10
    while time.time() < end:
        lines = [json.loads(x) for x in srv.log().splitlines() if x.startswith("{")]
        hit = [x for x in lines if x.get("request_id") == "gen-1"]
        if hit:
            break
        time.sleep(0.05)
    assert hit, srv.log()[-2000:]
    x = hit[0]
    assert set(x) >= {"ts", "method", "path", "status", "latency_ms", "prompt_tokens", "completion_tokens",
                      "request_id"}
    assert x["method"] == "POST" and x["path"] == "/text/simple-gen" and x["status"] == 200
    assert x["completion_tokens"] == 2 and x["prompt_tokens"] >= 1 and x["latency_ms"] >= 0


def test_keep_alive(srv):
    req = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=T) as c:
        for _ in range(3):
            c.sendall(req)
            buf = b""
            while not buf.endswith(b"success"):
                chunk = c.recv(4096)
                assert chunk, "connection closed between keep-alive requests"
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 200")


def _threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def test_many_idle_connections(srv):
    """Thousands of open keep-alive connections cost no thread each, and the server keeps serving."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2000 + 300
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    n = min(2000, soft - 300)
    if n < 500:
        pytest.skip(f"file descriptor limit {soft} too low for the test")
    before = _threads(srv.proc.pid)
    conns = []
    try:
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=T)
            conns.append(c)
            if i % 50 == 0:  # some have been used once (keep-alive), the rest never sent a byte
                c.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                buf = b""
                while not buf.endswith(b"success"):
                    chunk = c.recv(4096)
                    assert chunk, f"connection {i} closed"
                    buf += chunk
                assert buf.startswith(b"HTTP/1.1 200")
        assert _threads(srv.proc.pid) <= before + 2, (before, _threads(srv.proc.pid))
        r = post(srv, "/v1/completions", {"prompt": "still serving", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
        # the oldest idle connection is still open and usable
        conns[1].sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conns[1].recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for c in conns:
            c.close()
    assert srv.proc.poll() is None


# ---------------------------------------------------------- slow requests

def test_slow_client_cut_off(srv_distil):
    """Half a body, then silence: the connection is closed after the request timeout (1 s)."""
    t0 = time.time()
    resp = raw(srv_distil.port, b"POST /text/simple-gen HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inp",
               timeout=15)
    took = time.time() - t0
    assert resp == b"" or status_of(resp) == 408, resp
    assert took < 6, took
    assert requests.get(srv_distil.url("/-/healthz"), timeout=T).status_code == 200


def test_request_timeout_408(srv_distil):
    r = post(srv_distil, "/v1/completions", {"prompt": "slow", "max_tokens": 900, "ignore_eos": True,
                                             "temperature": 0}, timeout=60)
    e = check_v1_error(r, 408)
    assert "timed out" in e["message"]
    r = post(srv_distil, "/text/simple-gen", {"input": "slow", "max_new_tokens": 900}, timeout=60)
    check_plain_error(r, 408)
    wait_idle(srv_distil, timeout=60)  # the timed-out generations were cancelled


def test_sigterm_finishes_requests():
    if not os.path.isdir(DISTIL):
        pytest.skip("needs build/models/distil")
    s = Server(model=DISTIL)
    try:
        body = {"prompt": "graceful", "max_tokens": 16, "ignore_eos": True, "temperature": 0, "stream": True}
        with requests.post(s.url("/v1/completions"), json=body, stream=True, timeout=120) as r:
            lines = r.iter_lines()
            first = next(l for l in lines if l.startswith(b"data: "))
            s.proc.send_signal(signal.SIGTERM)
            seen_503 = False
            end = time.time() + 30
            while time.time() < end and not seen_503:
                try:
                    h = requests.get(s.url("/-/healthz"), timeout=5)
                except requests.ConnectionError:
                    break
                seen_503 = h.status_code == 503
            assert seen_503, "healthz did not turn 503 while draining"
            g = post(s, "/v1/completions", {"prompt": "late", "max_tokens": 2})
            check_v1_error(g, 503)
            rest = [l for l in lines if l.startswith(b"data: ")]
        events = [first[6:].decode()] + [l[6:].decode() for l in rest]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(1 for c in chunks if c["choices"][0]["text"]) >= 8
    finally:
        rc = s.stop(timeout=60)
    log = s.log()
    assert rc == 0, log[-5000:]
    assert '"stopped"' in log
