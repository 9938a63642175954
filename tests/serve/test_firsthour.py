"""The first hour with cserve: what a new user meets before anything is served.

- a Hub that cannot be reached: one quick failure, before any "listening" line, that says
  what works instead (the bundled synthetic model, `cserve pull`);
- `make run` installs only the build dependencies (no test venvs);
- a port in use: one clear line, non-zero exit;
- process_* metrics on /metrics (single model and control-plane proxy);
- --cors-origin for browser clients on another origin;
- `cserve serve --help` lists every environment variable the server reads.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_firsthour.py
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = str(ROOT / "build" / "models" / "tiny")
BUNDLED = "build/models/distil"
T = 30  # client timeout (s) for anything that should be quick
START = 120  # how long a server may take to come up (s); a wait, not a timing assert
# A run that retries a dead connection for minutes (30 s connect timeout, 4 attempts, as
# before) is stopped here; a fixed one fails after HF_HUB_ETAG_TIMEOUT (2 s).
UNREACHABLE_LIMIT = 60
PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                   "process_open_fds", "process_max_fds", "process_start_time_seconds")

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")


def hub_env(tmp_path, endpoint, **extra):
    """The environment without Hub settings or proxies, an empty cache, the Hub at endpoint."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_", "CSERVE_")) and "proxy" not in k.lower()}
    e.update(NO_PROXY="*", no_proxy="*", HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint,
             CS_CACHE_DIR=str(tmp_path / "pack"))
    e.update(extra)
    return e


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Blackhole:
    """A local address where a TCP connect never completes, like a Hub behind a firewall that
    drops packets: a listener with a full accept queue (Linux drops further SYNs)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.2)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


def serve_fails(args, env, limit=UNREACHABLE_LIMIT):
    try:
        r = subprocess.run([BIN, "serve", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=limit)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail("cserve serve still running after %d s (retrying an unreachable Hub?):\n%s" % (limit, err))
    assert r.returncode != 0, r.stderr
    return r


def check_no_hub_advice(r, model):
    err = r.stderr
    assert "listening" not in err, err  # nothing was announced: the start failed
    assert "cannot reach the Hub" in err, err
    # what works without the Hub, not only "set HF_HUB_OFFLINE=1" (which fails too)
    assert "cserve pull %s" % model in err, err
    assert "make run MODEL=%s" % BUNDLED in err and "--model %s" % BUNDLED in err, err
    assert "set HF_HUB_OFFLINE=1 to use only the local cache" not in err, err
    assert len(err.splitlines()) <= 4, err
    assert all(line.startswith("cserve: ") for line in err.splitlines()), err


# ----------------------------------------------------------------- 1. no Hub


def test_unreachable_hub_fails_fast_before_listening(tmp_path):
    bh = Blackhole()
    try:
        env = hub_env(tmp_path, "http://127.0.0.1:%d" % bh.port, HF_HUB_ETAG_TIMEOUT="2")
        r = serve_fails(["--model", "distilgpt2", "--host", "127.0.0.1", "--port", "0"], env)
    finally:
        bh.close()
    check_no_hub_advice(r, "distilgpt2")
    assert "Timeout" in r.stderr or "timed out" in r.stderr, r.stderr


def test_refused_hub_fails_before_listening(tmp_path):
    env = hub_env(tmp_path, "http://127.0.0.1:9")  # nothing listens on port 9
    r = serve_fails(["--model", "openai-community/gpt2", "--host", "127.0.0.1", "--port", "0"], env)
    check_no_hub_advice(r, "openai-community/gpt2")


def test_no_network_namespace(tmp_path):
    unshare = shutil.which("unshare")
    if not unshare or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rn (a user and network namespace) is not available here")
    env = hub_env(tmp_path, "https://huggingface.co")
    try:
        r = subprocess.run([unshare, "-rn", BIN, "serve", "--model", "distilgpt2", "--host", "127.0.0.1",
                            "--port", "0"], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=UNREACHABLE_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail("cserve serve with no network still running after %d s" % UNREACHABLE_LIMIT)
    assert r.returncode != 0
    check_no_hub_advice(r, "distilgpt2")


def test_offline_without_cache_says_what_works(tmp_path):
    env = hub_env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    r = serve_fails(["--model", "distilgpt2", "--host", "127.0.0.1", "--port", "0"], env)
    assert "listening" not in r.stderr and "HF_HUB_OFFLINE is set" in r.stderr, r.stderr
    assert "make run MODEL=%s" % BUNDLED in r.stderr, r.stderr


def test_bad_etag_timeout_is_refused(tmp_path):
    env = hub_env(tmp_path, "http://127.0.0.1:9", HF_HUB_ETAG_TIMEOUT="soon")
    r = serve_fails(["--model", "distilgpt2", "--host", "127.0.0.1", "--port", "0"], env)
    assert "HF_HUB_ETAG_TIMEOUT" in r.stderr and "listening" not in r.stderr, r.stderr


def test_bad_model_dir_fails_before_listening(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text("{}")
    r = serve_fails(["--model", str(d), "--host", "127.0.0.1", "--port", "0"], hub_env(tmp_path, "http://127.0.0.1:9"))
    assert "listening" not in r.stderr and r.stderr.startswith("cserve: "), r.stderr


# ----------------------------------------------------------------- 2. make run


def test_make_run_installs_only_build_deps():
    if not shutil.which("make"):
        pytest.skip("no make")
    r = subprocess.run(["make", "-n", "run", "MODEL=" + TINY, "BUILD=build/firsthour-dry"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    deps = [line for line in r.stdout.splitlines() if "tools/deps.sh" in line]
    assert deps == ["sh tools/deps.sh build"], r.stdout[:3000]
    assert "venv" not in r.stdout, r.stdout[:3000]


def run_deps(tmp_path, *args):
    """tools/deps.sh in an empty directory with every package present and python3 recorded."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    (bindir / "dpkg-query").write_text("#!/bin/sh\nprintf 'install ok installed'\n")
    for tool in ("python3", "apt-get", "sudo"):
        (bindir / tool).write_text("#!/bin/sh\necho %s \"$@\" >> %s\nexit 1\n" % (tool, log))
    for f in bindir.iterdir():
        f.chmod(0o755)
    work = tmp_path / "work"
    (work / "tools").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tools" / "deps.sh", work / "tools" / "deps.sh")
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]))
    r = subprocess.run(["sh", "tools/deps.sh", *args], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    return r, (log.read_text() if log.exists() else "")


def test_deps_build_mode_makes_no_venv(tmp_path):
    r, calls = run_deps(tmp_path, "build")
    assert r.returncode == 0, r.stderr
    assert calls == "", calls  # no venv, no pip, nothing installed
    assert not (tmp_path / "work" / "build").exists()
    r, calls = run_deps(tmp_path)  # the full mode still makes the test venv
    assert "python3 -m venv build/venv-test" in calls, (calls, r.stderr)


# ----------------------------------------------------------------- 3. port in use


@pytest.mark.parametrize("mode", ["model", "config"])
def test_port_in_use_one_clear_line(tmp_path, mode):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if mode == "model":
            args = ["--model", TINY, "--host", "127.0.0.1", "--port", str(port)]
        else:
            cfg = tmp_path / "serve.yaml"
            cfg.write_text(json.dumps({"applications": [{"name": "tiny", "route_prefix": "/",
                                                         "import_path": "cserve.apps:text_generation",
                                                         "args": {"model": TINY}}]}))
            args = ["--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0"]
        r = subprocess.run([BIN, "serve", *args], capture_output=True, text=True, cwd=ROOT, timeout=START,
                           env=hub_env(tmp_path, "http://127.0.0.1:9"))
    assert r.returncode != 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines and lines[0] == "cserve: cannot listen on 127.0.0.1:%d: address already in use" % port, r.stderr
    assert "listening on" not in r.stderr and "Failed to bind" not in r.stderr, r.stderr


# ----------------------------------------------------------------- servers


class Server:
    """`cserve serve` (a model, or --config) on free ports; stderr to a file."""

    def __init__(self, tmp_path, *args, env=None):
        self.logf = open(tmp_path / "serve.log", "wb")
        self.logpath = tmp_path / "serve.log"
        e = hub_env(tmp_path, "http://127.0.0.1:9", **(env or {}))
        self.t_start = time.time()
        self.proc = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.logf, env=e, cwd=ROOT)
        self.port = None
        deadline = time.time() + START
        while time.time() < deadline and self.port is None:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                raise AssertionError("server exited: " + self.log())
            else:
                time.sleep(0.02)
        assert self.port, self.log()
        while time.time() < deadline:
            try:
                if requests.get(self.url("/-/healthz"), timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError("not ready: " + self.log())

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def log(self):
        return self.logpath.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.logf.close()
        assert rc == 0, self.log()[-3000:]


def control_args(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(json.dumps({"applications": [{"name": "tiny", "route_prefix": "/",
                                                 "import_path": "cserve.apps:text_generation",
                                                 "args": {"model": TINY},
                                                 "deployments": [{"name": "TextGenService", "num_replicas": 1}]}]}))
    return ["--config", str(cfg), "--admin-port", "0"]


def wait_generates(s, timeout=START):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.post(s.url("/text/simple-gen"), json={"input": "Hi", "max_new_tokens": 2}, timeout=T)
        if r.status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("no generation: %d %s" % (r.status_code, r.text))


# ----------------------------------------------------------------- 5. process metrics


def parse_metrics(text):
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            vals[name] = float(value)
    return vals


def check_process_metrics(text, s):
    pid = s.proc.pid
    vals = parse_metrics(text)
    for name in PROCESS_METRICS:
        assert name in vals, (name, text[-2000:])
        assert "# TYPE %s %s" % (name, "counter" if name.endswith("_total") else "gauge") in text, name
    with open("/proc/%d/status" % pid) as f:
        status = f.read()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    # the server's own process, not another one: same order of magnitude as /proc says
    assert 0.25 * rss_kb * 1024 <= vals["process_resident_memory_bytes"] <= 4 * rss_kb * 1024
    assert vals["process_virtual_memory_bytes"] >= vals["process_resident_memory_bytes"]
    assert vals["process_open_fds"] >= 3 and vals["process_max_fds"] >= vals["process_open_fds"]
    assert vals["process_cpu_seconds_total"] >= 0
    # the kernel's boot time has whole seconds: allow a few either side
    assert s.t_start - 5 <= vals["process_start_time_seconds"] <= time.time() + 5, (vals, s.t_start)


def test_process_metrics_model(tmp_path):
    s = Server(tmp_path, "--model", TINY, "--threads", "1")
    try:
        r = requests.get(s.url("/metrics"), timeout=T)
        assert r.status_code == 200
        check_process_metrics(r.text, s)
    finally:
        s.stop()


def test_process_metrics_proxy_and_cors(tmp_path):
    s = Server(tmp_path, *control_args(tmp_path), "--cors-origin", "https://app.example")
    try:
        r = requests.get(s.url("/metrics"), timeout=T)
        assert r.status_code == 200
        check_process_metrics(r.text, s)
        wait_generates(s)
        r = requests.post(s.url("/text/simple-gen"), json={"input": "Hi", "max_new_tokens": 2},
                          headers={"Origin": "https://app.example"}, timeout=T)
        assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") == "https://app.example"
        assert "Origin" in r.headers.get("Vary", "")
        r = requests.options(s.url("/text/simple-gen"), timeout=T, headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert r.status_code == 204 and r.headers.get("Access-Control-Allow-Origin") == "https://app.example"
    finally:
        s.stop()


# ----------------------------------------------------------------- 6. CORS


def preflight(s, origin, method="POST", headers="authorization, content-type"):
    return requests.options(s.url("/v1/completions"), timeout=T, headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


def test_cors_off_by_default(tmp_path):
    s = Server(tmp_path, "--model", TINY, "--threads", "1")
    try:
        r = requests.get(s.url("/-/healthz"), headers={"Origin": "https://app.example"}, timeout=T)
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
        r = preflight(s, "https://app.example")
        assert r.status_code != 204 and "Access-Control-Allow-Origin" not in r.headers, r.headers
    finally:
        s.stop()


def test_cors_listed_origins(tmp_path):
    s = Server(tmp_path, "--model", TINY, "--threads", "1", "--cors-origin", "https://app.example",
               "--cors-origin", "http://localhost:3000, https://other.example/",
               env={"CSERVE_API_KEYS": "k-123"})
    try:
        for origin in ("https://app.example", "http://localhost:3000", "https://other.example"):
            r = preflight(s, origin)  # no API key: browsers send none on a preflight
            assert r.status_code == 204, (origin, r.status_code, r.text)
            assert r.headers["Access-Control-Allow-Origin"] == origin
            methods = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
            assert {"GET", "POST", "OPTIONS"} <= methods
            allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "content-type"} <= allowed
            assert "Origin" in r.headers.get("Vary", "")
            assert r.content == b""
        r = requests.post(s.url("/v1/completions"), json={"prompt": "Hi", "max_tokens": 2}, timeout=T,
                          headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k-123"})
        assert r.status_code == 200, r.text
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "Origin" in r.headers.get("Vary", "")
        # errors carry it too, so the page can read them
        r = requests.post(s.url("/v1/completions"), json={"prompt": "Hi"}, timeout=T,
                          headers={"Origin": "https://app.example"})
        assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        # streams too
        with requests.post(s.url("/v1/completions"), json={"prompt": "Hi", "max_tokens": 2, "stream": True},
                           headers={"Origin": "https://app.example", "Authorization": "Bearer k-123"}, timeout=T,
                           stream=True) as r:
            assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert b"[DONE]" in r.raw.read()
        # another origin: no permission, and the request itself is untouched
        r = preflight(s, "https://evil.example")
        assert "Access-Control-Allow-Origin" not in r.headers and r.status_code != 204
        r = requests.get(s.url("/-/healthz"), headers={"Origin": "https://evil.example"}, timeout=T)
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
        assert "Origin" in r.headers.get("Vary", "")
    finally:
        s.stop()


def test_cors_any_origin(tmp_path):
    s = Server(tmp_path, "--model", TINY, "--threads", "1", "--cors-origin", "*")
    try:
        r = preflight(s, "https://anything.example")
        assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
        r = requests.post(s.url("/text/simple-gen"), json={"input": "Hi", "max_new_tokens": 2}, timeout=T,
                          headers={"Origin": "https://anything.example"})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
        r = requests.get(s.url("/-/healthz"), timeout=T)  # not a browser: nothing to allow
        assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        s.stop()


@pytest.mark.parametrize("bad", ["app.example", "https://app.example/path", "http://"])
def test_cors_bad_origin_refused(tmp_path, bad):
    r = subprocess.run([BIN, "serve", "--model", TINY, "--host", "127.0.0.1", "--port", "0", "--cors-origin", bad],
                       capture_output=True, text=True, cwd=ROOT, timeout=START,
                       env=hub_env(tmp_path, "http://127.0.0.1:9"))
    assert r.returncode != 0 and "CORS origin" in r.stderr and "listening" not in r.stderr, r.stderr


# ----------------------------------------------------------------- 7. --help


def env_vars_read_by_the_server():
    """Every NAME in getenv("NAME") / getenv_set("NAME") / env_int("NAME", ...) of the code a
    server runs (the client-only commands in cli_ctl.c and cli_bench.c excluded)."""
    names = set()
    for path in (ROOT / "src").rglob("*.c"):
        if path.name in ("cli_ctl.c", "cli_bench.c"):
            continue
        names |= set(re.findall(r'(?:getenv|getenv_set|env_int)\("([A-Z][A-Z0-9_]*)"', path.read_text()))
    return names


def test_help_lists_environment():
    r = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, timeout=T)
    assert r.returncode == 0
    names = env_vars_read_by_the_server()
    assert {"CS_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "CSERVE_API_KEYS"} <= names, names
    missing = sorted(n for n in names if not re.search(r"\b%s\b" % n, r.stdout))
    assert not missing, "not in `cserve serve --help`: %s" % missing
    assert "--cors-origin" in r.stdout
