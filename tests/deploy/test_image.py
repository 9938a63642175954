"""The container image (deploy/container/Containerfile), built and run with podman.

- tools/image.sh builds localhost/cserve:latest (no registry: a Debian base made once per machine
  with debootstrap; the build is skipped when the image's source-hash label matches the tree);
- the image: under 40 MB, a non-root user, a HEALTHCHECK, SIGTERM as its stop signal;
- a container with the synthetic model mounted read-only (read-only root file system too)
  answers the seed's curl; start -> ready is measured; `podman healthcheck run` passes;
- `podman stop` (SIGTERM to cserve as PID 1) while a request is in flight: the request
  completes and the container exits 0 well before the kill;
- the "baked" target (a model copied in at build time) serves with no volume;
- `podman kube play` of the Deployment that deploy/k8s/overlays/dev renders (adapted for one
  machine: one replica, hostIP 127.0.0.1 + hostPort, the local image, the Hugging Face cache
  that its init container would pull from the Hub provided as a hostPath) answers the seed's curl.

Needs root and podman (tools/deps.sh installs it): the tests skip without them, or fail under
CI=true. CS_TEST_QUICK=1 (make asan) skips the file: the image has its own build.

Run: build/venv-test/bin/python -m pytest -q -s tests/deploy/test_image.py
"""
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "build" / "models"
TINY, DISTIL = MODELS / "tiny", MODELS / "distil"
IMAGE = "localhost/cserve:latest"
BAKED = "localhost/cserve:test-baked"
CONF = ROOT / "deploy" / "container" / "containers.conf"
CI = os.environ.get("CI", "").lower() == "true"
MAX_IMAGE_BYTES = 40_000_000
SEED_BODY = '{"input":"Once upon a time"}'
T = 120  # seconds allowed to any one request (distil at one thread on a busy 2-CPU machine)
STOP_GRACE_S = 60  # podman stop -t: SIGKILL only after this


def _why_not():
    if not shutil.which("podman"):
        return "podman is not installed (sh tools/deps.sh installs it)"
    if os.geteuid() != 0:
        return "needs root (rootful podman; debootstrap makes the base image)"
    if not (TINY / "model.safetensors").exists() or not (DISTIL / "model.safetensors").exists():
        return "build/models is missing: run `make models`"
    return None


pytestmark = pytest.mark.skipif(os.environ.get("CS_TEST_QUICK") == "1",
                                reason="CS_TEST_QUICK=1: the image has its own build")


@pytest.fixture(scope="module", autouse=True)
def _needs():
    """Something missing: a failure under CI (which runs as root, after tools/deps.sh), a skip elsewhere."""
    why = _why_not()
    if why and CI:
        pytest.fail(why)
    if why:
        pytest.skip(why)


def env():
    e = dict(os.environ)
    e["CONTAINERS_CONF"] = str(CONF)
    return e


def podman(*args, check=True, timeout=120):
    r = subprocess.run(["podman", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env())
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(image, model_dir=None):
    """tools/image.sh (skips the build when the image matches the tree); returns the seconds it took."""
    e = env()
    e["IMAGE"] = image
    e.pop("MODEL_DIR", None)
    e.pop("BASE", None)
    if model_dir:
        e["MODEL_DIR"] = str(model_dir)
    t0 = time.monotonic()
    r = subprocess.run(["sh", "tools/image.sh"], cwd=ROOT, env=e, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - t0
    assert r.returncode == 0, f"tools/image.sh failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}"
    last = (r.stdout.strip().splitlines() or [""])[-1]
    print(f"\n[image] {image}: {last} ({took:.0f} s in all)")
    return took


def inspect(image):
    return json.loads(podman("image", "inspect", image).stdout)[0]


class Container:
    """A detached `podman run`; removed (with its logs printed on failure) by close()."""

    def __init__(self, image, *args, mounts=(), opts=(), port=None):
        self.name = f"cserve-test-{os.getpid()}-{free_port()}"
        self.port = port or free_port()
        cmd = ["run", "-d", "--pull=never", "--name", self.name, "-p", f"127.0.0.1:{self.port}:8000", *opts]
        for host, dest in mounts:
            cmd += ["-v", f"{host}:{dest}:ro"]
        self.t0 = time.monotonic()
        podman(*cmd, image, *args)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def state(self):
        return json.loads(podman("inspect", self.name).stdout)[0]["State"]

    def logs(self):
        r = podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def wait_ready(self, timeout=120):
        """Seconds from `podman run` to the first 200 on /-/healthz."""
        return wait_healthz(self.url("/-/healthz"), self.t0, timeout,
                            lambda: self.state()["Status"] != "running", self.logs)

    def close(self):
        podman("rm", "-f", "-t", "5", self.name, check=False)


def wait_healthz(url, t0, timeout, dead, logs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        if dead():
            raise AssertionError("the container stopped before it was ready:\n" + logs())
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s:\n" + logs())


def seed_curl(url):
    """The seed's request as its README sends it: curl when present, else the same bytes."""
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", url, "-H",
                              "Content-Type: application/json", "-d", SEED_BODY],
                             capture_output=True, text=True, timeout=T).stdout
        body, _, code = out.rpartition("\n")
    else:
        r = requests.post(url, data=SEED_BODY, headers={"Content-Type": "application/json"}, timeout=T)
        body, code = r.text, str(r.status_code)
    assert code == "200", f"{code}: {body}"
    d = json.loads(body)
    assert isinstance(d, list) and len(d) == 1 and set(d[0]) == {"generated_text"}
    assert d[0]["generated_text"].startswith("Once upon a time")
    assert len(d[0]["generated_text"]) > len("Once upon a time")
    return d[0]["generated_text"]


@pytest.fixture(scope="module")
def image():
    build(IMAGE)
    return IMAGE


def test_image_metadata(image):
    d = inspect(image)
    cfg = d["Config"]
    print(f"\n[image] size {d['Size'] / 1e6:.1f} MB, user {cfg.get('User')}")
    assert d["Size"] < MAX_IMAGE_BYTES, f"{d['Size']} bytes"
    user = cfg.get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), user
    hc = cfg.get("Healthcheck") or d.get("Healthcheck") or {}  # podman 4 reports it beside Config
    assert "/usr/local/bin/cs-healthcheck" in hc.get("Test", []), hc
    assert cfg.get("StopSignal") in ("SIGTERM", "15"), cfg.get("StopSignal")
    assert cfg["Entrypoint"] == ["/usr/local/bin/cserve"]
    assert cfg["Cmd"][0] == "serve" and "0.0.0.0" in cfg["Cmd"]
    assert {"8000/tcp", "8265/tcp"} <= set(cfg.get("ExposedPorts", {}))
    envs = dict(x.split("=", 1) for x in cfg.get("Env", []))
    assert envs.get("HF_HOME") == "/models" and envs.get("CS_CACHE_DIR", "").startswith("/tmp/")


def test_seed_curl_readonly_nonroot(image, tmp_path):
    """The synthetic tiny model mounted read-only, the root file system read-only (as the
    Kubernetes manifests run it), the seed's exact request. bf16, so that the server writes its
    packed weights to CS_CACHE_DIR, which must be writable by the non-root user."""
    c = Container(image, "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/model", "--dtype", "bf16",
                  "--pipeline-defaults", "4.51", mounts=[(TINY, "/model")], opts=["--read-only"])
    try:
        ready = c.wait_ready()
        print(f"\n[image] start -> ready (tiny): {ready:.2f} s")
        seed_curl(c.url("/text/simple-gen"))
        top = podman("top", c.name, "user", "pid").stdout.split()
        assert top[2:4] in (["cserve", "1"], ["10001", "1"]), top  # non-root, and cserve is PID 1
        hc = podman("healthcheck", "run", c.name, check=False)
        assert hc.returncode == 0, hc.stdout + hc.stderr
        podman("cp", f"{c.name}:/tmp/cserve-cache", tmp_path / "cache")
        assert list((tmp_path / "cache").glob("*.cspack")), c.logs()
    finally:
        c.close()


def _completion(url, out):
    try:
        out["r"] = requests.post(url, json={"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": True},
                                 timeout=T)
    except requests.RequestException as e:
        out["e"] = e


def test_sigterm_drains_in_flight_request(image):
    """cserve is PID 1: `podman stop` sends SIGTERM, which cserve takes with sigwait (a PID 1
    without a handler would ignore it and be killed after the grace period, exit 137)."""
    c = Container(image, "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/model", "--threads", "1",
                  mounts=[(DISTIL, "/model")])
    try:
        ready = c.wait_ready()
        print(f"\n[image] start -> ready (distil, 314 MB of weights): {ready:.2f} s")
        out = {}
        th = threading.Thread(target=_completion, args=(c.url("/v1/completions"), out))
        th.start()
        deadline = time.monotonic() + T
        while time.monotonic() < deadline and th.is_alive():
            m = requests.get(c.url("/metrics"), timeout=10).text
            if re.search(r"^cserve_requests_in_flight [1-9]", m, re.M):
                break
            time.sleep(0.02)
        assert th.is_alive(), f"the request ended before the stop: {out}"
        t0 = time.monotonic()
        podman("stop", "-t", STOP_GRACE_S, c.name, timeout=STOP_GRACE_S + 30)
        stopped = time.monotonic() - t0
        th.join(T)
        assert "e" not in out, f"{out['e']}\n{c.logs()}"
        r = out["r"]
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 48
        st = c.state()
        print(f"[image] podman stop with a request in flight: exit {st['ExitCode']} after {stopped:.2f} s")
        assert st["ExitCode"] == 0, c.logs()  # 137: killed at the end of the grace period
        assert "draining" in c.logs()
    finally:
        c.close()


def test_baked_model(image):
    """The "baked" target: the model copied in at build time; the default command serves it."""
    build(BAKED, model_dir=TINY)
    d = inspect(BAKED)
    assert d["Size"] < MAX_IMAGE_BYTES + 20_000_000
    c = Container(BAKED)
    try:
        c.wait_ready()
        r = requests.post(c.url("/text/simple-gen"), json={"input": "Once upon a time", "max_new_tokens": 8},
                          timeout=T)
        assert r.status_code == 200, r.text
        assert r.json()[0]["generated_text"].startswith("Once upon a time")
    finally:
        c.close()
        podman("rmi", BAKED, check=False)


# ---------------------------------------------------------------------------- podman kube play

FALLBACK_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: cserve, labels: {app.kubernetes.io/name: cserve}}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: cserve}}
  template:
    metadata: {labels: {app.kubernetes.io/name: cserve}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001}
      containers:
        - name: cserve
          image: cserve:latest
          args: [serve, --host, 0.0.0.0, --port, "8000", --model, distilgpt2]
          env: [{name: HF_HOME, value: /models}, {name: HF_HUB_OFFLINE, value: "1"}]
          ports: [{containerPort: 8000, name: http}]
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          volumeMounts: [{name: models, mountPath: /models, readOnly: true}]
      volumes: [{name: models, emptyDir: {}}]
"""


def kubectl():
    venv = Path(os.environ.get("CSERVE_DEPLOY_VENV", Path.home() / ".cache" / "cserve" / "venv-deploy"))
    for k in (venv / "bin" / "kubectl", shutil.which("kubectl")):
        if k and os.access(k, os.X_OK):
            return str(k)
    return None


def rendered_manifests():
    """(documents, where from): the dev overlay rendered, or the fallback Deployment."""
    dev = ROOT / "deploy" / "k8s" / "overlays" / "dev"
    k = kubectl()
    if dev.is_dir() and k:
        r = subprocess.run([k, "kustomize", str(dev)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [d for d in yaml.safe_load_all(r.stdout) if d], "deploy/k8s/overlays/dev"
    return [yaml.safe_load(FALLBACK_DEPLOYMENT)], "the test's own Deployment (no deploy/k8s/overlays/dev or kubectl)"


def hf_cache(dest, model_dir, repo="distilgpt2"):
    """What the init container's `cserve pull REPO` leaves in HF_HOME, made from a local model
    directory (hard links where possible): hub/models--REPO/{refs/main, snapshots/COMMIT/*}."""
    commit = "0" * 39 + "1"
    snap = dest / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        try:
            os.link(f, snap / f.name)
        except OSError:
            shutil.copy2(f, snap / f.name)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    for d in [dest, *dest.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)


def for_podman(docs, name, port, models):
    """The Deployment named cserve (and the ConfigMaps beside it) made runnable by podman on one
    machine. What changes and why:
    - one replica, our name (so that parallel runs cannot collide), no namespace;
    - the image built here, never pulled;
    - 8000 published on 127.0.0.1:PORT (podman has no Service/LoadBalancer);
    - the model: no Hub is reachable here, so the init containers go and the HF cache volume
      they would fill is a hostPath that already holds the model;
    - no probes (podman runs an httpGet probe as curl inside the container, and the image has
      none: the image's own HEALTHCHECK is tested above), no preStop hook, no scheduling hints,
      no service account (none of them exist for a single podman pod)."""
    deps = [d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "cserve"]
    assert len(deps) == 1, f"no single Deployment named cserve in {[d.get('kind') for d in docs]}"
    dep = deps[0]
    dep["metadata"] = {"name": name, "labels": dep["metadata"].get("labels", {})}
    dep["spec"]["replicas"] = 1
    pod = dep["spec"]["template"]["spec"]
    inits = pod.pop("initContainers", []) or []
    for k in ("topologySpreadConstraints", "affinity", "serviceAccountName", "automountServiceAccountToken",
              "priorityClassName", "nodeSelector", "tolerations"):
        pod.pop(k, None)
    cs = [c for c in pod["containers"] if c["name"] == "cserve"]
    assert cs, "the Deployment has no container named cserve"
    c = cs[0]
    c["image"] = IMAGE
    c["imagePullPolicy"] = "Never"
    for k in ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
        c.pop(k, None)
    model_volumes = set()  # what is mounted at HF_HOME, in the server or in an init container
    for k in [c, *inits]:
        hf_home = {e["name"]: e.get("value") for e in k.get("env", [])}.get("HF_HOME", "/models")
        model_volumes |= {m["name"] for m in k.get("volumeMounts", []) if m["mountPath"] == hf_home}
    assert model_volumes, "no volume holds the Hugging Face cache (HF_HOME)"
    # podman publishes a containerPort without hostPort on every address: each port gets one here.
    assert 8000 in [p["containerPort"] for p in c.get("ports", [])], "the cserve container does not declare 8000"
    for p in c.get("ports", []):
        p.update(hostIP="127.0.0.1", hostPort=port if p["containerPort"] == 8000 else free_port())
    for v in pod.get("volumes", []):
        if v["name"] in model_volumes:
            for k in [k for k in v if k != "name"]:
                del v[k]
            v["hostPath"] = {"path": str(models), "type": "Directory"}
    # podman keeps each ConfigMap as a named volume: ours get our prefix, and test_kube_play
    # removes them.
    maps = [d for d in docs if d.get("kind") == "ConfigMap"]
    renamed = {m["metadata"]["name"]: f"{name}-{m['metadata']['name']}" for m in maps}
    for m in maps:
        m["metadata"] = {"name": renamed[m["metadata"]["name"]]}
    for v in pod.get("volumes", []):
        if "configMap" in v:
            v["configMap"]["name"] = renamed.get(v["configMap"]["name"], v["configMap"]["name"])
    for k in [*pod["containers"]]:
        for e in k.get("envFrom", []):
            if "configMapRef" in e:
                e["configMapRef"]["name"] = renamed.get(e["configMapRef"]["name"], e["configMapRef"]["name"])
        for e in k.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                ref["name"] = renamed.get(ref["name"], ref["name"])
    return maps + [dep]


def test_kube_play(image, tmp_path):
    docs, source = rendered_manifests()
    models = tmp_path / "hf-home"
    hf_cache(models, DISTIL)
    name = f"cserve-test-{os.getpid()}"
    port = free_port()
    spec = tmp_path / "podman-kube.yaml"
    spec.write_text(yaml.safe_dump_all(for_podman(docs, name, port, models), sort_keys=False))
    print(f"\n[image] podman kube play: {source}")
    t0 = time.monotonic()
    try:
        out = podman("kube", "play", spec, timeout=300).stdout
        pod = re.search(r"Pod:\s+([0-9a-f]{64})", out).group(1)  # its name differs between podman versions

        def dead():  # the server exited or was restarted (restartPolicy: Always)
            ids = podman("ps", "-aq", "--no-trunc", "--filter", f"pod={pod}").stdout.split()
            states = [json.loads(podman("inspect", i).stdout)[0] for i in ids]
            return any(not d["State"]["Running"] or d.get("RestartCount", 0) > 0 for d in states)

        def logs():
            r = podman("pod", "logs", pod, check=False)
            return r.stdout[-6000:] + r.stderr[-4000:]

        ready = wait_healthz(f"http://127.0.0.1:{port}/-/healthz", t0, T, dead, logs)
        print(f"[image] kube play -> ready: {ready:.2f} s")
        text = seed_curl(f"http://127.0.0.1:{port}/text/simple-gen")
        print(f"[image] seed's curl through the pod: {len(text)} characters")
    finally:
        r = podman("kube", "down", spec, check=False, timeout=120)
        for p in podman("pod", "ps", "-q", "--filter", f"name={name}", check=False).stdout.split():
            podman("pod", "rm", "-f", p, check=False)
        for v in podman("volume", "ls", "-q", "--filter", f"name={name}-", check=False).stdout.split():
            podman("volume", "rm", "-f", v, check=False)
    assert r.returncode == 0, r.stderr
