"""`make bench-serving`: the seed's serving stack (Ray Serve + FastAPI + transformers pipeline)
against `cserve serve`, same machine, same run, same model directory, same requests.

Each system is started, probed until its first successful POST /text/simple-gen, warmed up, then
driven by bench/serving/loadgen.py at each concurrency level, and shut down; its processes' memory
is sampled all along. Raw results go to build/bench-serving/results.json (bench/serving/report.py
turns them into bench/serving/RESULTS.md and results.png). Run with the serving venv's python
(bench/serving/run.sh does all of it).

Environment (all optional):
  BENCH_SERVING_SYSTEMS      default seed,seed-batch,cserve,cserve-proxy,cserve-int8,seed-legacy,cserve-legacy,
                             cserve-replicas,cserve-replicas-int8,cserve-platform; a "-kvint8",
                             "-kvbf16" or "-kvfp32" suffix on a plain cserve system sets
                             --kv-cache-dtype (without one: auto, fp32 for fp32 weights, bf16
                             for bf16 and int8 ones)
  BENCH_SERVING_THREADS      CPUs given to each system (default: CPUs in the affinity mask)
  BENCH_SERVING_CONCURRENCY  default 1,8,32,128
  BENCH_SERVING_DURATION     seconds of load per level (default 20)
  BENCH_SERVING_MAX_REQUESTS requests started per level at most (default 3000)
  BENCH_SERVING_TIMEOUT      client timeout per request, seconds (default 60)
  BENCH_SERVING_PORT         HTTP port of the system under test (default 8000; a free one if taken)
  BENCH_SERVING_START_TIMEOUT seconds allowed from launch to the first response (default 300)
  BENCH_SERVING_WAIT_IDLE_S  before each level, wait up to this long for other processes (30)
  BENCH_SERVING_BATCH        @serve.batch max_batch_size of seed-batch (default 16)
  BENCH_SERVING_RETRIES      reruns of a level that other processes disturbed (> 25% of the
                             CPUs), while less than 60% of the budget is spent (default 1)
  BENCH_SERVING_MAX_S        overall budget: later levels are skipped past it (default 1800)
  BENCH_SERVING_AB_PAIRS     cserve-proxy: interleaved in-process/proxy pairs (default 3; 0: none)
  BENCH_SERVING_AB_CONCURRENCY  their concurrency (default 32)
  BENCH_SERVING_AB_DURATION  seconds of load of each of them (default 20)
  BENCH_MODEL                model directory (default build/models/distil)
  BENCH_SERVING_CSERVE       the cserve binary (default build/cserve)
  BENCH_SERVING_KEEP=1       keep the previous results.json's runs of the systems not run now

Systems: seed, seed-batch (Ray Serve); cserve[-DTYPE] (`cserve serve --model`, one process);
cserve-proxy[-DTYPE] (`cserve serve --config`: controller + proxy, one replica child process);
cserve-replicas[-DTYPE] (replica memory with 1, 2, 3 replicas and replica cold start, no load
levels: bench/serving/replicas.py); cserve-platform (mirror overhead and scale to zero and back:
bench/serving/mirror_zero.py; its own settings are listed there and in README.md).
"""
import datetime
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "build", "bench-serving")
sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import loadgen  # noqa: E402


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


DEFAULT_SYSTEMS = ("seed,seed-batch,cserve,cserve-proxy,cserve-int8,seed-legacy,cserve-legacy,"
                   "cserve-replicas,cserve-replicas-int8,cserve-platform")
# A "-legacy" system runs with transformers <= 4.51's lengths (distilgpt2: max_length 50, ~46 new
# tokens per request): the seed's pipeline built with max_length=50, cserve with
# --pipeline-defaults 4.51. Without the suffix both run the seed's real defaults (transformers
# 4.57.6, what its pin >=4.52.4 installs): 256 new tokens per request.
LEGACY_SEED_KWARGS = '{"max_length": 50}'
SYSTEMS = [s.strip() for s in (os.environ.get("BENCH_SERVING_SYSTEMS")
                               or DEFAULT_SYSTEMS).split(",") if s.strip()]
THREADS = env_int("BENCH_SERVING_THREADS", len(os.sched_getaffinity(0)))
LEVELS = [int(x) for x in (os.environ.get("BENCH_SERVING_CONCURRENCY") or "1,8,32,128").split(",")]
DURATION = env_float("BENCH_SERVING_DURATION", 20)
MAX_REQUESTS = env_int("BENCH_SERVING_MAX_REQUESTS", 3000)
TIMEOUT = env_float("BENCH_SERVING_TIMEOUT", 60)
PORT = env_int("BENCH_SERVING_PORT", 8000)
START_TIMEOUT = env_float("BENCH_SERVING_START_TIMEOUT", 300)
WAIT_IDLE_S = env_float("BENCH_SERVING_WAIT_IDLE_S", 30)
BATCH = env_int("BENCH_SERVING_BATCH", 16)
RETRIES = env_int("BENCH_SERVING_RETRIES", 1)
BUSY_LIMIT = 0.25   # other processes' share of all CPUs above which a level counts as disturbed
MAX_S = env_float("BENCH_SERVING_MAX_S", 1800)
AB_PAIRS = env_int("BENCH_SERVING_AB_PAIRS", 3)
AB_CONCURRENCY = env_int("BENCH_SERVING_AB_CONCURRENCY", 32)
AB_DURATION = env_float("BENCH_SERVING_AB_DURATION", 20)
MODEL = os.path.abspath(os.environ.get("BENCH_MODEL") or os.path.join(ROOT, "build/models/distil"))
CSERVE = os.path.abspath(os.environ.get("BENCH_SERVING_CSERVE")
                         or os.path.join(ROOT, "build", "cserve"))
VENV_BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"
PROMPT = loadgen.PROMPT
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
NCPU_ALL = os.cpu_count() or 1
T_START = time.time()


def say(msg):
    print(f"bench-serving: {msg}", flush=True)


# ---------------------------------------------------------------- /proc helpers

def cpu_busy_s():
    """Machine-wide busy CPU seconds so far (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    guest = sum(v[8:10]) if len(v) > 9 else 0
    return (sum(v) - idle - guest) / TICK


def self_cpu_s():
    t = os.times()
    return t.user + t.system


def all_pids():
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def cmdline(pid):
    raw = read(f"/proc/{pid}/cmdline", "rb")
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() if raw else ""


def stat_fields(pid):
    """(ppid, cpu seconds) from /proc/PID/stat, or None."""
    s = read(f"/proc/{pid}/stat")
    if not s:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK


def mem_kb(pid):
    """(RSS kB, PSS kB) of a process; PSS from smaps_rollup (shares of shared pages)."""
    rss = pss = None
    st = read(f"/proc/{pid}/statm")
    if st:
        rss = int(st.split()[1]) * PAGE_KB
    sm = read(f"/proc/{pid}/smaps_rollup")
    if sm:
        m = re.search(r"^Pss:\s+(\d+) kB", sm, re.M)
        if m:
            pss = int(m.group(1))
    return rss, pss


def descendants(roots):
    """roots and every process below them (by ppid), among live processes."""
    children = {}
    for pid in all_pids():
        f = stat_fields(pid)
        if f:
            children.setdefault(f[0], []).append(pid)
    out, pending = set(), list(roots)
    while pending:
        p = pending.pop()
        if p in out:
            continue
        out.add(p)
        pending.extend(children.get(p, []))
    return out


VENV = os.path.abspath(sys.prefix)


class ProcSet:
    """The processes of the system under test: the launched processes and their descendants,
    plus, for Ray (whose daemons detach from `ray start`), every process that appeared after the
    launch and runs from this venv (gcs_server, raylet, log monitor, agents) with its
    descendants (raylet's ray:: workers: controller, proxy, replica, idle workers)."""

    def __init__(self, ray=False):
        self.before = all_pids()
        self.roots = set()
        self.ray = ray

    def pids(self):
        roots = self.roots & all_pids()
        if self.ray:
            roots |= {pid for pid in all_pids() - self.before
                      if pid != os.getpid() and VENV + "/" in cmdline(pid)}
        pids = descendants(roots)
        pids.discard(os.getpid())
        return pids

    def cpu_s(self):
        total = 0.0
        for pid in self.pids():
            f = stat_fields(pid)
            if f:
                total += f[1]
        return total

    def memory(self, detail=False):
        rss = pss = 0
        procs = []
        for pid in self.pids():
            r, p = mem_kb(pid)
            if r is None:
                continue
            rss += r
            pss += p or 0
            if detail:
                procs.append({"pid": pid, "cmd": short_cmd(pid), "rss_mb": round(r / 1024, 1),
                              "pss_mb": round((p or 0) / 1024, 1)})
        res = {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1),
               "processes": len(procs) if detail else None}
        if detail:
            res["by_process"] = sorted(procs, key=lambda x: -x["rss_mb"])
        return res


def short_cmd(pid):
    c = cmdline(pid)
    if c.startswith("ray::"):
        return c.split()[0]
    parts = c.split()
    if not parts:
        return "?"
    names = [os.path.basename(p) for p in parts[:4]]
    if names[0].startswith("python") and len(names) > 1:
        names = names[1:]
    if names[0] == "-m" and len(names) > 1:
        return "python -m " + names[1]
    for n in names:
        if n.endswith(".py") or n in ("serve", "ray", "raylet", "gcs_server", "cserve"):
            return " ".join([n] + (parts[2:3] if n in ("serve", "cserve") else []))
    return names[0]


class MemSampler(threading.Thread):
    """Samples the system's memory every second; keeps the peak of the sums."""

    def __init__(self, procs):
        super().__init__(daemon=True)
        self.procs, self.stop_ev = procs, threading.Event()
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0}

    def run(self):
        while not self.stop_ev.wait(1.0):
            m = self.procs.memory()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])

    def stop(self):
        self.stop_ev.set()
        self.join(5)


# ---------------------------------------------------------------- waiting

def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def pick_port(preferred):
    if port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def first_response(port, t0, deadline, alive, interval=0.25):
    """Polls POST /text/simple-gen every interval s until it succeeds; returns seconds since t0,
    or raises."""
    attempts = 0
    while time.time() < deadline and attempts < max(5000, int((deadline - t0) / interval) + 1):
        attempts += 1
        if not alive():
            raise RuntimeError("server process exited before answering")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
            status, doc, err, _ = loadgen.request_once(
                conn, loadgen.PATH, json.dumps({"input": PROMPT}).encode(),
                {"Content-Type": "application/json"})
            conn.close()
            if err is None and loadgen.generated_text(doc) is not None:
                return time.time() - t0
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(interval)
    raise RuntimeError(f"no successful response within {deadline - t0:.0f} s")


def wait_system_idle(procs, limit_s=120):
    """Waits until the system under test uses < 0.3 of a CPU (leftover work from the previous
    level, e.g. requests whose clients timed out); returns seconds waited."""
    t0 = time.time()
    while time.time() - t0 < limit_s:
        c0, s0 = procs.cpu_s(), time.time()
        time.sleep(1.0)
        if (procs.cpu_s() - c0) / (time.time() - s0) < 0.3:
            break
    return time.time() - t0


def wait_quiet(procs):
    """Waits (at most WAIT_IDLE_S) until processes other than the system under test and this
    harness use < 15% of the CPUs; returns seconds waited."""
    t0 = time.time()
    while time.time() - t0 < WAIT_IDLE_S:
        b0, p0, o0, s0 = cpu_busy_s(), procs.cpu_s(), self_cpu_s(), time.time()
        time.sleep(1.0)
        b1, p1, o1, s1 = cpu_busy_s(), procs.cpu_s(), self_cpu_s(), time.time()
        if b0 is None:
            break
        other = ((b1 - b0) - (p1 - p0) - (o1 - o0)) / ((s1 - s0) * NCPU_ALL)
        if other < 0.15:
            break
    return time.time() - t0


# ---------------------------------------------------------------- measurement

_tok = None
TOKEN_COUNTER = None   # which tokenizer counted the tokens (written to results.json)


def tokenizer():
    """A function text -> number of GPT-2 tokens: the model directory's tokenizer through
    transformers when it is installed (the seed's venv), else bench/serving/gpt2tok.py (the same
    vocab/merges and algorithm, stdlib only), so that the cserve systems run without the venv."""
    global _tok, TOKEN_COUNTER
    if _tok is None:
        try:
            from transformers import AutoTokenizer
            hf = AutoTokenizer.from_pretrained(MODEL)
            _tok = lambda t: len(hf(t)["input_ids"])  # noqa: E731
            TOKEN_COUNTER = "transformers AutoTokenizer"
        except ImportError:
            import gpt2tok
            g = gpt2tok.Gpt2Counter(MODEL)
            _tok = g.count
            TOKEN_COUNTER = ("bench/serving/gpt2tok.py (" + ("exact pattern, `regex` module"
                             if g.exact else "approximate pattern, `re` module") + ")")
    return _tok


def count_new_tokens(texts):
    """Continuation tokens per response: GPT-2 tokens of the full text minus those of the
    prompt (the same count for every system; re-tokenizing random text can differ from the
    sampled ids by a token or two)."""
    count = tokenizer()
    n_prompt = count(PROMPT)
    out = []
    for t in texts:
        n = count(t)
        out.append(max(0, n - n_prompt) if t.startswith(PROMPT) else n)
    return out


def pct(sorted_vals, p):
    """Nearest-rank percentile; inf entries (failed requests) sort last."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def summarize(level, res):
    recs = res["records"]
    ok = [r for r in recs if r[2] is None]
    errors = {}
    for r in recs:
        if r[2] is not None:
            errors[r[2]] = errors.get(r[2], 0) + 1
    if res["incomplete"]:
        errors["timeout (never finished)"] = res["incomplete"]
    ntok = count_new_tokens([r[3] for r in ok])
    in_window = [(r, n) for r, n in zip(ok, ntok) if r[1] <= res["window_s"]]
    # Closed loop: clients stop starting requests when the window closes, and the requests in
    # flight then are waited for. Successful responses / time to the last of them estimates the
    # steady-state rate even when one request takes longer than the window (counting only the
    # responses inside the window would not).
    span = max([r[1] for r in ok] + [res["window_s"]])
    # Latency over every request sent: a failed one counts as infinitely slow, so a p99 that
    # lands on failures shows as failed rather than hiding them.
    lat = sorted([r[1] - r[0] for r in ok] + [float("inf")] * (len(recs) - len(ok)
                                                                + res["incomplete"]))

    def fin(x):
        return None if x is None or x == float("inf") else round(x, 3)
    return {"concurrency": level, "window_s": res["window_s"], "wall_s": round(res["wall_s"], 1),
            "sent": len(recs) + res["incomplete"], "ok": len(ok),
            "ok_in_window": len(in_window),
            "errors": sum(errors.values()), "error_kinds": errors,
            "span_s": round(span, 2),
            "req_per_s": round(len(ok) / span, 3),
            "tok_per_s": round(sum(ntok) / span, 1),
            "req_per_s_window_only": round(len(in_window) / res["window_s"], 3),
            "tok_per_s_window_only": round(sum(n for _, n in in_window) / res["window_s"], 1),
            "tokens_per_request": {"mean": round(sum(ntok) / len(ntok), 1) if ntok else None,
                                   "min": min(ntok) if ntok else None,
                                   "max": max(ntok) if ntok else None},
            "p50_s": fin(pct(lat, 50)), "p90_s": fin(pct(lat, 90)), "p99_s": fin(pct(lat, 99)),
            "p50_failed": pct(lat, 50) == float("inf") if lat else False,
            "p99_failed": pct(lat, 99) == float("inf") if lat else False,
            "mean_ok_s": round(sum(r[1] - r[0] for r in ok) / len(ok), 3) if ok else None}


def run_one_level(name, c, port, procs, duration=None):
    duration = duration or DURATION
    w1 = wait_system_idle(procs)
    w2 = wait_quiet(procs)
    if w1 + w2 > 3:
        say(f"{name}: waited {w1:.0f} s for the server to go idle, {w2:.0f} s for "
            f"other processes")
    say(f"{name}: concurrency {c}, {duration:.0f} s ...")
    b0, p0, o0, s0 = cpu_busy_s(), procs.cpu_s(), self_cpu_s(), time.time()
    res = loadgen.run_level(HOST, port, c, duration, MAX_REQUESTS, TIMEOUT)
    b1, p1, o1, s1 = cpu_busy_s(), procs.cpu_s(), self_cpu_s(), time.time()
    lv = summarize(c, res)
    if b0 is not None:
        lv["server_cpu"] = round((p1 - p0) / (s1 - s0), 2)
        lv["loadgen_cpu"] = round((o1 - o0) / (s1 - s0), 2)
        lv["other_cpu"] = round(max(0.0, (b1 - b0) - (p1 - p0) - (o1 - o0))
                                / ((s1 - s0) * NCPU_ALL), 3)
    say(f"{name}: c={c}: {lv['req_per_s']} req/s, {lv['tok_per_s']} tok/s, "
        f"p50 {lv['p50_s']} s, p99 {lv['p99_s']} s, {lv['ok']} ok, "
        f"{lv['errors']} errors {lv['error_kinds'] or ''}, server {lv.get('server_cpu')} "
        f"CPUs, other processes {100 * (lv.get('other_cpu') or 0):.0f}% "
        f"({lv['wall_s']:.0f} s)")
    return lv


def measure(name, port, procs, alive, doc_sys, save):
    """Warm-up, then every concurrency level; fills doc_sys["levels"]."""
    sampler = MemSampler(procs)
    sampler.start()
    try:
        # One more request after the first one (first calls are slower: lazy init), then the
        # idle footprint.
        first_response(port, time.time(), time.time() + TIMEOUT, alive)
        time.sleep(1.0)
        doc_sys["memory_idle"] = procs.memory(detail=True)
        say(f"{name}: idle memory RSS {doc_sys['memory_idle']['rss_mb']} MB, "
            f"PSS {doc_sys['memory_idle']['pss_mb']} MB in {doc_sys['memory_idle']['processes']} "
            f"processes")
        for c in LEVELS:
            if time.time() - T_START > MAX_S:
                doc_sys["levels"].append({"concurrency": c, "skipped":
                                          f"overall budget BENCH_SERVING_MAX_S={MAX_S:.0f} s spent"})
                say(f"{name}: concurrency {c} skipped (budget)")
                continue
            if not alive():
                doc_sys["levels"].append({"concurrency": c, "skipped": "server process exited"})
                continue
            best = None
            for attempt in range(RETRIES + 1):
                lv = run_one_level(name, c, port, procs)
                lv["attempts"] = attempt + 1
                if best is None or (lv.get("other_cpu") or 0) < (best.get("other_cpu") or 0):
                    best = dict(lv)
                best["attempts"] = attempt + 1
                if (lv.get("other_cpu") or 0) <= BUSY_LIMIT or not alive():
                    break
                if time.time() - T_START > 0.6 * MAX_S:
                    say(f"{name}: c={c} disturbed by other processes; no time left to rerun it")
                    break
                if attempt < RETRIES:
                    say(f"{name}: c={c} disturbed by other processes, running it again")
            doc_sys["levels"].append(best)
            save()
    finally:
        sampler.stop()
    doc_sys["memory_peak"] = sampler.peak


# ---------------------------------------------------------------- the seed: Ray Serve

# Ray, left to itself, talks to the outside even with usage stats off: its node address is the
# machine's network address (it maps 127.0.0.1 to it), its dashboard process asks the cloud metadata
# endpoints (169.254.169.254, metadata.google.internal) which cloud it runs on and posts a "usage
# stats disabled" report to Ray's server, and the raylet asks GCE's metadata server for TPUs. Here
# every address stays on loopback:
# - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray's node address 127.0.0.1 (its single-machine
#   mode, the default on macOS and Windows);
# - those HTTP calls go through Python's requests, which honours the proxy variables: they point at
#   a closed loopback port, so each call fails at once without a DNS lookup; NO_PROXY keeps Ray's own
#   loopback HTTP and gRPC traffic direct;
# - the usage report URL is a closed loopback port as well.
NOWHERE = "http://127.0.0.1:9"
OFFLINE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_USAGE_STATS_REPORT_URL": NOWHERE + "/",
               "HTTP_PROXY": NOWHERE, "HTTPS_PROXY": NOWHERE, "http_proxy": NOWHERE,
               "https_proxy": NOWHERE, "NO_PROXY": "127.0.0.1,localhost,::1",
               "no_proxy": "127.0.0.1,localhost,::1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def ray_env(port_gcs):
    env = dict(os.environ, PYTHONPATH=HERE, MODEL_DIR=MODEL, BATCH_MAX_SIZE=str(BATCH),
               PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               RAY_ADDRESS=f"{HOST}:{port_gcs}", PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
               **OFFLINE_ENV)
    for k in ("OMP_NUM_THREADS", "ALL_PROXY", "all_proxy", "GRPC_PROXY", "grpc_proxy"):
        env.pop(k, None)   # OMP_NUM_THREADS: Ray sets it from the replica's num_cpus
    return env


def serve_config(module, port, batched):
    dep = {"name": "TextGenService", "ray_actor_options": {"num_cpus": THREADS}}
    if batched:
        dep["max_ongoing_requests"] = max(32, 2 * BATCH)
    # JSON is valid YAML.
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": HOST, "port": port},
            "applications": [{"name": "transformer-app", "route_prefix": "/",
                              "import_path": f"{module}:deployment_graph",
                              "deployments": [dep]}]}


def ray_stop(env, logf):
    subprocess.run([os.path.join(VENV_BIN, "ray"), "stop", "--force"], env=env, stdout=logf,
                   stderr=subprocess.STDOUT, timeout=120)


def run_seed(name, batched, save, legacy=False):
    doc = {"system": name, "levels": [], "legacy_lengths": legacy,
           "how": ("Ray Serve, `serve run` of bench/serving/"
                   + ("serve_app_batch.py (@serve.batch max_batch_size "
                      f"{BATCH}, batch_wait_timeout_s 0.1, max_ongoing_requests {max(32, 2 * BATCH)})"
                      if batched else "serve_app.py (the seed's code, default deployment options)")
                   + f", 1 replica with num_cpus={THREADS}, on `ray start --head "
                   f"--num-cpus={THREADS}`")}
    try:
        import importlib.metadata as md
        import ray  # noqa: F401 - the stack must import, not just be listed
        import transformers  # noqa: F401
        import torch  # noqa: F401
        doc["versions"] = {k: md.version(k) for k in ("ray", "transformers", "torch", "fastapi",
                                                      "uvicorn")}
    except ImportError as e:
        doc["error"] = f"the seed's stack is not installed in the venv ({e})"
        return doc
    port = pick_port(PORT)
    gcs = pick_port(6379)
    env = ray_env(gcs)
    if legacy:
        env["SEED_PIPELINE_KWARGS"] = LEGACY_SEED_KWARGS
        doc["how"] += f"; pipeline(..., **{LEGACY_SEED_KWARGS})"
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    logf = open(os.path.join(OUT, "logs", f"{name}.log"), "w")
    cfg_path = os.path.join(OUT, f"{name}-config.yaml")
    with open(cfg_path, "w") as f:
        json.dump(serve_config("serve_app_batch" if batched else "serve_app", port, batched), f,
                  indent=1)
    procs = ProcSet(ray=True)
    serve_p = None
    try:
        ray_stop(env, logf)   # a cluster left over by an interrupted run of this benchmark
        procs.before = all_pids()
        say(f"{name}: ray start --head --num-cpus={THREADS}; serve run (port {port}) ...")
        t0 = time.time()
        r = subprocess.run([os.path.join(VENV_BIN, "ray"), "start", "--head",
                            f"--num-cpus={THREADS}", "--num-gpus=0", f"--port={gcs}",
                            "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                            "--disable-usage-stats"],
                           env=env, stdout=logf, stderr=subprocess.STDOUT, timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed (exit {r.returncode}), see "
                               f"build/bench-serving/logs/{name}.log")
        doc["ray_start_s"] = round(time.time() - t0, 2)
        serve_p = subprocess.Popen([os.path.join(VENV_BIN, "serve"), "run", cfg_path],
                                   env=env, cwd=HERE, stdout=logf, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        procs.roots.add(serve_p.pid)
        doc["start_to_first_response_s"] = round(first_response(
            port, t0, t0 + START_TIMEOUT, lambda: serve_p.poll() is None), 2)
        say(f"{name}: first response {doc['start_to_first_response_s']} s after launch "
            f"(ray start {doc['ray_start_s']} s)")
        save()
        measure(name, port, procs, lambda: serve_p.poll() is None, doc, save)
    except Exception as e:  # noqa: BLE001 - any failure becomes the row's reason
        doc["error"] = f"{type(e).__name__}: {e}"
        say(f"{name}: n/a ({doc['error']})")
    finally:
        if serve_p is not None and serve_p.poll() is None:
            serve_p.send_signal(signal.SIGINT)   # serve run: Ctrl-C shuts the application down
            try:
                serve_p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(serve_p.pid, signal.SIGKILL)
                serve_p.wait()
        try:
            ray_stop(env, logf)
        except (OSError, subprocess.TimeoutExpired) as e:
            say(f"{name}: ray stop failed: {e}")
        left = procs.pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        logf.close()
    doc["log_excerpt"] = replica_log_lines(name)
    return doc


def replica_log_lines(name):
    """The replica's own 'torch threads' line, to show what it ran with."""
    out = []
    for base, _, files in os.walk("/tmp/ray/session_latest/logs/serve"):
        for fn in files:
            txt = read(os.path.join(base, fn)) or ""
            out += [ln.strip()[-200:] for ln in txt.splitlines() if "torch threads" in ln]
    return out[-2:]


# ---------------------------------------------------------------- cserve

def cserve_version():
    try:
        v = subprocess.run([CSERVE, "version"], text=True, capture_output=True, timeout=10)
        return v.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def git_state():
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, text=True, capture_output=True).stdout.strip()
    try:
        rev = git("rev-parse", "--short", "HEAD")
        subject = git("log", "-1", "--format=%s")[:200]
        dirty = git("status", "--porcelain", "--untracked-files=all", "--", "src")
        n = len(dirty.splitlines())
        return {"commit": rev, "subject": subject, "src_uncommitted_files": n,
                "binary_mtime": datetime.datetime.fromtimestamp(os.path.getmtime(CSERVE))
                .astimezone().strftime("%Y-%m-%d %H:%M %Z") if os.path.exists(CSERVE) else None}
    except OSError:
        return {}


def cserve_usable(doc, name, need=("--port",)):
    """Checks that CSERVE exists and that its `serve --help` names every flag in need; else
    fills doc["error"] and returns False."""
    if not os.access(CSERVE, os.X_OK):
        doc["error"] = f"{CSERVE} not built"
        say(f"{name}: n/a ({doc['error']})")
        return False
    h = subprocess.run([CSERVE, "serve", "--help"], text=True, capture_output=True, timeout=10)
    missing = [f for f in need if f not in (h.stdout + h.stderr)]
    if h.returncode != 0 or missing:
        last = ((h.stdout + h.stderr).strip().splitlines() or [""])[-1][:200]
        doc["error"] = (f"this build of cserve has no working `serve` command with "
                        f"{', '.join(need)} ({last})")
        say(f"{name}: n/a ({doc['error']})")
        return False
    return True


def cserve_config(port, dtype, num_replicas=1):
    """The Serve config of the control-plane systems: one application at "/" (the seed's route
    /text/simple-gen is forwarded as it is), TextGenService with the in-process server's
    max_ongoing_requests (32) and THREADS CPUs per replica (ray_actor_options.num_cpus, which
    cserve turns into the replica's --threads)."""
    args = {"model": MODEL}
    if dtype != "fp32":
        args["dtype"] = dtype
    return {"http_options": {"host": HOST, "port": port},
            "applications": [{"name": "default", "route_prefix": "/",
                              "import_path": "cserve.apps:text_generation", "args": args,
                              "deployments": [{"name": "TextGenService",
                                               "num_replicas": num_replicas,
                                               "max_ongoing_requests": 32,
                                               "ray_actor_options": {"num_cpus": THREADS}}]}]}


def packed_cache(dtype):
    """(cache directory, whether a packed file of this dtype is already there)."""
    cache = os.path.join(OUT, "pack-cache")
    os.makedirs(cache, exist_ok=True)
    return cache, any(dtype in f for f in os.listdir(cache))


class CserveProc:
    """One `cserve serve` process of the benchmark (with --config: plus its replica children),
    logging to build/bench-serving/logs/NAME.log, packed weights in
    build/bench-serving/pack-cache."""

    def __init__(self, name, dtype, config=None, legacy=False, kv=None):
        self.name, self.dtype = name, dtype
        self.port = pick_port(PORT)
        self.admin_port = None
        self.cache, self.cache_present = packed_cache(dtype)
        os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
        self.log_path = os.path.join(OUT, "logs", f"{name}.log")
        self.logf = open(self.log_path, "w")
        self.procs = ProcSet()
        self.p = None
        self.t0 = None
        if config is None:
            self.argv = [CSERVE, "serve", "--model", MODEL, "--host", HOST, "--port",
                         str(self.port), "--threads", str(THREADS), "--dtype", dtype]
            if kv:
                self.argv += ["--kv-cache-dtype", kv]
            if legacy:
                self.argv += ["--pipeline-defaults", "4.51"]
        else:
            self.admin_port = pick_port(8265)
            self.config_path = os.path.join(OUT, f"{name}-config.json")
            with open(self.config_path, "w") as f:
                json.dump(config(self.port), f, indent=1)   # JSON is valid YAML
            self.argv = [CSERVE, "serve", "--config", self.config_path,
                         "--admin-port", str(self.admin_port)]

    def start(self):
        self.t0 = time.time()
        self.p = subprocess.Popen(self.argv, env=dict(os.environ, CS_CACHE_DIR=self.cache),
                                  stdout=self.logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.procs.roots.add(self.p.pid)
        return self.t0

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self):
        """SIGTERM (graceful drain), then whatever of its processes is left is killed."""
        if self.p is not None:
            left = self.procs.pids()
            if self.p.poll() is None:
                self.p.send_signal(signal.SIGTERM)
                try:
                    self.p.wait(30)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait()
            time.sleep(0.2)
            for pid in left & all_pids():
                if pid != self.p.pid and "cserve" in cmdline(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        self.logf.close()


def ab_compare(name, dtype, proxy_cs, save):
    """The proxy's cost, measured so that the machine's drift cancels: an in-process `cserve
    serve --model` next to the running `serve --config` one (each idle while the other is
    measured), then AB_PAIRS pairs of AB_CONCURRENCY-client levels, in-process and proxy
    alternately (ABBA order), AB_DURATION s each."""
    ab = {"concurrency": AB_CONCURRENCY, "duration_s": AB_DURATION, "pairs": []}
    inproc = CserveProc(f"{name}-ab-inprocess", dtype)
    inproc.port = pick_port(proxy_cs.port + 1)
    inproc.argv[inproc.argv.index("--port") + 1] = str(inproc.port)
    try:
        t0 = inproc.start()
        first_response(inproc.port, t0, t0 + min(START_TIMEOUT, 180), inproc.alive)
        first_response(inproc.port, time.time(), time.time() + TIMEOUT, inproc.alive)
        sides = {"inprocess": inproc, "proxy": proxy_cs}
        for i in range(AB_PAIRS):
            pair = {}
            for side in (("inprocess", "proxy") if i % 2 == 0 else ("proxy", "inprocess")):
                cs = sides[side]
                if not cs.alive():
                    raise RuntimeError(f"the {side} server exited")
                lv = run_one_level(f"{name} A/B {i + 1} {side}", AB_CONCURRENCY, cs.port,
                                   cs.procs, AB_DURATION)
                pair[side] = {k: lv.get(k) for k in ("req_per_s", "tok_per_s", "p50_s", "p99_s",
                                                     "p50_failed", "p99_failed", "ok", "sent",
                                                     "errors", "server_cpu", "other_cpu")}
            pin, ppx = pair["inprocess"]["req_per_s"], pair["proxy"]["req_per_s"]
            pair["ratio_req_per_s"] = round(ppx / pin, 3) if pin else None
            ab["pairs"].append(pair)
            save()
        rs = sorted(p["ratio_req_per_s"] for p in ab["pairs"] if p["ratio_req_per_s"])
        tot = {s: sum(p[s]["req_per_s"] or 0 for p in ab["pairs"]) for s in sides}
        ab["median_ratio_req_per_s"] = round(statistics.median(rs), 3) if rs else None
        ab["ratio_of_means_req_per_s"] = round(tot["proxy"] / tot["inprocess"], 3) \
            if tot["inprocess"] else None
        for k in ("p50_s", "p99_s"):
            a = [p["inprocess"][k] for p in ab["pairs"] if p["inprocess"][k] is not None]
            b = [p["proxy"][k] for p in ab["pairs"] if p["proxy"][k] is not None]
            if a and b and len(a) == len(b):
                ab[f"ratio_of_means_{k}"] = round(sum(b) / sum(a), 3)
        say(f"{name}: A/B at c={AB_CONCURRENCY}: proxy/in-process req/s per pair {rs}, "
            f"ratio of means {ab['ratio_of_means_req_per_s']}")
    except Exception as e:  # noqa: BLE001
        ab["error"] = f"{type(e).__name__}: {e}"
        say(f"{name}: A/B n/a ({ab['error']})")
    finally:
        inproc.stop()
    return ab


def logged_kv_dtype(log_path):
    """The KV cache type in the server's (or its first replica's) ready line, or None."""
    try:
        with open(log_path, errors="replace") as f:
            m = re.search(r"weights, (\w+) KV cache", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def run_cserve(name, dtype, save, proxy=False, legacy=False, kv=None):
    doc = {"system": name, "levels": [], "dtype": dtype, "kv_cache_dtype": kv, "legacy_lengths": legacy,
           "version": cserve_version(), "git": git_state()}
    if proxy:
        doc["how"] = (f"`build/cserve serve --config FILE`: controller + HTTP proxy + admin API in "
                      f"one process, one application at \"/\" (cserve.apps:text_generation, dtype "
                      f"{dtype}), TextGenService num_replicas 1, max_ongoing_requests 32, "
                      f"ray_actor_options.num_cpus {THREADS} (the replica runs {THREADS} threads); "
                      f"the replica is a child process behind a Unix socket")
    else:
        doc["how"] = (f"`build/cserve serve --model DIR --threads {THREADS} --dtype {dtype}"
                      + (f" --kv-cache-dtype {kv}" if kv else "")
                      + (" --pipeline-defaults 4.51" if legacy else "")
                      + "` (defaults otherwise: max_ongoing_requests 32, max_queued_requests 256)")
    if not cserve_usable(doc, name, ("--port", "--config", "--admin-port") if proxy
                         else ("--port",)):
        return doc
    cs = CserveProc(name, dtype, (lambda port: cserve_config(port, dtype)) if proxy else None,
                    legacy=legacy, kv=kv)
    doc["packed_cache_before_start"] = ("present" if cs.cache_present
                                        else "absent (this start packs the weights)")
    try:
        say(f"{name}: {' '.join(os.path.basename(a) for a in cs.argv[:3])} ... "
            f"--dtype {dtype} --threads {THREADS} (port {cs.port}) ...")
        t0 = cs.start()
        doc["start_to_first_response_s"] = round(first_response(
            cs.port, t0, t0 + min(START_TIMEOUT, 180), cs.alive), 2)
        say(f"{name}: first response {doc['start_to_first_response_s']} s after launch")
        logged = logged_kv_dtype(cs.log_path)   # what --kv-cache-dtype auto picked, as the server says
        if logged and not kv:
            doc["kv_cache_dtype"] = logged
            if not proxy:
                doc["how"] = doc["how"][:-1] + f", KV cache {logged} by --kv-cache-dtype auto)"
        save()
        measure(name, cs.port, cs.procs, cs.alive, doc, save)
        if proxy and AB_PAIRS > 0 and cs.alive():
            if time.time() - T_START > MAX_S:
                doc["ab"] = {"skipped": f"overall budget BENCH_SERVING_MAX_S={MAX_S:.0f} s spent"}
            else:
                doc["ab"] = ab_compare(name, dtype, cs, save)
        if not cs.alive():
            doc["error_after"] = f"cserve exited with {cs.p.returncode} during the run"
    except Exception as e:  # noqa: BLE001
        doc["error"] = f"{type(e).__name__}: {e}"
        if cs.p is not None and cs.p.poll() is not None:
            doc["error"] += f" (exit {cs.p.returncode}; see build/bench-serving/logs/{name}.log)"
        say(f"{name}: n/a ({doc['error']})")
    finally:
        cs.stop()
    return doc


# ---------------------------------------------------------------- machine, main

def cserve_system(s):
    """'cserve-proxy-int8' -> ('proxy', 'int8', None); 'cserve' -> ('serve', 'fp32', None);
    'cserve-int8-kvint8' -> ('serve', 'int8', 'int8') (KV cache dtype, serve only); unknown: None."""
    parts = s.split("-")[1:]
    if parts and parts[-1] == "legacy":
        parts.pop()
    kv = None
    if parts and parts[-1] in ("kvint8", "kvbf16", "kvfp32"):
        kv = parts.pop()[2:]
    kind = "serve"
    if parts and parts[0] in ("proxy", "replicas", "platform"):
        kind = parts.pop(0)
    dtype = parts.pop(0) if parts else "fp32"
    if parts or dtype not in ("fp32", "int8", "bf16") or (kv and kind != "serve"):
        return None, None, None
    return kind, dtype, kv


def machine():
    m = {"cpu": platform.machine(), "cpus_online": os.cpu_count(),
         "cpus_affinity": len(os.sched_getaffinity(0)), "kernel": platform.release(),
         "python": platform.python_version(),
         "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
         "loadavg_start": (read("/proc/loadavg") or "?").split()[:3]}
    cpuinfo = read("/proc/cpuinfo") or ""
    mm = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    if mm:
        m["cpu"] = mm.group(1).strip()
    mem = read("/proc/meminfo") or ""
    mm = re.search(r"MemTotal:\s+(\d+)", mem)
    if mm:
        m["mem_gb"] = round(int(mm.group(1)) / 1024 / 1024, 1)
    return m


def kept_runs(path, cfg):
    """BENCH_SERVING_KEEP=1: the runs of the previous results.json whose system is not measured
    again now (e.g. the seed's, when only the cserve systems are rerun after a disturbed run),
    provided it was measured with the same load settings; each is marked with its run's date."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        say("BENCH_SERVING_KEEP=1: no previous results.json, nothing kept")
        return []
    same = ("threads", "concurrency", "duration_s", "max_requests", "timeout_s", "prompt", "model")
    if any(old.get("config", {}).get(k) != cfg[k] for k in same):
        say("BENCH_SERVING_KEEP=1: the previous results.json had other settings, nothing kept")
        return []
    kept = []
    for r in old.get("runs", []):
        if r.get("system") not in SYSTEMS:
            r.setdefault("earlier_run", {"date": old.get("machine", {}).get("date"),
                                         "loadavg_start": old.get("machine", {})
                                         .get("loadavg_start")})
            kept.append(r)
    say(f"BENCH_SERVING_KEEP=1: kept {', '.join(r['system'] for r in kept) or 'nothing'} from "
        f"the previous results.json")
    return kept


def main():
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[k] = "1"   # a local model directory only: nothing is fetched
    os.makedirs(OUT, exist_ok=True)
    say(f"systems={','.join(SYSTEMS)} threads={THREADS} concurrency={LEVELS} "
        f"duration={DURATION:.0f}s timeout={TIMEOUT:.0f}s model={MODEL}")
    doc = {"machine": machine(),
           "config": {"threads": THREADS, "concurrency": LEVELS, "duration_s": DURATION,
                      "max_requests": MAX_REQUESTS, "timeout_s": TIMEOUT, "prompt": PROMPT,
                      "model": os.path.relpath(MODEL, ROOT), "batch": BATCH},
           "runs": []}
    path = os.path.join(OUT, "results.json")

    def save():
        doc["duration_s"] = round(time.time() - T_START, 1)
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(path + ".tmp", path)

    if os.environ.get("BENCH_SERVING_KEEP", "").strip() == "1":
        doc["runs"] = kept_runs(path, doc["config"])
    tokenizer()   # loaded before any server runs, so its import does not disturb a level
    doc["config"]["token_counter"] = TOKEN_COUNTER
    for s in SYSTEMS:
        legacy = s.endswith("-legacy")
        if s in ("seed", "seed-legacy"):
            doc["runs"].append(run_seed(s, False, save, legacy))
        elif s in ("seed-batch", "seed-batch-legacy"):
            doc["runs"].append(run_seed(s, True, save, legacy))
        elif s.startswith("cserve"):
            kind, dtype, kv = cserve_system(s)
            if kind is None:
                say(f"unknown system {s!r} in BENCH_SERVING_SYSTEMS")
                continue
            if kind == "replicas":
                import replicas
                doc["runs"].append(replicas.run(sys.modules[__name__], s, dtype, save))
            elif kind == "platform":
                import mirror_zero
                doc["runs"].append(mirror_zero.run(sys.modules[__name__], s, save))
            else:
                doc["runs"].append(run_cserve(s, dtype, save, proxy=kind == "proxy", legacy=legacy, kv=kv))
        else:
            say(f"unknown system {s!r} in BENCH_SERVING_SYSTEMS")
            continue
        save()
    doc["machine"]["loadavg_end"] = (read("/proc/loadavg") or "?").split()[:3]
    save()
    say(f"all systems done in {time.time() - T_START:.0f} s; results in "
        f"{os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--list-systems"]:   # for run.sh: does this run need the seed's venv?
        print(",".join(SYSTEMS))
    else:
        main()
