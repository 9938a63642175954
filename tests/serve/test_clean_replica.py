"""End-to-end tests of the preprocessing replica, `cserve replica --app clean_text`:
the real binary on a Unix socket, spoken to as the proxy and the controller do
(POST /-/preprocess, GET /-/replica/stats, PUT /-/replica/user_config, /-/healthz).
No model is needed.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_clean_replica.py
"""
import concurrent.futures as cf
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
T = 30  # client timeout (s) for anything that should be quick

pytestmark = pytest.mark.skipif(not os.path.exists(BIN), reason="needs the cserve binary")


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=T):
        super().__init__("replica", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class Replica:
    """A `cserve replica --app clean_text` process; its stderr goes to a file."""

    def __init__(self, *args, clean_opts=None, wait=True):
        self.dir = tempfile.mkdtemp(prefix="cserve-clean-")
        self.sock = os.path.join(self.dir, "r.sock")
        self.logf = tempfile.NamedTemporaryFile(prefix="cserve-clean-", suffix=".log", delete=False)
        cmd = [BIN, "replica", "--app", "clean_text", "--socket", self.sock, "--replica-id", "app#Preprocessor#t"]
        if clean_opts is not None:
            cmd += ["--clean-opts", clean_opts if isinstance(clean_opts, str) else json.dumps(clean_opts)]
        cmd += list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.logf, cwd=ROOT)
        if not wait:
            return
        deadline = time.time() + T
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("replica exited: " + self.log())
            try:
                if self.request("GET", "/-/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("replica not ready: " + self.log())

    def request(self, method, path, body=None, headers=None):
        c = UnixConnection(self.sock)
        try:
            if isinstance(body, (dict, list)) or body is None and method in ("PUT",):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            c.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read(), dict(r.getheaders())
        finally:
            c.close()

    def preprocess(self, body):
        st, data, _ = self.request("POST", "/-/preprocess", body)
        assert st == 200, data
        return json.loads(data)

    def stats(self):
        st, data, _ = self.request("GET", "/-/replica/stats")
        assert st == 200, data
        return json.loads(data)

    def user_config(self, uc):
        st, data, _ = self.request("PUT", "/-/replica/user_config", json.dumps(uc))
        return st, json.loads(data)

    def log(self):
        with open(self.logf.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=T):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def rep():
    r = Replica("--threads", "2")
    yield r
    r.stop()


def test_seed_request_cleaned(rep):
    body = {"input": "  Once\u00a0upon \ufb01ne\u200b time\r\n\r\n\u202eend\u202c  ", "max_new_tokens": 5,
            "temperature": 0.5, "do_sample": True, "stop": "  kept  "}
    out = rep.preprocess(body)
    assert out == {**body, "input": "Once upon fine time\nend"}


def test_openai_prompts(rep):
    assert rep.preprocess({"model": "m", "prompt": "\uff28\uff49  there"}) == {"model": "m", "prompt": "Hi there"}
    assert rep.preprocess({"prompt": [" a  b ", "ok", [1, 2], 7]}) == {"prompt": ["a b", "ok", [1, 2], 7]}
    # token-id prompts and values of the wrong type are the API's business: untouched
    assert rep.preprocess({"prompt": [50256, 11]}) == {"prompt": [50256, 11]}
    assert rep.preprocess({"input": 5, "prompt": None}) == {"input": 5, "prompt": None}


def test_unchanged_body_returned_as_sent(rep):
    raw = b'{ "input" : "already clean",\n  "seed": 1 }'
    st, data, hdr = rep.request("POST", "/-/preprocess", raw)
    assert st == 200 and data == raw
    assert hdr["Content-Type"] == "application/json"
    # a body that is JSON but not an object passes through too
    st, data, _ = rep.request("POST", "/-/preprocess", b'["  x  "]')
    assert st == 200 and data == b'["  x  "]'


def test_invalid_utf8_in_body(rep):
    st, data, _ = rep.request("POST", "/-/preprocess", b'{"input": "a\xffb  c"}')
    assert st == 200
    assert json.loads(data) == {"input": "a\ufffdb c"}


def test_nul_and_controls(rep):
    assert rep.preprocess({"input": "a\u0000b\u0007c\u0085d"}) == {"input": "abc\nd"}


def test_bad_json_is_400(rep):
    before = rep.stats()["requests_failed"]
    for raw in (b"{bad", b"", b'{"input": "x"} trailing'):
        st, data, _ = rep.request("POST", "/-/preprocess", raw)
        assert st == 400, raw
        err = json.loads(data)["error"]
        assert err["type"] == "bad_request" and "invalid JSON" in err["message"]
    assert rep.stats()["requests_failed"] == before + 3


def test_body_over_limit_is_413(rep):
    # announced size over the limit: refused before the body is sent (sending it would
    # race with the server closing the connection)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(T)
        s.connect(rep.sock)
        s.sendall(b"POST /-/preprocess HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % ((1 << 20) + 1))
        resp = b""
        while b"\r\n\r\n" not in resp or not resp.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            resp += chunk
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), resp
    assert json.loads(body)["error"]["type"] == "payload_too_large"
    assert rep.request("GET", "/-/healthz")[0] == 200
    # just under the limit: fine, and capped at max_chars (default 4096)
    big = "word " * 200000
    out = rep.preprocess({"input": big})
    assert len(out["input"]) <= 4096 and out["input"].startswith("word word") and not out["input"].endswith(" ")


def test_routes_and_methods(rep):
    st, data, hdr = rep.request("GET", "/-/preprocess")
    assert st == 405 and hdr.get("Allow") == "POST"
    st, data, _ = rep.request("GET", "/text/simple-gen")
    assert st == 404 and json.loads(data)["error"]["type"] == "not_found"
    st, data, _ = rep.request("GET", "/-/healthz")
    assert st == 200 and data == b"success"


def test_stats_shape(rep):
    rep.preprocess({"input": " x "})
    s = rep.stats()
    # what the controller reads from a text-generation replica
    for k in ("ready", "pid", "running", "queued", "max_running", "steps", "tokens_generated", "prompt_tokens",
              "requests_done", "batch_size"):
        assert k in s, k
    assert s["ready"] is True and s["pid"] == rep.proc.pid and s["app"] == "clean_text"
    assert s["running"] == 0 and s["queued"] == 0 and s["max_running"] == 2
    assert s["steps"] == 0 and s["tokens_generated"] == 0 and s["batch_size"] == 0
    assert s["requests_done"] >= 1
    assert s["preprocess"] == {"normalize": "NFKC", "max_chars": 4096, "template": None,
                               "collapse_whitespace": True, "strip_control": True}


def test_user_config_applied_live(rep):
    assert rep.preprocess({"input": "\ufb01  x"}) == {"input": "fi x"}
    st, body = rep.user_config({"normalize": "NFC", "max_chars": 3, "template": "<<{input}>> {{ok}}"})
    assert st == 200, body
    assert rep.preprocess({"input": "\ufb01  xyz"}) == {"input": "<<\ufb01 x>> {ok}"}
    assert rep.stats()["preprocess"]["max_chars"] == 3
    # a bad one is refused, naming the key, and the options in force stay
    for uc, key in (({"max_chars": "10"}, "max_chars"), ({"template": "no placeholder"}, "template"),
                    ({"normalise": "NFC"}, "normalise"), ([1], "expected a JSON object")):
        st, body = rep.user_config(uc)
        assert st == 400 and key in body["error"]["message"], body
    assert rep.preprocess({"input": "\ufb01  xyz"}) == {"input": "<<\ufb01 x>> {ok}"}
    # null: back to the options the replica started with
    st, _ = rep.user_config(None)
    assert st == 200
    assert rep.preprocess({"input": "\ufb01  xyz"}) == {"input": "fi xyz"}
    st, _, _ = rep.request("POST", "/-/replica/user_config", "{}")
    assert st == 405


def test_clean_opts_and_user_config_at_start():
    r = Replica("--user-config", '{"max_chars": 5}',
                clean_opts={"normalize": "none", "template": "Q: {input}\nA:", "collapse_whitespace": False})
    try:
        assert r.preprocess({"input": "\ufb01 \t abcdef"}) == {"input": "Q: \ufb01 \t a\nA:"}
        s = r.stats()["preprocess"]
        assert s["normalize"] == "none" and s["max_chars"] == 5 and s["collapse_whitespace"] is False
        # user_config is merged over --clean-opts: a PUT of {} drops the start-up user_config
        assert r.user_config({})[0] == 200
        assert r.stats()["preprocess"]["max_chars"] == 4096
        assert r.stats()["preprocess"]["template"] == "Q: {input}\nA:"
    finally:
        assert r.stop() == 0


@pytest.mark.parametrize("args, code, msg", [
    (["--app", "clean_text", "--clean-opts", '{"max_chars": 0}'], 1, "clean_opts: max_chars"),
    (["--app", "clean_text", "--clean-opts", '{"template": "x"}'], 1, "clean_opts: template"),
    (["--app", "clean_text", "--clean-opts", "{nope"], 1, "--clean-opts: invalid JSON"),
    (["--app", "clean_text", "--user-config", '{"strip_control": 1}'], 1, "user_config: strip_control"),
    (["--app", "summarize"], 2, "--app: expected"),
    (["--clean-opts", "{}", "--model", "m"], 2, "--clean-opts needs --app clean_text"),
    (["--app", "text_generation"], 2, "--model is required"),
])
def test_bad_options(tmp_path, args, code, msg):
    p = subprocess.run([BIN, "replica", "--socket", str(tmp_path / "s.sock"), *args], capture_output=True, text=True,
                       timeout=T)
    assert p.returncode == code, p.stderr
    assert msg in p.stderr
    assert not (tmp_path / "s.sock").exists()


def test_concurrent_requests():
    r = Replica("--threads", "2")
    try:
        def one(i):
            return r.preprocess({"input": f"  request\u3000{i}  \u200b", "i": i})

        with cf.ThreadPoolExecutor(16) as ex:
            outs = list(ex.map(one, range(300)))
        assert outs == [{"input": f"request {i}", "i": i} for i in range(300)]
        s = r.stats()
        assert s["requests_done"] == 300 and s["running"] == 0 and s["queued"] == 0
    finally:
        assert r.stop() == 0


def test_sigterm_exits_zero_and_removes_socket():
    r = Replica()
    assert r.preprocess({"input": " x "}) == {"input": "x"}
    assert r.stop(signal.SIGTERM) == 0
    assert not os.path.exists(r.sock)
    assert "ready: clean_text" in r.log()
    r2 = Replica()
    assert r2.stop(signal.SIGINT) == 0
