"""End-to-end tests of the platform features of `cserve serve --config FILE`: autoscaling (Ray's
policy, checked against Ray's own `_calculate_desired_num_replicas` and seen through the real
`serve status`), scale to zero and back, weighted traffic splitting with session pinning, shadow
(mirror) traffic, fallback edges, and composition (Preprocessor -> generator).

Reuses test_control.py's ControlServer and helpers. Models: build/models/tiny (and
build/models/distil for the cold start figure). Replicas run one thread each.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_platform.py
The Ray venv ($CSERVE_RAY_VENV, default ~/.cache/cserve/venv-ray) provides the `serve` CLI and
Ray's autoscaling formula; see test_control.py for CSERVE_RAY_VENV_OPTIONAL.
"""
import concurrent.futures as cf
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_control import (BIN, DEP, DISTIL, START, T, TEXTGEN, TINY, ControlServer, Load, _ray_env,  # noqa: E402
                          alive, cli_greedy, config, ray_tool, ray_validate, serve_cli, stop_clean)

pytestmark = pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                                reason="needs the cserve binary and build/models/tiny (make models)")

PROMPT = "Once upon a time"
QUIET = {"health_check_period_s": 60, "health_check_timeout_s": 30}  # no check while a replica is frozen


# ------------------------------------------------------------------ helpers

def parse_metrics(text):
    """Prometheus text -> [(name, {label: value}, float)]."""
    out = []
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out.append((m.group(1), dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")),
                        float(m.group(3))))
    return out


def msum(samples, name, **labels):
    """Sum of the series called name whose labels include labels (0 when none)."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def metrics(s):
    r = requests.get(s.url("/metrics"), timeout=T)
    assert r.status_code == 200, r.text
    return parse_metrics(r.text)


def dep_requests(s, app, dep, role="primary", outcome=None, samples=None):
    """cserve_deployment_requests_total of one deployment and role (all outcomes unless given)."""
    lab = {"application": app, "deployment": dep, "role": role}
    if outcome:
        lab["outcome"] = outcome
    return msum(samples if samples is not None else metrics(s), "cserve_deployment_requests_total", **lab)


class Conn:
    """One keep-alive HTTP/1.1 connection to the proxy (lighter than requests, for many requests).
    No retry: any transport error is the test's failure to see."""

    def __init__(self, s):
        self.c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)

    def post(self, path, body, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        self.c.request("POST", path, json.dumps(body).encode(), h)
        r = self.c.getresponse()
        data = r.read()
        if (r.getheader("Connection") or "").lower() == "close":
            self.c.close()
        return r.status, data

    def close(self):
        self.c.close()


def run_parallel(s, jobs, threads, fn):
    """Runs fn(conn, job) for every job on `threads` keep-alive connections; returns the results
    in the order of jobs."""
    jobs = list(jobs)
    out = [None] * len(jobs)
    nxt = iter(range(len(jobs)))
    lock = threading.Lock()

    def worker():
        c = Conn(s)
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                try:
                    out[i] = fn(c, jobs[i])
                except Exception as e:  # recorded, the caller checks every result
                    out[i] = ("exception", repr(e)[:300])
                    c.close()
                    c = Conn(s)
        finally:
            c.close()

    ths = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in ths), "a client thread hangs"
    return out


def simple_gen_text(status, data):
    assert status == 200, (status, data[:300])
    d = json.loads(data)
    assert isinstance(d, list) and len(d) == 1 and set(d[0]) == {"generated_text"}, d
    return d[0]["generated_text"]


def dep_status(s, app, dep=DEP, st=None):
    st = st or s.status()
    return st["applications"][app]["deployments"][dep]


def pids_of(s, app, deps):
    st = s.status()
    return {d: sorted(r["pid"] for r in dep_status(s, app, d, st)["replicas"]) for d in deps}


def scale(s, app, dep, n):
    r = requests.post(s.admin(f"/api/v1/applications/{app}/deployments/{dep}/scale"), json={"target_num_replicas": n},
                      timeout=T)
    assert r.status_code == 200, r.text


def wait_for(pred, what, timeout=START, every=0.05):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not reached after {timeout} s (last: {last!r})")


def generator(name, model=TINY, replicas=1, **kw):
    d = {"name": name, "num_replicas": replicas, "ray_actor_options": {"num_cpus": 1}}
    d.update(kw)
    return d


def textgen_app(name, args, deployments, prefix="/"):
    return {"name": name, "route_prefix": prefix, "import_path": TEXTGEN, "args": dict({"model": TINY}, **args),
            "deployments": deployments}


# ------------------------------------------------------------------ 1. autoscaling ramp

AS_CFG = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2, "upscale_delay_s": 0.5,
          "downscale_delay_s": 2, "metrics_interval_s": 0.5, "look_back_period_s": 2}
UPSCALING_RE = re.compile(r"Upscaling from (\d+) to (\d+) replicas\.")
DOWNSCALING_RE = re.compile(r"Downscaling from (\d+) to (\d+) replicas\.")

# The real `serve status` command (ray.serve.scripts), run in a loop in one Python process, so that a
# short UPSCALING phase is caught (a new CLI process takes seconds to import Ray).
STATUS_WATCH = r"""
import contextlib, io, json, sys, time
from ray.serve.scripts import cli
print(json.dumps({"ready": True}), flush=True)
while True:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            cli.main(["status", "-a", sys.argv[1]], standalone_mode=False)
        print(json.dumps({"t": time.time(), "out": buf.getvalue()}), flush=True)
    except Exception as e:
        print(json.dumps({"t": time.time(), "err": repr(e)}), flush=True)
    time.sleep(0.02)
"""

# Ray's own formula over a range of totals: for each (running, lo, hi), the replica counts that
# _calculate_desired_num_replicas gives for a total in [lo, hi] (it is monotone in the total).
RAY_DESIRED = r"""
import json, sys
from ray.serve.autoscaling_policy import _calculate_desired_num_replicas
from ray.serve.config import AutoscalingConfig
q = json.load(sys.stdin)
cfg = AutoscalingConfig(**q["config"])
out = []
for running, lo, hi in q["queries"]:
    vals = {_calculate_desired_num_replicas(cfg, lo + (hi - lo) * k / 400, running) for k in range(401)}
    out.append(list(range(min(vals), max(vals) + 1)))
print(json.dumps(out))
"""


def ray_desired(cfg, queries):
    r = subprocess.run([ray_tool("python"), "-c", RAY_DESIRED], input=json.dumps({"config": cfg, "queries": queries}),
                       capture_output=True, text=True, timeout=120, env=_ray_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


class Ramp:
    """Closed-loop clients (one request after the other, each on its own keep-alive connection);
    set(n) changes how many run. Records every failure."""

    BODY = {"prompt": "ramp", "max_tokens": 100, "ignore_eos": True, "temperature": 0}

    def __init__(self, s):
        self.s = s
        self.n = 0
        self.stop_ev = threading.Event()
        self.threads = []
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()

    def _run(self, i):
        c = Conn(self.s)
        while not self.stop_ev.is_set() and i < self.n:
            try:
                st, data = c.post("/v1/completions", self.BODY)
                good = st == 200 and json.loads(data)["usage"]["completion_tokens"] == 100
                what = (st, data[:200])
            except Exception as e:
                good, what = False, ("exception", repr(e)[:200])
                c.close()
                c = Conn(self.s)
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(what)
        c.close()

    def set(self, n):
        old, self.n = self.n, n
        for i in range(old, n):
            if i >= len(self.threads) or not self.threads[i].is_alive():
                t = threading.Thread(target=self._run, args=(i,), daemon=True)
                if i < len(self.threads):
                    self.threads[i] = t
                else:
                    self.threads.append(t)
                t.start()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in self.threads), "a ramp client hangs"


def test_autoscaling_ramp():
    ray_tool("serve")
    app = "as"
    s = ControlServer(config(textgen_app(app, {}, [{"name": DEP, "autoscaling_config": AS_CFG,
                                                    "ray_actor_options": {"num_cpus": 0.5}}])))
    watch = ramp = None
    try:
        s.wait_app(app, 1)
        watch = subprocess.Popen([ray_tool("python"), "-c", STATUS_WATCH, s.admin_url], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=_ray_env())
        watched = []
        ready = threading.Event()

        def read_watch():
            for line in watch.stdout:
                d = json.loads(line)
                if d.get("ready"):
                    ready.set()
                else:
                    watched.append(d)

        threading.Thread(target=read_watch, daemon=True).start()
        assert ready.wait(120), "the `serve status` watcher did not start"
        wait_for(lambda: watched, "a first `serve status` answer", timeout=60)
        assert "out" in watched[0], watched[0]

        # samples: (t, target, running, ongoing, queued, clients, status, trigger, message)
        samples = []
        rec_stop = threading.Event()
        t0 = time.time()

        def record():
            while not rec_stop.is_set():
                try:
                    m = metrics(s)
                    d = dep_status(s, app)
                except Exception as e:  # the server is checked at the end; keep sampling
                    samples.append(("error", repr(e)))
                    time.sleep(0.1)
                    continue
                samples.append((time.time() - t0, d["target_num_replicas"],
                                sum(r["state"] == "RUNNING" for r in d["replicas"]),
                                msum(m, "ray_serve_num_ongoing_requests_at_replicas", application=app, deployment=DEP),
                                msum(m, "ray_serve_deployment_queued_queries", application=app, deployment=DEP),
                                ramp.n, d["status"], d["status_trigger"], d["message"]))
                time.sleep(0.1)

        ramp = Ramp(s)
        ramp.set(1)
        rec = threading.Thread(target=record, daemon=True)
        rec.start()
        for n, secs in ((1, 1.5), (4, 2.0), (16, 4.0), (4, 1.5)):
            ramp.set(n)
            time.sleep(secs)
        ramp.set(1)

        def back_to_one():
            d = dep_status(s, app)
            return (d["target_num_replicas"] == 1 and d["status"] == "HEALTHY" and
                    d["status_trigger"] == "DOWNSCALE_COMPLETED" and len(d["replicas"]) == 1)

        wait_for(back_to_one, "back to 1 replica (HEALTHY, DOWNSCALE_COMPLETED) with 1 client", timeout=60, every=0.1)
        time.sleep(0.3)
        rec_stop.set()
        rec.join(timeout=30)
        ramp.stop()
        watch.terminate()
        watch.wait(timeout=30)
        time.sleep(0.2)

        errors = [x for x in samples if x[0] == "error"]
        samples = [x for x in samples if x[0] != "error"]
        assert not errors, errors[:5]
        assert not ramp.failures, f"{len(ramp.failures)} failed requests during the ramp: {ramp.failures[:5]}"
        trace = []
        for x in samples:
            if not trace or x[1:3] + x[6:] != trace[-1][1:3] + trace[-1][6:]:
                trace.append(x)
        trace_txt = "\n".join(f"{x[0]:6.2f} target={x[1]} running={x[2]} ongoing={x[3]:.0f} queued={x[4]:.0f} "
                              f"clients={x[5]} {x[6]}/{x[7]} {x[8]!r}" for x in trace)
        print("\nautoscaling trace (t, target, running, ongoing, queued, clients, status):\n" + trace_txt)

        targets = [x[1] for x in samples]
        assert all(AS_CFG["min_replicas"] <= t <= AS_CFG["max_replicas"] for t in targets), trace_txt
        assert all(x[2] <= AS_CFG["max_replicas"] for x in samples), trace_txt
        assert max(targets) > 1, "never scaled up:\n" + trace_txt
        assert targets[-1] == 1, trace_txt

        # statuses and messages as Ray's, in the JSON answers
        prev_target = samples[0][1]
        for x in samples:
            t, target, status, trig, msg = x[0], x[1], x[6], x[7], x[8]
            if status in ("UPSCALING", "DOWNSCALING"):
                assert trig == "AUTOSCALING", x
                m = (UPSCALING_RE if status == "UPSCALING" else DOWNSCALING_RE).fullmatch(msg)
                assert m and int(m.group(2)) == target, x
                a, b = int(m.group(1)), int(m.group(2))
                assert (b > a) == (status == "UPSCALING") and a != b, x
        statuses = {x[6] for x in samples}
        assert "UPSCALING" in statuses, "no UPSCALING status seen in the admin API:\n" + trace_txt

        # every change of the target against Ray's formula: the new target is one that
        # _calculate_desired_num_replicas gives for the replicas running then and a total the
        # clients could have made (at most the clients active in the window the report averages)
        queries, events = [], []
        for i in range(1, len(samples)):
            a, b = samples[i - 1][1], samples[i][1]
            if a == b:
                continue
            # the new target is the formula's answer in the deciding period, on the last report:
            # the load averaged over look_back_period_s, pushed at most metrics_interval_s before
            # (0.5 s of slack for when these samples were taken)
            t_prev, t_hi = samples[i - 1][0], samples[i][0]
            t_lo = t_prev - AS_CFG["metrics_interval_s"] - AS_CFG["look_back_period_s"] - 0.5
            win = [x for x in samples if t_lo <= x[0] <= t_hi]
            lo = min(x[3] + x[4] for x in win)
            hi = max(max(x[5] for x in win), max(x[3] + x[4] for x in win))
            # the replicas running when it was decided (a downscale stops them at once)
            runs = {x[2] for x in samples if t_prev - 1.0 <= x[0] <= t_prev}
            if b > a:
                runs.add(samples[i][2])
            runs = sorted(runs - {0})
            assert runs, (samples[i - 1], samples[i])
            for r in runs:
                queries.append((r, lo, hi))
            events.append((samples[i][0], a, b, runs, lo, hi, len(queries) - len(runs), len(queries)))
        allowed = ray_desired(AS_CFG, queries)
        ups = 0
        for t, a, b, runs, lo, hi, q0, q1 in events:
            ok = set()
            for k in range(q0, q1):
                ok |= set(allowed[k])
            ups += b > a
            assert b in ok, (f"at t={t:.2f} the target went {a} -> {b}; Ray's formula gives {sorted(ok)} for "
                             f"running in {runs} and a total in [{lo}, {hi}]\n" + trace_txt)
        assert ups >= 1
        print("checked against Ray's _calculate_desired_num_replicas:",
              [(round(t, 2), f"{a}->{b}", runs, (lo, hi)) for t, a, b, runs, lo, hi, _, _ in events])

        # the real `serve status` saw the upscale, and sees the end
        outs = [yaml.safe_load(w["out"]) for w in watched if "out" in w]
        assert outs, watched[:3]
        seen = [o["applications"][app]["deployments"][DEP] for o in outs if app in (o.get("applications") or {})]
        up = [d for d in seen if d["status"] == "UPSCALING"]
        assert up, ("`serve status` (%d answers) never showed UPSCALING; statuses seen: %s\n%s" %
                    (len(seen), sorted({(d['status'], d['status_trigger']) for d in seen}), trace_txt))
        for d in up:
            m = UPSCALING_RE.fullmatch(d["message"])
            assert d["status_trigger"] == "AUTOSCALING" and m and int(m.group(2)) > int(m.group(1)), d
        print(f"`serve status` answers: {len(seen)}, {len(up)} of them UPSCALING: "
              f"{sorted({d['message'] for d in up})}")
        st = yaml.safe_load(serve_cli("status", "-a", s.admin_url).stdout)
        d = st["applications"][app]["deployments"][DEP]
        assert d["status"] == "HEALTHY" and d["status_trigger"] == "DOWNSCALE_COMPLETED", d
        assert d["replica_states"] == {"RUNNING": 1}, d
    finally:
        if ramp:
            ramp.stop_ev.set()
        if watch and watch.poll() is None:
            watch.kill()
            watch.wait()
        stop_clean(s)


# ------------------------------------------------------------------ 2. scale to zero

def first_token(s, prompt, n):
    """A streamed completion: (seconds to the first data event, status, text)."""
    t = time.time()
    with requests.post(s.url("/v1/completions"), json={"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                       "ignore_eos": True, "stream": True},
                       stream=True, timeout=120) as r:
        if r.status_code != 200:
            return None, r.status_code, r.text
        it = (line for line in r.iter_lines() if line.startswith(b"data: "))
        ev = [next(it)]
        ttft = time.time() - t
        ev += list(it)
    ev = [e[6:].decode() for e in ev]
    assert ev[-1] == "[DONE]", ev[-3:]
    return ttft, 200, "".join(json.loads(e)["choices"][0]["text"] for e in ev[:-1] if json.loads(e).get("choices"))


def test_scale_to_zero_and_back():
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    app = "zero"
    asc = {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0.5, "downscale_delay_s": 1,
           "downscale_to_zero_delay_s": 1, "metrics_interval_s": 0.5, "look_back_period_s": 1}
    s = ControlServer(config(textgen_app(app, {"model": DISTIL}, [
        {"name": DEP, "autoscaling_config": asc, "ray_actor_options": {"num_cpus": 1}}])), ready=False)
    try:
        # no replica at all after the deploy (min_replicas 0, no initial_replicas)
        st = s.wait_until(lambda st: st["applications"].get(app, {}).get("status") == "RUNNING", "application RUNNING")
        d = dep_status(s, app, st=st)
        assert d["target_num_replicas"] == 0 and d["replicas"] == [], d
        time.sleep(0.5)
        st = s.status()
        assert dep_status(s, app, st=st)["replicas"] == [], st
        assert ray_validate(st)["applications"][app]["deployments"][DEP]["replica_states"] == {}

        want = cli_greedy(PROMPT, 4, DISTIL)
        ttft, code, text = first_token(s, PROMPT, 4)
        assert code == 200, (code, text)
        assert text == want, (text, want)
        print(f"\ncold start to first token (distilgpt2, first replica of the server): {ttft * 1e3:.0f} ms")
        d = dep_status(s, app)
        assert d["target_num_replicas"] == 1 and len(d["replicas"]) == 1, d
        pid = d["replicas"][0]["pid"]

        # idle: back to zero after downscale_to_zero_delay_s (plus the look-back)
        def at_zero():
            d = dep_status(s, app)
            return (d["target_num_replicas"] == 0 and d["replicas"] == [] and d["status"] == "HEALTHY" and
                    d["status_trigger"] == "DOWNSCALE_COMPLETED")

        wait_for(at_zero, "0 replicas (DOWNSCALE_COMPLETED) after idle", timeout=60, every=0.1)
        wait_for(lambda: not alive(pid), f"replica {pid} gone", timeout=60)

        # and back: the request waits for a new replica and is answered (three at once here)
        with cf.ThreadPoolExecutor(3) as ex:
            res = list(ex.map(lambda p: first_token(s, p, 4), [PROMPT, "Hello", "The end"]))
        assert [r[1] for r in res] == [200] * 3, res
        assert res[0][2] == want and res[1][2] == cli_greedy("Hello", 4, DISTIL), res
        print(f"cold start to first token after scale to zero: {min(r[0] for r in res) * 1e3:.0f} ms "
              f"(3 concurrent requests: {', '.join(f'{r[0] * 1e3:.0f}' for r in res)} ms)")
        d = dep_status(s, app)
        assert d["target_num_replicas"] == 1 and len(d["replicas"]) == 1 and d["replicas"][0]["pid"] != pid, d
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 3. traffic splitting

def split_app(traffic):
    """TextGenService (tiny, fp32) and v2 (tiny, int8); /text/simple-gen answers 1 token from
    TextGenService and 3 from v2 (user_config), so each answer tells its side."""
    return config(textgen_app("ab", {"versions": {"v2": {"model": TINY, "dtype": "int8"}}, "traffic": traffic,
                                     "session_header": "X-Session-Id"},
                              [generator(DEP, user_config={"max_new_tokens": 1, "do_sample": False}),
                               generator("v2", user_config={"max_new_tokens": 3, "do_sample": False})]))


def test_traffic_split_and_sessions():
    s = ControlServer(split_app({DEP: 90, "v2": 10}))
    try:
        s.wait_app("ab", 1)
        s.wait_app("ab", 1, dep="v2")
        pids = pids_of(s, "ab", [DEP, "v2"])
        primary = PROMPT + cli_greedy(PROMPT, 1)  # TextGenService's answer

        def side(status, data):
            text = simple_gen_text(status, data)
            assert text.startswith(PROMPT), text
            return DEP if text == primary else "v2"

        def counts():
            m = metrics(s)
            return {d: dep_requests(s, "ab", d, samples=m) for d in (DEP, "v2")}, \
                {d: dep_requests(s, "ab", d, outcome="error", samples=m) for d in (DEP, "v2")}

        # 10,000 requests without a session: 90/10 +- 1.5 %
        n = 10000
        c0, e0 = counts()
        res = run_parallel(s, range(n), 16, lambda c, i: side(*c.post("/text/simple-gen", {"input": PROMPT})))
        bad = [r for r in res if r not in (DEP, "v2")]
        assert not bad, f"{len(bad)} failed requests: {bad[:5]}"
        c1, e1 = counts()
        got = {d: c1[d] - c0[d] for d in c1}
        assert e1 == e0, (e0, e1)
        assert got[DEP] + got["v2"] == n, got
        share = got[DEP] / n
        print(f"\nsplit 90/10 over {n} requests: TextGenService {share * 100:.2f} %, v2 {got['v2'] / n * 100:.2f} %")
        assert abs(share - 0.9) <= 0.015, got
        # the answers agree with the per-deployment series
        assert res.count("v2") == got["v2"], (res.count("v2"), got)
        v2_texts = set()

        # 200 pinned clients x 10 requests, interleaved: each client stays on one side
        jobs = [(k % 200, k // 200) for k in range(2000)]

        def pinned(c, job):
            st, data = c.post("/text/simple-gen", {"input": PROMPT}, {"X-Session-Id": f"client-{job[0]}"})
            if st == 200:
                v2_texts.add(simple_gen_text(st, data))
            return job[0], side(st, data)

        res = run_parallel(s, jobs, 16, pinned)
        bad = [r for r in res if not (isinstance(r, tuple) and r[1] in (DEP, "v2"))]
        assert not bad, f"{len(bad)} failed requests: {bad[:5]}"
        sides = {}
        for client, sd in res:
            sides.setdefault(client, set()).add(sd)
        switched = {k: v for k, v in sides.items() if len(v) > 1}
        assert not switched, f"{len(switched)} pinned clients switched sides: {list(switched.items())[:5]}"
        on_v2 = sum(v == {"v2"} for v in sides.values())
        print(f"pinned clients: {on_v2} of 200 on v2")
        assert 1 <= on_v2 <= 60, on_v2  # ~20 expected
        v2_texts.discard(primary)
        assert len(v2_texts) == 1, v2_texts  # v2's answer is one text too (greedy)

        # new weights with a config update: all to v2, no replica restarted
        starts = {d: msum(metrics(s), "ray_serve_deployment_replica_starts_total", application="ab", deployment=d)
                  for d in (DEP, "v2")}
        r = s.put(split_app({DEP: 0, "v2": 100}))
        assert r.status_code == 200, r.text

        def all_v2():
            res = run_parallel(s, range(20), 4, lambda c, i: side(*c.post("/text/simple-gen", {"input": PROMPT})))
            return all(x == "v2" for x in res)

        wait_for(all_v2, "every request on v2 after the weights changed", timeout=60)
        res = run_parallel(s, range(200), 8, lambda c, i: side(*c.post("/text/simple-gen", {"input": PROMPT},
                                                                       {"X-Session-Id": f"client-{i}"})))
        assert res == ["v2"] * 200, [r for r in res if r != "v2"][:5]
        s.wait_app("ab", 1)
        s.wait_app("ab", 1, dep="v2")
        assert pids_of(s, "ab", [DEP, "v2"]) == pids, "a change of the weights restarted replicas"
        assert {d: msum(metrics(s), "ray_serve_deployment_replica_starts_total", application="ab", deployment=d)
                for d in (DEP, "v2")} == starts
        assert all(alive(p) for ps in pids.values() for p in ps), pids
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 4. shadow traffic

def test_mirror():
    app = "mir"
    s = ControlServer(config(textgen_app(app, {"versions": {"cand": {"model": TINY}},
                                               "mirror": {"deployment": "cand", "percent": 10}},
                                         [generator(DEP, user_config={"max_new_tokens": 1, "do_sample": False}),
                                          generator("cand", user_config={"max_new_tokens": 3, "do_sample": False},
                                                    health_check_period_s=1, health_check_timeout_s=2)])))
    try:
        s.wait_app(app, 1)
        s.wait_app(app, 1, dep="cand")
        primary = PROMPT + cli_greedy(PROMPT, 1)

        def answer(c, i):
            st, data = c.post("/text/simple-gen", {"input": PROMPT})
            return simple_gen_text(st, data) if st == 200 else (st, data[:200])

        def shadow_settled():
            m = metrics(s)
            if msum(m, "ray_serve_num_ongoing_requests_at_replicas", application=app, deployment="cand") or \
                    msum(m, "ray_serve_deployment_queued_queries", application=app, deployment="cand"):
                return None
            return m

        n = 2000
        m0 = metrics(s)
        res = run_parallel(s, range(n), 8, answer)
        assert res == [primary] * n, [r for r in res if r != primary][:5]
        m1 = wait_for(shadow_settled, "mirrored copies finished", timeout=60)

        def delta(dep, role, outcome=None):
            return dep_requests(s, app, dep, role, outcome, m1) - dep_requests(s, app, dep, role, outcome, m0)

        assert delta(DEP, "primary", "ok") == n and delta(DEP, "primary", "error") == 0
        assert delta("cand", "primary") == 0 and delta(DEP, "shadow") == 0
        copies = delta("cand", "shadow")
        ok = delta("cand", "shadow", "ok")
        print(f"\nmirror 10 %: {copies:.0f} copies of {n} requests ({ok:.0f} answered, "
              f"{delta('cand', 'shadow', 'dropped'):.0f} dropped, {delta('cand', 'shadow', 'error'):.0f} errors)")
        assert 0.1 * n - 5 * (0.09 * n) ** 0.5 <= copies <= 0.1 * n + 5 * (0.09 * n) ** 0.5, copies
        assert ok >= 0.9 * copies, (ok, copies)  # an idle candidate answers nearly all of them
        assert delta("cand", "shadow", "error") == 0
        lat = msum(m1, "cserve_deployment_latency_ms_count", application=app, deployment="cand", role="shadow")
        assert lat >= ok > 0, (lat, ok)

        # the candidate killed, then scaled to zero, under load: the clients see nothing
        failures, answers = [], [0]
        stop = threading.Event()

        def client():
            c = Conn(s)
            while not stop.is_set():
                try:
                    got = answer(c, 0)
                except Exception as e:
                    got = ("exception", repr(e)[:200])
                    c.close()
                    c = Conn(s)
                if got != primary:
                    failures.append(got)
                answers[0] += 1
            c.close()

        ths = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in ths:
            t.start()
        try:
            time.sleep(0.5)
            victim = dep_status(s, app, "cand")["replicas"][0]["pid"]
            os.kill(victim, signal.SIGKILL)
            s.wait_app(app, 1, dep="cand", exclude=[victim], timeout=60)
            time.sleep(0.5)
            dropped0 = msum(metrics(s), "cserve_deployment_requests_total", application=app, deployment="cand",
                            role="shadow", outcome="dropped")
            scale(s, app, "cand", 0)
            s.wait_until(lambda st: dep_status(s, app, "cand", st)["replicas"] == [], "cand at 0 replicas", 60)
            n0 = answers[0]
            wait_for(lambda: answers[0] >= n0 + 100, "100 answers with cand at 0 replicas", timeout=60)
        finally:
            stop.set()
            for t in ths:
                t.join(timeout=60)
        assert not failures, f"{len(failures)} client answers not from the primary or failed: {failures[:5]}"
        dropped = msum(metrics(s), "cserve_deployment_requests_total", application=app, deployment="cand",
                       role="shadow", outcome="dropped") - dropped0
        assert dropped >= 1, "no mirrored copy counted as dropped while cand had no replica"
        assert s.wait_app(app, 1), "the primary lost its replica"
    finally:
        stop_clean(s)


# ------------------------------------------------------------------ 5. fallback

def test_fallback_on_overload():
    app = "fb"
    s = ControlServer(config(textgen_app(app, {"versions": {"v2": {"model": TINY}}, "traffic": {DEP: 0, "v2": 100},
                                               "fallback": {"v2": DEP}},
                                         [generator(DEP), generator("v2", max_ongoing_requests=1, max_queued_requests=1,
                                                                    **QUIET)])))
    frozen = None
    try:
        s.wait_app(app, 1)
        s.wait_app(app, 1, dep="v2")
        want = cli_greedy(PROMPT, 8)
        body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        m0 = metrics(s)
        st, data = Conn(s).post("/v1/completions", body)
        assert st == 200 and json.loads(data)["choices"][0]["text"] == want, (st, data[:300])
        m1 = metrics(s)
        assert dep_requests(s, app, "v2", samples=m1) - dep_requests(s, app, "v2", samples=m0) == 1

        # v2's only replica frozen: one request in it, one in its queue, the rest fall back
        frozen = dep_status(s, app, "v2")["replicas"][0]["pid"]
        os.kill(frozen, signal.SIGSTOP)
        n = 12
        barrier = threading.Barrier(n)

        def one(c, i):
            barrier.wait(timeout=T)
            return c.post("/v1/completions", body)

        fb = lambda m: msum(m, "cserve_deployment_fallbacks_total", application=app, deployment="v2", to=DEP)  # noqa
        result = []
        th = threading.Thread(target=lambda: result.extend(run_parallel(s, range(n), n, one)), daemon=True)
        th.start()

        def sent_on():
            m = metrics(s)  # (or a 503 already: the assertions below say what happened)
            return fb(m) - fb(m1) >= n - 2 or msum(m, "ray_serve_num_http_requests_total", status_code="503") > 0

        wait_for(sent_on, f"{n - 2} requests sent on to {DEP}", timeout=60)
        os.kill(frozen, signal.SIGCONT)
        frozen = None
        th.join(timeout=120)
        assert len(result) == n, result
        codes = [r[0] for r in result]
        assert codes == [200] * n, [(c, d[:200]) for c, d in result if c != 200]
        assert all(json.loads(d)["choices"][0]["text"] == want for _, d in result), result[:3]
        m2 = metrics(s)
        fallbacks = fb(m2) - fb(m1)
        print(f"\nfallback: {fallbacks:.0f} of {n} burst requests sent on from v2 to {DEP}")
        assert fallbacks == n - 2, fallbacks
        assert dep_requests(s, app, DEP, samples=m2) - dep_requests(s, app, DEP, samples=m1) == fallbacks
        assert dep_requests(s, app, "v2", samples=m2) - dep_requests(s, app, "v2", samples=m1) == 2
        assert msum(m2, "ray_serve_num_http_requests_total", application=app, status_code="503") == 0
    finally:
        if frozen:
            os.kill(frozen, signal.SIGCONT)
        stop_clean(s)


# ------------------------------------------------------------------ 6. composition

TEMPLATE = "Q: {input}\nA:"


def test_composition_preprocessor():
    ray_tool("serve")
    app = "comp"
    s = ControlServer(config(textgen_app(app, {"preprocess": {"normalize": "NFKC", "max_chars": 50,
                                                               "template": TEMPLATE}},
                                         # tiny's 128 positions cannot hold the pipeline's 256 new tokens: the
                                         # seed's request gets its length from the user_config, as a small
                                         # model's deployment would set it
                                         [generator(DEP, health_check_period_s=1, health_check_timeout_s=2,
                                                    user_config={"max_new_tokens": 40}),
                                          {"name": "Preprocessor", "num_replicas": 1, "health_check_period_s": 1,
                                           "health_check_timeout_s": 2}])))
    try:
        s.wait_app(app, 1)
        s.wait_app(app, 1, dep="Preprocessor")
        want_prompt = TEMPLATE.replace("{input}", PROMPT)

        # the seed's request, as the seed sends it
        r = requests.post(s.url("/text/simple-gen"), json={"input": PROMPT}, timeout=T)
        text = simple_gen_text(r.status_code, r.content)
        assert text.startswith(want_prompt) and len(text) > len(want_prompt), text

        # control characters, zero-width and bidi characters, compatibility forms, whitespace runs
        dirty = "  \u202e\uff2f\uff4e\uff43\uff45\u0007 upon\t\t\r\na\u200b   time\u3000 "
        r = requests.post(s.url("/text/simple-gen"), json={"input": dirty, "max_new_tokens": 4, "do_sample": False},
                          timeout=T)
        clean_prompt = TEMPLATE.replace("{input}", "Once upon\na time")
        assert simple_gen_text(r.status_code, r.content) == clean_prompt + cli_greedy(clean_prompt, 4)
        # the length cap (50 characters, then the trailing space is removed)
        capped = TEMPLATE.replace("{input}", " ".join(["word"] * 10))
        r = requests.post(s.url("/text/simple-gen"), json={"input": "word " * 30, "max_new_tokens": 2,
                                                           "do_sample": False}, timeout=T)
        assert simple_gen_text(r.status_code, r.content) == capped + cli_greedy(capped, 2)
        # the OpenAI API's prompt too
        r = requests.post(s.url("/v1/completions"), json={"prompt": f"\u0001{PROMPT}\u200b", "max_tokens": 4,
                                                          "temperature": 0}, timeout=T)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == cli_greedy(want_prompt, 4), r.json()

        # both deployments in the real `serve status`
        st = yaml.safe_load(serve_cli("status", "-a", s.admin_url).stdout)
        deps = st["applications"][app]["deployments"]
        assert set(deps) == {DEP, "Preprocessor"}, deps
        for d in deps.values():
            assert d["status"] == "HEALTHY" and d["replica_states"] == {"RUNNING": 1}, deps

        # the Preprocessor's replica killed under closed-loop load: no request lost. It is frozen
        # first until requests wait in it, so that the kill surely catches some in flight.
        pre0 = msum(metrics(s), "ray_serve_deployment_replica_starts_total", application=app,
                    deployment="Preprocessor")
        victim = dep_status(s, app, "Preprocessor")["replicas"][0]["pid"]
        with Load(s, threads=4) as load:
            time.sleep(1.0)
            os.kill(victim, signal.SIGSTOP)
            wait_for(lambda: msum(metrics(s), "ray_serve_num_ongoing_requests_at_replicas", application=app,
                                  deployment="Preprocessor") >= 2, "requests in the frozen Preprocessor", timeout=30)
            os.kill(victim, signal.SIGKILL)
            s.wait_app(app, 1, dep="Preprocessor", exclude=[victim], timeout=60)
            ok, failures = load.finish(min_seconds=3)
        assert not failures, f"{len(failures)} failed requests (t, status, body): {failures[:10]}"
        assert ok >= 8, ok
        assert msum(metrics(s), "ray_serve_deployment_replica_starts_total", application=app,
                    deployment="Preprocessor") > pre0
        r = requests.post(s.url("/text/simple-gen"), json={"input": PROMPT, "max_new_tokens": 3, "do_sample": False},
                          timeout=T)
        assert simple_gen_text(r.status_code, r.content) == want_prompt + cli_greedy(want_prompt, 3)
    finally:
        stop_clean(s)
