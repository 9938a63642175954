"""`make bench-serving`, system cserve-platform: what shadow traffic and scale to zero cost.

1. Mirror overhead. One `cserve serve --config` with one application at "/"
   (cserve.apps:text_generation): TextGenService and a version `cand` (the same model), fp32,
   `ray_actor_options.num_cpus: 1` each, so the two replicas run one thread each. The config is
   switched between "without mirror" and `mirror: {deployment: cand, percent: MIRROR_PERCENT}`
   with `PUT /api/serve/applications/` (a change of `args.mirror` keeps every replica: the
   replica ids are checked before each side), so both sides run on the same processes. For each
   concurrency in MIRROR_CONCURRENCY, MIRROR_PAIRS pairs of closed-loop seed-request levels of
   MIRROR_DURATION s, without / with mirror in ABBA order. Reported per side: the primary's p50,
   p99, mean and req/s (client side), the shadow copies from /metrics
   (cserve_deployment_requests_total{deployment="cand",role="shadow"}: ok / error / dropped),
   and the CPUs used by the whole server, the primary's replica and the mirror's replica.
2. Scale to zero and back, for fp32 and int8 (packed-weight cache present). TextGenService with
   autoscaling {min_replicas 0, max_replicas 1, downscale_to_zero_delay_s 1, downscale_delay_s 1,
   upscale_delay_s 0, metrics_interval_s 0.5, look_back_period_s 1}, THREADS CPUs. One warm-up
   request (its replica goes away again), then ZERO_REPS times: wait until the deployment has no
   replica at all in `GET /api/serve/applications/`, send one streaming `POST /v1/completions`
   (8 tokens): request to first token, to the new replica's spawn (its start_time_s); wait for
   zero again, send one seed request: request to answer. Each answer is checked in the access
   log to come from a replica that did not exist when the request was sent.
"""
import http.client
import os
import re
import statistics
import time

import replicas as rp   # the control-plane helpers (HTTP, status JSON, access log)

DEP, CAND = "TextGenService", "cand"


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


MIRROR_PAIRS = env_int("BENCH_SERVING_MIRROR_PAIRS", 2)
MIRROR_CONCURRENCY = [int(x) for x in (os.environ.get("BENCH_SERVING_MIRROR_CONCURRENCY")
                                       or "1,8").split(",") if x.strip()]
MIRROR_DURATION = env_float("BENCH_SERVING_MIRROR_DURATION", 15)
MIRROR_PERCENT = env_float("BENCH_SERVING_MIRROR_PERCENT", 10)
ZERO_REPS = env_int("BENCH_SERVING_ZERO_REPS", 3)
ZERO_DTYPES = ("fp32", "int8")
WAIT_ZERO_S = 60        # idle to no replica, at most
AUTOSCALING = {"min_replicas": 0, "max_replicas": 1, "downscale_to_zero_delay_s": 1,
               "downscale_delay_s": 1, "upscale_delay_s": 0, "metrics_interval_s": 0.5,
               "look_back_period_s": 1}
METRIC_RE = re.compile(r"^(cserve_deployment_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)\s*$")
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')


# ---------------------------------------------------------------- configs

def mirror_config(h, port, mirror):
    """TextGenService + version cand (same model, fp32), one CPU each; with mirror: MIRROR_PERCENT
    % of the generation requests copied to cand."""
    args = {"model": h.MODEL, "versions": {CAND: {"model": h.MODEL}}}
    if mirror:
        args["mirror"] = {"deployment": CAND, "percent": MIRROR_PERCENT}
    deps = [{"name": d, "num_replicas": 1, "max_ongoing_requests": 32,
             "ray_actor_options": {"num_cpus": 1}} for d in (DEP, CAND)]
    return {"http_options": {"host": h.HOST, "port": port},
            "applications": [{"name": rp.APP, "route_prefix": "/",
                              "import_path": "cserve.apps:text_generation", "args": args,
                              "deployments": deps}]}


def zero_config(h, port, dtype):
    args = {"model": h.MODEL}
    if dtype != "fp32":
        args["dtype"] = dtype
    return {"http_options": {"host": h.HOST, "port": port},
            "applications": [{"name": rp.APP, "route_prefix": "/",
                              "import_path": "cserve.apps:text_generation", "args": args,
                              "deployments": [{"name": DEP, "max_ongoing_requests": 32,
                                               "autoscaling_config": dict(AUTOSCALING),
                                               "ray_actor_options": {"num_cpus": h.THREADS}}]}]}


# ---------------------------------------------------------------- status, metrics, CPU

def deployment_replicas(h, admin_port, dep):
    """{replica_id: pid} of dep's RUNNING replicas, or None when the admin API does not answer."""
    try:
        st, doc = rp.http_json(h.HOST, admin_port, "GET", "/api/serve/applications/", timeout=5)
    except (OSError, http.client.HTTPException):
        return None
    if st != 200 or not isinstance(doc, dict):
        return None
    try:
        reps = doc["applications"][rp.APP]["deployments"][dep]["replicas"]
    except (KeyError, TypeError):
        return {}
    return {r["replica_id"]: r.get("pid") for r in reps
            if isinstance(r, dict) and r.get("state") == "RUNNING"}


def metrics(h, port):
    """{(series name, sorted label items): value} of the cserve_deployment_* series."""
    conn = http.client.HTTPConnection(h.HOST, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m and "_bucket" not in m.group(1):
            out[(m.group(1), tuple(sorted(LABEL_RE.findall(m.group(2)))))] = float(m.group(3))
    return out


def metric_delta(a, b, name, **labels):
    """Sum over the series name whose labels include labels, b - a."""
    total = 0.0
    for (n, lab), v in b.items():
        d = dict(lab)
        if n == name and all(d.get(k) == x for k, x in labels.items()):
            total += v - a.get((n, lab), 0.0)
    return total


def cpu_of(h, pids):
    return {p: (h.stat_fields(p) or (0, 0.0))[1] for p in pids}


# ---------------------------------------------------------------- 1. mirror overhead

def put_config(h, cs, cfg):
    st, body = rp.http_json(h.HOST, cs.admin_port, "PUT", "/api/serve/applications/", cfg)
    if st != 200:
        raise RuntimeError(f"PUT /api/serve/applications/ answered HTTP {st}: {str(body)[:200]}")


def level(h, label, c, cs, pids):
    """harness.run_one_level with the replicas' own CPU seconds taken over the same window as
    the server's (after the waits for quiet, not before them); (level, cpu before, cpu after,
    t0, t1); the level has the /metrics snapshot taken just before it as metrics_before."""
    w1 = h.wait_system_idle(cs.procs)
    w2 = h.wait_quiet(cs.procs)
    if w1 + w2 > 3:
        h.say(f"{label}: waited {w1:.0f} s for the server to go idle, {w2:.0f} s for other "
              f"processes")
    h.say(f"{label}: concurrency {c}, {MIRROR_DURATION:.0f} s ...")
    m0 = metrics(h, cs.port)
    b0, p0, o0, c0, s0 = (h.cpu_busy_s(), cs.procs.cpu_s(), h.self_cpu_s(), cpu_of(h, pids),
                          time.time())
    res = h.loadgen.run_level(h.HOST, cs.port, c, MIRROR_DURATION, h.MAX_REQUESTS, h.TIMEOUT)
    b1, p1, o1, c1, s1 = (h.cpu_busy_s(), cs.procs.cpu_s(), h.self_cpu_s(), cpu_of(h, pids),
                          time.time())
    lv = h.summarize(c, res)
    lv["metrics_before"] = m0
    if b0 is not None:
        lv["server_cpu"] = round((p1 - p0) / (s1 - s0), 2)
        lv["loadgen_cpu"] = round((o1 - o0) / (s1 - s0), 2)
        lv["other_cpu"] = round(max(0.0, (b1 - b0) - (p1 - p0) - (o1 - o0))
                                / ((s1 - s0) * h.NCPU_ALL), 3)
    return lv, c0, c1, s0, s1


def mirror_side(h, cs, name, c, mirror, ids):
    """One level with the mirror on or off; ids: the replica ids both sides must run on."""
    put_config(h, cs, mirror_config(h, cs.port, mirror))
    now = {d: deployment_replicas(h, cs.admin_port, d) or {} for d in (DEP, CAND)}
    kept = all(set(now[d]) == set(ids[d]) for d in (DEP, CAND))
    pids = {d: next(iter(now[d].values()), None) for d in (DEP, CAND)}
    lv, c0, c1, t0, t1 = level(h, f"{name} mirror {'on' if mirror else 'off'}", c, cs,
                               [p for p in pids.values() if p])
    m0 = lv.pop("metrics_before")
    # the copies still running when the level ends are counted too
    h.wait_system_idle(cs.procs, 30)
    m1 = metrics(h, cs.port)
    side = {k: lv.get(k) for k in ("req_per_s", "p50_s", "p90_s", "p99_s", "p50_failed",
                                   "p99_failed", "mean_ok_s", "ok", "sent", "errors",
                                   "error_kinds", "server_cpu", "loadgen_cpu", "other_cpu",
                                   "wall_s")}
    side["mirror"] = mirror
    side["replicas_kept"] = kept
    # replica CPUs over the level (the same window as server_cpu): CPU seconds / wall seconds
    for d, key in ((DEP, "primary_replica_cpu"), (CAND, "mirror_replica_cpu")):
        p = pids[d]
        side[key] = round((c1.get(p, 0) - c0.get(p, 0)) / (t1 - t0), 2) if p else None
    for oc in ("ok", "error", "dropped"):
        side[f"shadow_{oc}"] = int(metric_delta(m0, m1, "cserve_deployment_requests_total",
                                                deployment=CAND, role="shadow", outcome=oc))
    side["primary_ok"] = int(metric_delta(m0, m1, "cserve_deployment_requests_total",
                                          deployment=DEP, role="primary", outcome="ok"))
    for d, role, key in ((DEP, "primary", "primary_server_mean_ms"),
                         (CAND, "shadow", "shadow_server_mean_ms")):
        n = metric_delta(m0, m1, "cserve_deployment_latency_ms_count", deployment=d, role=role)
        s = metric_delta(m0, m1, "cserve_deployment_latency_ms_sum", deployment=d, role=role)
        side[key] = round(s / n, 1) if n else None
    h.say(f"{name}: c={c} mirror {'on' if mirror else 'off'}: p50 {side['p50_s']} s, shadow "
          f"ok/error/dropped {side['shadow_ok']}/{side['shadow_error']}/{side['shadow_dropped']} "
          f"of {side['primary_ok']} primary; CPUs server {side['server_cpu']}, primary replica "
          f"{side['primary_replica_cpu']}, mirror replica {side['mirror_replica_cpu']}")
    return side


def ratio_of_means(pairs, key):
    a = [p["without"][key] for p in pairs if p["without"].get(key) is not None]
    b = [p["with"][key] for p in pairs if p["with"].get(key) is not None]
    return round(sum(b) / sum(a), 4) if a and b and len(a) == len(b) and sum(a) else None


def mirror_overhead(h, name, save, doc):
    out = doc["mirror"] = {"percent": MIRROR_PERCENT, "duration_s": MIRROR_DURATION,
                           "pairs_per_level": MIRROR_PAIRS, "levels": []}
    cs = h.CserveProc(f"{name}-mirror", "fp32", lambda port: mirror_config(h, port, True))
    out["packed_cache_before_start"] = "present" if cs.cache_present else "absent"
    try:
        h.say(f"{name}: mirror A/B: cserve serve --config (TextGenService + {CAND}, 1 CPU each, "
              f"port {cs.port}, admin {cs.admin_port}) ...")
        t0 = cs.start()
        h.first_response(cs.port, t0, t0 + 180, cs.alive)
        ids, _ = rp.wait_until(lambda: (lambda r: r if all(r.values()) else None)(
            {d: deployment_replicas(h, cs.admin_port, d) for d in (DEP, CAND)}), rp.WAIT_RUNNING_S)
        if not ids:
            raise RuntimeError(f"{DEP} and {CAND} not both RUNNING")
        # warm-up with the mirror on: the candidate's first copies (lazy init) happen here
        for _ in range(10):
            rp.seed_request(h, cs.port)
        for c in MIRROR_CONCURRENCY:
            lvl = {"concurrency": c, "pairs": []}
            out["levels"].append(lvl)
            for i in range(MIRROR_PAIRS):
                if time.time() - h.T_START > h.MAX_S:
                    lvl["skipped"] = f"overall budget BENCH_SERVING_MAX_S={h.MAX_S:.0f} s spent"
                    break
                pair = {}
                for mirror in ((False, True) if i % 2 == 0 else (True, False)):
                    if not cs.alive():
                        raise RuntimeError("the server exited")
                    pair["with" if mirror else "without"] = mirror_side(h, cs, name, c, mirror,
                                                                        ids)
                a, b = pair["without"]["p50_s"], pair["with"]["p50_s"]
                pair["ratio_p50"] = round(b / a, 4) if a and b else None
                lvl["pairs"].append(pair)
                save()
            ps = lvl["pairs"]
            rs = sorted(p["ratio_p50"] for p in ps if p.get("ratio_p50"))
            lvl["median_ratio_p50"] = round(statistics.median(rs), 4) if rs else None
            for k in ("p50_s", "p99_s", "mean_ok_s", "req_per_s"):
                lvl[f"ratio_of_means_{k}"] = ratio_of_means(ps, k)
            h.say(f"{name}: mirror at {MIRROR_PERCENT:g}%, c={c}: primary p50 with / without "
                  f"{lvl['ratio_of_means_p50_s']} (pairs {rs})")
        if not cs.alive():
            out["error_after"] = f"cserve exited with {cs.p.returncode} during the run"
    except Exception as e:  # noqa: BLE001 - any failure becomes the part's reason
        out["error"] = f"{type(e).__name__}: {e}"
        if cs.p is not None and cs.p.poll() is not None:
            out["error"] += f" (exit {cs.p.returncode}; see build/bench-serving/logs/{cs.name}.log)"
        h.say(f"{name}: mirror n/a ({out['error']})")
    finally:
        cs.stop()


# ---------------------------------------------------------------- 2. scale to zero and back

def wait_zero(h, cs):
    """Waits until the deployment has no replica at all (not even STOPPING); seconds or None."""
    t0 = time.time()
    _, t = rp.wait_until(lambda: rp.replicas_of(h, cs.admin_port) == [], WAIT_ZERO_S)
    return round(t - t0, 3) if t else None


def from_zero(h, cs, kind, t_prev):
    """One request to a deployment with no replica: kind 'stream' or 'seed'; t_prev: when the
    previous answer arrived (idle from then on). Returns the row and when its answer arrived."""
    res = {"kind": kind}
    if wait_zero(h, cs) is None:
        res["error"] = f"still a replica after {WAIT_ZERO_S} s idle"
        return res, time.time()
    res["wait_zero_s"] = round(time.time() - t_prev, 3)
    h.wait_quiet(cs.procs)
    res["server_pss_at_zero_mb"] = cs.procs.memory()["pss_mb"]
    time.sleep(0.2)   # really idle: nothing in flight, the autoscaler settled
    out = {}
    t_req = time.time()
    if kind == "stream":
        rp.stream_request(h, cs.port, out)
        rid = out.get("request_id")
        if "t_first" in out:
            res["request_to_first_token_s"] = round(out["t_first"] - t_req, 3)
            res["request_to_done_s"] = round(out["t_done"] - t_req, 3)
        else:
            res["error"] = out.get("error", "no token")
    else:
        ok, rid, err = rp.seed_request(h, cs.port)
        if ok:
            res["request_to_answer_s"] = round(time.time() - t_req, 3)
        else:
            res["error"] = err
    t_answer = time.time()
    reps = rp.replicas_of(h, cs.admin_port) or []
    new = [r for r in reps if r.get("start_time_s") and r["start_time_s"] >= t_req - 0.05]
    if new:
        res["replica"] = new[0]["replica_id"]
        res["request_to_spawn_s"] = round(new[0]["start_time_s"] - t_req, 3)
        res["controller_running_after_spawn_s"] = rp.running_after_s(cs.log_path,
                                                                     new[0]["replica_id"])
        if "t_first" in out:
            res["spawn_to_first_token_s"] = round(out["t_first"] - new[0]["start_time_s"], 3)
    time.sleep(0.3)   # the access log line follows the response
    by_rid = {r: rep for rep, r, _ in rp.access_log(cs.log_path) if r}
    res["answered_by_new"] = bool(rid and new and by_rid.get(rid) == new[0]["replica_id"])
    return res, t_answer


def median_of(rows, key):
    v = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(v), 3) if v else None


def scale_to_zero(h, name, dtype, save, doc):
    zd = {"dtype": dtype, "autoscaling_config": dict(AUTOSCALING), "threads": h.THREADS,
          "reps": []}
    doc["zero"].append(zd)
    cs = h.CserveProc(f"{name}-zero{'' if dtype == 'fp32' else '-' + dtype}", dtype,
                      lambda port: zero_config(h, port, dtype))
    zd["packed_cache_before_start"] = ("present" if cs.cache_present
                                       else "absent (this start packs the weights)")
    if not cs.cache_present:
        h.say(f"{name}: packing the {dtype} weights first (cserve generate)")
        import subprocess
        subprocess.run([h.CSERVE, "generate", "--model", h.MODEL, "--dtype", dtype,
                        "--max-new-tokens", "1", "--threads", str(h.THREADS), h.PROMPT],
                       env=dict(os.environ, CS_CACHE_DIR=cs.cache), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)
        zd["packed_cache_before_start"] += "; packed by `cserve generate` before the start"
    try:
        h.say(f"{name}: scale to zero ({dtype}): cserve serve --config (port {cs.port}, admin "
              f"{cs.admin_port}) ...")
        t0 = cs.start()
        reps, t_admin = rp.wait_until(lambda: rp.replicas_of(h, cs.admin_port) is not None, 60)
        if t_admin is None:
            raise RuntimeError("the admin API did not answer within 60 s")
        zd["replicas_at_start"] = len(reps) if isinstance(reps, list) else None
        # the first request after the start (no initial_replicas: no replica yet) warms up
        ok, _, err = rp.seed_request(h, cs.port)
        t_prev = time.time()
        zd["first_request_after_launch_s"] = round(t_prev - t0, 3) if ok else None
        if not ok:
            raise RuntimeError(f"first request failed: {err}")
        for i in range(ZERO_REPS):
            for kind in ("stream", "seed"):
                r, t_prev = from_zero(h, cs, kind, t_prev)
                zd["reps"].append(r)
                h.say(f"{name}: {dtype} from zero {i + 1} ({kind}): {r}")
                if r.get("error"):
                    raise RuntimeError(r["error"])
            save()
        if not cs.alive():
            zd["error_after"] = f"cserve exited with {cs.p.returncode} during the run"
    except Exception as e:  # noqa: BLE001
        zd["error"] = f"{type(e).__name__}: {e}"
        if cs.p is not None and cs.p.poll() is not None:
            zd["error"] += f" (exit {cs.p.returncode}; see build/bench-serving/logs/{cs.name}.log)"
        h.say(f"{name}: scale to zero ({dtype}) n/a ({zd['error']})")
    finally:
        cs.stop()
    rows = zd["reps"]
    zd["summary"] = {k: median_of(rows, k) for k in (
        "wait_zero_s", "request_to_spawn_s", "spawn_to_first_token_s", "request_to_first_token_s",
        "request_to_done_s", "request_to_answer_s", "controller_running_after_spawn_s",
        "server_pss_at_zero_mb")}
    zd["summary"]["answered_by_new"] = sum(1 for r in rows if r.get("answered_by_new"))
    zd["summary"]["requests"] = len(rows)


# ---------------------------------------------------------------- the system

def run(h, name, save):
    """Entry point from harness.main(); h is the harness module."""
    doc = {"system": name, "kind": "platform", "levels": [],
           "how": (f"`build/cserve serve --config FILE`: mirror overhead (TextGenService + version "
                   f"`{CAND}`, fp32, num_cpus 1 each, mirror {MIRROR_PERCENT:g}% on/off with the "
                   f"admin API, {MIRROR_PAIRS} ABBA pairs of {MIRROR_DURATION:.0f} s at "
                   f"{', '.join(map(str, MIRROR_CONCURRENCY))} clients) and scale to zero and "
                   f"back ({', '.join(ZERO_DTYPES)}, {ZERO_REPS} repetitions, num_cpus "
                   f"{h.THREADS})"),
           "version": h.cserve_version(), "git": h.git_state(), "zero": []}
    if not h.cserve_usable(doc, name, ("--config", "--admin-port")):
        return doc
    mirror_overhead(h, name, save, doc)
    save()
    for dtype in ZERO_DTYPES:
        if time.time() - h.T_START > h.MAX_S:
            doc["zero"].append({"dtype": dtype, "error": "skipped: overall budget spent"})
            continue
        scale_to_zero(h, name, dtype, save, doc)
        save()
    return doc

