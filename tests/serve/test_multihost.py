"""Replicas on other hosts (src/serve/remote.c), on one machine: a router host and two replica hosts
are network namespaces on one veth bridge (the recipe of ../shared/ref/netns.md). Each replica host runs
`cserve replica --listen 10.99.0.X:9000 --model build/models/tiny`; the router host runs
`cserve router --config` (args.remote: a static list) and, for DNS discovery, a second router whose
config names one host name: `ip netns exec` binds /etc/netns/NS/hosts over /etc/hosts, so the test
gives that name two A records there and edits the file to change the membership.

Checks: the seed's curl through the router; one replica host's process killed under a load of
concurrent non-streaming requests -> no failed request (retried on the other host), the admin API
shows it unhealthy and it gets no request; restarted -> it rejoins and gets requests again; 30% packet
loss on one replica host (iptables statistic) -> every request still succeeds; DNS membership follows
the hosts file (a removed address is drained and forgotten, a failed lookup keeps the last answer and
says so, an added address joins). Prints the failover figures (requests failed, time to route around,
time to rejoin).

Needs root (network namespaces, iptables): skipped otherwise, saying why. CI runs as root, where it
runs; missing `ip` or `iptables` there is a failure, not a skip. Namespace names carry the pid, so runs
do not collide; everything is removed at the end, also when a check fails. Under CS_TEST_QUICK=1
(make asan) the loads are shorter.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_multihost.py
"""
import concurrent.futures as cf
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CSERVE_BIN", str(ROOT / "build" / "cserve"))
if not os.path.isabs(BIN):
    BIN = str(ROOT / BIN)
TINY = str(ROOT / "build" / "models" / "tiny")
QUICK = os.environ.get("CS_TEST_QUICK") == "1"
START = 120  # how long a process may take to come up (s): a wait, not a timing assert
T = 60  # client timeout (s)

NET = "10.99.0"
IP = {"r": f"{NET}.1", "a": f"{NET}.2", "b": f"{NET}.3"}
RPORT = 9000  # replicas
ADDR = {h: f"{IP[h]}:{RPORT}" for h in "ab"}
DNS_NAME = "replicas.cserve.test"
HOSTS_BASE = "127.0.0.1 localhost\n::1 localhost\n"
BODY = {"input": "Once upon a time", "max_new_tokens": 24}

pytestmark = [
    pytest.mark.skipif(not (os.path.exists(BIN) and os.path.isdir(TINY)),
                       reason="needs the cserve binary and build/models/tiny (make models)"),
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: network namespaces (ip netns) and iptables (CI runs as root)"),
]

FIGURES = {}  # printed at the end of the module

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _enter_netns(name):
    """Moves the calling thread (and threads it starts) into network namespace `name`."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({name}): {os.strerror(e)}")
    finally:
        os.close(fd)


def run(*args, ns=None, check=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def wait_for(pred, what, timeout=START, period=0.02):
    """Polls pred until it returns a true value; returns (value, monotonic time it was seen)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
        except (requests.RequestException, KeyError, ValueError) as e:
            v, last = None, e
        if v:
            return v, time.monotonic()
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


class Proc:
    """A process started inside a namespace with `ip netns exec` (which execs it: the pid is its own)."""

    def __init__(self, ns, args, log_path):
        self.log_path = log_path
        self.logf = open(log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *[str(a) for a in args]], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=self.logf)

    def log(self, tail=4000):
        return Path(self.log_path).read_text(errors="replace")[-tail:]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Returns the exit status (negative: the signal that ended it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.logf.close()
        return self.proc.returncode

    def stop_clean(self):
        """SIGTERM: exits 0 with no sanitizer report (make asan builds the binary with them)."""
        rc = self.stop(signal.SIGTERM, timeout=60)
        log = self.log(tail=20000)
        assert rc == 0, f"{self.log_path}: exit status {rc}: {log[-4000:]}"
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert bad not in log, f"{self.log_path}: {log[-6000:]}"


class Net:
    """The router host r, replica hosts a and b, and a namespace holding the bridge."""

    def __init__(self):
        tag = f"cs{os.getpid()}"
        self.ns = {h: f"{tag}{h}" for h in ("r", "a", "b", "sw")}
        self.tmp = Path(tempfile.mkdtemp(prefix="cserve-multihost-"))
        self.hosts_dir = Path("/etc/netns") / self.ns["r"]
        self.procs = []
        self.replicas = {}
        self.rules = []  # (host, iptables rule) to remove
        self.client = None  # threads inside the router namespace
        self.ctl = None

    def up(self):
        for tool in ("ip", "iptables"):
            assert shutil.which(tool), f"{tool} is not installed (tools/deps.sh installs it)"
        sw = self.ns["sw"]
        for h in ("r", "a", "b", "sw"):
            run("ip", "netns", "add", self.ns[h])
        run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", sw, "link", "set", "br0", "up")
        for h in ("r", "a", "b"):
            # made inside the bridge's namespace: nothing is ever added to the host's own network
            run("ip", "-n", sw, "link", "add", f"v-{h}", "type", "veth", "peer", "name", "eth0", "netns", self.ns[h])
            run("ip", "-n", sw, "link", "set", f"v-{h}", "master", "br0")
            run("ip", "-n", sw, "link", "set", f"v-{h}", "up")
            run("ip", "-n", self.ns[h], "addr", "add", f"{IP[h]}/24", "dev", "eth0")
            run("ip", "-n", self.ns[h], "link", "set", "eth0", "up")
            run("ip", "-n", self.ns[h], "link", "set", "lo", "up")
        # the router host's /etc/hosts (bound over /etc/hosts by ip netns exec): the DNS test's name
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        self.write_hosts(["a", "b"])
        self.client = cf.ThreadPoolExecutor(max_workers=8, initializer=_enter_netns, initargs=(self.ns["r"],))
        self.ctl = cf.ThreadPoolExecutor(max_workers=2, initializer=_enter_netns, initargs=(self.ns["r"],))

    def down(self):
        for p in self.procs:
            try:
                p.stop(signal.SIGKILL, timeout=10)
            except Exception:  # cleanup goes on
                pass
        for h, rule in self.rules:
            run("iptables", "-D", *rule, ns=self.ns[h], check=False)
        for pool in (self.client, self.ctl):
            if pool:
                pool.shutdown(wait=False, cancel_futures=True)
        for h in ("r", "a", "b", "sw"):
            run("ip", "netns", "del", self.ns[h], check=False)
        shutil.rmtree(self.hosts_dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_hosts(self, hosts):
        """Rewrites the router host's hosts file in place (the bind mount follows the inode): the new
        text first, then the cut, so that a reader never sees fewer of the new entries."""
        text = HOSTS_BASE + "".join(f"{IP[h]} {DNS_NAME}\n" for h in hosts)
        path = self.hosts_dir / "hosts"
        if not path.exists():
            path.write_text(text)
            return
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()

    # -------------------------------------------------------------- processes

    def start(self, host, args, name):
        p = Proc(self.ns[host], args, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    def start_replica(self, h):
        p = self.start(h, [BIN, "replica", "--listen", ADDR[h], "--model", TINY, "--threads", "1",
                           "--max-ongoing-requests", "8", "--replica-id", f"host-{h}"], f"replica-{h}")
        self.replicas[h] = p
        _, t = wait_for(lambda: self.up_check(p, f"http://{ADDR[h]}/-/healthz"), f"replica on host {h}")
        return p, t

    def up_check(self, p, url):
        if not p.alive():
            pytest.fail(f"{p.log_path} exited ({p.proc.returncode}): {p.log()}")
        return self.get(url, timeout=2).status_code == 200

    def start_router(self, cfg, port, admin_port, name):
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        p = self.start("r", [BIN, "router", "--config", path, "--host", IP["r"], "--port", port,
                             "--admin-port", admin_port], name)
        rt = Router(self, p, port, admin_port)
        wait_for(lambda: self.up_check(p, rt.url("/-/healthz")), f"router {name} ready")
        return rt

    # -------------------------------------------------------------- clients (in the router host)

    def get(self, url, timeout=T):
        return self.ctl.submit(requests.get, url, timeout=timeout).result()

    def load(self, url, n, body=BODY, started=None):
        """n POSTs through self.client (8 at a time); returns futures of (t0, t1, status, error)."""
        local = threading.local()

        def one():
            s = getattr(local, "s", None) or requests.Session()
            local.s = s
            t0 = time.monotonic()
            try:
                r = s.post(url, json=body, timeout=T)
                ok = r.status_code == 200 and r.json()[0]["generated_text"].startswith(body["input"])
                return t0, time.monotonic(), r.status_code if ok else -r.status_code, "" if ok else r.text[:300]
            except (requests.RequestException, ValueError, KeyError, IndexError) as e:
                return t0, time.monotonic(), 0, repr(e)

        return [self.client.submit(one) for _ in range(n)]


class Router:
    def __init__(self, net, proc, port, admin_port):
        self.net, self.proc, self.port, self.admin_port = net, proc, port, admin_port

    def url(self, path):
        return f"http://{IP['r']}:{self.port}{path}"

    def replicas(self):
        st = self.net.get(f"http://127.0.0.1:{self.admin_port}/api/serve/applications/").json()
        dep = st["applications"]["app"]["deployments"]["TextGenService"]
        return {r["replica_id"]: r for r in dep["replicas"]}, dep

    def healthy(self, addr):
        reps, _ = self.replicas()
        return addr in reps and reps[addr]["state"] == "RUNNING" and reps[addr]["healthy"]

    def counts(self):
        """Requests the router sent to each replica (Ray's per-replica counter)."""
        text = self.net.get(self.url("/metrics")).text
        out = {}
        for m in re.finditer(r'^ray_serve_deployment_request_counter_total\{[^}]*replica="([^"]+)"[^}]*\} (\d+)',
                             text, re.M):
            out[m.group(1)] = int(m.group(2))
        return out


def app_cfg(remote):
    return {"applications": [{"name": "app", "route_prefix": "/", "import_path": "cserve.apps:text_generation",
                              "args": {"model": "tiny", "remote": {"TextGenService": remote}},
                              # pushed to each replica when it joins (tiny's 128 positions: not the seed's 256)
                              "deployments": [{"name": "TextGenService", "max_ongoing_requests": 8,
                                               "user_config": {"max_new_tokens": 16}}]}]}


def results(futs):
    res = [f.result() for f in futs]
    return res, [r for r in res if r[2] != 200]


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def net(request):
    n = Net()
    try:
        n.up()
        n.start_replica("a")
        n.start_replica("b")
        yield n
    finally:
        n.down()
        if FIGURES:
            pm = request.config.pluginmanager
            tr, cap = pm.getplugin("terminalreporter"), pm.getplugin("capturemanager")
            lines = ["", "multi-host failover figures (tests/serve/test_multihost.py):"] + \
                    [f"  {k}: {v}" for k, v in FIGURES.items()]
            if tr and cap:
                with cap.global_and_fixture_disabled():  # shown with -q too
                    for line in lines:
                        tr.write_line(line)
            else:
                print("\n".join(lines))


@pytest.fixture(scope="module")
def router(net):
    rt = net.start_router(app_cfg({"replicas": [ADDR["a"], ADDR["b"]]}), 8000, 8265, "router")
    # the deployment's status follows the replicas' at the next reconcile period (0.1 s)
    wait_for(lambda: rt.healthy(ADDR["a"]) and rt.healthy(ADDR["b"]) and rt.replicas()[1]["status"] == "HEALTHY",
             "both replicas to join the router")
    return rt


# ------------------------------------------------------------------ tests

def test_seed_curl_through_router(net, router):
    p = run("curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", router.url("/text/simple-gen"),
            "-H", "Content-Type: application/json", "-d", '{"input":"Once upon a time"}', ns=net.ns["r"])
    body, code = p.stdout.rsplit("\n", 1)
    assert code == "200", p.stdout
    d = json.loads(body)
    assert d[0]["generated_text"].startswith("Once upon a time")
    reps, dep = router.replicas()
    assert set(reps) == {ADDR["a"], ADDR["b"]}
    assert all(r["pid"] == 0 and r["state"] == "RUNNING" and r["healthy"] for r in reps.values()), reps
    assert dep["status"] == "HEALTHY" and dep["target_num_replicas"] == 2, dep
    assert "Autoscaling does not apply" in dep["message"], dep["message"]


def test_kill_replica_host_process(net, router):
    n = 48 if QUICK else 200
    base = router.counts()
    futs = net.load(router.url("/text/simple-gen"), n)
    wait_for(lambda: sum(f.done() for f in futs) >= n // 4, "a quarter of the load")
    victim = net.replicas["a"]
    t_kill = time.monotonic()
    victim.proc.kill()  # SIGKILL: requests in flight on host a are cut
    _, t_routed = wait_for(lambda: not router.healthy(ADDR["a"]), "the admin API to show host a unhealthy")
    res, failed = results(futs)
    victim.stop()
    assert not failed, f"{len(failed)} of {n} requests failed: {failed[:5]}\n{router.proc.log()}"
    assert not any(r["healthy"] for a, r in router.replicas()[0].items() if a == ADDR["a"])
    # routed around: while it is down, host a gets no request
    mid = router.counts()
    res2, failed2 = results(net.load(router.url("/text/simple-gen"), 16))
    assert not failed2, failed2[:5]
    after = router.counts()
    assert after.get(ADDR["a"], 0) - mid.get(ADDR["a"], 0) <= 0, (mid, after)
    assert after[ADDR["b"]] - mid[ADDR["b"]] == 16, (mid, after)
    # restarted: it rejoins and gets requests again
    t_restart = time.monotonic()
    _, t_up = net.start_replica("a")
    _, t_rejoin = wait_for(lambda: router.healthy(ADDR["a"]), "host a to rejoin")
    before = router.counts()
    res3, failed3 = results(net.load(router.url("/text/simple-gen"), 32))
    assert not failed3, failed3[:5]
    final = router.counts()
    assert final[ADDR["a"]] > before.get(ADDR["a"], 0), (before, final)
    lat = sorted(r[1] - r[0] for r in res)
    FIGURES["kill: requests / failed"] = f"{n} / {len(failed)} (plus {16 + 32} after it, 0 failed)"
    FIGURES["kill: requests the router retried on host b"] = \
        f"{sum(final.values()) - sum(base.values()) - n - 48} (router counts minus client requests)"
    FIGURES["kill: time to route around (kill -> admin shows unhealthy)"] = f"{(t_routed - t_kill) * 1e3:.0f} ms"
    FIGURES["kill: request latency during the load p50 / max"] = \
        f"{lat[len(lat) // 2] * 1e3:.0f} / {lat[-1] * 1e3:.0f} ms"
    FIGURES["rejoin: replica process start -> ready"] = f"{(t_up - t_restart) * 1e3:.0f} ms"
    FIGURES["rejoin: ready -> routed to again (health check)"] = f"{(t_rejoin - t_up) * 1e3:.0f} ms"


def test_packet_loss_on_one_host(net, router):
    wait_for(lambda: router.healthy(ADDR["a"]) and router.healthy(ADDR["b"]), "both replicas healthy")
    rule = ["INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.3", "-j", "DROP"]
    run("iptables", "-A", *rule, ns=net.ns["a"])
    net.rules.append(("a", rule))
    n = 24 if QUICK else 100
    before = router.counts()
    t0 = time.monotonic()
    res, failed = results(net.load(router.url("/text/simple-gen"), n))
    took = time.monotonic() - t0
    run("iptables", "-D", *rule, ns=net.ns["a"])
    net.rules.remove(("a", rule))
    after = router.counts()
    assert not failed, f"{len(failed)} of {n} requests failed under 30% loss: {failed[:5]}\n{router.proc.log()}"
    lat = sorted(r[1] - r[0] for r in res)
    FIGURES["30% loss on host a: requests / failed"] = f"{n} / {len(failed)} in {took:.1f} s"
    FIGURES["30% loss: latency p50 / max"] = f"{lat[len(lat) // 2] * 1e3:.0f} / {lat[-1] * 1e3:.0f} ms"
    FIGURES["30% loss: tries sent to host a / host b"] = \
        f"{after.get(ADDR['a'], 0) - before.get(ADDR['a'], 0)} / {after[ADDR['b']] - before[ADDR['b']]}"


def test_dns_membership(net, router):
    net.write_hosts(["a", "b"])
    rt = net.start_router(app_cfg({"dns": f"{DNS_NAME}:{RPORT}", "refresh_s": 0.5}), 8001, 8266, "router-dns")
    wait_for(lambda: all(rt.healthy(ADDR[h]) for h in "ab"), "both addresses of the name to be members")
    _, dep = rt.replicas()
    assert f"DNS name {DNS_NAME}:{RPORT}" in dep["message"], dep["message"]
    res, failed = results(net.load(rt.url("/text/simple-gen"), 8))
    assert not failed, failed[:5]
    # one address leaves: drained and forgotten
    t0 = time.monotonic()
    net.write_hosts(["b"])
    _, t_left = wait_for(lambda: set(rt.replicas()[0]) == {ADDR["b"]}, "host a to leave the membership")
    mid = rt.counts()
    res, failed = results(net.load(rt.url("/text/simple-gen"), 8))
    assert not failed, failed[:5]
    assert ADDR["a"] not in rt.counts() and rt.counts()[ADDR["b"]] - mid[ADDR["b"]] == 8
    # a lookup that fails (the name is in no file and no DNS server answers in this namespace): the
    # last answer is kept, and the deployment's message says so
    net.write_hosts([])
    wait_for(lambda: "The last lookup failed" in rt.replicas()[1]["message"], "the failed lookup in the message")
    assert set(rt.replicas()[0]) == {ADDR["b"]}
    res, failed = results(net.load(rt.url("/text/simple-gen"), 4))
    assert not failed, failed[:5]
    # both again: a joins (health-checked first), then gets requests
    t1 = time.monotonic()
    net.write_hosts(["a", "b"])
    _, t_joined = wait_for(lambda: all(rt.healthy(ADDR[h]) for h in "ab"), "both hosts to join again")
    before = rt.counts()
    res, failed = results(net.load(rt.url("/text/simple-gen"), 16))
    assert not failed, failed[:5]
    after = rt.counts()
    assert after[ADDR["a"]] - before.get(ADDR["a"], 0) > 0, (before, after)
    FIGURES["DNS (refresh_s 0.5): hosts edit -> address drained and gone"] = f"{(t_left - t0) * 1e3:.0f} ms"
    FIGURES["DNS: hosts edit -> new addresses joined (health-checked)"] = f"{(t_joined - t1) * 1e3:.0f} ms"
    rt.proc.stop_clean()


def test_clean_shutdown(net, router):
    """Last: the router and the replicas stop on SIGTERM, exit 0, and no sanitizer reported anything."""
    router.proc.stop_clean()
    for h in "ab":
        net.replicas[h].stop_clean()
