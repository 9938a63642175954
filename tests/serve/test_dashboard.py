"""The dashboard on the admin listener, in a real browser (Debian's chromium + chromedriver, driven
by selenium): `cserve serve --config` with two applications under load; every panel must show live
numbers equal to what /metrics and the admin API say; the access-log filters, the config editor and
the playground (tokens streaming through the admin listener) must work. Saves a screenshot.

Chromium tries to reach outside hosts even headless, so the test re-runs itself inside a network
namespace that has only loopback (`unshare -n`, then `ip link set lo up`): the server, the browser and
the checks all run in there and nothing leaves the machine. That needs root (CI runs as root).

When chromium, chromedriver, selenium or unshare is missing the test fails under CI (CI=true) and skips
elsewhere, saying which. The screenshot goes to $CSERVE_DASH_SCREENSHOT (default build/dashboard.png).

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_dashboard.py
"""
import concurrent.futures as cf
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = "build/models/tiny"  # relative: the server runs in the repository root
CHROMIUM = os.environ.get("CSERVE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CSERVE_CHROMEDRIVER", "/usr/bin/chromedriver")
SHOT = os.environ.get("CSERVE_DASH_SCREENSHOT", str(ROOT / "build" / "dashboard.png"))
INSIDE = os.environ.get("CSERVE_DASH_NETNS") == "1"
START = 120  # how long the server or a condition may take (s): waits, not timing asserts
T = 30

# Requests the load sends (a fixed number, so that the log panel's counts are known).
N_TEXT, N_SMALL, N_404, N_BAD = 40, 40, 8, 6


def missing_prereqs():
    why = []
    for p in (CHROMIUM, CHROMEDRIVER):
        if not os.access(p, os.X_OK):
            why.append(f"{p} not found (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        why.append("selenium is not installed (tests/requirements.txt)")
    if not shutil.which("unshare") or not shutil.which("ip"):
        why.append("unshare/ip not found (util-linux, iproute2)")
    elif subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        why.append("unshare -n is not permitted (needs root)")
    if not (os.path.exists(BIN) and (ROOT / TINY).is_dir()):
        why.append("needs the cserve binary and build/models/tiny (make models)")
    return why


# ------------------------------------------------------------------ outer: the namespace

def test_dashboard_in_browser():
    if INSIDE:
        run_checks()
        return
    why = missing_prereqs()
    if why:
        msg = "browser test cannot run: " + "; ".join(why)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    env = dict(os.environ, CSERVE_DASH_NETNS="1", CSERVE_BIN=BIN)
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest -q -x -p no:cacheprovider "$1"',
           sys.executable, __file__]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, "inside the network namespace:\n" + p.stdout[-20000:] + p.stderr[-5000:]


# ------------------------------------------------------------------ without a browser

@pytest.mark.skipif(not (os.path.exists(BIN) and (ROOT / TINY).is_dir()), reason="needs the cserve binary and build/models/tiny")
def test_dashboard_routes_and_api_keys():
    """The page needs no key (it holds no data); its JSON and the playground do. YAML PUT works."""
    if INSIDE:
        return
    key = "dash-key-123"
    cfg = config()
    cfg["applications"] = cfg["applications"][:1]
    s = Server(cfg, env={"CSERVE_API_KEYS": key})
    auth = {"Authorization": "Bearer " + key}
    try:
        wait_for(lambda: requests.get(s.proxy_url + "/-/healthz", timeout=T).status_code == 200, "healthy")
        for path, ctype in (("/", "text/html"), ("/dashboard/", "text/html"), ("/dashboard/app.js", "text/javascript"),
                            ("/dashboard/style.css", "text/css")):
            r = requests.get(s.admin_url + path, timeout=T)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), (path, r.status_code)
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert requests.get(s.admin_url + "/dashboard/nope.js", timeout=T).status_code == 401
        assert requests.get(s.admin_url + "/dashboard/nope.js", headers=auth, timeout=T).status_code == 404
        for path in ("/api/cserve/replicas", "/api/cserve/history", "/api/cserve/logs"):
            assert requests.get(s.admin_url + path, timeout=T).status_code == 401, path
            r = requests.get(s.admin_url + path, headers=auth, timeout=T)
            assert r.status_code == 200 and r.headers["Content-Type"] == "application/json", path
        assert requests.post(s.admin_url + "/api/cserve/replicas", headers=auth, timeout=T).status_code == 405
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 4, "stream": True}
        url = s.admin_url + "/api/cserve/proxy/text/v1/completions"
        assert requests.post(url, json=body, timeout=T).status_code == 401
        r = requests.post(url, json=body, headers=auth, timeout=T)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream"), r.text
        assert r.text.rstrip().endswith("data: [DONE]"), r.text
        r = requests.post(s.admin_url + "/api/cserve/proxy/nope", json=body, headers=auth, timeout=T)
        assert r.status_code == 404, r.text
        logs = requests.get(s.admin_url + "/api/cserve/logs?app=text", headers=auth, timeout=T).json()["records"]
        assert [(x["path"], x["status"]) for x in logs] == [("/text/v1/completions", 200)], logs
        last = requests.get(s.admin_url + "/api/cserve/logs", headers=auth, timeout=T).json()["last_seq"]
        assert requests.get(s.admin_url + f"/api/cserve/logs?after={last}", headers=auth,
                            timeout=T).json()["records"] == []
        assert requests.get(s.admin_url + "/api/cserve/proxy/text/v1/completions", headers=auth,
                            timeout=T).status_code == 405
        over = requests.get(s.admin_url + "/api/cserve/replicas", headers=auth, timeout=T).json()
        assert over["applications"][0]["requests"]["streamed"] == 1, over
        # the editor's YAML: applied with a YAML Content-Type, refused with a line number when broken
        cfg["applications"][0]["deployments"][0]["num_replicas"] = 2
        r = requests.put(s.admin_url + "/api/serve/applications/", data=yaml.safe_dump(cfg), timeout=T,
                         headers=dict(auth, **{"Content-Type": "application/yaml"}))
        assert r.status_code == 200, r.text
        wait_for(lambda: requests.get(s.admin_url + "/api/serve/applications/", headers=auth, timeout=T).json()
                 ["applications"]["text"]["deployments"]["TextGenService"]["target_num_replicas"] == 2, "YAML applied")
        r = requests.put(s.admin_url + "/api/serve/applications/", data="applications: [", timeout=T,
                         headers=dict(auth, **{"Content-Type": "text/yaml"}))
        assert r.status_code == 400 and "request body:" in r.text, r.text
        r = requests.put(s.admin_url + "/api/serve/applications/", data="applications: []", headers=auth, timeout=T)
        assert r.status_code == 400 and "not JSON" in r.text, r.text  # no YAML Content-Type: JSON, as Ray's API
    finally:
        s.stop()


# ------------------------------------------------------------------ helpers

class Server:
    """`cserve serve --config F` on free ports; stderr to a file."""

    def __init__(self, cfg, env=None):
        self.tmp = tempfile.mkdtemp(prefix="cserve-dash-")
        path = os.path.join(self.tmp, "serve.yaml")
        Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.logf = open(os.path.join(self.tmp, "serve.log"), "wb")
        e = dict(os.environ)
        e.pop("CSERVE_API_KEYS", None)
        e.update(env or {})
        self.proc = subprocess.Popen([BIN, "serve", "--config", path, "--host", "127.0.0.1", "--port", "0",
                                      "--admin-port", "0"], stdout=subprocess.DEVNULL, stderr=self.logf,
                                     env=e, cwd=ROOT)
        self.port = self.admin_port = None
        deadline = time.time() + START
        while time.time() < deadline and not (self.port and self.admin_port):
            log = self.log()
            m = re.search(r"proxy listening on [^\"\s]*:(\d+)", log)
            a = re.search(r"admin API listening on [^\"\s]*:(\d+)", log)
            self.port = int(m.group(1)) if m else None
            self.admin_port = int(a.group(1)) if a else None
            assert self.proc.poll() is None, "server exited: " + log[-5000:]
            time.sleep(0.05)
        assert self.port and self.admin_port, "no listening lines: " + self.log()[-5000:]
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.proxy_url = f"http://127.0.0.1:{self.port}"

    def log(self):
        return Path(self.tmp, "serve.log").read_text(errors="replace")

    def status(self):
        r = requests.get(self.admin_url + "/api/serve/applications/", timeout=T)
        r.raise_for_status()
        return r.json()

    def metrics(self):
        """{(name, frozenset(labels)): value} of /metrics."""
        out = {}
        for line in requests.get(self.proxy_url + "/metrics", timeout=T).text.splitlines():
            m = re.match(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$', line)
            if not m:
                continue
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def msum(metrics, name, **want):
    """Sum of a metric over the series whose labels include want."""
    return sum(v for (n, labels), v in metrics.items()
               if n == name and all((k, str(x)) in labels for k, x in want.items()))


def wait_for(pred, what, timeout=START, every=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # the page may be re-rendering a table between two reads
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not true after {timeout} s (last: {last!r})")


def config():
    dep = lambda n, **kw: dict({"name": "TextGenService", "num_replicas": n, "ray_actor_options": {"num_cpus": 1}}, **kw)
    app = lambda name, n, **kw: {"name": name, "route_prefix": "/" + name, "import_path": "cserve.apps:text_generation",
                                 "args": {"model": TINY}, "deployments": [dep(n, **kw)]}
    return {"applications": [app("text", 1), app("small", 2, max_ongoing_requests=8)]}


def send_load(s):
    """The fixed request mix: streamed and plain completions to both applications, 404s, bad bodies."""
    def one(kind, i):
        time.sleep(0.02 * (i % 5))  # spread over a few seconds of history
        if kind == "text":
            body = {"prompt": f"Story {i}:", "max_tokens": 24, "stream": i % 2 == 0, "seed": i}
            r = requests.post(s.proxy_url + "/text/v1/completions", json=body, timeout=T, stream=True)
            r.content
        elif kind == "small":
            r = requests.post(s.proxy_url + "/small/text/simple-gen", json={"input": f"Hello {i}", "max_new_tokens": 24},
                              timeout=T)
        elif kind == "404":
            r = requests.get(s.proxy_url + f"/nope/{i}", timeout=T)
        else:
            r = requests.post(s.proxy_url + "/small/text/simple-gen", data="{not json", timeout=T)
        return kind, r.status_code

    jobs = [("text", i) for i in range(N_TEXT)] + [("small", i) for i in range(N_SMALL)] + \
           [("404", i) for i in range(N_404)] + [("bad", i) for i in range(N_BAD)]
    jobs.sort(key=lambda j: (j[1], j[0]))
    with cf.ThreadPoolExecutor(6) as ex:
        return list(ex.map(lambda j: one(*j), jobs))


# ------------------------------------------------------------------ inner: the checks

def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1440,1000",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-default-apps", "--metrics-recording-only", "--no-default-browser-check"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)


def run_checks():
    s = Server(config())
    d = None
    try:
        wait_for(lambda: requests.get(s.proxy_url + "/-/healthz", timeout=T).status_code == 200, "healthy")
        d = browser()
        d.get(s.admin_url + "/")
        check_page(s, d)
    except BaseException:
        print("server log:\n" + s.log()[-6000:])
        if d is not None:
            try:
                print("browser console:", d.get_log("browser"))
            except Exception:
                pass
        raise
    finally:
        if d is not None:
            d.quit()
        s.stop()


def js(d, script, *args):
    return d.execute_script(script, *args)


def rows(d, table):
    """The rows of a table as dicts of {class-name of cell: data-value or text} plus the row's data-*."""
    return js(d, """
      return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr')).map(tr => {
        const o = Object.assign({}, tr.dataset);
        for (const td of tr.children) for (const c of td.classList)
          if (c.startsWith('c-')) o[c] = td.dataset.value !== undefined ? td.dataset.value : td.textContent;
        return o;
      });""", table)


def legend(d, chart, what="value"):
    """{series: its last value (what="value") or its largest one (what="max")} from a chart's legend."""
    return js(d, """return Object.fromEntries(Array.from(document.querySelectorAll(
      '.chart[data-chart="' + arguments[0] + '"] .legend [data-series]')).map(e => [e.dataset.series, e.dataset[arguments[1]]]));""",
              chart, what)


def chart_points(d, chart):
    return int(js(d, 'return document.querySelector(\'.chart[data-chart="\' + arguments[0] + \'"]\').dataset.points || "0"',
                  chart))


def check_page(s, d):
    # the page comes up with both applications and their replicas
    wait_for(lambda: {r["app"] for r in rows(d, "#apps-table")} == {"text", "small"}, "both applications listed")
    wait_for(lambda: len(rows(d, "#reps-table")) == 3, "three replicas listed")

    # load, and watch the charts while it runs
    with cf.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(send_load, s)
        results = fut.result(timeout=600)
    wait_for(lambda: float(legend(d, "rps", "max").get("2xx") or 0) > 0, "requests/s chart shows 2xx traffic")
    wait_for(lambda: float(legend(d, "rps", "max").get("4xx") or 0) > 0, "requests/s chart shows 4xx traffic")
    wait_for(lambda: float(legend(d, "tokens", "max").get("tokens") or 0) > 0, "tokens/s chart shows tokens")
    codes = {}
    for kind, st in results:
        codes.setdefault(kind, []).append(st)
    assert set(codes["text"]) == {200} and set(codes["small"]) == {200}, codes
    assert set(codes["404"]) == {404}, codes
    assert all(400 <= c < 500 for c in codes["bad"]), codes
    n_bad = len(codes["bad"])

    # every chart has live points; the traffic ones saw non-zero values
    for chart in ("rps", "latency", "ttft", "tokens", "queue", "batch"):
        wait_for(lambda: chart_points(d, chart) > 0, f"chart {chart} has points")
    wait_for(lambda: legend(d, "latency").get("p50") not in ("", None), "latency p50 shown")
    wait_for(lambda: legend(d, "ttft").get("p50") not in ("", None), "time to first token shown (streamed requests)")
    wait_for(lambda: js(d, """return Array.from(document.querySelectorAll('.chart[data-chart="tokens"] path'))
                              .length > 0"""), "tokens/s line drawn")
    hist = requests.get(s.admin_url + "/api/cserve/history?app=", timeout=T).json()["series"]
    assert max(v or 0 for v in hist["tokens_s"]) > 0, hist["tokens_s"]
    assert max(v or 0 for v in hist["4xx"]) > 0, hist["4xx"]
    assert max(v or 0 for v in hist["batch"]) > 0, hist["batch"]

    # quiescent: the page's numbers equal /metrics and the admin API
    def settled():
        m = s.metrics()
        return msum(m, "ray_serve_num_ongoing_http_requests") == 0 and \
            msum(m, "ray_serve_replica_processing_queries") == 0
    wait_for(settled, "no request in flight")
    time.sleep(2.5)  # replica stats (tokens, batch) are polled every second: let one more poll land
    m, st = s.metrics(), s.status()
    t_read = time.time()
    wait_for(lambda: float(js(d, "return document.querySelector('#updated').dataset.ts || 0")) > t_read + 0.01,
             "page refreshed after the reads")
    apps = {r["app"]: r for r in rows(d, "#apps-table")}
    for name in ("text", "small"):
        a = apps[name]
        tot = msum(m, "ray_serve_num_http_requests_total", application=name)
        assert float(a["c-requests"]) == tot, (name, a, tot)
        for cls, pat in (("c-2xx", r"2\d\d"), ("c-4xx", r"4\d\d"), ("c-5xx", r"5\d\d")):
            want = sum(v for (n, labels), v in m.items() if n == "ray_serve_num_http_requests_total"
                       and ("application", name) in labels and re.fullmatch(pat, dict(labels)["status_code"]))
            assert float(a[cls]) == want, (name, cls, a, want)
        assert float(a["c-tokens"]) == msum(m, "cserve_deployment_generated_tokens_total", application=name), a
        assert a["c-status"] == st["applications"][name]["status"] == "RUNNING", (a, st["applications"][name])
        assert a["c-prefix"] == st["applications"][name]["route_prefix"]
    assert float(apps["text"]["c-requests"]) == N_TEXT
    assert float(apps["small"]["c-requests"]) == N_SMALL + n_bad
    card = float(js(d, "return document.querySelector('#card-requests').dataset.value"))
    assert card == msum(m, "ray_serve_num_http_requests_total")
    deps = {r["app"]: r for r in rows(d, "#deps-table")}
    for name in ("text", "small"):
        sd = st["applications"][name]["deployments"]["TextGenService"]
        dr = deps[name]
        assert int(dr["c-target"]) == sd["target_num_replicas"], (dr, sd)
        assert int(dr["c-running"]) == sum(r["state"] == "RUNNING" for r in sd["replicas"]), (dr, sd)
        assert int(dr["c-queued"]) == msum(m, "ray_serve_deployment_queued_queries", application=name)
        assert int(dr["c-ongoing"]) == msum(m, "ray_serve_num_ongoing_requests_at_replicas", application=name)
        assert int(dr["c-starts"]) == msum(m, "ray_serve_deployment_replica_starts_total", application=name)
        assert dr["c-autoscaling"] == "off"
    reps = {r["replica"]: r for r in rows(d, "#reps-table")}
    admin_reps = {r["replica_id"]: (name, r) for name in ("text", "small")
                  for r in st["applications"][name]["deployments"]["TextGenService"]["replicas"]}
    assert set(reps) == set(admin_reps), (reps, admin_reps)
    for rid, (name, ar) in admin_reps.items():
        pr = reps[rid]
        assert int(pr["c-pid"]) == ar["pid"] and pr["c-state"] == ar["state"] == "RUNNING", (pr, ar)
        assert float(pr["c-requests"]) == msum(m, "ray_serve_deployment_request_counter_total", replica=rid), pr
        assert float(pr["c-errors"]) == msum(m, "ray_serve_deployment_error_counter_total", replica=rid), pr
        assert float(pr["c-ongoing"]) == msum(m, "ray_serve_replica_processing_queries", replica=rid) == 0
        assert float(pr["c-uptime"]) > 0
    total_tokens = sum(float(r["c-tokens"]) for r in reps.values())
    assert total_tokens == msum(m, "cserve_deployment_generated_tokens_total") > 0

    # access log: filters by path, status class and application
    def set_field(sel, value):
        js(d, """const e = document.querySelector(arguments[0]); e.value = arguments[1];
                 e.dispatchEvent(new Event(e.tagName === 'SELECT' ? 'change' : 'input'));""", sel, value)
    set_field("#log-path", "/nope/")
    wait_for(lambda: len(rows(d, "#log-table")) == N_404 and
             all(r["c-path"].startswith("/nope/") and r["status"] == "404" for r in rows(d, "#log-table")),
             "log filtered by path")
    set_field("#log-path", "")
    set_field("#log-status", "4xx")
    wait_for(lambda: len(rows(d, "#log-table")) == N_404 + n_bad and
             all(r["status"].startswith("4") for r in rows(d, "#log-table")), "log filtered by status class")
    set_field("#log-status", "")
    set_field("#log-app", "small")
    wait_for(lambda: len(rows(d, "#log-table")) == N_SMALL + n_bad and
             all(r["app"] == "small" for r in rows(d, "#log-table")), "log filtered by application")
    set_field("#log-app", "")

    # playground: tokens stream through the admin listener and the router
    before = msum(s.metrics(), "ray_serve_num_http_requests_total", application="text")
    set_field("#pg-app", "text")
    set_field("#pg-prompt", "The dashboard shows")
    set_field("#pg-max-tokens", "32")
    set_field("#pg-seed", "7")
    d.find_element("css selector", "#pg-run").click()
    wait_for(lambda: js(d, "return document.querySelector('#pg-stats').dataset.done") == "1", "playground finished")
    stats = js(d, "return document.querySelector('#pg-stats').textContent")
    assert int(js(d, "return document.querySelector('#pg-stats').dataset.chunks")) > 1, stats
    assert "error" not in stats, stats
    generated = js(d, "return document.querySelector('#pg-generated').textContent")
    assert generated.strip(), stats
    assert msum(s.metrics(), "ray_serve_num_http_requests_total", application="text") == before + 1
    logs = requests.get(s.admin_url + "/api/cserve/logs?app=text&limit=1", timeout=T).json()["records"]
    assert logs[0]["path"] == "/text/v1/completions" and logs[0]["status"] == 200, logs

    # the screenshot: the whole page, charts filled, after a refresh that saw the playground's request
    t_done = time.time()
    wait_for(lambda: float(js(d, "return document.querySelector('#updated').dataset.ts || 0")) > t_done + 1.5,
             "page refreshed after the playground")
    d.find_element("css selector", "#live").click()  # freeze the page while it is captured
    js(d, "window.scrollTo(0, 0)")
    h = js(d, "return document.documentElement.scrollHeight")
    d.set_window_size(1440, min(int(h) + 140, 4000))
    time.sleep(0.3)
    Path(SHOT).parent.mkdir(parents=True, exist_ok=True)
    assert d.save_screenshot(SHOT), SHOT
    assert os.path.getsize(SHOT) > 10000
    d.find_element("css selector", "#live").click()

    # config: load the running one, change it as YAML, apply, watch the page follow
    d.find_element("css selector", "#config-load").click()
    wait_for(lambda: '"small"' in js(d, "return document.querySelector('#config-text').value"), "config loaded")
    doc = json.loads(js(d, "return document.querySelector('#config-text').value"))
    assert [a["name"] for a in doc["applications"]] == ["text", "small"]
    for a in doc["applications"]:
        if a["name"] == "small":
            a["deployments"][0]["num_replicas"] = 1
    set_field("#config-text", yaml.safe_dump(doc, sort_keys=False))
    d.find_element("css selector", "#config-apply").click()
    wait_for(lambda: js(d, "return document.querySelector('#config-result').textContent").startswith("Applied"),
             "config applied")
    wait_for(lambda: s.status()["applications"]["small"]["deployments"]["TextGenService"]["target_num_replicas"] == 1,
             "admin API shows the new target")
    wait_for(lambda: {r["app"]: r for r in rows(d, "#deps-table")}["small"]["c-target"] == "1", "page shows the new target")
    wait_for(lambda: len(rows(d, "#reps-table")) == 2, "page shows two replicas")
    set_field("#config-text", "applications: [{name: x")
    d.find_element("css selector", "#config-apply").click()
    wait_for(lambda: js(d, "return document.querySelector('#config-result').textContent").startswith("Refused (HTTP 400)"),
             "a broken config is refused")
