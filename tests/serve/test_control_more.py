"""More end-to-end tests of the control plane (`cserve serve --config FILE`), next to
test_control.py, whose ControlServer and helpers they reuse: user_config pushed to live replicas,
the proxy's request timeout, API keys on both listeners, "/" next to another prefix, the root
OpenAI API choosing an application by `model`, deleting an application while it answers, the real
`serve shutdown` then `serve deploy`, SIGTERM during streams, replicas that cannot start,
target_capacity and X-Request-Id.

Replicas whose requests must stay in flight for a while are frozen with SIGSTOP (their health
checks are spaced out so that nobody replaces them meanwhile): a test never depends on a request
being slower than something else.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_control_more.py
(test_serve_shutdown_then_deploy needs the Ray venv, as in test_control.py; the other tests only the
binary and build/models/tiny, test_request_timeout_408 also build/models/distil.)
"""
import concurrent.futures as cf
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_control import (BIN, DEP, DISTIL, START, T, TINY, ControlServer, alive, app_cfg,  # noqa: E402
                          cli_greedy, config, metric_sum, post, ray_tool, serve_cli, sse_events, stop_clean,
                          write_yaml)

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")

PROMPT = "Once upon a time"
QUIET = {"health_check_period_s": 60, "health_check_timeout_s": 30}  # no check while a replica is frozen
FAST = {"health_check_period_s": 0.5, "health_check_timeout_s": 2}
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# ------------------------------------------------------------------ helpers

def wait_for(pred, what, timeout=START, every=0.05):
    """Polls pred() until it returns something true; returns it."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not reached after {timeout} s (last: {last!r})")


def n_tokens(text, model=TINY):
    out = subprocess.run([BIN, "tokenize", "--model", model, "--", text], capture_output=True, check=True,
                         timeout=60).stdout
    return len(json.loads(out))


def simple_gen(s, prefix="", prompt=PROMPT, **kw):
    """The continuation /text/simple-gen returns (generated_text without the prompt)."""
    r = post(s, prefix + "/text/simple-gen", dict({"input": prompt}, **kw))
    assert r.status_code == 200, r.text
    d = r.json()
    assert isinstance(d, list) and len(d) == 1, d
    text = d[0]["generated_text"]
    assert text.startswith(prompt), (prompt, text)
    return text[len(prompt):]


def completion(s, path="/v1/completions", prompt=PROMPT, n=4, **kw):
    r = post(s, path, dict({"prompt": prompt, "max_tokens": n, "temperature": 0}, **kw))
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def metric0(s, name, **labels):
    """metric_sum, 0 when no series matches yet (a counter before its first event)."""
    try:
        return metric_sum(s, name, **labels)
    except AssertionError as e:
        if " not in /metrics" not in str(e):
            raise
        return 0.0


def processing(s, app):
    """Requests the proxy has at app's replicas (Ray's ray_serve_replica_processing_queries)."""
    return metric_sum(s, "ray_serve_replica_processing_queries", application=app, deployment=DEP)


def replica_procs(server_pid):
    """pids of live `cserve replica` processes whose socket lies in the server's socket directory."""
    mark = f"/tmp/cserve-{server_pid}-".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if len(argv) > 1 and argv[1] == b"replica" and any(mark in a for a in argv) and state != "Z":
            found.append(int(d))
    return found


def resume(pid):
    """SIGCONT to a replica frozen by the test, if it still exists."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


class Frozen:
    """SIGSTOP of a replica for the time of a with block (or until resume()): the requests sent to
    it stay in flight."""

    def __init__(self, pid):
        self.pid = pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def resume(self):
        resume(self.pid)

    def __exit__(self, *exc):
        self.resume()


def stream_completion(s, path, prompt, n):
    """A streamed completion: (status, data events)."""
    with requests.post(s.url(path), json={"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                                          "stream": True}, stream=True, timeout=120) as r:
        if r.status_code != 200:
            return r.status_code, [r.text]
        return r.status_code, sse_events(r)


def stream_text(events):
    assert events and events[-1] == "[DONE]", events[-3:]
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e).get("choices"))


# ------------------------------------------------------------------ 1. user_config

def test_user_config_pushed_live():
    uc3 = {"max_new_tokens": 3, "do_sample": False}
    s = ControlServer(config(app_cfg(user_config=uc3, **FAST)))
    try:
        pids = s.wait_app("tiny", 1)
        c3, c6 = cli_greedy(PROMPT, 3), cli_greedy(PROMPT, 6)
        assert c3 != c6 and c6.startswith(c3)
        got = simple_gen(s)
        assert got == c3, (got, c3)
        assert n_tokens(got) == 3, got

        r = s.put(config(app_cfg(user_config={"max_new_tokens": 6, "do_sample": False}, **FAST)))
        assert r.status_code == 200, r.text

        def six():
            g = simple_gen(s)
            assert g in (c3, c6), g  # the old defaults until the push, then the new ones
            return g == c6

        wait_for(six, "answers with the new user_config (6 tokens)", timeout=60)
        assert n_tokens(simple_gen(s)) == 6
        assert s.wait_app("tiny", 1) == pids, "a user_config change restarted the replica"
        # a request's own fields win over the defaults
        assert simple_gen(s, max_new_tokens=2) == cli_greedy(PROMPT, 2)
        assert simple_gen(s, prompt="Hello") == cli_greedy("Hello", 6)

        # a user_config the application refuses: DEPLOY_FAILED, the old version keeps serving
        r = s.put(config(app_cfg(user_config={"max_new_tokens": 6, "do_sample": False, "temperature": 200}, **FAST)))
        assert r.status_code == 200, r.text
        st = s.wait_until(lambda st: st["applications"]["tiny"]["status"] == "DEPLOY_FAILED",
                          "application tiny DEPLOY_FAILED after a bad user_config", timeout=60)
        assert "temperature" in st["applications"]["tiny"]["message"], st["applications"]["tiny"]
        for _ in range(3):
            assert simple_gen(s) == c6
        st = s.status()
        assert st["applications"]["tiny"]["status"] == "DEPLOY_FAILED"
        assert sorted(r["pid"] for r in s.replicas("tiny", st=st)) == pids
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 2. request timeout

def test_request_timeout_408():
    """http_options.request_timeout_s: a slow answer gets 408 from the proxy, the replica's slot is
    given back and its generation is cancelled."""
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    s = ControlServer(config(app_cfg(model=DISTIL, max_ongoing_requests=1, **FAST),
                             http_options={"request_timeout_s": 4}))
    try:
        s.wait_app("tiny", 1)
        assert s.status()["http_options"]["request_timeout_s"] == 4
        # about 1,000 tokens of distilgpt2 on one thread: far longer than 4 s (10-20 s in a plain build); the
        # timeout still leaves the 3-token request below room under ASan on a busy machine (1 s did not)
        r = post(s, "/v1/completions", {"prompt": "slow", "max_tokens": 1000, "ignore_eos": True, "temperature": 0},
                 timeout=120)
        assert r.status_code == 408, (r.status_code, r.text[:300])
        wait_for(lambda: processing(s, "tiny") == 0, "ray_serve_replica_processing_queries back to 0", timeout=10)
        # the replica stopped generating (its stats, read by the health checks every 0.5 s)
        wait_for(lambda: metric_sum(s, "cserve_scheduler_running") == 0, "the replica's generation cancelled",
                 timeout=10)
        # max_ongoing_requests is 1: this one needs the slot back
        d = completion(s, prompt="after the timeout", n=3)
        assert d["choices"][0]["text"] == cli_greedy("after the timeout", 3, DISTIL)
        assert metric_sum(s, "ray_serve_num_http_requests", application="tiny", status_code="408") == 1
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 3. API keys

class KeyedServer(ControlServer):
    """A ControlServer whose own admin calls send a bearer key."""

    def __init__(self, cfg, key, *args, **kw):
        self.hdr = {"Authorization": f"Bearer {key}"}
        super().__init__(cfg, *args, **kw)

    def status(self):
        r = requests.get(self.admin("/api/serve/applications/"), headers=self.hdr, timeout=T)
        assert r.status_code == 200, (r.status_code, r.text)
        d = r.json()
        for app in d.get("applications", {}).values():
            for dep in app.get("deployments", {}).values():
                for rep in dep.get("replicas", []):
                    if isinstance(rep.get("pid"), int):
                        self.seen_pids.add(rep["pid"])
        return d


@pytest.mark.parametrize("how", ["file", "env"])
def test_api_keys_both_listeners(tmp_path, how):
    keys = ["k-one-0123456789", "k-two-abcdefghij"]
    if how == "file":
        kf = tmp_path / "keys"
        kf.write_text("\n".join(keys) + "\n")
        s = KeyedServer(config(app_cfg()), keys[0], "--api-key-file", str(kf))
    else:
        s = KeyedServer(config(app_cfg()), keys[0], env={"CSERVE_API_KEYS": ",".join(keys)})
    try:
        s.wait_app("tiny", 1)
        body = {"prompt": "keys", "max_tokens": 3, "temperature": 0}
        bad_headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {keys[0]}x"},
                       {"Authorization": f"Bearer {keys[0][:-1]}"}, {"Authorization": keys[0]},
                       {"Authorization": f"Basic {keys[0]}"}]
        for h in bad_headers:
            r = post(s, "/v1/completions", body, headers=h)
            assert r.status_code == 401, (h, r.status_code, r.text)
            for path in ("/-/routes", "/metrics", "/v1/models"):
                r = requests.get(s.url(path), headers=h, timeout=T)
                assert r.status_code == 401, (path, h, r.status_code, r.text)
            for path in ("/api/serve/applications/", "/api/ray/version"):
                r = requests.get(s.admin(path), headers=h, timeout=T)
                assert r.status_code == 401, (path, h, r.status_code, r.text)
            r = requests.put(s.admin("/api/serve/applications/"), json=config(app_cfg(replicas=2)), headers=h,
                             timeout=T)
            assert r.status_code == 401, (h, r.status_code, r.text)
        for k in keys:
            h = {"Authorization": f"Bearer {k}"}
            r = post(s, "/v1/completions", body, headers=h)
            assert r.status_code == 200, (k, r.text)
            assert r.json()["choices"][0]["text"] == cli_greedy("keys", 3)
            for path in ("/-/routes", "/metrics", "/v1/models"):
                assert requests.get(s.url(path), headers=h, timeout=T).status_code == 200, path
            for path in ("/api/serve/applications/", "/api/ray/version"):
                assert requests.get(s.admin(path), headers=h, timeout=T).status_code == 200, path
        # health probes stay open on both listeners
        r = requests.get(s.url("/-/healthz"), timeout=T)
        assert r.status_code == 200 and r.text == "success", (r.status_code, r.text)
        r = requests.get(s.admin("/-/healthz"), timeout=T)
        assert r.status_code == 200, ("admin /-/healthz without a key", r.status_code, r.text)
        # the refused PUTs changed nothing
        assert s.wait_app("tiny", 1)
        assert s.status()["applications"]["tiny"]["deployments"][DEP]["target_num_replicas"] == 1

        def cs_status(key):
            e = dict(os.environ)
            e.pop("RAY_DASHBOARD_ADDRESS", None)
            e.pop("CSERVE_API_KEY", None)
            if key:
                e["CSERVE_API_KEY"] = key
            return subprocess.run([BIN, "status", "-a", s.admin_url], capture_output=True, text=True, timeout=60,
                                  env=e)

        r = cs_status(keys[1])
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        st = yaml.safe_load(r.stdout)
        assert st["applications"]["tiny"]["status"] == "RUNNING", r.stdout
        for key in (None, "wrong"):
            r = cs_status(key)
            assert r.returncode != 0 and r.stderr.strip(), (key, r.returncode, r.stdout, r.stderr)
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 4. "/" next to "/b"

def test_root_app_and_prefix_app(tmp_path):
    tinyb = tmp_path / "tinyb"
    os.symlink(TINY, tinyb)
    s = ControlServer(config(app_cfg("root", "/", TINY, user_config={"max_new_tokens": 2, "do_sample": False}),
                             app_cfg("b", "/b", str(tinyb), user_config={"max_new_tokens": 5, "do_sample": False})))
    try:
        s.wait_app("root", 1)
        s.wait_app("b", 1)
        assert requests.get(s.url("/-/routes"), timeout=T).json() == {"/": "root", "/b": "b"}
        # the longest prefix wins; each application answers with its own defaults
        assert simple_gen(s, "/b") == cli_greedy(PROMPT, 5)
        assert simple_gen(s) == cli_greedy(PROMPT, 2)
        assert completion(s, "/b/v1/completions")["model"] == "tinyb"
        d = completion(s)  # the root OpenAI API belongs to the root application
        assert d["model"] == "tiny" and d["choices"][0]["text"] == cli_greedy(PROMPT, 4), d
        assert [m["id"] for m in requests.get(s.url("/v1/models"), timeout=T).json()["data"]] == ["tiny"]
        assert [m["id"] for m in requests.get(s.url("/b/v1/models"), timeout=T).json()["data"]] == ["tinyb"]
        # /bx is not under /b: it is the root application's (which has no such route)
        before = metric0(s, "ray_serve_num_http_requests", application="root")
        r = post(s, "/bx/text/simple-gen", {"input": "x"})
        assert r.status_code == 404, (r.status_code, r.text)
        assert metric_sum(s, "ray_serve_num_http_requests", application="root") == before + 1
        assert metric_sum(s, "ray_serve_num_http_requests", application="b", route="/text/simple-gen") == 1
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 5. the root OpenAI API, no "/" app

def test_root_openai_picks_app_by_model(tmp_path):
    alpha, gamma = tmp_path / "alpha", tmp_path / "gamma"
    os.symlink(TINY, alpha)
    os.symlink(TINY, gamma)
    s = ControlServer(config(app_cfg("a", "/a", str(alpha)), app_cfg("c", "/c", str(gamma))))
    try:
        s.wait_app("a", 1)
        s.wait_app("c", 1)
        data = requests.get(s.url("/v1/models"), timeout=T).json()["data"]
        assert sorted(m["id"] for m in data) == ["alpha", "gamma"], data
        want = cli_greedy(PROMPT, 4)
        for model, served, app in (("alpha", "alpha", "a"), ("a", "alpha", "a"), ("gamma", "gamma", "c"),
                                   ("c", "gamma", "c")):
            before = metric0(s, "ray_serve_num_http_requests", application=app)
            d = completion(s, model=model)
            assert d["model"] == served and d["choices"][0]["text"] == want, (model, d)
            assert metric_sum(s, "ray_serve_num_http_requests", application=app) == before + 1, model
        r = requests.get(s.url("/v1/models/gamma"), timeout=T)
        assert r.status_code == 200 and r.json()["id"] == "gamma", r.text
        # an unknown model: OpenAI's 404
        r = post(s, "/v1/completions", {"model": "nope", "prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 404, (r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert err["code"] == "model_not_found" and err["param"] == "model" and "nope" in err["message"], err
        # several applications and no model: 400, OpenAI-shaped
        r = post(s, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 400, (r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) >= {"message", "type", "param", "code"} and err["param"] == "model", err
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 6. deleting an app while it answers

def test_delete_app_while_request_in_flight():
    s = ControlServer(config(app_cfg("keep", "/keep", **FAST), app_cfg("gone", "/gone", **QUIET)))
    try:
        keep = s.wait_app("keep", 1)
        gone = s.wait_app("gone", 1)
        with cf.ThreadPoolExecutor(2) as ex, Frozen(gone[0]) as frozen:
            plain = ex.submit(post, s, "/gone/v1/completions", {"prompt": "in flight", "max_tokens": 40,
                                                                "ignore_eos": True, "temperature": 0}, timeout=120)
            streamed = ex.submit(stream_completion, s, "/gone/v1/completions", "streamed in flight", 40)
            wait_for(lambda: processing(s, "gone") == 2, "both requests at the replica", timeout=30)
            r = s.put(config(app_cfg("keep", "/keep", **FAST)))
            assert r.status_code == 200, r.text
            # gone from the routes at once, while its requests are still running
            wait_for(lambda: requests.get(s.url("/-/routes"), timeout=T).json() == {"/keep": "keep"},
                     "/-/routes without /gone", timeout=30)
            r = post(s, "/gone/v1/completions", {"prompt": "new", "max_tokens": 2})
            assert r.status_code == 404, (r.status_code, r.text)
            s.wait_until(lambda st: st["applications"].get("gone", {}).get("status") == "DELETING",
                         "application 'gone' DELETING while its requests run", timeout=30)
            assert not plain.done() and not streamed.done()
            assert alive(gone[0])
            frozen.resume()
            r = plain.result(timeout=120)
            status, events = streamed.result(timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 40
        assert r.json()["choices"][0]["text"] == cli_greedy("in flight", 40)
        assert status == 200, events
        assert stream_text(events) == cli_greedy("streamed in flight", 40)
        # then the application and its replica go away; the other application is untouched
        s.wait_until(lambda st: set(st["applications"]) == {"keep"}, "only 'keep' left", timeout=60)
        wait_for(lambda: not alive(gone[0]), "the deleted application's replica exited", timeout=60)
        r = post(s, "/gone/text/simple-gen", {"input": "x"})
        assert r.status_code == 404, (r.status_code, r.text)
        assert s.wait_app("keep", 1) == keep
        assert completion(s, "/keep/v1/completions")["choices"][0]["text"] == cli_greedy(PROMPT, 4)
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 7. serve shutdown, then serve deploy

def test_serve_shutdown_then_deploy(tmp_path):
    ray_tool("serve")
    app = app_cfg("tiny", "/")
    s = ControlServer(config(app))
    try:
        pids = s.wait_app("tiny", 1)
        a = ["-a", s.admin_url]
        r = serve_cli("shutdown", "-y", *a)
        assert "Sent shutdown request" in r.stdout + r.stderr, r
        s.wait_until(lambda st: not st["applications"], "no applications after `serve shutdown -y`")
        wait_for(lambda: not any(alive(p) for p in pids), "replicas stopped after the shutdown", timeout=60)
        assert requests.get(s.url("/-/healthz"), timeout=T).status_code == 503
        r = serve_cli("deploy", write_yaml(tmp_path / "app.yaml", config(app)), *a)
        assert "Sent deploy request successfully" in r.stdout + r.stderr, r
        new = s.wait_app("tiny", 1)
        assert not set(new) & set(pids), (pids, new)
        s.wait_healthy(timeout=60)
        assert simple_gen(s, max_new_tokens=4, do_sample=False) == cli_greedy(PROMPT, 4)
        st = yaml.safe_load(serve_cli("status", *a).stdout)
        assert st["applications"]["tiny"]["status"] == "RUNNING", st
        assert yaml.safe_load(serve_cli("config", *a).stdout) == app
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 8. SIGTERM during streams

def test_sigterm_during_streams():
    s = ControlServer(config(app_cfg(**QUIET)))
    try:
        pids = s.wait_app("tiny", 1)
        assert replica_procs(s.proc.pid) == pids
        prompts = [f"stream {i} at shutdown" for i in range(3)]
        with cf.ThreadPoolExecutor(len(prompts)) as ex, Frozen(pids[0]) as frozen:
            futs = [ex.submit(stream_completion, s, "/v1/completions", p, 30) for p in prompts]
            wait_for(lambda: processing(s, "tiny") == len(prompts), "the streams at the replica", timeout=30)
            s.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: requests.get(s.url("/-/healthz"), timeout=T).status_code == 503,
                     "/-/healthz 503 while draining", timeout=30)
            r = post(s, "/v1/completions", {"prompt": "too late", "max_tokens": 2})
            assert r.status_code == 503, (r.status_code, r.text)
            assert s.proc.poll() is None and not any(f.done() for f in futs)
            frozen.resume()
            results = [f.result(timeout=120) for f in futs]
        for p, (status, events) in zip(prompts, results):
            assert status == 200, (p, events)
            assert stream_text(events) == cli_greedy(p, 30), p
        rc = s.proc.wait(timeout=60)
        assert rc == 0, (rc, s.log()[-3000:])
        assert replica_procs(s.proc.pid) == [], "replica processes left after the server exited"
        assert not any(alive(p) for p in pids)
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 9. replicas that cannot start

def test_replica_cannot_start(tmp_path):
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    keep, v = app_cfg("keep", "/keep"), app_cfg("v", "/v")
    s = ControlServer(config(keep, v))
    try:
        kp = s.wait_app("keep", 1)
        vp = s.wait_app("v", 1)
        # a new application whose replicas fail at start
        r = s.put(config(keep, v, app_cfg("bad", "/bad", str(empty))))
        assert r.status_code == 200, r.text
        st = s.wait_until(lambda st: st["applications"].get("bad", {}).get("status") == "DEPLOY_FAILED",
                          "application 'bad' DEPLOY_FAILED", timeout=90)
        bad = st["applications"]["bad"]
        assert "config.json" in bad["message"], bad
        assert bad["deployments"][DEP]["status"] == "DEPLOY_FAILED", bad["deployments"][DEP]
        assert "config.json" in bad["deployments"][DEP]["message"], bad["deployments"][DEP]
        r = post(s, "/bad/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503, (r.status_code, r.text)
        assert completion(s, "/keep/v1/completions")["choices"][0]["text"] == cli_greedy(PROMPT, 4)
        assert s.wait_app("keep", 1) == kp and s.wait_app("v", 1) == vp
        # a new version of 'v' that cannot start: the old replica keeps serving
        r = s.put(config(keep, app_cfg("v", "/v", str(empty))))
        assert r.status_code == 200, r.text
        st = s.wait_until(lambda st: st["applications"]["v"]["status"] == "DEPLOY_FAILED"
                          and "bad" not in st["applications"], "application 'v' DEPLOY_FAILED", timeout=90)
        assert "config.json" in st["applications"]["v"]["message"], st["applications"]["v"]
        for i in range(3):
            d = completion(s, "/v/v1/completions", prompt=f"old version {i}")
            assert d["model"] == "tiny" and d["choices"][0]["text"] == cli_greedy(f"old version {i}", 4), d
        st = s.status()
        assert st["applications"]["v"]["status"] == "DEPLOY_FAILED"
        running = [r["pid"] for r in s.replicas("v", st=st) if r["state"] == "RUNNING"]
        assert running == vp, (vp, s.replicas("v", st=st))
        assert s.wait_app("keep", 1) == kp
    finally:
        stop_clean(s)


def test_failed_update_keeps_model_id(tmp_path):
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    s = ControlServer(config(app_cfg("v", "/v")))
    try:
        s.wait_app("v", 1)
        r = s.put(config(app_cfg("v", "/v", str(empty))))
        assert r.status_code == 200, r.text
        s.wait_until(lambda st: st["applications"]["v"]["status"] == "DEPLOY_FAILED", "'v' DEPLOY_FAILED", timeout=90)
        assert completion(s, "/v/v1/completions")["model"] == "tiny"  # the old replica serves tiny
        assert [m["id"] for m in requests.get(s.url("/v1/models"), timeout=T).json()["data"]] == ["tiny"]
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 10. target_capacity

def test_target_capacity():
    s = ControlServer(config(app_cfg(replicas=4), target_capacity=50))
    try:
        p2 = s.wait_app("tiny", 2)
        st = s.status()
        assert st["target_capacity"] == 50
        assert st["applications"]["tiny"]["deployments"][DEP]["target_num_replicas"] == 2
        r = s.put(config(app_cfg(replicas=4), target_capacity=100))
        assert r.status_code == 200, r.text
        p4 = s.wait_app("tiny", 4)
        assert set(p2) <= set(p4), (p2, p4)
        assert s.status()["applications"]["tiny"]["deployments"][DEP]["target_num_replicas"] == 4
        r = s.put(config(app_cfg(replicas=4), target_capacity=10))  # 0.4 replicas: at least one
        assert r.status_code == 200, r.text
        p1 = s.wait_app("tiny", 1)
        assert set(p1) <= set(p4), (p4, p1)
        assert completion(s)["choices"][0]["text"] == cli_greedy(PROMPT, 4)
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 11. X-Request-Id

def test_request_id_echoed():
    s = ControlServer(config(app_cfg()))
    try:
        s.wait_app("tiny", 1)
        rid = "client-req.42:Abc-" + "x" * 20
        r = post(s, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2}, headers={"X-Request-Id": rid})
        assert r.status_code == 200 and r.headers.get("X-Request-Id") == rid, (r.status_code, dict(r.headers))
        r = post(s, "/text/simple-gen", {"input": PROMPT, "max_new_tokens": 2}, headers={"X-Request-Id": rid + "2"})
        assert r.status_code == 200 and r.headers.get("X-Request-Id") == rid + "2", dict(r.headers)
        with requests.post(s.url("/v1/completions"), json={"prompt": PROMPT, "max_tokens": 3, "stream": True},
                           headers={"X-Request-Id": rid + "3"}, stream=True, timeout=T) as r:
            assert r.status_code == 200 and r.headers.get("X-Request-Id") == rid + "3", dict(r.headers)
            assert sse_events(r)[-1] == "[DONE]"
        wait_for(lambda: f'"request_id":"{rid}"' in s.log().replace(" ", ""), "the request id in the access log",
                 timeout=10)
        # not a valid id: one is generated instead; without one, each request gets its own
        r = post(s, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2}, headers={"X-Request-Id": "bad id!"})
        got = r.headers.get("X-Request-Id", "")
        assert r.status_code == 200 and got != "bad id!" and REQUEST_ID_RE.fullmatch(got), dict(r.headers)
        ids = {post(s, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1}).headers.get("X-Request-Id")
               for _ in range(3)}
        assert len(ids) == 3 and all(i and REQUEST_ID_RE.fullmatch(i) for i in ids), ids
    finally:
        stop_clean(s)
