"""End-to-end tests of the control plane: `cserve serve --config FILE` (controller + proxy +
admin API, replicas as child processes), driven over HTTP, by the real Ray Serve 2.50 `serve`
CLI (venv from tools/ray_venv.sh) and by cserve's own `deploy/status/config/shutdown` client.
Admin API answers are also validated with Ray's own pydantic schema (ServeInstanceDetails).

Models: build/models/tiny (fast, 128 positions) and build/models/distil (distilgpt2-shaped,
slow); test configs set ray_actor_options.num_cpus: 1 so each replica runs one thread.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_control.py
The Ray venv lives at $CSERVE_RAY_VENV (default ~/.cache/cserve/venv-ray); when it is missing the
tests that need it fail, or skip with CSERVE_RAY_VENV_OPTIONAL=1.
"""
import concurrent.futures as cf
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = str(ROOT / "build" / "models" / "tiny")
DISTIL = str(ROOT / "build" / "models" / "distil")
SEED_RAYSERVICE = ROOT / "tests" / "data" / "serve" / "rayservice.yaml"
RAY_VENV = os.environ.get("CSERVE_RAY_VENV", os.path.expanduser("~/.cache/cserve/venv-ray"))
TEXTGEN = "cserve.apps:text_generation"
DEP = "TextGenService"
T = 30  # client timeout (s) for anything that should be quick
START = 120  # how long a server or a replica may take to come up (s); a wait, not a timing assert
BACKPRESSURE_RE = re.compile(r"Request dropped due to backpressure \(num_queued_requests=\d+, max_queued_requests=1\)\.")

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")


# ------------------------------------------------------------------ configs

def dep_cfg(replicas=1, **kw):
    d = {"name": DEP, "num_replicas": replicas, "ray_actor_options": {"num_cpus": 1}}
    d.update(kw)
    return d


def app_cfg(name="tiny", prefix="/", model=TINY, replicas=1, args=None, **dep):
    return {"name": name, "route_prefix": prefix, "import_path": TEXTGEN,
            "args": dict({"model": model}, **(args or {})), "deployments": [dep_cfg(replicas, **dep)]}


def config(*apps, **top):
    return dict(top, applications=list(apps))


def write_yaml(path, doc):
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


# ------------------------------------------------------------------ server

def _alive_replica(pid):
    """True when pid is a live (not zombie) cserve process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and b"cserve" in cmd


class ControlServer:
    """`cserve serve --config F` on free ports (proxy and admin API); stderr goes to a file.
    config: a dict (written as YAML to a temp file) or the path of a config file."""

    def __init__(self, cfg, *args, env=None, ready=True):
        self.tmp = tempfile.mkdtemp(prefix="cserve-ctl-")
        self.cfg_path = cfg if isinstance(cfg, (str, Path)) else write_yaml(os.path.join(self.tmp, "serve.yaml"), cfg)
        self.logf = open(os.path.join(self.tmp, "serve.log"), "wb")
        e = dict(os.environ)
        for k in ("CSERVE_API_KEYS", "RAY_DASHBOARD_ADDRESS"):
            e.pop(k, None)
        e.update(env or {})
        cmd = [BIN, "serve", "--config", str(self.cfg_path), "--host", "127.0.0.1", "--port", "0",
               "--admin-port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.logf, env=e, cwd=ROOT)
        self.seen_pids = set()
        self.port = self.admin_port = None
        deadline = time.time() + START
        while time.time() < deadline and not (self.port and self.admin_port):
            log = self.log()
            m = re.search(r"proxy listening on [^\"\s]*:(\d+)", log)
            a = re.search(r"admin API listening on [^\"\s]*:(\d+)", log)
            self.port = int(m.group(1)) if m else None
            self.admin_port = int(a.group(1)) if a else None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): " + self.log()[-5000:])
            time.sleep(0.02)
        if not (self.port and self.admin_port):
            self.kill()
            raise AssertionError("no 'proxy listening on' / 'admin API listening on' lines: " + self.log()[-5000:])
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        if ready:
            try:
                self.wait_healthy()
            except BaseException:
                self.kill()
                raise

    def wait_healthy(self, timeout=START):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = requests.get(self.url("/-/healthz"), timeout=5)
                if last.status_code == 200:
                    assert last.text == "success", last.text
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, self.log()[-5000:]
            time.sleep(0.05)
        raise AssertionError(f"/-/healthz not 200 after {timeout} s (last: "
                             f"{last.status_code if last is not None else None} {last.text if last is not None else ''})"
                             f"\nstatus: {self.try_status()}\nlog: {self.log()[-5000:]}")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, path):
        return self.admin_url + path

    def log(self):
        with open(self.logf.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def status(self):
        r = requests.get(self.admin("/api/serve/applications/"), timeout=T)
        assert r.status_code == 200, (r.status_code, r.text)
        d = r.json()
        for app in d.get("applications", {}).values():
            for dep in app.get("deployments", {}).values():
                for rep in dep.get("replicas", []):
                    if isinstance(rep.get("pid"), int):
                        self.seen_pids.add(rep["pid"])
        return d

    def try_status(self):
        try:
            return json.dumps(self.status())[:4000]
        except Exception as e:  # only for messages
            return f"(no status: {e})"

    def put(self, cfg, **kw):
        kw.setdefault("timeout", T)
        return requests.put(self.admin("/api/serve/applications/"), json=cfg, **kw)

    def replicas(self, app, dep=DEP, st=None):
        st = st or self.status()
        a = st["applications"].get(app)
        if not a or dep not in a["deployments"]:
            return []
        return a["deployments"][dep]["replicas"]

    def wait_app(self, app, n, timeout=START, dep=DEP, exclude=()):
        """Waits until app is RUNNING, dep HEALTHY with exactly n replicas, all RUNNING, none of
        whose pids is in exclude; returns their pids."""
        deadline = time.time() + timeout
        st = None
        while time.time() < deadline:
            st = self.status()
            a = st["applications"].get(app)
            if a and a["status"] == "RUNNING" and dep in a["deployments"]:
                d = a["deployments"][dep]
                reps = d["replicas"]
                if (d["status"] == "HEALTHY" and len(reps) == n and all(r["state"] == "RUNNING" for r in reps)
                        and not {r.get("pid") for r in reps} & set(exclude)):
                    return sorted(r["pid"] for r in reps)
            assert self.proc.poll() is None, self.log()[-5000:]
            time.sleep(0.1)
        raise AssertionError(f"{app}/{dep}: not RUNNING with {n} RUNNING replicas (excluding {sorted(exclude)}) "
                             f"after {timeout} s:\n{json.dumps(st, indent=1)[:6000]}\nlog: {self.log()[-3000:]}")

    def wait_until(self, pred, what, timeout=START):
        deadline = time.time() + timeout
        st = None
        while time.time() < deadline:
            st = self.status()
            if pred(st):
                return st
            assert self.proc.poll() is None, self.log()[-5000:]
            time.sleep(0.1)
        raise AssertionError(f"{what}: not reached after {timeout} s:\n{json.dumps(st, indent=1)[:6000]}")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        try:
            self.status()  # remember the replicas' pids for the leak check
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("server did not exit after SIGTERM: " + self.log()[-3000:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reap_replicas()

    def _reap_replicas(self):
        left = []
        for pid in self.seen_pids:
            if _alive_replica(pid):
                left.append(pid)
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return left


def stop_clean(s):
    """SIGTERM: exit status 0, no replica left behind, no sanitizer report."""
    rc = s.stop()
    log = s.log()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive_replica(p) for p in s.seen_pids):
        time.sleep(0.05)
    leaked = s._reap_replicas()
    s.logf.close()
    shutil.rmtree(s.tmp, ignore_errors=True)
    assert rc == 0, f"exit status {rc}:\n{log[-5000:]}"
    assert not leaked, f"replica processes {leaked} still running after the server exited:\n{log[-3000:]}"
    assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log[-5000:]


# ------------------------------------------------------------------ Ray's CLI and schema

def ray_tool(name):
    path = os.path.join(RAY_VENV, "bin", name)
    if os.path.exists(os.path.join(RAY_VENV, ".cserve-ray-ok")) and os.access(path, os.X_OK):
        return path
    msg = f"the Ray Serve CLI venv is missing at {RAY_VENV}: run `sh tools/ray_venv.sh` (part of `make deps`)"
    if os.environ.get("CSERVE_RAY_VENV_OPTIONAL") == "1":
        warnings.warn("NOT TESTED against the real `serve` CLI: " + msg)
        pytest.skip("NOT TESTED against the real `serve` CLI (CSERVE_RAY_VENV_OPTIONAL=1): " + msg)
    pytest.fail(msg)


def _ray_env():
    e = dict(os.environ)
    e.pop("RAY_DASHBOARD_ADDRESS", None)
    e["RAY_USAGE_STATS_ENABLED"] = "0"
    return e


def serve_cli(*args, check=True, timeout=120):
    """Runs the real `serve` CLI; returns the CompletedProcess (text)."""
    r = subprocess.run([ray_tool("serve"), *args], capture_output=True, text=True, timeout=timeout, env=_ray_env(),
                       cwd=ROOT)
    if check:
        assert r.returncode == 0, f"serve {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


RAY_CHECK = r"""
import json, sys
from dataclasses import asdict
from ray.serve.schema import ServeInstanceDetails
d = ServeInstanceDetails(**json.load(sys.stdin))
print(json.dumps(asdict(d._get_status())))
"""


def ray_check(doc):
    """Parses a GET /api/serve/applications/ answer with Ray's ServeInstanceDetails (what the
    `serve` CLI does; unknown fields are errors): (Ray's ServeStatus as a dict, None) or
    (None, why it was rejected)."""
    r = subprocess.run([ray_tool("python"), "-c", RAY_CHECK], input=json.dumps(doc), capture_output=True, text=True,
                       timeout=120, env=_ray_env())
    if r.returncode != 0:
        return None, f"Ray's ServeInstanceDetails rejects the answer:\n{r.stderr[-3000:]}\nanswer: {json.dumps(doc)[:4000]}"
    return json.loads(r.stdout), None


def ray_validate(doc):
    status, why = ray_check(doc)
    assert why is None, why
    return status


# ------------------------------------------------------------------ helpers

_cli_cache = {}


def cli_greedy(prompt, n, model=TINY):
    """Continuation that `cserve generate --greedy` prints for prompt."""
    key = (prompt, n, model)
    if key not in _cli_cache:
        out = subprocess.run([BIN, "generate", "--model", model, "--greedy", "--max-new-tokens", str(n), "--no-prompt",
                              "--threads", "1", prompt], capture_output=True, check=True, timeout=120).stdout
        text = out.decode("utf-8", errors="replace")
        assert text.endswith("\n")
        _cli_cache[key] = text[:-1]
    return _cli_cache[key]


def post(s, path, body, **kw):
    kw.setdefault("timeout", T)
    return requests.post(s.url(path), json=body, **kw)


def sse_events(resp):
    assert resp.headers["Content-Type"].startswith("text/event-stream"), resp.headers
    return [line[6:].decode("utf-8") for line in resp.iter_lines() if line.startswith(b"data: ")]


def metric_sum(s, name, **labels):
    """Sum of every series of a counter/gauge (name or name_total) whose labels include labels."""
    text = requests.get(s.url("/metrics"), timeout=T).text
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) not in (name, name + "_total"):
            continue
        lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(lab.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found, f"{name}{labels} not in /metrics:\n{text[:6000]}"
    return total


def alive(pid):
    return _alive_replica(pid)


class Load:
    """Closed-loop load: `threads` clients each sending one non-streaming request after the other."""

    def __init__(self, s, path="/v1/completions", threads=4):
        self.s, self.path, self.n = s, path, threads
        self.stop_ev = threading.Event()
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i):
        sess = requests.Session()
        k = 0
        while not self.stop_ev.is_set():
            body = {"prompt": f"load {i} {k}", "max_tokens": 16, "ignore_eos": True, "temperature": 0}
            k += 1
            try:
                r = sess.post(self.s.url(self.path), json=body, timeout=60)
                good = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
                what = (r.status_code, r.text[:300])
            except Exception as e:  # every failure is recorded, none may happen
                good, what = False, ("exception", repr(e)[:300])
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append((round(time.time() - self.t0, 2), *what))

    def __enter__(self):
        self.t0 = time.time()
        for t in self.threads:
            t.start()
        return self

    def finish(self, min_seconds=6):
        left = self.t0 + min_seconds - time.time()
        if left > 0:
            time.sleep(left)
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=90)
        assert not any(t.is_alive() for t in self.threads), "a load client hangs"
        return self.ok, self.failures

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=90)


# ------------------------------------------------------------------ fixtures

@pytest.fixture
def tiny2():
    """One application at / on tiny, 2 replicas, health checks every second."""
    s = ControlServer(config(app_cfg(replicas=2, health_check_period_s=1, health_check_timeout_s=2)))
    try:
        s.wait_app("tiny", 2)
        yield s
    finally:
        stop_clean(s)


TWO_APPS = config(app_cfg("text", "/text", DISTIL), app_cfg("small", "/small", TINY, replicas=2))


@pytest.fixture(scope="module")
def two_apps():
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    s = ControlServer(TWO_APPS)
    try:
        s.wait_app("text", 1)
        s.wait_app("small", 2)
        yield s
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ the seed's RayService

def make_hf_cache(root, repo="distilgpt2", model_dir=DISTIL):
    """An HF hub cache holding models--REPO: refs/main -> COMMIT, snapshots/COMMIT/* symlinks."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    rd = Path(root) / ("models--" + repo.replace("/", "--"))
    (rd / "refs").mkdir(parents=True)
    (rd / "refs" / "main").write_text(commit)
    snap = rd / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in os.listdir(model_dir):
        os.symlink(os.path.join(model_dir, f), snap / f)
    return str(root)


@pytest.mark.skipif(os.environ.get("CS_TEST_QUICK") == "1",
                    reason="make asan: the seed's curl generates 256 distilgpt2-shaped tokens (~2 min under ASan); "
                           "the plain run covers it, and its RayService parsing is tests/serve/test_config.c's")
def test_seed_rayservice(tmp_path):
    """The seed's RayService manifest deploys unchanged (serve_app:deployment_graph = distilgpt2
    from the HF cache) and answers the seed's curl."""
    assert SEED_RAYSERVICE.exists(), f"{SEED_RAYSERVICE} is missing"
    cache = make_hf_cache(tmp_path / "hub")
    s = ControlServer(SEED_RAYSERVICE, env={"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    try:
        s.wait_app("transformer-app", 1)
        assert requests.get(s.url("/-/routes"), timeout=T).json() == {"/": "transformer-app"}
        body = '{"input":"Once upon a time"}'
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-s", "-X", "POST", s.url("/text/simple-gen"), "-H",
                                  "Content-Type: application/json", "-d", body], capture_output=True, timeout=300).stdout
        else:
            out = requests.post(s.url("/text/simple-gen"), data=body, headers={"Content-Type": "application/json"},
                                timeout=300).content
        d = json.loads(out)
        assert isinstance(d, list) and len(d) == 1 and set(d[0]) == {"generated_text"}, d
        assert d[0]["generated_text"].startswith("Once upon a time") and len(d[0]["generated_text"]) > 16, d
        st = s.status()
        app = st["applications"]["transformer-app"]
        assert app["route_prefix"] == "/" and app["deployed_app_config"]["import_path"] == "serve_app:deployment_graph"
        assert list(app["deployments"]) == [DEP], app["deployments"].keys()
        ray_validate(st)
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ several applications

def test_two_apps_routes(two_apps):
    s = two_apps
    assert requests.get(s.url("/-/routes"), timeout=T).json() == {"/text": "text", "/small": "small"}
    r = requests.get(s.url("/-/healthz"), timeout=T)
    assert r.status_code == 200 and r.text == "success"
    # each prefix answers, stripped before the replica sees the path
    r = post(s, "/text/text/simple-gen", {"input": "Once upon a time", "max_new_tokens": 4, "do_sample": False})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": "Once upon a time" + cli_greedy("Once upon a time", 4, DISTIL)}]
    r = post(s, "/small/text/simple-gen", {"input": "Hello", "max_new_tokens": 8, "do_sample": False})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": "Hello" + cli_greedy("Hello", 8)}]
    assert [m["id"] for m in requests.get(s.url("/small/v1/models"), timeout=T).json()["data"]] == ["tiny"]
    assert [m["id"] for m in requests.get(s.url("/text/v1/models"), timeout=T).json()["data"]] == ["distil"]
    # the root OpenAI API: every application's model; `model` picks the application
    ids = sorted(m["id"] for m in requests.get(s.url("/v1/models"), timeout=T).json()["data"])
    assert ids == ["distil", "tiny"], ids
    for model in ("tiny", "small"):  # model id or application name
        r = post(s, "/v1/completions", {"model": model, "prompt": "Root", "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200, (model, r.text)
        assert r.json()["choices"][0]["text"] == cli_greedy("Root", 6), (model, r.json())
    r = post(s, "/v1/completions", {"model": "distil", "prompt": "Root", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["model"] == "distil", r.text
    assert r.json()["choices"][0]["text"] == cli_greedy("Root", 3, DISTIL)
    r = post(s, "/v1/completions", {"model": "nope", "prompt": "Root", "max_tokens": 3})
    assert r.status_code == 404, r.text
    # prefixes that no application owns
    for path in ("/nope/text/simple-gen", "/smallx/text/simple-gen", "/text-gen", "/"):
        r = post(s, path, {"input": "x", "max_new_tokens": 2})
        assert r.status_code == 404, (path, r.status_code, r.text)
    # Ray's metric names next to cserve's
    post(s, "/small/v1/completions", {"prompt": "m", "max_tokens": 2}).raise_for_status()
    assert metric_sum(s, "ray_serve_num_http_requests", application="small") >= 1
    assert metric_sum(s, "ray_serve_deployment_replica_starts", application="small", deployment=DEP) >= 2
    assert metric_sum(s, "ray_serve_deployment_replica_healthy", application="small", deployment=DEP) == 2


def test_admin_api_shape(two_apps):
    s = two_apps
    v = requests.get(s.admin("/api/ray/version"), timeout=T)
    assert v.status_code == 200 and v.json()["ray_version"] == "2.50.1", v.text
    st = s.status()
    assert set(st["applications"]) == {"text", "small"}
    small = st["applications"]["small"]
    assert small["status"] == "RUNNING" and small["route_prefix"] == "/small" and small["source"] == "declarative"
    assert small["deployed_app_config"] == TWO_APPS["applications"][1], small["deployed_app_config"]
    d = small["deployments"][DEP]
    assert d["status"] == "HEALTHY" and d["target_num_replicas"] == 2 and d["deployment_config"]["num_replicas"] == 2
    assert len(d["replicas"]) == 2 and len({r["replica_id"] for r in d["replicas"]}) == 2
    for r in d["replicas"]:
        assert r["state"] == "RUNNING" and alive(r["pid"]) and r["start_time_s"] > 1e9, r
    status = ray_validate(st)  # Ray's own schema, as the `serve` CLI parses it
    assert status["applications"]["small"]["deployments"][DEP]["replica_states"] == {"RUNNING": 2}
    assert status["applications"]["text"]["status"] == "RUNNING"
    # KubeRay polls ?api_type=declarative; Ray filters by the applications' source, case-insensitively
    for q, want in (("declarative", {"text", "small"}), ("DECLARATIVE", {"text", "small"}), ("imperative", set())):
        r = requests.get(s.admin("/api/serve/applications/?api_type=" + q), timeout=T)
        assert r.status_code == 200 and set(r.json()["applications"]) == want, (q, r.status_code, r.text[:300])
    r = requests.get(s.admin("/api/serve/applications/?api_type=bogus"), timeout=T)
    assert r.status_code == 400 and "api_type" in r.text, (r.status_code, r.text[:300])


def test_stream_through_proxy(two_apps):
    s = two_apps
    prompt, n = "Streams of tokens", 24
    want = cli_greedy(prompt, n)
    with requests.post(s.url("/small/v1/completions"), json={"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                             "stream": True, "stream_options": {"include_usage": True}},
                       stream=True, timeout=T) as r:
        assert r.status_code == 200, r.text
        ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == n
    assert len(chunks) >= n // 2  # token by token, not all at once
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    with requests.post(s.url("/small/text/simple-gen"), json={"input": prompt, "do_sample": False, "max_new_tokens": n,
                                                              "stream": True}, stream=True, timeout=T) as r:
        ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    assert "".join(json.loads(e)["text"] for e in ev[:-1]) == prompt + want
    # a client that leaves mid-stream breaks nothing
    pids = s.wait_app("small", 2)
    body = json.dumps({"prompt": "leave me", "max_tokens": 120, "ignore_eos": True, "temperature": 0,
                       "stream": True}).encode()
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", s.port), timeout=T) as c:
            c.sendall(b"POST /small/v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            buf = b""
            while buf.count(b"data: ") < 2:
                chunk = c.recv(4096)
                assert chunk, buf
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
    for i in range(4):  # both replicas
        r = post(s, "/small/v1/completions", {"prompt": f"after {i}", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == cli_greedy(f"after {i}", 5)
    assert s.wait_app("small", 2) == pids


# ------------------------------------------------------------------ the real `serve` CLI

def test_serve_cli_round_trip(tmp_path):
    ray_tool("serve")
    s = ControlServer(config(app_cfg("boot", "/boot")))
    try:
        s.wait_app("boot", 1)
        a = ["-a", s.admin_url]
        app = app_cfg("tiny", "/", TINY, replicas=1)
        f = write_yaml(tmp_path / "app.yaml", config(app))
        r = serve_cli("deploy", f, *a)
        assert "Sent deploy request successfully" in r.stdout + r.stderr, r
        pids1 = s.wait_app("tiny", 1)
        s.wait_until(lambda st: "boot" not in st["applications"], "full replace deletes the application 'boot'")
        st = yaml.safe_load(serve_cli("status", *a).stdout)
        assert set(st["applications"]) == {"tiny"}, st
        t = st["applications"]["tiny"]
        assert t["status"] == "RUNNING" and isinstance(t["last_deployed_time_s"], float), t
        assert t["deployments"][DEP]["status"] == "HEALTHY" and t["deployments"][DEP]["replica_states"] == {"RUNNING": 1}
        assert st["proxies"] and set(st["proxies"].values()) == {"HEALTHY"}, st
        assert list(yaml.safe_load_all(serve_cli("config", *a).stdout)) == [app]
        assert yaml.safe_load(serve_cli("config", "--name", "tiny", *a).stdout) == app
        r = post(s, "/text/simple-gen", {"input": "CLI", "max_new_tokens": 4, "do_sample": False})
        assert r.json() == [{"generated_text": "CLI" + cli_greedy("CLI", 4)}], r.text

        # num_replicas changes in place: the running replica is kept
        app3 = app_cfg("tiny", "/", TINY, replicas=3)
        serve_cli("deploy", write_yaml(tmp_path / "app3.yaml", config(app3)), *a)
        pids3 = s.wait_app("tiny", 3)
        assert set(pids1) <= set(pids3), (pids1, pids3)
        st = yaml.safe_load(serve_cli("status", *a).stdout)
        assert st["applications"]["tiny"]["deployments"][DEP]["replica_states"] == {"RUNNING": 3}, st
        assert yaml.safe_load(serve_cli("config", *a).stdout) == app3

        r = serve_cli("shutdown", "-y", *a)
        assert "No Serve instance found" not in r.stdout + r.stderr, r
        assert "Sent shutdown request" in r.stdout + r.stderr, r
        st = s.wait_until(lambda st: not st["applications"], "no applications after `serve shutdown`")
        ray_validate(st)
        deadline = time.time() + 60
        while time.time() < deadline and any(alive(p) for p in pids3):
            time.sleep(0.1)
        assert not any(alive(p) for p in pids3), f"replicas {pids3} still running after shutdown"
        r = requests.get(s.url("/-/routes"), timeout=T)
        assert (r.status_code == 200 and r.json() == {}) or r.status_code in (404, 503), (r.status_code, r.text)
        r = post(s, "/text/simple-gen", {"input": "gone", "max_new_tokens": 2})
        assert r.status_code in (404, 503), (r.status_code, r.text)
        st = yaml.safe_load(serve_cli("status", *a).stdout)
        assert not st["applications"], st
        assert serve_cli("config", *a).stdout.strip() == "No configuration was found."
    finally:
        stop_clean(s)


def test_cserve_client_matches_serve(tmp_path):
    """`cserve deploy/status/config/shutdown -a URL` print what `serve` prints."""
    ray_tool("serve")
    s = ControlServer(config(app_cfg("boot", "/boot")))
    try:
        s.wait_app("boot", 1)
        a = ["-a", s.admin_url]

        def cs(*args, env=None, check=True):
            e = dict(os.environ)
            e.pop("RAY_DASHBOARD_ADDRESS", None)
            e.update(env or {})
            r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60, env=e)
            if check:
                assert r.returncode == 0, f"cserve {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
            return r

        apps = config(app_cfg("tiny", "/", TINY), app_cfg("other", "/other", TINY, user_config={"max_length": 30}))
        r = cs("deploy", *a, write_yaml(tmp_path / "apps.yaml", apps))
        assert "Sent deploy request successfully" in r.stdout + r.stderr, r
        s.wait_app("tiny", 1)
        s.wait_app("other", 1)
        s.wait_until(lambda st: set(st["applications"]) == {"tiny", "other"}, "apps tiny and other only")
        for args in (["status"], ["config"], ["config", "--name", "other"]):
            want = serve_cli(*args, *a).stdout
            got = cs(*args, *a).stdout
            assert list(yaml.safe_load_all(got)) == list(yaml.safe_load_all(want)), (args, got, want)
            assert got == want, (args, got, want)
        got = cs("status", env={"RAY_DASHBOARD_ADDRESS": s.admin_url}).stdout  # the default address
        assert yaml.safe_load(got) == yaml.safe_load(serve_cli("status", *a).stdout)
        bad = cs("status", "-a", "http://127.0.0.1:1", check=False)
        assert bad.returncode != 0 and bad.stderr.strip(), bad
        r = cs("shutdown", "-y", *a)
        assert "Sent shutdown request" in r.stdout + r.stderr, r
        s.wait_until(lambda st: not st["applications"], "no applications after `cserve shutdown`")
        assert cs("config", *a).stdout == serve_cli("config", *a).stdout
        # options after the file, as `serve deploy FILE -a URL` takes them
        r = cs("deploy", str(tmp_path / "apps.yaml"), *a)
        assert "Sent deploy request successfully" in r.stdout + r.stderr, r
        s.wait_app("tiny", 1)
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ replicas failing and changing

def test_kill9_replica_under_load(tiny2):
    s = tiny2
    pids = s.wait_app("tiny", 2)
    starts = metric_sum(s, "ray_serve_deployment_replica_starts", application="tiny", deployment=DEP)
    with Load(s) as load:
        time.sleep(1.5)
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        # replaced at once (waitpid): within 2 health periods + a start
        new = s.wait_app("tiny", 2, timeout=2 * 1 + 20, exclude=[victim])
        ok, failures = load.finish(min_seconds=6)
    assert not failures, f"{len(failures)} failed requests (t, status, body): {failures[:10]}"
    assert ok >= 8, ok
    assert pids[1] in new and victim not in new, (pids, new)
    assert metric_sum(s, "ray_serve_deployment_replica_starts", application="tiny", deployment=DEP) > starts


def test_model_change_rolls_out(tiny2, tmp_path):
    s = tiny2
    pids = s.wait_app("tiny", 2)
    copy = tmp_path / "tiny-copy"
    shutil.copytree(TINY, copy)
    with Load(s) as load:
        time.sleep(1)
        r = s.put(config(app_cfg(model=str(copy), replicas=2, health_check_period_s=1, health_check_timeout_s=2)))
        assert r.status_code == 200, r.text
        new = s.wait_app("tiny", 2, exclude=pids)
        ok, failures = load.finish(min_seconds=6)
    assert not failures, f"{len(failures)} failed requests during the rollout (t, status, body): {failures[:10]}"
    assert ok >= 8, ok
    assert not set(new) & set(pids), (pids, new)
    assert [m["id"] for m in requests.get(s.url("/v1/models"), timeout=T).json()["data"]] == ["tiny-copy"]
    deadline = time.time() + 60
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), f"old replicas {pids} still running after the rollout"


def test_scale_api(tiny2):
    s = tiny2
    pids = s.wait_app("tiny", 2)
    path = f"/api/v1/applications/tiny/deployments/{DEP}/scale"
    r = requests.post(s.admin(path), json={"target_num_replicas": 3}, timeout=T)
    assert r.status_code == 200, r.text
    p3 = s.wait_app("tiny", 3)
    assert set(pids) <= set(p3)
    st = s.status()
    assert st["applications"]["tiny"]["deployments"][DEP]["target_num_replicas"] == 3
    assert ray_validate(st)["applications"]["tiny"]["deployments"][DEP]["replica_states"] == {"RUNNING": 3}
    r = requests.post(s.admin(path), json={"target_num_replicas": 1}, timeout=T)
    assert r.status_code == 200, r.text
    p1 = s.wait_app("tiny", 1)
    assert set(p1) <= set(p3)
    deadline = time.time() + 60
    while time.time() < deadline and any(alive(p) for p in set(p3) - set(p1)):
        time.sleep(0.1)
    assert not any(alive(p) for p in set(p3) - set(p1)), "scaled-down replicas still running"
    assert post(s, "/v1/completions", {"prompt": "one left", "max_tokens": 3}).status_code == 200
    for bad_path, body in ((f"/api/v1/applications/nope/deployments/{DEP}/scale", {"target_num_replicas": 1}),
                           ("/api/v1/applications/tiny/deployments/Nope/scale", {"target_num_replicas": 1}),
                           (path, {"target_num_replicas": -1}), (path, {"target_num_replicas": "x"}), (path, {})):
        r = requests.post(s.admin(bad_path), json=body, timeout=T)
        assert 400 <= r.status_code < 500, (bad_path, body, r.status_code, r.text)
    assert s.wait_app("tiny", 1) == p1


def test_hung_replica_replaced(tmp_path):
    s = ControlServer(config(app_cfg(replicas=2, health_check_period_s=0.5, health_check_timeout_s=0.5)))
    victim = None
    try:
        pids = s.wait_app("tiny", 2)
        victim = pids[0]
        os.kill(victim, signal.SIGSTOP)
        # 3 failed health checks (0.5 s period, 0.5 s timeout), then a new replica starts
        new = s.wait_app("tiny", 2, timeout=3 * 1.0 + 30, exclude=[victim])
        assert pids[1] in new, (pids, new)
        deadline = time.time() + 30
        while time.time() < deadline and alive(victim):
            time.sleep(0.1)
        assert not alive(victim), f"the hung replica {victim} was not killed"
        for i in range(6):
            r = post(s, "/v1/completions", {"prompt": f"after hang {i}", "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == cli_greedy(f"after hang {i}", 4)
    finally:
        if victim and alive(victim):
            os.kill(victim, signal.SIGCONT)
        stop_clean(s)


def test_backpressure_503():
    """1 replica of the slow model, 1 request at a time, 1 waiting: a burst gets Ray's 503."""
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    s = ControlServer(config(app_cfg(model=DISTIL, max_ongoing_requests=1, max_queued_requests=1)))
    try:
        s.wait_app("tiny", 1)
        n = 8
        barrier = threading.Barrier(n)

        def one(i):
            barrier.wait(timeout=T)
            return post(s, "/v1/completions", {"prompt": f"burst {i}", "max_tokens": 24, "ignore_eos": True,
                                               "temperature": 0}, timeout=120)

        with cf.ThreadPoolExecutor(n) as ex:
            rs = list(ex.map(one, range(n)))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 503}, [(r.status_code, r.text[:200]) for r in rs]
        assert codes.count(503) >= 1 and codes.count(200) >= 2, codes
        for r in rs:
            if r.status_code == 503:
                assert BACKPRESSURE_RE.search(r.text), r.text
            else:
                assert r.json()["usage"]["completion_tokens"] == 24, r.text
        r = post(s, "/v1/completions", {"prompt": "after the burst", "max_tokens": 3})
        assert r.status_code == 200, r.text
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ bad configs

KEEP = app_cfg("keep", "/keep")


def _nested(depth):
    d = "leaf"
    for _ in range(depth):
        d = {"k": d}
    return d


def _with_dep(**kw):
    a = json.loads(json.dumps(KEEP))
    a["deployments"][0].update(kw)
    return a


# (id, PUT body, "schema" -> 400 naming one of the words / "app" -> 200 then DEPLOY_FAILED)
BAD_PUTS = [
    ("unknown_import_path", config(KEEP, {"name": "bad", "route_prefix": "/bad", "import_path": "nope.module:app"}),
     "app", ["import_path", "nope.module"]),
    ("bad_route_prefix", config(KEEP, app_cfg("bad", "abc")), "app", ["route_prefix"]),
    ("duplicate_names", config(KEEP, dict(KEEP, route_prefix="/keep2")), "schema", ["keep", "name"]),
    ("duplicate_prefixes", config(KEEP, dict(KEEP, name="keep2")), "schema", ["route_prefix"]),
    ("min_gt_max", config(dict(KEEP, deployments=[{"name": DEP, "autoscaling_config": {"min_replicas": 3,
                                                                                       "max_replicas": 1}}])),
     "schema", ["min_replicas", "max_replicas"]),
    ("wrong_type", config(_with_dep(max_ongoing_requests="x")), "schema", ["max_ongoing_requests"]),
    ("num_replicas_and_autoscaling", config(_with_dep(num_replicas=2, autoscaling_config={"max_replicas": 3})),
     "schema", ["num_replicas", "autoscaling_config"]),
    ("host_in_app", config(dict(KEEP, host="0.0.0.0")), "schema", ["host"]),
    ("no_applications", {"http_options": {"port": 8000}}, "schema", ["applications"]),
    ("deep_nesting", config(_with_dep(user_config=_nested(200))), "schema", ["nest", "depth", "deep"]),
]


def test_bad_configs_put():
    s = ControlServer(config(KEEP))
    try:
        keep = s.wait_app("keep", 1)
        rejected = []  # DEPLOY_FAILED answers that Ray's schema (so `serve status`) rejects
        for name, body, kind, words in BAD_PUTS:
            r = s.put(body)
            if kind == "schema":
                assert r.status_code == 400, (name, r.status_code, r.text)
                assert any(w in r.text for w in words), (name, r.text)
            else:
                assert r.status_code == 200, (name, r.status_code, r.text)
                st = s.wait_until(lambda st: st["applications"].get("bad", {}).get("status") == "DEPLOY_FAILED",
                                  f"{name}: application 'bad' DEPLOY_FAILED", timeout=60)
                msg = st["applications"]["bad"]["message"]
                assert any(w in msg for w in words), (name, msg)
                assert st["applications"]["keep"]["status"] == "RUNNING", st["applications"]["keep"]
                status, why = ray_check(st)
                if why:
                    rejected.append(f"{name}: {why}")
                else:
                    assert status["applications"]["bad"]["status"] == "DEPLOY_FAILED", status
                r = s.put(config(KEEP))  # full replace: 'bad' goes away
                assert r.status_code == 200, r.text
                s.wait_until(lambda st: set(st["applications"]) == {"keep"}, f"{name}: back to 'keep' only", 60)
            assert s.wait_app("keep", 1) == keep, name
            r = post(s, "/keep/v1/completions", {"prompt": "still here", "max_tokens": 3, "temperature": 0})
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == cli_greedy("still here", 3), (name, r.text)
        for name, data in (("not_json", b'{"applications": ['), ("ten_mb", json.dumps(
                config(_with_dep(user_config={"pad": "x" * (10 << 20)}))).encode())):
            try:
                r = requests.put(s.admin("/api/serve/applications/"), data=data, timeout=T,
                                 headers={"Content-Type": "application/json"})
                assert r.status_code in (400, 413) and r.text.strip(), (name, r.status_code, r.text[:300])
            except requests.ConnectionError:
                assert name == "ten_mb"  # the server may close before the client has sent everything
            assert s.wait_app("keep", 1) == keep, name
        assert not rejected, "\n\n".join(rejected)
        r = s.put(config(KEEP))
        assert r.status_code == 200, r.text
        s.wait_until(lambda st: set(st["applications"]) == {"keep"}, "back to 'keep' only")
        assert s.wait_app("keep", 1) == keep
    finally:
        stop_clean(s)


YAML_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"] +
                      [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)] +
                      ["applications: []", ""])


def _bad_files(tmp):
    keep = yaml.safe_dump(config(KEEP), sort_keys=False)
    wrong = keep.replace("num_replicas: 1", "num_replicas: 1\n    max_ongoing_requests: many")
    assert wrong != keep
    line = next(i for i, l in enumerate(wrong.splitlines(), 1) if "max_ongoing_requests" in l)
    files = {
        "wrong_type": (wrong, ["max_ongoing_requests", f"wrong_type.yaml:{line}:"]),
        "unknown_import_path": (keep.replace(TEXTGEN, "nope.module:app"), ["import_path"]),
        "bad_route_prefix": (keep.replace("route_prefix: /keep", "route_prefix: abc"), ["route_prefix"]),
        "duplicate_names": (yaml.safe_dump(config(KEEP, dict(KEEP, route_prefix="/k2"))), ["name"]),
        "yaml_bomb": (YAML_BOMB, []),
        "ten_mb": (keep + "# " + "x" * (10 << 20) + "\n", []),
        "deep_nesting": ("applications: " + "[" * 200 + "]" * 200 + "\n", []),
        "not_yaml": ("applications: [\n  - {name: x\n", []),
    }
    out = {}
    for name, (text, words) in files.items():
        p = Path(tmp) / f"{name}.yaml"
        p.write_text(text)
        out[name] = (str(p), words)
    out["missing_file"] = (str(Path(tmp) / "does-not-exist.yaml"), ["does-not-exist.yaml"])
    return out


@pytest.mark.parametrize("name", ["wrong_type", "unknown_import_path", "bad_route_prefix", "duplicate_names",
                                  "yaml_bomb", "ten_mb", "deep_nesting", "not_yaml", "missing_file"])
def test_bad_config_at_start(tmp_path, name):
    path, words = _bad_files(tmp_path)[name]
    r = subprocess.run([BIN, "serve", "--config", path, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, (name, r.returncode, r.stderr[-3000:])
    assert "listening on" not in r.stderr, r.stderr[-3000:]
    err = r.stderr.strip()
    assert err and len(err) < 4000, err[-4000:]
    assert os.path.basename(path) in err, err
    for w in words:
        assert w in err, (name, w, err)


@pytest.mark.parametrize("args,msg", [
    (["--dtype", "int8"], "--dtype: with a config, set it in the application's args.dtype"),
    (["--kv-cache-dtype", "int8"], "--kv-cache-dtype: with a config, set it in the application's args.kv_cache_dtype"),
    (["--model", TINY], "--model: with a config, set it in the application's args.model"),
    (["--threads", "4"], "--threads: with a config, set it in the deployment's ray_actor_options.num_cpus"),
    (["--request-timeout-s", "5", "--dtype", "bf16"],
     "--request-timeout-s: with a config, set it in http_options.request_timeout_s"),
    (["--max-stream-duration-s", "5"], "--max-stream-duration-s: not read with a config"),
])
def test_single_model_options_refused_with_a_config(tmp_path, args, msg):
    """Options only `serve --model` reads used to be dropped without a word next to --config (a
    server started with --dtype int8 served fp32): each is refused, naming where a config sets it."""
    path = tmp_path / "serve.yaml"
    write_yaml(path, config(app_cfg()))
    r = subprocess.run([BIN, "serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
                        *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and msg in r.stderr, (r.returncode, r.stderr[-3000:])
    assert "listening on" not in r.stderr, r.stderr[-3000:]
