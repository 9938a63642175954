"""Tests of cserve's admin client (`cserve deploy | status | config | shutdown`, src/cli_ctl.c)
against a stub admin API: an http.server in a thread that records every request and answers
canned Ray-shaped JSON (real Ray 2.50.1 answers, copied into tests/data/ray/).

The expected output of `status` and `config` is computed here the way Ray's own CLI computes it
(ray/serve/scripts.py: yaml.safe_dump of ServeInstanceDetails._get_status(), with Ray's
str_presenter for multi-line strings and its ANSI-escape stripping; deployed_app_config in the
schema's field order), so the comparison is byte for byte, and the printed YAML is also parsed
back and compared with the JSON.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_ctl_client.py
"""
import copy
import http.server
import json
import os
import pty
import re
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
REF = Path(os.environ.get("CSERVE_RAY_REF", ROOT / "tests" / "data" / "ray"))
T = 60  # subprocess timeout (s): a hang is a failure, never a wait

pytestmark = pytest.mark.skipif(not os.path.exists(BIN), reason="needs the cserve binary")


def ref_json(name):
    p = REF / name
    if not p.exists():
        pytest.skip(f"reference answer {p} not present")
    return json.loads(p.read_text())


# A minimal ServeInstanceDetails in case the reference files are absent: the shape Ray answers.
def details(apps=None, proxies=None, capacity=None, node_id="node-1"):
    return {
        "controller_info": {"node_id": node_id} if node_id else {},
        "proxies": proxies if proxies is not None else {"node-1": {"node_id": "node-1", "status": "HEALTHY"}},
        "applications": apps or {},
        "target_capacity": capacity,
    }


# ---------------------------------------------------------------- the stub admin API

class Stub:
    """Admin API stand-in on 127.0.0.1:<free port>. answers[(METHOD)] = (status, body_bytes, content_type);
    hang=True keeps every request waiting until the test ends."""

    def __init__(self):
        self.requests = []
        self.answers = {}
        self.hang = threading.Event()
        self.release = threading.Event()
        stub = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                stub.requests.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if stub.hang.is_set():
                    stub.release.wait(30)
                    return
                status, out, ctype = stub.answers.get(self.command, (200, b"", "text/plain"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_PUT = do_DELETE = do_POST = _serve

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method, status=200, body=b"", ctype="application/json"):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        self.answers[method] = (status, body.encode() if isinstance(body, str) else body, ctype)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def cserve(*args, env=None, stdin=subprocess.DEVNULL):
    e = {k: v for k, v in os.environ.items()
         if k not in ("RAY_DASHBOARD_ADDRESS", "CSERVE_API_KEY", "CSERVE_ADMIN_TIMEOUT_S", "http_proxy",
                      "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
    e.update(env or {})
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=T, env=e, stdin=stdin, cwd=ROOT)


# ---------------------------------------------------------------- what Ray's CLI prints

def _str_presenter(dumper, data):  # ray/serve/scripts.py
    if len(data.splitlines()) > 1:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


class _StatusDumper(yaml.SafeDumper):
    pass


_StatusDumper.add_representer(str, _str_presenter)
_ANSI = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")


def _strip(d):  # ray/serve/scripts.py process_dict_for_yaml_dump
    for k, v in d.items():
        if isinstance(v, dict):
            d[k] = _strip(v)
        elif isinstance(v, str):
            d[k] = _ANSI.sub("", v)
    return d


def ray_status(det):
    """ServeInstanceDetails._get_status() as a dict (floats where the schema has floats)."""
    cap = det.get("target_capacity")
    return {
        "proxies": {n: p["status"] for n, p in det["proxies"].items()},
        "applications": {
            name: {
                "status": a["status"],
                "message": a["message"],
                "last_deployed_time_s": float(a["last_deployed_time_s"]),
                "deployments": {
                    dn: {
                        "status": d["status"],
                        "status_trigger": d["status_trigger"],
                        "replica_states": dict(Counter(r["state"] for r in d["replicas"])),
                        "message": d["message"],
                    } for dn, d in a["deployments"].items()
                },
            } for name, a in det["applications"].items()
        },
        "target_capacity": None if cap is None else float(cap),
    }


def ray_status_yaml(obj):
    return yaml.dump(_strip(copy.deepcopy(obj)), Dumper=_StatusDumper, default_flow_style=False, sort_keys=False)


APP_FIELDS = ["name", "route_prefix", "import_path", "runtime_env", "host", "port", "deployments", "args",
              "logging_config"]
DEP_FIELDS = ["name", "num_replicas", "max_ongoing_requests", "max_queued_requests", "user_config",
              "autoscaling_config", "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s",
              "health_check_period_s", "health_check_timeout_s", "ray_actor_options", "placement_group_bundles",
              "placement_group_strategy", "max_replicas_per_node", "logging_config", "request_router_config"]
DEP_FLOATS = {"graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s", "health_check_period_s",
              "health_check_timeout_s"}
RAO_FIELDS = ["runtime_env", "num_cpus", "num_gpus", "memory", "resources", "accelerator_type"]


def _order(d, fields, floats=()):
    return {k: (float(d[k]) if k in floats and isinstance(d[k], int) else d[k]) for k in fields if k in d}


def ray_app_config(cfg):
    """ServeApplicationSchema(**cfg).dict(exclude_unset=True) for the fields these tests use."""
    out = _order(cfg, APP_FIELDS)
    if "deployments" in out:
        deps = []
        for d in out["deployments"]:
            nd = _order(d, DEP_FIELDS, DEP_FLOATS)
            if "ray_actor_options" in nd:
                nd["ray_actor_options"] = _order(nd["ray_actor_options"], RAO_FIELDS, {"num_cpus", "num_gpus", "memory"})
            deps.append(nd)
        out["deployments"] = deps
    return out


def ray_config_yaml(det, name=None):
    cfgs = [ray_app_config(a["deployed_app_config"]) for n, a in det["applications"].items()
            if a.get("deployed_app_config") is not None and (name is None or n == name)]
    return "\n---\n\n".join(yaml.safe_dump(c, sort_keys=False) for c in cfgs)


# ---------------------------------------------------------------- status

@pytest.mark.parametrize("ref", ["status-running.json", "status-deploy-failed.json"])
def test_status_prints_rays_yaml(stub, ref):
    det = ref_json(ref)
    stub.answer("GET", body=det)
    r = cserve("status", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert [(q["method"], q["path"]) for q in stub.requests] == [("GET", "/api/serve/applications/")]
    want = ray_status(det)
    assert r.stdout == ray_status_yaml(want)
    assert yaml.safe_load(r.stdout) == want


def test_status_deploy_failed_keeps_the_traceback(stub):
    det = ref_json("status-deploy-failed.json")
    stub.answer("GET", body=det)
    r = cserve("status", "--address", stub.url)
    assert r.returncode == 0, r.stderr
    got = yaml.safe_load(r.stdout)
    app = got["applications"]["app1"]
    assert app["status"] == "DEPLOY_FAILED"
    assert app["message"] == det["applications"]["app1"]["message"]
    assert app["deployments"] == {}
    assert got["target_capacity"] is None


def test_status_name(stub):
    det = ref_json("status-running.json")
    stub.answer("GET", body=det)
    r = cserve("status", "-a", stub.url, "--name", "app1")
    assert r.returncode == 0, r.stderr
    want = ray_status(det)["applications"]["app1"]
    assert r.stdout == ray_status_yaml(want)
    assert yaml.safe_load(r.stdout)["deployments"]["Model"]["replica_states"] == {"RUNNING": 1}
    r = cserve("status", "-a", stub.url, "-n", "nope")
    assert r.returncode == 1
    assert 'Application "nope" does not exist.' in r.stderr
    assert r.stdout == ""


def _dep(status, trigger, message, states):
    return {"name": "x", "status": status, "status_trigger": trigger, "message": message,
            "deployment_config": {"name": "x"}, "target_num_replicas": len(states), "required_resources": {},
            "replicas": [{"replica_id": "r%d" % i, "state": s, "start_time_s": 1.0} for i, s in enumerate(states)]}


def _app(status, message, t, deps):
    return {"name": "a", "route_prefix": "/", "docs_path": None, "status": status, "message": message,
            "last_deployed_time_s": t, "source": "declarative", "deployments": deps}


TRICKY = ["", "ok", "null", "true", "Yes", "off", "~", "123", "0x1F", "1_000", "1:20", "1.5", ".5", "1e5", ".inf",
          "2024-01-01", "2001-12-14t21:59:43.10-05:00", "<<", "=", "a: b", "a:b", "- item", "# c", "a #c", "'q'",
          '"dq"', "x" * 200, "word " * 40, " lead", "trail ", "tab\there", "multi\nline", "multi\nline\n",
          "two\n\n", "\nlead break", "a\n  indented\nb", "space before break \nx", "café ✓ 😀", "bell \x07",
          "esc \x1b[31mred\x1b[0m done", "crlf\r\nline", "---", "...", "? q", "@at", "`bt", "%pct", "!bang", "&a",
          "*s", "|p", ">g", "[b]", "{b}", "a, b", "ends:", "nbsp\xa0x", "ls\u2028x", "nul\x00x",
          "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    raise ValueError('boom: "
          "bad')\nValueError: boom: bad\n"]


def test_status_quotes_and_folds_like_pyyaml(stub):
    """Every kind of string that PyYAML must quote, escape, fold or write as a block, in messages
    and in names (mapping keys), with floats that Python writes in exponent form."""
    times = [1796099552.8797767, 1e16, 1e-5, 0.0001, 123, 0.0, 1e22, 5e-324, 1234567890123456.7]
    apps = {}
    for i, msg in enumerate(TRICKY):
        name = msg if ("\x00" not in msg and msg) else "app%d" % i
        states = ["RUNNING", "STARTING", "RUNNING", "STOPPING"][: i % 5]
        dname = TRICKY[(i + 7) % len(TRICKY)].replace("\x00", "") or "d"  # keys with NUL: not JSON-loadable in C
        apps[name] = _app(["RUNNING", "DEPLOYING", "DEPLOY_FAILED"][i % 3], msg, times[i % len(times)],
                          {dname: _dep("HEALTHY", "CONFIG_UPDATE_COMPLETED", TRICKY[(i + 3) % len(TRICKY)], states)})
    proxies = {"n" * 130: {"status": "HEALTHY"}, "123": {"status": "DRAINING"}, "node": {"status": "STARTING"}}
    det = details(apps, proxies, capacity=50)
    stub.answer("GET", body=det)
    r = cserve("status", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    want = ray_status(det)
    assert r.stdout == ray_status_yaml(want)
    want_parsed = _strip(copy.deepcopy(want))
    assert yaml.safe_load(r.stdout) == want_parsed
    assert want_parsed["target_capacity"] == 50.0 and "target_capacity: 50.0\n" in r.stdout


def test_status_empty_server(stub):
    stub.answer("GET", body={"controller_info": {}, "proxies": {}, "applications": {}})
    r = cserve("status", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "proxies: {}\napplications: {}\ntarget_capacity: null\n"


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("ref", ["status-running.json", "status-deploy-failed.json"])
def test_config_prints_deployed_app_config(stub, ref):
    det = ref_json(ref)
    stub.answer("GET", body=det)
    r = cserve("config", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ray_config_yaml(det)
    assert yaml.safe_load(r.stdout) == det["applications"]["app1"]["deployed_app_config"]


def test_config_several_apps_schema_order_and_floats(stub):
    cfg1 = {"deployments": [{"ray_actor_options": {"num_gpus": 0, "num_cpus": 1}, "graceful_shutdown_timeout_s": 5,
                             "name": "TextGenService", "num_replicas": 2, "user_config": {"max_length": 50}}],
            "import_path": "cserve.apps:text_generation", "args": {"model": "distilgpt2", "dtype": "int8"},
            "route_prefix": "/text", "name": "text"}
    cfg2 = {"name": "small", "route_prefix": None, "import_path": "serve_app:deployment_graph"}
    apps = {"text": dict(_app("RUNNING", "", 1.5, {}), deployed_app_config=cfg1),
            "none": _app("DEPLOYING", "", 2.0, {}),
            "small": dict(_app("RUNNING", "", 2.5, {}), deployed_app_config=cfg2)}
    stub.answer("GET", body=details(apps))
    r = cserve("config", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ray_config_yaml(details(apps))
    docs = list(yaml.safe_load_all(r.stdout))
    assert docs == [ray_app_config(cfg1), ray_app_config(cfg2)]
    assert list(docs[0]) == ["name", "route_prefix", "import_path", "deployments", "args"]
    assert docs[0]["deployments"][0]["graceful_shutdown_timeout_s"] == 5.0
    assert "graceful_shutdown_timeout_s: 5.0\n" in r.stdout and "num_cpus: 1.0\n" in r.stdout
    assert "\n---\n\n" in r.stdout

    r = cserve("config", "-a", stub.url, "-n", "small")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout) == cfg2
    r = cserve("config", "-a", stub.url, "--name", "none")
    assert r.returncode == 1
    assert 'No config has been deployed for application "none".' in r.stderr


def test_config_nothing_deployed(stub):
    stub.answer("GET", body={"controller_info": {}, "proxies": {}, "applications": {}})
    r = cserve("config", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "No configuration was found.\n"


# ---------------------------------------------------------------- deploy

CONFIG_YAML = """\
# two applications, as `serve deploy` takes them
http_options:
  port: 8000
applications:
  - name: text
    route_prefix: /text
    import_path: cserve.apps:text_generation
    args:
      model: distilgpt2
    deployments:
      - name: TextGenService
        num_replicas: 2
        max_ongoing_requests: 16
        user_config:
          max_length: 50
  - name: small
    route_prefix: /small
    import_path: cserve.apps:text_generation
    args: {model: distilgpt2, dtype: bf16}
"""


def test_deploy_puts_the_config_as_json(stub, tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(CONFIG_YAML)
    stub.answer("PUT", 200, b"")
    r = cserve("deploy", str(f), "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert len(stub.requests) == 1
    q = stub.requests[0]
    assert (q["method"], q["path"]) == ("PUT", "/api/serve/applications/")
    assert q["headers"]["content-type"] == "application/json"
    assert "authorization" not in q["headers"]
    assert json.loads(q["body"]) == yaml.safe_load(CONFIG_YAML)
    assert "Sent deploy request successfully." in r.stdout
    assert "cserve status" in r.stdout


def test_deploy_rayservice_manifest(stub, tmp_path):
    inner = yaml.safe_load(CONFIG_YAML)
    manifest = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "text"},
                "spec": {"serveConfigV2": yaml.safe_dump(inner, sort_keys=False), "rayClusterConfig": {}}}
    f = tmp_path / "rayservice.yaml"
    f.write_text(yaml.safe_dump(manifest, sort_keys=False))
    r = cserve("deploy", "-a", stub.url, str(f))
    assert r.returncode == 0, r.stderr
    assert [q["method"] for q in stub.requests] == ["PUT"]
    assert json.loads(stub.requests[0]["body"]) == inner


def test_deploy_json_file(stub, tmp_path):
    f = tmp_path / "serve.json"
    doc = yaml.safe_load(CONFIG_YAML)
    f.write_text(json.dumps(doc))
    r = cserve("deploy", "-a", stub.url, str(f))
    assert r.returncode == 0, r.stderr
    assert json.loads(stub.requests[0]["body"]) == doc


def test_deploy_bad_file_is_reported_locally(stub, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(CONFIG_YAML.replace("max_ongoing_requests: 16", "max_ongoing_requests: lots"))
    r = cserve("deploy", "-a", stub.url, str(f))
    assert r.returncode == 2
    assert str(f) in r.stderr and "max_ongoing_requests" in r.stderr
    line = CONFIG_YAML.splitlines().index("        max_ongoing_requests: 16") + 1
    assert re.search(re.escape(str(f)) + r":%d:\d+" % line, r.stderr), r.stderr
    assert stub.requests == []

    f.write_text("applications: [unclosed\n")
    r = cserve("deploy", "-a", stub.url, str(f))
    assert r.returncode == 2 and str(f) in r.stderr
    r = cserve("deploy", "-a", stub.url, str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    assert stub.requests == []


def test_deploy_server_refuses(stub, tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(CONFIG_YAML)
    stub.answer("PUT", 400, "Invalid Serve config: applications -> 0 -> name: field required\n", "text/plain")
    r = cserve("deploy", "-a", stub.url, str(f))
    assert r.returncode == 1
    assert "400" in r.stderr and "Invalid Serve config: applications -> 0 -> name: field required" in r.stderr
    assert "Sent deploy request" not in r.stdout
    stub.answer("PUT", 500, {"error": {"type": "internal", "message": "controller is gone"}})
    r = cserve("deploy", "-a", stub.url, str(f))
    assert r.returncode == 1
    assert "500" in r.stderr and "controller is gone" in r.stderr


def test_usage_errors():
    r = cserve("deploy")
    assert r.returncode == 2 and "FILE" in r.stderr
    r = cserve("deploy", "a.yaml", "b.yaml")
    assert r.returncode == 2
    r = cserve("status", "--yes")
    assert r.returncode == 2
    r = cserve("status", "extra")
    assert r.returncode == 2
    r = cserve("shutdown", "--bogus")
    assert r.returncode == 2


# ---------------------------------------------------------------- transport errors, address, key

def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


@pytest.mark.parametrize("cmd", [["status"], ["config"], ["shutdown", "-y"]])
def test_unreachable(cmd):
    url = "http://127.0.0.1:%d" % _closed_port()
    r = cserve(*cmd, "-a", url)
    assert r.returncode == 1
    assert ("cannot reach the admin API at %s:" % url) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_deploy_unreachable(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text(CONFIG_YAML)
    url = "http://127.0.0.1:%d" % _closed_port()
    r = cserve("deploy", str(f), "-a", url)
    assert r.returncode == 1
    assert "cannot reach the admin API at %s" % url in r.stderr


@pytest.mark.parametrize("cmd", [["status"], ["config"], ["shutdown", "-y"]])
def test_server_error(stub, cmd):
    stub.answer("GET", 500, "Internal Server Error: the controller crashed", "text/plain")
    r = cserve(*cmd, "-a", stub.url)
    assert r.returncode == 1
    assert "500" in r.stderr and "the controller crashed" in r.stderr
    assert r.stdout == ""
    assert [q["method"] for q in stub.requests] == ["GET"]


def test_unexpected_answers(stub):
    stub.answer("GET", 200, "<html>not json</html>", "text/html")
    r = cserve("status", "-a", stub.url)
    assert r.returncode == 1 and "JSON" in r.stderr
    stub.answer("GET", 200, {"controller_info": {}, "proxies": {}, "applications": {"a": {"status": "RUNNING"}}})
    r = cserve("status", "-a", stub.url)
    assert r.returncode == 1 and "unexpected answer" in r.stderr and "applications[a]" in r.stderr


def test_timeout(stub):
    stub.hang.set()
    r = cserve("status", "-a", stub.url, env={"CSERVE_ADMIN_TIMEOUT_S": "1"})
    assert r.returncode == 1
    assert "did not answer within 1 s" in r.stderr


def test_address_from_environment_and_trailing_slash(stub):
    stub.answer("GET", body=details())
    r = cserve("status", env={"RAY_DASHBOARD_ADDRESS": stub.url + "/"})
    assert r.returncode == 0, r.stderr
    assert stub.requests[0]["path"] == "/api/serve/applications/"


def test_bad_address():
    r = cserve("status", "-a", "127.0.0.1:8265")
    assert r.returncode == 2 and "http://" in r.stderr
    r = cserve("status", env={"RAY_DASHBOARD_ADDRESS": "ray://head:10001"})
    assert r.returncode == 2 and "RAY_DASHBOARD_ADDRESS" in r.stderr


def test_api_key_is_sent(stub, tmp_path):
    stub.answer("GET", body=details())
    r = cserve("status", "-a", stub.url, env={"CSERVE_API_KEY": "s3cret-key"})
    assert r.returncode == 0, r.stderr
    assert stub.requests[-1]["headers"]["authorization"] == "Bearer s3cret-key"
    f = tmp_path / "serve.yaml"
    f.write_text(CONFIG_YAML)
    r = cserve("deploy", str(f), "-a", stub.url, env={"CSERVE_API_KEY": "s3cret-key"})
    assert r.returncode == 0, r.stderr
    assert stub.requests[-1]["headers"]["authorization"] == "Bearer s3cret-key"
    stub.answer("GET", 401, {"error": {"type": "authentication_error", "message": "invalid API key"}})
    r = cserve("status", "-a", stub.url, env={"CSERVE_API_KEY": "wrong"})
    assert r.returncode == 1 and "401" in r.stderr and "invalid API key" in r.stderr


# ---------------------------------------------------------------- shutdown

def test_shutdown_yes(stub):
    stub.answer("GET", body=ref_json("status-running.json"))
    stub.answer("DELETE", 200, b"")
    r = cserve("shutdown", "-y", "-a", stub.url)
    assert r.returncode == 0, r.stderr
    assert [(q["method"], q["path"]) for q in stub.requests] == [("GET", "/api/serve/applications/"),
                                                                  ("DELETE", "/api/serve/applications/")]
    assert "Sent shutdown request; applications will be deleted asynchronously." in r.stdout


def test_shutdown_without_a_terminal_refuses(stub):
    stub.answer("GET", body=ref_json("status-running.json"))
    r = cserve("shutdown", "-a", stub.url)  # stdin: /dev/null
    assert r.returncode == 2
    assert "-y" in r.stderr
    assert all(q["method"] != "DELETE" for q in stub.requests)


def test_shutdown_refused_delete(stub):
    stub.answer("GET", body=ref_json("status-running.json"))
    stub.answer("DELETE", 503, "controller busy", "text/plain")
    r = cserve("shutdown", "--yes", "-a", stub.url)
    assert r.returncode == 1 and "503" in r.stderr and "controller busy" in r.stderr
    assert "Sent shutdown request" not in r.stdout


def test_shutdown_nothing_running(stub):
    stub.answer("GET", body={"controller_info": {}, "proxies": {}, "applications": {}})
    r = cserve("shutdown", "-y", "-a", stub.url)
    assert r.returncode == 0
    assert "No Serve instance found running" in r.stderr
    assert [q["method"] for q in stub.requests] == ["GET"]


def _on_terminal(args, answer):
    """Runs cserve with a pseudo-terminal as stdin/stdout, answers the prompt, returns (rc, output)."""
    master, slave = pty.openpty()
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_DASHBOARD_ADDRESS", "CSERVE_API_KEY")}
    p = subprocess.Popen([BIN, *args], stdin=slave, stdout=slave, stderr=slave, env=e, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.time() + T
    answered = False
    try:
        while time.time() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"[y/N]" in out:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif p.poll() is not None:
                break
        rc = p.wait(timeout=T)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    return rc, out.decode(errors="replace")


def test_shutdown_prompt_on_a_terminal(stub):
    stub.answer("GET", body=ref_json("status-running.json"))
    stub.answer("DELETE", 200, b"")
    rc, out = _on_terminal(["shutdown", "-a", stub.url], "n")
    assert ('This will shut down Serve on the cluster at address "%s" and delete all applications there. '
            "Do you want to continue? [y/N]" % stub.url) in out
    assert rc == 1 and "Aborted!" in out
    assert all(q["method"] != "DELETE" for q in stub.requests)

    rc, out = _on_terminal(["shutdown", "-a", stub.url], "y")
    assert rc == 0, out
    assert "Sent shutdown request" in out
    assert stub.requests[-1]["method"] == "DELETE"


# ---------------------------------------------------------------- help

def test_help():
    r = cserve("--help")
    assert r.returncode == 0
    for c in ("deploy", "status", "config", "shutdown"):
        assert re.search(r"^  %s " % c, r.stdout, re.M), c
        h = cserve(c, "--help")
        assert h.returncode == 0 and h.stdout.startswith("usage: cserve %s" % c)
        assert "--address" in h.stdout and "CSERVE_API_KEY" in h.stdout
