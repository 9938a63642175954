"""Per-API-key concurrency limits (`max_ongoing=N` after a key, `--max-ongoing-per-key N`).

A key over its limit gets 429 + Retry-After at once, other keys are served meanwhile, and the
key gets its share back as soon as its requests end (streams closed by the client included).
Both the single-model server and the config proxy (`cserve serve --config`) are checked.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_keylimits.py
"""
import http.client
import json
import subprocess
import time

import pytest
import requests

from test_api import BIN, DISTIL, T, Server, stop_clean
from test_api import pytestmark  # noqa: F401
from test_control import ControlServer, app_cfg, config
from test_control_more import KeyedServer

K1, K2, K3 = "key-one-0123456789", "key-two-0123456789", "key-three-012345678"


def hdr(key):
    return {"Authorization": f"Bearer {key}"}


class Stream:
    """A streaming completion held open after its first event (it holds one of its key's slots)."""

    def __init__(self, port, key):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=T)
        body = json.dumps({"prompt": "hold the slot", "max_tokens": 1000, "ignore_eos": True, "stream": True,
                           "temperature": 0})
        self.c.request("POST", "/v1/completions", body, {"Content-Type": "application/json", **hdr(key)})
        self.r = self.c.getresponse()
        assert self.r.status == 200, (self.r.status, self.r.read()[:500])
        assert self.r.readline().startswith(b"data: ")  # generation has begun

    def close(self):
        self.c.close()


def gen(port, key, path="/v1/completions"):
    return requests.post(f"http://127.0.0.1:{port}{path}", headers=hdr(key),
                         json={"prompt": "short", "max_tokens": 2, "temperature": 0}, timeout=T)


def until_ok(port, key, timeout=30):
    """The key's share comes back once its streams are closed (the server notices the hang-up)."""
    deadline = time.time() + timeout
    while True:
        r = gen(port, key)
        if r.status_code == 200 or time.time() > deadline:
            return r
        assert r.status_code == 429, (r.status_code, r.text)
        time.sleep(0.1)


def check_limits(port):
    held = [Stream(port, K1), Stream(port, K1)]
    try:
        r = gen(port, K1)
        assert r.status_code == 429, (r.status_code, r.text)
        assert r.headers.get("Retry-After") == "1"
        err = r.json()["error"]
        assert "2" in err["message"] and "rate_limit" in (err.get("code") or err.get("type")), err
        # the other keys are not affected: K2 has no limit, K3 the default of 1
        assert gen(port, K2).status_code == 200
        assert gen(port, K3).status_code == 200
        # GET routes are not counted
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", headers=hdr(K1), timeout=T).status_code == 200
    finally:
        for h in held:
            h.close()
    assert until_ok(port, K1).status_code == 200
    # K3's default limit (1): one held stream, then a refusal
    h = Stream(port, K3)
    try:
        assert gen(port, K3).status_code == 429
    finally:
        h.close()
    assert until_ok(port, K3).status_code == 200


@pytest.fixture
def keyfile(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# comment\n{K1} max_ongoing=2\n{K2}   max_ongoing=0\n{K3}\n")
    return str(f)


def test_single_server(keyfile):
    s = Server("--api-key-file", keyfile, "--max-ongoing-per-key", "1", "--max-ongoing-requests", "8", model=DISTIL)
    try:
        check_limits(s.port)
    finally:
        stop_clean(s)


def test_config_proxy(keyfile):
    s = KeyedServer(config(app_cfg(model=DISTIL)), K2, "--api-key-file", keyfile, "--max-ongoing-per-key", "1")
    try:
        s.wait_app("tiny", 1)
        deadline = time.time() + 120
        while gen(s.port, K2).status_code != 200:  # the replica is up
            assert time.time() < deadline
            time.sleep(0.1)
        check_limits(s.port)
    finally:
        s.stop()


@pytest.mark.parametrize("line,msg", [
    (f"{K1} max_ongoing=x", "max_ongoing=N"),
    (f"{K1} limit=3", "max_ongoing=N"),
    (f"{K1} max_ongoing=-1", "max_ongoing=N"),
])
def test_bad_key_options(tmp_path, line, msg):
    f = tmp_path / "keys"
    f.write_text(line + "\n")
    p = subprocess.run([BIN, "serve", "--model", "x", "--api-key-file", str(f)], capture_output=True, text=True,
                       timeout=T)
    assert p.returncode == 2 and msg in p.stderr, p.stderr


def test_per_key_limit_needs_keys():
    p = subprocess.run([BIN, "serve", "--model", "x", "--max-ongoing-per-key", "2"], capture_output=True, text=True,
                       timeout=T, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "needs API keys" in p.stderr, p.stderr


def test_config_proxy_connection_limits():
    """The proxy of `cserve serve --config` takes the connection options too (it had only the
    library defaults: no per-address cap)."""
    import socket

    def closed(c):
        c.setblocking(False)
        try:
            return c.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    s = ControlServer(config(app_cfg()), "--max-connections-per-ip", "3", "--header-timeout-s", "60")
    held = []
    try:
        time.sleep(0.5)  # the harness's own readiness connections are closed by now
        for _ in range(5):  # five connections from one address that trickle a request head
            c = socket.create_connection(("127.0.0.1", s.port), timeout=T)
            try:
                c.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
            held.append(c)
        time.sleep(0.5)
        still_open = [c for c in held if not closed(c)]
        assert len(still_open) == 3, f"{len(still_open)} of 5 connections from one address kept (cap 3)"
        other = socket.create_connection(("127.0.0.1", s.port), timeout=5, source_address=("127.0.0.2", 0))
        other.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert other.recv(100).startswith(b"HTTP/1.1 200"), "another address was not served"
        other.close()
    finally:
        for c in held:
            c.close()
        s.stop()
