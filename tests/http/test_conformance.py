"""HTTP/1.1 conformance, request smuggling and connection deadlines of the front end
(src/http/http.c on libmicrohttpd), over raw sockets against `cserve serve`.

Every framing case states the status it must get AND whether the connection must close.
A request with ambiguous framing is followed by a second, "smuggled" request on the same
write: it must never be answered (exactly one response, then the connection closes).

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/http
"""
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

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = str(ROOT / "build" / "models" / "tiny")
T = 20  # socket timeout (s) for anything that should be quick

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")


class Server:
    """A `cserve serve` process on a free loopback port; its stderr goes to a file."""

    def __init__(self, *args):
        self.logf = tempfile.NamedTemporaryFile(prefix="cserve-http-", suffix=".log", delete=False)
        env = dict(os.environ)
        env.pop("CSERVE_API_KEYS", None)
        cmd = [BIN, "serve", "--model", TINY, "--host", "0.0.0.0", "--port", "0", "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.logf, env=env, cwd=ROOT)
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline:
            m = re.search(r"listening on [^\"]*:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                try:
                    if exchange(self.port, GET_HEALTH, 1)[0][0][0] == 200:
                        return
                except OSError:
                    pass
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise RuntimeError("server not ready: " + self.log())

    def log(self):
        with open(self.logf.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -9
        log = self.log()
        os.unlink(self.logf.name)
        assert rc == 0, log[-3000:]
        assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log[-5000:]


# ------------------------------------------------------------------ raw HTTP client

GET_HEALTH = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLED = b"GET /-/routes?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b'{"input": "hi", "max_new_tokens": 1, "seed": 1}'


def post(headers, body=BODY, path=b"/text/simple-gen", version=b"HTTP/1.1", host=True):
    h = b"POST " + path + b" " + version + b"\r\n" + (b"Host: x\r\n" if host else b"")
    return h + b"Content-Type: application/json\r\n" + headers + b"\r\n" + body


def chunked(body, ext=b"", trailer=b""):
    return b"%x%s\r\n%s\r\n0\r\n%s\r\n" % (len(body), ext, body, trailer)


class Conn:
    """Reads whole responses off one socket (Content-Length or chunked bodies)."""

    def __init__(self, port, src="127.0.0.1"):
        self.s = socket.socket()
        self.s.settimeout(T)
        self.s.bind((src, 0))
        self.s.connect(("127.0.0.1", port))
        self.buf = b""
        self.eof = False

    def _fill(self):
        if self.eof:
            return False
        try:
            b = self.s.recv(65536)
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
            return False
        self.buf += b
        return True

    def _need(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed mid-response")

    def _line(self):
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed mid-response")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def response(self):
        """(status, {lower-case name: value}, body), or None at a clean end of stream."""
        while not self.buf:
            if not self._fill():
                return None
        status_line = self._line()
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", status_line + b" ")
        assert m, f"not a status line: {status_line!r} (rest: {self.buf[:200]!r})"
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.partition(b":")
            k = k.decode().lower()
            assert k not in headers or k == "set-cookie", f"header {k} twice"
            headers[k] = v.strip().decode()
        status = int(m.group(1))
        if status < 200 or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                n = int(self._line().split(b";")[0], 16)
                if n == 0:
                    while self._line():
                        pass
                    return status, headers, body
                self._need(n + 2)
                body += self.buf[:n]
                self.buf = self.buf[n + 2:]
        n = int(headers.get("content-length", "0"))
        self._need(n)
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self):
        """True when the server ends the stream (EOF or reset) with nothing more to read."""
        while self._fill():
            pass
        return self.buf == b""

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()


PROBE = b"GET /probe-after HTTP/1.1\r\nHost: x\r\n\r\n"


def exchange(port, data, n):
    """Sends data and reads n responses; returns (responses, closed). closed: the server
    ended the stream with nothing more to say. A connection that stays open is proven open,
    with its framing intact, by one more request (404) whose answer must come next: any
    other answer (a smuggled request's) counts as a response of the list."""
    c = Conn(port)
    try:
        c.send(data)
        out = []
        try:
            for _ in range(n):
                r = c.response()
                if r is None:
                    return out, True
                out.append(r)
        except EOFError:
            return out + [("truncated", {}, b"")], True
        c.s.settimeout(0.3)
        try:
            if not c._fill():
                if c.buf:  # bytes after the last response: not well formed
                    out.append(("trailing bytes", {}, c.buf))
                return out, True
        except socket.timeout:
            pass
        c.s.settimeout(T)
        try:
            if not c.buf:
                c.send(PROBE)
            while True:
                r = c.response()
                if r is None:
                    return out, True
                if r[0] == 404 and b"probe-after" in r[2] or r[0] == 404 and not c.buf:
                    return out, False
                out.append(r)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return out, True
    finally:
        c.close()


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    s.stop()


# ------------------------------------------------------------------ the matrix

# (name, request bytes, [statuses in order], connection closes afterwards)
FRAMING_OK = [
    ("get", GET_HEALTH, [200], False),
    ("post-content-length", post(b"Content-Length: %d\r\n" % len(BODY)), [200], False),
    ("http10-closes", b"GET /-/healthz HTTP/1.0\r\n\r\n", [200], True),
    ("http12-as-http11", b"GET /-/healthz HTTP/1.2\r\nHost: x\r\n\r\n", [200], False),
    ("lf-only-line-endings", b"GET /-/healthz HTTP/1.1\nHost: x\n\n", [200], False),
    ("chunked", post(b"Transfer-Encoding: chunked\r\n", chunked(BODY)), [200], False),
    ("chunked-uppercase", post(b"Transfer-Encoding: CHUNKED\r\n", chunked(BODY)), [200], False),
    ("chunk-extension", post(b"Transfer-Encoding: chunked\r\n", chunked(BODY, ext=b";name=value")), [200], False),
    ("chunked-trailer", post(b"Transfer-Encoding: chunked\r\n", chunked(BODY, trailer=b"X-Trailer: 1\r\n")),
     [200], False),
    ("pipelined-in-order", GET_HEALTH + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" + GET_HEALTH
     + post(b"Content-Length: %d\r\n" % len(BODY)), [200, 404, 200, 200], False),
    ("invented-method", b"BREW /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n", [405], False),
    ("connection-close", b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", [200], True),
]

FRAMING_BAD = [
    # RFC 9112 6.1: Content-Length with Transfer-Encoding is faulty framing: close
    ("cl-and-te", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-and-cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), 400),
    ("two-content-lengths", post(b"Content-Length: %d\r\nContent-Length: 0\r\n" % len(BODY)), 400),
    ("same-content-length-twice", post(b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(BODY), len(BODY))),
     400),
    ("space-before-colon", post(b"Content-Length : %d\r\n" % len(BODY)), 400),
    ("tab-before-colon", post(b"Content-Length\t: %d\r\n" % len(BODY)), 400),
    ("obs-fold-content-length", post(b"Content-Length: %d\r\n x\r\n" % len(BODY)), 400),
    ("obs-fold-te", post(b"Transfer-Encoding: chunked\r\n x\r\n", chunked(BODY)), 400),
    ("obs-fold-first-line", b"GET /-/healthz HTTP/1.1\r\n X-A: 1\r\nHost: x\r\n\r\n", 400),
    ("cr-in-value", b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("no-host-http11", b"GET /-/healthz HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET /-/healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("te-unknown", post(b"Transfer-Encoding: gzip\r\n"), 501),
    ("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", chunked(BODY)), 501),
    ("te-chunked-twice", post(b"Transfer-Encoding: chunked, chunked\r\n", chunked(BODY)), 400),
    ("te-two-headers", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked(BODY)), 400),
    ("te-http10", post(b"Transfer-Encoding: chunked\r\n", chunked(BODY), version=b"HTTP/1.0"), 400),
    ("bad-chunk-size", post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("cl-over-limit", post(b"Content-Length: 2000000\r\n", b""), 413),
    ("chunked-over-limit", post(b"Transfer-Encoding: chunked\r\n",
                                b"".join(b"10000\r\n" + b"a" * 65536 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"),
     413),
    ("path-over-limit", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("headers-over-limit", b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", 431),
    ("http20-request-line", b"GET /-/healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("no-colon", b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
]

# Answered by libmicrohttpd 0.9.75 itself, before the application sees the request: the
# status line and headers are written twice (then the body once). The connection closes,
# so nothing is smuggled, but the response is not well formed; see the README.
LIBRARY_ANSWERED = [
    ("content-length-not-digits", post(b"Content-Length: abc\r\n"), 400),
    ("content-length-negative", post(b"Content-Length: -1\r\n"), 400),
    ("content-length-overflow", post(b"Content-Length: 99999999999999999999999\r\n"), 413),
]


@pytest.mark.parametrize("name,data,statuses,closes", FRAMING_OK, ids=[c[0] for c in FRAMING_OK])
def test_framing_accepted(srv, name, data, statuses, closes):
    out, closed = exchange(srv.port, data, len(statuses))
    assert [r[0] for r in out] == statuses, out
    assert closed == closes


def test_pipelined_responses_in_order(srv):
    c = Conn(srv.port)
    c.send(b"".join(b"GET /-/healthz?%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3))
           + b"GET /-/routes HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    got = [c.response() for _ in range(5)]
    c.close()
    assert [g[0] for g in got] == [200, 200, 200, 200, 404]
    assert json.loads(got[3][2]) == {"/": "transformer-app"}


def test_expect_100_continue(srv):
    c = Conn(srv.port)
    c.send(post(b"Content-Length: %d\r\nExpect: 100-continue\r\n" % len(BODY), b""))
    assert c.response()[0] == 100
    c.send(BODY)
    st, _, body = c.response()
    assert st == 200 and json.loads(body)[0]["generated_text"].startswith("hi")
    c.close()


@pytest.mark.parametrize("name,data,status", FRAMING_BAD, ids=[c[0] for c in FRAMING_BAD])
def test_framing_rejected_and_closed(srv, name, data, status):
    out, closed = exchange(srv.port, data + SMUGGLED, 1)
    assert [r[0] for r in out] == [status], out  # exactly one response: the smuggled one is never read
    assert closed, "the connection must close after faulty framing"
    hdrs = out[0][1]
    if status != 505 and name != "no-colon" and name != "bad-chunk-size":  # ours, not libmicrohttpd's
        assert hdrs.get("connection", "").lower() == "close", hdrs
        assert "error" in json.loads(out[0][2])


@pytest.mark.parametrize("name,data,status", LIBRARY_ANSWERED, ids=[c[0] for c in LIBRARY_ANSWERED])
def test_bad_content_length_closes(srv, name, data, status):
    c = Conn(srv.port)
    c.send(data + SMUGGLED)
    assert c.response()[0] == status
    assert c.closed() or True  # what follows is the library's doubled header block (see below)
    assert b"smuggled" not in c.buf
    c.close()


@pytest.mark.xfail(strict=True, reason="libmicrohttpd 0.9.75 writes the status line and headers of its own "
                                       "Content-Length error twice")
@pytest.mark.parametrize("name,data,status", LIBRARY_ANSWERED, ids=[c[0] for c in LIBRARY_ANSWERED])
def test_bad_content_length_one_response(srv, name, data, status):
    out, closed = exchange(srv.port, data, 1)
    assert [r[0] for r in out] == [status] and closed, out


@pytest.mark.xfail(strict=True, reason="libmicrohttpd 0.9.75 appends an obs-fold line to the field name "
                                       "(X-A: a CRLF SP b arrives as X-Ab: a); only framing fields are caught")
def test_obs_fold_plain_field(srv):
    out, closed = exchange(srv.port, b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 1)
    assert [r[0] for r in out] == [400] and closed


# ------------------------------------------------------------------ metrics and logs

def test_invented_methods_do_not_fill_metric_labels(srv):
    c = Conn(srv.port)
    for i in range(140):
        c.send(b"XM%d /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert c.response()[0] == 405
    c.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200
    c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    st, _, body = c.response()
    c.close()
    text = body.decode()
    assert st == 200
    assert "XM1" not in text
    assert re.search(r'cserve_http_requests_total\{route="other",method="other",status="405"\} (\d+)', text)
    assert re.search(r'cserve_http_requests_total\{route="[^"]*models[^"]*",method="GET",status="200"\}', text), text


def test_cancelled_stream_logged_as_499():
    s = Server()
    try:
        body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 120, "stream": True,
                           "ignore_eos": True}).encode()
        c = Conn(s.port)
        c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        while b"data:" not in c.buf:
            assert c._fill()
        c.close()
        deadline = time.time() + T
        line = None
        while time.time() < deadline and not line:
            for ln in s.log().splitlines():
                if '"path":"/v1/completions"' in ln:
                    line = json.loads(ln)
            time.sleep(0.05)
        assert line, s.log()[-2000:]
        assert line["status"] == 499, line  # was logged as 200: the stream had begun
        assert line["completion_tokens"] < 120, line
    finally:
        s.stop()


# ------------------------------------------------------------------ deadlines and caps

def trickle(port, src="127.0.0.1"):
    c = Conn(port, src)
    c.send(b"GET /-/healthz HTTP/1.1\r\nHo")
    return c


def is_closed(c, wait=0.0):
    c.s.settimeout(wait if wait > 0 else 0.001)
    try:
        b = c.s.recv(4096)
        return b == b"" or b.startswith(b"HTTP/1.1 408")
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        c.s.settimeout(T)


def test_header_deadline_cuts_a_trickler():
    s = Server("--header-timeout-s", "1")
    try:
        c = trickle(s.port)
        cut = False
        for _ in range(60):  # a byte every 0.25 s keeps any idle timer alive; only a deadline cuts
            try:
                c.send(b"s")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if is_closed(c, 0.25):
                cut = True
                break
        assert cut, "a connection trickling its headers was not cut"
        assert exchange(s.port, GET_HEALTH, 1)[0][0][0] == 200
    finally:
        s.stop()


def test_slow_body_cut():
    s = Server("--header-timeout-s", "1", "--min-body-rate", "1000")
    try:
        c = Conn(s.port)
        c.send(post(b"Content-Length: 100000\r\n", b"{"))
        cut = False
        for _ in range(60):
            try:
                c.send(b" ")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if is_closed(c, 0.25):
                cut = True
                break
        assert cut, "a body at 4 bytes/s was not cut"
    finally:
        s.stop()


def test_requests_served_while_tricklers_fill_the_cap():
    s = Server("--max-connections", "8", "--header-timeout-s", "60", "--max-connections-per-ip", "0")
    conns = []
    try:
        conns = [trickle(s.port) for _ in range(12)]  # 8 fill the cap, 4 wait in the backlog
        time.sleep(0.3)
        for i in range(3):
            c = Conn(s.port)
            c.send(GET_HEALTH)
            assert c.response()[0] == 200, f"request {i} not served at the cap"
            c.close()
    finally:
        for c in conns:
            c.close()
        s.stop()


def test_idle_connections_shed_first():
    s = Server("--max-connections", "8", "--header-timeout-s", "60", "--max-connections-per-ip", "0")
    idle, slow = [], []
    try:
        for _ in range(4):
            c = Conn(s.port)
            c.send(GET_HEALTH)
            assert c.response()[0] == 200
            idle.append(c)
        slow = [trickle(s.port) for _ in range(4)]
        time.sleep(1.5)  # the tricklers are now old enough to be shed too
        c = Conn(s.port)
        c.send(GET_HEALTH)
        assert c.response()[0] == 200
        c.close()
        assert any(is_closed(x, 0.5) for x in idle), "no idle connection was shed"
        assert not any(is_closed(x) for x in slow), "a trickler was shed while idle connections remained"
    finally:
        for c in idle + slow:
            c.close()
        s.stop()


def test_per_ip_cap():
    """Five connections from one address that trickle a request head: exactly three stay open
    (counting which stay open, rather than whether a fourth is served, keeps the harness's own
    readiness connection, which the server may not have seen close yet, out of the answer)."""
    s = Server("--max-connections-per-ip", "3", "--header-timeout-s", "60")
    conns = []
    try:
        time.sleep(0.5)  # the readiness check's connection is closed by now
        for _ in range(5):
            c = Conn(s.port)
            try:
                c.send(b"GET /-/healthz HTTP/1.1\r\nHo")
            except OSError:  # refused at once: the server closed it first
                pass
            conns.append(c)
        time.sleep(0.5)
        still_open = [c for c in conns if not is_closed(c, 0.05)]
        assert len(still_open) == 3, f"{len(still_open)} of 5 connections from one address kept (cap 3)"
        other = Conn(s.port, src="127.0.0.2")  # another address still gets in
        other.send(GET_HEALTH)
        assert other.response()[0] == 200
        other.close()
    finally:
        for c in conns:
            c.close()
        s.stop()
