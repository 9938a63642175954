"""Offline checks of deploy/k8s (kustomize) and deploy/terraform (AKS + ACR).

What runs, all without a cluster or a cloud account:
- every kustomize tree renders with a current kubectl (kustomize v5) AND with Debian's kubectl
  1.20 (kustomize v2), and both give the same objects;
- kubernetes-validate --strict against Kubernetes 1.30, 1.31, 1.32 and 1.33 on every built-in
  kind; the custom resources (ServiceMonitor, ScaledObject, InferencePool, HTTPRoute), whose
  schemas are not available offline, are checked structurally here, references included;
- checkov (--skip-download) on the rendered manifests and on the Terraform: no failed check,
  and every skipped one carries its reason;
- what matters in the manifests: the LoadBalancer maps 80 -> 8000 and never exposes 8265;
  probes hit /-/healthz on the proxy port; non-root, read-only root, no capabilities,
  seccomp; the NetworkPolicy admits 8265 only from the namespace; compute threads = CPU limit;
- the metric the HPA, the adapter rule and KEDA's query name is one that cserve really
  exports: the test starts build/cserve with the rendered Serve config and reads /metrics;
- every .tf file parses (HCL2), providers are pinned, and the cluster/registry wiring is there;
  `terraform fmt -check` runs where a terraform binary is on PATH (it is in neither Debian nor
  PyPI, so the project cannot install it: elsewhere that one test skips, CI included).

The validators live in their own venv outside the clone, made by tools/deploy_venv.sh (which
`make deps` runs). Missing: the tests skip, or fail under CI=true. CS_TEST_QUICK=1 (make asan)
skips the file: nothing here depends on how cserve was compiled.

Run: build/venv-test/bin/python -m pytest -q tests/deploy/test_manifests.py
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TF = ROOT / "deploy" / "terraform"
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = ROOT / "build" / "models" / "tiny"
VENV = Path(os.environ.get("CSERVE_DEPLOY_VENV", Path.home() / ".cache" / "cserve" / "venv-deploy"))
KUBECTL_NEW = VENV / "bin" / "kubectl"
KUBECTL_DEB = VENV / "kubectl-debian" / "usr" / "bin" / "kubectl"
K8S_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0")
CI = os.environ.get("CI", "").lower() == "true"

# Every tree that someone may `kubectl apply -k`, and what each must contain.
TREES = {
    "base": {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"},
    "overlays/dev": {"Deployment", "Service"},
    "overlays/prod-base": {"Deployment", "ServiceMonitor"},
    "overlays/prod": {"Deployment", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "overlays/prod-keda": {"Deployment", "ScaledObject", "ServiceMonitor"},
    "inference-gateway": {"InferencePool", "HTTPRoute"},
}
# Trees with the server itself (the others are add-ons applied beside one of these).
SERVER_TREES = [t for t, kinds in TREES.items() if "Deployment" in kinds]
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/", "inference.networking.k8s.io/", "gateway.networking.k8s.io/")

pytestmark = pytest.mark.skipif(os.environ.get("CS_TEST_QUICK") == "1",
                                reason="CS_TEST_QUICK=1: the deploy files do not depend on the build")


def need(ok, what):
    """A missing validator: a failure under CI, a skip elsewhere."""
    if ok:
        return
    msg = f"{what} missing: run `sh tools/deploy_venv.sh` (make deps does)"
    if CI:
        pytest.fail(msg)
    pytest.skip(msg)


def run(cmd, timeout=300, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def is_crd(doc):
    return doc["apiVersion"].startswith(CRD_GROUPS)


def find(docs, kind, name=None):
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return hits


def one(docs, kind, name=None):
    hits = find(docs, kind, name)
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------ rendering

@pytest.fixture(scope="module")
def rendered():
    """{tree: [objects]} rendered by the current kustomize, after checking kustomize v2 agrees."""
    need(KUBECTL_NEW.exists(), f"{KUBECTL_NEW} (current kubectl)")
    need(KUBECTL_DEB.exists(), f"{KUBECTL_DEB} (Debian's kubectl 1.20)")
    out = {}
    for tree in TREES:
        docs = {}
        for name, kubectl in (("current", KUBECTL_NEW), ("debian-1.20", KUBECTL_DEB)):
            r = run([kubectl, "kustomize", K8S / tree])
            assert r.returncode == 0, f"{name} kubectl kustomize {tree} failed:\n{r.stderr}"
            docs[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
        canon = {k: sorted(json.dumps(d, sort_keys=True) for d in v) for k, v in docs.items()}
        assert canon["current"] == canon["debian-1.20"], f"{tree}: kustomize v2 and v5 render different objects"
        out[tree] = docs["current"]
    return out


def test_trees_render_with_kustomize_v2_and_v5(rendered):
    for tree, kinds in TREES.items():
        have = {d["kind"] for d in rendered[tree]}
        assert kinds <= have, f"{tree}: missing {kinds - have}"
        for d in rendered[tree]:
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == "cserve", f"{tree}: {d['kind']} outside the cserve namespace"


def test_one_autoscaler_per_tree(rendered):
    """The HPA and KEDA alternatives are never applied together (they would fight)."""
    for tree, docs in rendered.items():
        n = len(find(docs, "HorizontalPodAutoscaler")) + len(find(docs, "ScaledObject"))
        assert n <= 1, f"{tree}: {n} autoscalers"
        if n:  # the autoscaler owns the count: an applied replicas field would reset it
            assert "replicas" not in one(docs, "Deployment", "cserve")["spec"], tree


# ------------------------------------------------------------------------ schema validation

def test_kubernetes_validate_strict(rendered, tmp_path):
    exe = VENV / "bin" / "kubernetes-validate"
    need(exe.exists(), str(exe))
    files, n = [], 0
    for tree, docs in rendered.items():
        builtin = [d for d in docs if not is_crd(d)]
        if builtin:
            f = tmp_path / (tree.replace("/", "_") + ".yaml")
            f.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
            files.append(f)
            n += len(builtin)
    assert n >= 20
    for v in K8S_VERSIONS:
        r = run([exe, "--strict", "-k", v, *files])
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"kubernetes-validate {v}:\n{out}"
        # a built-in kind without a schema is a typo in apiVersion/kind, not a pass
        assert "WARN" not in out and "ERROR" not in out, out
        assert out.count(" passed for resource ") == n, out


def test_custom_resources_structure(rendered):
    """ServiceMonitor, ScaledObject, InferencePool, HTTPRoute: no schema offline, so the fields
    their controllers need are checked here, and each reference must land on a real object."""
    for tree, docs in rendered.items():
        deps = find(docs, "Deployment")
        svcs = find(docs, "Service")
        for sm in find(docs, "ServiceMonitor"):
            assert sm["apiVersion"] == "monitoring.coreos.com/v1"
            sel = sm["spec"]["selector"]["matchLabels"]
            hit = [s for s in svcs if labels_match(sel, s["metadata"].get("labels", {}))]
            assert len(hit) == 1 and hit[0]["spec"]["type"] == "LoadBalancer", f"{tree}: ServiceMonitor selects {hit}"
            port_names = {p["name"] for p in hit[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                assert ep["port"] in port_names and ep["path"] == "/metrics"
                assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
        for so in find(docs, "ScaledObject"):
            assert so["apiVersion"] == "keda.sh/v1alpha1"
            ref = so["spec"]["scaleTargetRef"]
            assert ref["kind"] == "Deployment" and find(docs, "Deployment", ref["name"])
            assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
            (trig,) = so["spec"]["triggers"]
            assert trig["type"] == "prometheus" and trig["metricType"] == "AverageValue"
            assert {"serverAddress", "query", "threshold"} <= set(trig["metadata"])
            assert isinstance(trig["metadata"]["threshold"], str)  # KEDA's metadata is map[string]string
        for ip in find(docs, "InferencePool"):
            assert ip["apiVersion"] == "inference.networking.k8s.io/v1"
            spec = ip["spec"]
            assert set(spec) <= {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}
            assert [p["number"] for p in spec["targetPorts"]] == [8000]
            epp = spec["endpointPickerRef"]
            assert epp["name"] and epp["port"]["number"] and epp.get("failureMode") in ("FailOpen", "FailClose")
            # the selector must pick exactly the cserve server pods of the base Deployment
            base_pod = one(rendered["base"], "Deployment", "cserve")["spec"]["template"]["metadata"]["labels"]
            assert labels_match(spec["selector"]["matchLabels"], base_pod)
        for rt in find(docs, "HTTPRoute"):
            assert rt["apiVersion"] == "gateway.networking.k8s.io/v1"
            assert rt["spec"]["parentRefs"]
            for rule in rt["spec"]["rules"]:
                for b in rule["backendRefs"]:
                    assert b["group"] == "inference.networking.k8s.io" and b["kind"] == "InferencePool"
                    assert find(docs, "InferencePool", b["name"]), f"{tree}: HTTPRoute -> missing pool {b['name']}"
        for hpa in find(docs, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            assert ref["kind"] == "Deployment" and find(docs, "Deployment", ref["name"])
        assert deps or tree == "inference-gateway"


# --------------------------------------------------------------------------------- checkov

def test_checkov_manifests_and_terraform(rendered, tmp_path):
    exe = VENV / "bin" / "checkov"
    need(exe.exists(), str(exe))
    # One invocation on one directory holding both trees: checkov's start-up is most of its
    # time, and several -d arguments make it repeat reports.
    for tree, docs in rendered.items():
        (tmp_path / "k8s").mkdir(exist_ok=True)
        (tmp_path / "k8s" / (tree.replace("/", "_") + ".yaml")).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    shutil.copytree(TF, tmp_path / "terraform")
    r = run([exe, "--skip-download", "--compact", "-o", "json",
             "--framework", "kubernetes", "terraform", "-d", tmp_path], timeout=600)
    assert r.stdout.strip(), r.stderr[-3000:]
    data = json.loads(r.stdout)
    reports = {rep["check_type"]: rep for rep in (data if isinstance(data, list) else [data])}
    assert set(reports) == {"kubernetes", "terraform"}, list(reports)
    for kind, rep in reports.items():
        res = rep["results"]
        failed = [(c["check_id"], c["resource"], c.get("file_path")) for c in res["failed_checks"]]
        assert not failed, f"checkov {kind}: {failed}"
        for c in res["skipped_checks"]:
            why = (c.get("check_result") or {}).get("suppress_comment", "")
            assert len(why.strip()) > 20, f"checkov {kind}: {c['check_id']} on {c['resource']} skipped without a reason"
        s = rep["summary"]
        print(f"checkov {kind}: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped")
        assert s["passed"] >= 20
    assert r.returncode == 0, r.stderr[-3000:]


# ---------------------------------------------------------------- what the manifests promise

def container(dep, name="cserve"):
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def port_number(c, port):
    if isinstance(port, int):
        return port
    (p,) = [p for p in c["ports"] if p["name"] == port]
    return p["containerPort"]


def cpu_cores(q):
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def serve_config(docs):
    cm = one(docs, "ConfigMap", "cserve-serve-config")
    return yaml.safe_load(cm["data"]["serve.yaml"])


@pytest.mark.parametrize("tree", SERVER_TREES)
def test_services_and_ports(rendered, tree):
    docs = rendered[tree]
    c = container(one(docs, "Deployment", "cserve"))
    lbs = [s for s in find(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    assert len(lbs) == 1
    ports = lbs[0]["spec"]["ports"]
    assert len(ports) == 1, f"the LoadBalancer must expose only 80 -> 8000, not {ports}"
    p = ports[0]
    assert p["port"] == 80 and port_number(c, p["targetPort"]) == 8000
    for s in find(docs, "Service"):
        for sp in s["spec"]["ports"]:
            if port_number(c, sp.get("targetPort", sp["port"])) == 8265 or sp["port"] == 8265:
                assert s["spec"].get("type", "ClusterIP") == "ClusterIP", f"8265 exposed by {s['metadata']['name']}"
                assert "nodePort" not in sp
    admin = one(docs, "Service", "cserve-admin")
    assert [port_number(c, sp["targetPort"]) for sp in admin["spec"]["ports"]] == [8265]
    args = c["args"]
    assert args[:1] == ["serve"] and args[args.index("--port") + 1] == "8000"
    assert args[args.index("--admin-port") + 1] == "8265"


@pytest.mark.parametrize("tree", SERVER_TREES)
def test_probes_security_and_threads(rendered, tree):
    docs = rendered[tree]
    dep = one(docs, "Deployment", "cserve")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c[probe]["httpGet"]
        assert g["path"] == "/-/healthz" and port_number(c, g["port"]) == 8000, probe
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for ctr in pod["containers"] + pod.get("initContainers", []):
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert ctr["resources"]["limits"]["cpu"] and ctr["resources"]["limits"]["memory"]
    # the init container fills the model cache that the server reads offline
    (init,) = pod["initContainers"]
    assert init["args"][:1] == ["pull"]
    env = {e["name"]: e["value"] for e in c["env"]}
    init_env = {e["name"]: e["value"] for e in init["env"]}
    assert env["HF_HOME"] == init_env["HF_HOME"] and env["HF_HUB_OFFLINE"] == "1"
    # one replica process per pod, its threads = the CPU limit
    cfg = serve_config(docs)
    (app,) = cfg["applications"]
    (d,) = app["deployments"]
    assert d["num_replicas"] == 1
    lim = c["resources"]["limits"]["cpu"]
    assert d["ray_actor_options"]["num_cpus"] == cpu_cores(lim) == cpu_cores(c["resources"]["requests"]["cpu"])
    # the config file cserve is told to read is the ConfigMap's key
    path = c["args"][c["args"].index("--config") + 1]
    (mnt,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (vol,) = [v for v in pod["volumes"] if v["name"] == mnt["name"]]
    assert vol["configMap"]["name"] == "cserve-serve-config" and path.endswith("/serve.yaml")
    assert pod["terminationGracePeriodSeconds"] > d["graceful_shutdown_timeout_s"]


@pytest.mark.parametrize("tree", SERVER_TREES)
def test_networkpolicy_keeps_admin_in_namespace(rendered, tree):
    docs = rendered[tree]
    pod_labels = one(docs, "Deployment", "cserve")["spec"]["template"]["metadata"]["labels"]
    np = one(docs, "NetworkPolicy", "cserve")
    assert labels_match(np["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert "Ingress" in np["spec"]["policyTypes"]
    admin_rules = 0
    for rule in np["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert ports, "a rule without ports opens every port"
        if 8265 in ports or "admin" in ports:
            admin_rules += 1
            peers = rule.get("from")
            assert peers, "8265 open to every source"
            for peer in peers:
                # a bare podSelector means: pods of this namespace only
                assert set(peer) == {"podSelector"}, f"8265 reachable through {peer}"
    assert admin_rules == 1
    assert any(8000 in {p["port"] for p in r["ports"]} for r in np["spec"]["ingress"])


def test_pdb_and_rollout(rendered):
    for tree in SERVER_TREES:
        docs = rendered[tree]
        dep = one(docs, "Deployment", "cserve")
        pdb = one(docs, "PodDisruptionBudget", "cserve")
        assert labels_match(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
        assert pdb["spec"]["maxUnavailable"] == 1
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# ------------------------------------------- metric names: what the autoscalers read vs /metrics

@pytest.fixture(scope="module")
def live_metrics(rendered, tmp_path_factory):
    """/metrics of build/cserve started with the prod Deployment's arguments and its Serve
    config (model -> build/models/tiny, one thread, local addresses)."""
    if not (os.path.exists(BIN) and TINY.is_dir()):
        msg = f"needs {BIN} and {TINY} (make all models)"
        if CI:
            pytest.fail(msg)
        pytest.skip(msg)
    cfg = serve_config(rendered["overlays/prod"])
    cfg["http_options"].update(host="127.0.0.1", port=0)
    (app,) = cfg["applications"]
    app["args"]["model"] = str(TINY)
    app["deployments"][0]["ray_actor_options"]["num_cpus"] = 1
    d = tmp_path_factory.mktemp("serve")
    (d / "serve.yaml").write_text(yaml.safe_dump(cfg))
    log = open(d / "log", "w+")
    env = dict(os.environ, CS_CACHE_DIR=str(d / "cache"), HF_HUB_OFFLINE="1")
    # the Deployment's own command line, with local addresses and free ports
    args = list(container(one(rendered["overlays/prod"], "Deployment", "cserve"))["args"])
    for flag, value in (("--config", d / "serve.yaml"), ("--host", "127.0.0.1"), ("--port", "0"),
                        ("--admin-host", "127.0.0.1"), ("--admin-port", "0")):
        args[args.index(flag) + 1] = str(value)
    p = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        port, deadline = None, time.time() + 60
        while time.time() < deadline:
            text = (d / "log").read_text(errors="replace")
            m = re.search(r"proxy listening on [^\"]*:(\d+)", text)
            if m:
                port = int(m.group(1))
                try:
                    if requests.get(f"http://127.0.0.1:{port}/-/healthz", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
            assert p.poll() is None, text
            time.sleep(0.05)
        else:
            raise AssertionError("cserve did not become ready:\n" + (d / "log").read_text(errors="replace"))
        # one request so that per-route series exist too
        r = requests.post(f"http://127.0.0.1:{port}/text/simple-gen",
                          json={"input": "Once upon a time", "max_new_tokens": 2}, timeout=30)
        assert r.status_code == 200, r.text
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
    names = set()
    for line in body.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def promql_metric_names(q):
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[{\[)]|\s*$)", q))
    return {w for w in words if w not in {"sum", "avg", "max", "min", "rate", "avg_over_time", "by", "without"}}


def test_autoscaling_metric_is_exported(rendered, live_metrics):
    hpa = one(rendered["overlays/prod"], "HorizontalPodAutoscaler", "cserve")
    (m,) = hpa["spec"]["metrics"]
    assert m["type"] == "Pods"
    hpa_name = m["pods"]["metric"]["name"]
    # Prometheus Adapter: the rule reads a series cserve exports and serves it as the HPA's name
    values = yaml.safe_load((K8S / "autoscaling/prometheus-adapter/prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
    assert series in live_metrics, f"adapter rule reads {series}; cserve exports {sorted(live_metrics)}"
    exposed = re.sub(rule["name"]["matches"], rule["name"]["as"], series)
    assert exposed == hpa_name, f"adapter exposes {exposed}, the HPA asks for {hpa_name}"
    # KEDA: every metric its PromQL names is exported
    so = one(rendered["overlays/prod-keda"], "ScaledObject", "cserve")
    q = so["spec"]["triggers"][0]["metadata"]["query"]
    names = promql_metric_names(q)
    assert names and names <= live_metrics, f"KEDA query {q!r} names {names - live_metrics} that cserve lacks"
    assert names == {series}, "the HPA and KEDA must scale on the same signal"
    ns = re.search(r'namespace="([^"]+)"', q).group(1)
    assert ns == one(rendered["overlays/prod-keda"], "Deployment", "cserve")["metadata"]["namespace"]


def test_inference_pool_metrics_are_exported(live_metrics):
    """The endpoint picker reads vLLM's gauges; inferencepool.yaml promises cserve has them."""
    want = set(re.findall(r"vllm:[a-z_]+", (K8S / "inference-gateway/inferencepool.yaml").read_text()))
    assert want == {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
    assert want <= live_metrics, f"missing {want - live_metrics}"


# ------------------------------------------------------------------------------- terraform

@pytest.fixture(scope="module")
def tf():
    """{file name: parsed HCL2} for every .tf under deploy/terraform (checkov's HCL2 parser)."""
    py = VENV / "bin" / "python"
    need(py.exists(), str(py))
    files = sorted(TF.glob("*.tf"))
    assert files
    code = ("import sys, json, hcl2\n"
            "out = {}\n"
            "for f in sys.argv[1:]:\n"
            "    with open(f) as fh:\n"
            "        out[f] = hcl2.load(fh)\n"
            "print(json.dumps(out, default=str))\n")
    r = run([py, "-c", code, *files])
    assert r.returncode == 0, r.stderr[-3000:]
    return {Path(k).name: {blk: [norm(b) for b in lst] for blk, lst in v.items()}
            for k, v in json.loads(r.stdout).items()}


def norm(v):
    """checkov's HCL2 parser wraps every attribute value in a one-element list and adds line
    numbers: unwrap and drop them (a real one-element list reads as its element here)."""
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items() if k not in ("__start_line__", "__end_line__")}
    if isinstance(v, list):
        return norm(v[0]) if len(v) == 1 else [norm(x) for x in v]
    return v


def tf_blocks(tf, block, typ):
    out = {}
    for parsed in tf.values():
        for b in parsed.get(block, []):
            if typ in b:
                for name, body in b[typ].items():
                    out[name] = body
    return out


def test_terraform_parses_and_pins_providers(tf):
    (tfb,) = [b for p in tf.values() for b in p.get("terraform", [])]
    assert tfb["required_version"]
    providers = tfb["required_providers"]
    assert set(providers) >= {"azurerm", "helm"}
    for name, p in providers.items():
        assert re.match(r"^~> \d+\.\d+", p["version"]), f"provider {name} not pinned: {p['version']}"


def test_terraform_cluster_and_registry(tf):
    (aks,) = tf_blocks(tf, "resource", "azurerm_kubernetes_cluster").values()
    pool = aks["default_node_pool"]
    assert pool["auto_scaling_enabled"] is True and pool["only_critical_addons_enabled"] is True
    assert aks["network_profile"]["network_policy"], "the NetworkPolicy needs a policy engine"
    (user,) = tf_blocks(tf, "resource", "azurerm_kubernetes_cluster_node_pool").values()
    assert user["mode"] == "User" and user["auto_scaling_enabled"] is True
    assert user["node_labels"] == {"workload": "cserve"}
    (acr,) = tf_blocks(tf, "resource", "azurerm_container_registry").values()
    assert acr["admin_enabled"] is False
    ras = tf_blocks(tf, "resource", "azurerm_role_assignment")
    pulls = [r for r in ras.values() if r["role_definition_name"] == "AcrPull"]
    assert len(pulls) == 1
    assert "kubelet_identity" in pulls[0]["principal_id"] and "azurerm_container_registry" in pulls[0]["scope"]
    # the prod overlay's nodeSelector matches the user pool's label
    prod = (K8S / "overlays/prod-base/deployment-patch.yaml").read_text()
    assert "workload: cserve" in prod


def test_terraform_addons_replace_kuberay(tf):
    helm = tf_blocks(tf, "resource", "helm_release")
    charts = {b["chart"]: b for b in helm.values()}
    assert set(charts) == {"kube-prometheus-stack", "prometheus-adapter", "keda"}
    assert not any("kuberay" in json.dumps(b) for b in helm.values())
    for b in charts.values():
        assert "count" in b and b["version"], "every add-on is optional and pinned"
    # the adapter gets exactly the rule file the HPA test checked
    vals = json.dumps(charts["prometheus-adapter"]["values"])
    assert "k8s/autoscaling/prometheus-adapter/prometheus-adapter-values.yaml" in vals
    outs = {k for p in tf.values() for o in p.get("output", []) for k in o}
    assert {"rg_name", "aks_name", "acr_login_server"} <= outs


def test_terraform_fmt():
    exe = shutil.which("terraform")
    if not exe:
        # neither Debian nor PyPI has terraform: the project cannot install it, so this one
        # check only runs where someone installed it (the parse and checkov tests still run)
        pytest.skip("no terraform binary on PATH (not packaged by Debian or PyPI)")
    with tempfile.TemporaryDirectory() as home:  # no user CLI config is read or needed
        r = run([exe, "fmt", "-check", "-recursive", "-diff", TF], env=dict(os.environ, HOME=home,
                                                                            TF_CLI_CONFIG_FILE="/dev/null"))
    assert r.returncode == 0, r.stdout + r.stderr
