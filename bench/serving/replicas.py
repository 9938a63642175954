"""`make bench-serving`, systems cserve-replicas[-DTYPE]: what a replica of the control plane costs.

One `cserve serve --config` (bench/serving/harness.py's cserve_config: one application at "/",
TextGenService, THREADS CPUs per replica), started with the packed-weight cache present
(build/bench-serving/pack-cache; the cserve/cserve-proxy systems fill it), then:

1. Whole-server cold start: process launch to the admin API's first answer, to the replica
   RUNNING in its status JSON, and to the first successful seed request (sent every 20 ms from the
   launch on; the proxy queues it until the replica is up).
2. Memory with 1 replica: a few rounds of 4 concurrent seed requests per replica until every
   replica has served at least MIN_SERVED of them (from the access log's replica field; so its KV
   cache slots and activations are allocated as in use), 1 s of quiet, then RSS, PSS, USS
   (private pages) of the controller and of each replica.
3. Replica respawn (RESPAWNS times): kill -9 the replica, then at once one streaming
   `POST /v1/completions` and one seed request; the controller sees the exit (waitpid) and
   spawns a new replica, and both requests are queued until it runs. Measured: spawn (the new
   replica's start_time_s in the status JSON) to the stream's first token, kill to first token,
   kill to the seed request's answer; the answer's request id is checked against the access log
   to be the new replica's.
4. Scale 1 -> 2 and 2 -> 3 with the admin API (`POST /api/v1/applications/default/deployments/
   TextGenService/scale {"target_num_replicas": N}`): time from the POST to the new replica
   spawned and RUNNING (status JSON polled every 20 ms); then memory as in 2.

The extra replica's cost is the growth of the whole system's PSS per added replica (shared pages,
the mmapped packed weights above all, are split between the processes that map them, so the sum
counts them once) and, per process, its USS; both as a fraction of the PSS of the only replica
with num_replicas 1.
"""
import http.client
import json
import os
import re
import signal
import statistics
import threading
import time

APP, DEP = "default", "TextGenService"
MIN_SERVED = 4          # seed requests every replica has answered before memory is taken
PER_REPLICA = 4         # concurrent seed requests per replica in one warm-up round
MAX_ROUNDS = 8          # warm-up rounds at most
POLL_S = 0.02           # status / first-response polling interval
WAIT_RUNNING_S = 90     # launch / scale / respawn to RUNNING, at most
MAX_REPLICAS = 3
STREAM_MAX_TOKENS = 8


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


RESPAWNS = env_int("BENCH_SERVING_RESPAWNS", 3)


# ---------------------------------------------------------------- HTTP

def http_json(host, port, method, path, body=None, timeout=10):
    """(status, parsed JSON or text) of one request; raises OSError/HTTPException on failure."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


def replicas_of(h, admin_port):
    """The deployment's replicas from GET /api/serve/applications/: a list of dicts (replica_id,
    state, pid, start_time_s), or None when the admin API does not answer (yet)."""
    try:
        st, doc = http_json(h.HOST, admin_port, "GET", "/api/serve/applications/", timeout=5)
    except (OSError, http.client.HTTPException):
        return None
    if st != 200 or not isinstance(doc, dict):
        return None
    try:
        reps = doc["applications"][APP]["deployments"][DEP]["replicas"]
    except (KeyError, TypeError):
        return []
    return [r for r in reps if isinstance(r, dict)]


def running(reps):
    return [r for r in reps or [] if r.get("state") == "RUNNING"]


def wait_until(pred, limit_s, interval=POLL_S):
    """Polls pred() until it returns a true value; (value, time.time() when it did) or
    (None, None) after limit_s."""
    t_end = time.time() + limit_s
    while time.time() < t_end:
        v = pred()
        if v:
            return v, time.time()
        time.sleep(interval)
    return None, None


def seed_request(h, port, timeout=None):
    """One seed request; (ok, request id or None, error)."""
    conn = http.client.HTTPConnection(h.HOST, port, timeout=timeout or h.TIMEOUT)
    try:
        conn.request("POST", h.loadgen.PATH, json.dumps({"input": h.PROMPT}).encode(),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        rid = resp.getheader("x-request-id")
        if resp.status != 200:
            return False, rid, f"HTTP {resp.status}"
        text = h.loadgen.generated_text(json.loads(raw))
        return text is not None, rid, None if text is not None else "unexpected response shape"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return False, None, type(e).__name__
    finally:
        conn.close()


def stream_request(h, port, out):
    """A streaming POST /v1/completions; fills out: t_first (first token received, time.time()),
    t_done, request_id (from the chunks' "cmpl-..." id), error."""
    conn = http.client.HTTPConnection(h.HOST, port, timeout=h.TIMEOUT)
    try:
        conn.request("POST", "/v1/completions",
                     json.dumps({"prompt": h.PROMPT, "stream": True,
                                 "max_tokens": STREAM_MAX_TOKENS}).encode(),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            out["error"] = f"HTTP {resp.status}"
            resp.read()
            return
        for _ in range(10 * STREAM_MAX_TOKENS + 10):
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            try:
                ev = json.loads(payload)
            except ValueError:
                continue
            if "t_first" not in out and ev.get("choices") and ev["choices"][0].get("text"):
                out["t_first"] = time.time()
                out["request_id"] = str(ev.get("id", "")).removeprefix("cmpl-")
        out["t_done"] = time.time()
    except (OSError, http.client.HTTPException) as e:
        out["error"] = type(e).__name__
    finally:
        conn.close()


# ---------------------------------------------------------------- the access log

def access_log(path):
    """[(replica id, request id, status)] of the generation requests in the server's log."""
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if '"replica"' not in line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("replica") and ev.get("status") is not None:
                    out.append((ev["replica"], ev.get("request_id"), ev["status"]))
    except OSError:
        pass
    return out


def served_by(path):
    counts = {}
    for rep, _, status in access_log(path):
        if status == 200:
            counts[rep] = counts.get(rep, 0) + 1
    return counts


def running_after_s(path, replica_id):
    """The controller's own 'running (X s after start)' for a replica, from its log."""
    pat = re.compile(r"#" + re.escape(replica_id) + r" running \(([0-9.]+) s after start\)")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = pat.search(line)
                if m:
                    return float(m.group(1))
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- memory

def smaps(pid):
    """RSS, PSS, USS (Private_Clean + Private_Dirty), PSS of file and anonymous pages, in kB."""
    sm = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            sm = f.read()
    except OSError:
        return None
    vals = {}
    for key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty"):
        m = re.search(rf"^{key}:\s+(\d+) kB", sm, re.M)
        vals[key] = int(m.group(1)) if m else 0
    return {"rss_mb": round(vals["Rss"] / 1024, 1), "pss_mb": round(vals["Pss"] / 1024, 1),
            "uss_mb": round((vals["Private_Clean"] + vals["Private_Dirty"]) / 1024, 1),
            "pss_file_mb": round(vals["Pss_File"] / 1024, 1),
            "pss_anon_mb": round(vals["Pss_Anon"] / 1024, 1)}


def warm(h, cs, n):
    """Rounds of PER_REPLICA * n concurrent seed requests until each of the n running replicas
    has answered MIN_SERVED; returns (rounds, {replica id: requests served})."""
    reps = running(replicas_of(h, cs.admin_port))
    ids = {r["replica_id"] for r in reps}
    rounds = 0
    while rounds < MAX_ROUNDS:
        counts = served_by(cs.log_path)
        if len(ids) >= n and all(counts.get(i, 0) >= MIN_SERVED for i in ids):
            break
        rounds += 1
        threads = [threading.Thread(target=seed_request, args=(h, cs.port), daemon=True)
                   for _ in range(PER_REPLICA * n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(h.TIMEOUT + 5)
        time.sleep(0.3)   # the access log line follows the response
        ids = {r["replica_id"] for r in running(replicas_of(h, cs.admin_port))}
    counts = served_by(cs.log_path)
    return rounds, {i: counts.get(i, 0) for i in ids}


def memory_at(h, cs, n):
    rounds, served = warm(h, cs, n)
    time.sleep(1.0)
    reps = sorted(running(replicas_of(h, cs.admin_port)), key=lambda r: r.get("start_time_s", 0))
    ctl = smaps(cs.p.pid)
    rows = []
    for r in reps:
        m = smaps(r.get("pid"))
        if m:
            rows.append(dict(m, replica_id=r["replica_id"], pid=r["pid"],
                             served=served.get(r["replica_id"], 0)))
    total = {k: round((ctl or {}).get(k, 0) + sum(x[k] for x in rows), 1)
             for k in ("rss_mb", "pss_mb", "uss_mb")}
    # Everything under the server process (should be the controller and the replicas only).
    total["procset_pss_mb"] = cs.procs.memory()["pss_mb"]
    return {"replicas": n, "running": len(reps), "warm_rounds": rounds,
            "controller": ctl, "replica": rows, "total": total}


# ---------------------------------------------------------------- timings

def cold_start(h, cs, t0):
    """Launch to admin API answer, replica RUNNING, first successful seed request."""
    res, out = {}, {}

    def probe():
        try:
            out["first_response_s"] = h.first_response(cs.port, t0, t0 + 180, cs.alive,
                                                       interval=POLL_S)
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    reps, t_admin = wait_until(lambda: replicas_of(h, cs.admin_port) is not None, 60)
    if t_admin:
        res["admin_api_s"] = round(t_admin - t0, 3)
    reps, t_run = wait_until(lambda: running(replicas_of(h, cs.admin_port)), WAIT_RUNNING_S)
    if t_run:
        res["replica_running_s"] = round(t_run - t0, 3)
        res["controller_running_after_spawn_s"] = running_after_s(cs.log_path,
                                                                  reps[0]["replica_id"])
    th.join(200)
    if "first_response_s" in out:
        res["first_response_s"] = round(out["first_response_s"], 3)
    else:
        raise RuntimeError(out.get("error", "no first response"))
    return res


def respawn(h, cs):
    """kill -9 the only replica; then one stream and one seed request at once."""
    reps = running(replicas_of(h, cs.admin_port))
    if len(reps) != 1:
        return {"error": f"{len(reps)} replicas running, expected 1"}
    old = reps[0]
    stream, seed = {}, {}
    t_kill = time.time()
    os.kill(old["pid"], signal.SIGKILL)
    ts = threading.Thread(target=stream_request, args=(h, cs.port, stream), daemon=True)

    def seed_thread():
        seed["ok"], seed["request_id"], seed["error"] = seed_request(h, cs.port)
        seed["t_done"] = time.time()
    tq = threading.Thread(target=seed_thread, daemon=True)
    ts.start()
    tq.start()
    new, t_seen = wait_until(lambda: [r for r in running(replicas_of(h, cs.admin_port))
                                      if r["replica_id"] != old["replica_id"]], WAIT_RUNNING_S)
    ts.join(h.TIMEOUT + 5)
    tq.join(h.TIMEOUT + 5)
    res = {"killed": old["replica_id"]}
    if not new:
        res["error"] = "no new replica RUNNING"
        return res
    new = new[0]
    spawn = new.get("start_time_s")
    res.update({"new": new["replica_id"], "kill_to_spawn_s": round(spawn - t_kill, 3),
                "kill_to_running_seen_s": round(t_seen - t_kill, 3),
                "controller_running_after_spawn_s": running_after_s(cs.log_path,
                                                                    new["replica_id"])})
    if "t_first" in stream:
        res["spawn_to_first_token_s"] = round(stream["t_first"] - spawn, 3)
        res["kill_to_first_token_s"] = round(stream["t_first"] - t_kill, 3)
    else:
        res["stream_error"] = stream.get("error", "no token")
    if seed.get("ok"):
        res["kill_to_seed_answer_s"] = round(seed["t_done"] - t_kill, 3)
        res["spawn_to_seed_answer_s"] = round(seed["t_done"] - spawn, 3)
    else:
        res["seed_error"] = seed.get("error")
    time.sleep(0.3)
    by_rid = {rid: rep for rep, rid, _ in access_log(cs.log_path) if rid}
    res["answered_by_new"] = all(by_rid.get(x) == new["replica_id"]
                                 for x in (stream.get("request_id"), seed.get("request_id"))
                                 if x)
    return res


def scale(h, cs, n):
    """POST scale to n replicas; time to the new one spawned and RUNNING."""
    before = {r["replica_id"] for r in replicas_of(h, cs.admin_port) or []}
    t_post = time.time()
    st, body = http_json(h.HOST, cs.admin_port, "POST",
                         f"/api/v1/applications/{APP}/deployments/{DEP}/scale",
                         {"target_num_replicas": n})
    t_ans = time.time()
    if st != 200:
        return {"to": n, "error": f"scale answered HTTP {st}: {str(body)[:200]}"}
    reps, t_run = wait_until(lambda: len(running(replicas_of(h, cs.admin_port))) >= n and
                             running(replicas_of(h, cs.admin_port)), WAIT_RUNNING_S)
    res = {"to": n, "post_answered_s": round(t_ans - t_post, 3)}
    if not reps:
        res["error"] = f"{n} replicas not RUNNING within {WAIT_RUNNING_S} s"
        return res
    new = [r for r in reps if r["replica_id"] not in before]
    res["post_to_running_s"] = round(t_run - t_post, 3)
    if new:
        res["post_to_spawn_s"] = round(new[0]["start_time_s"] - t_post, 3)
        res["spawn_to_running_seen_s"] = round(t_run - new[0]["start_time_s"], 3)
        res["controller_running_after_spawn_s"] = running_after_s(cs.log_path,
                                                                  new[0]["replica_id"])
    return res


# ---------------------------------------------------------------- the system

def summary(doc):
    """The numbers the report shows: first replica, marginal cost of each extra one."""
    mem = {m["replicas"]: m for m in doc.get("memory", []) if m.get("replica")}
    out = {}
    one = mem.get(1)
    if one:
        first = one["replica"][0]["pss_mb"]
        out["first_replica_pss_mb"] = first
        out["controller_pss_mb"] = (one.get("controller") or {}).get("pss_mb")
        extra = []
        for n in range(2, MAX_REPLICAS + 1):
            if n in mem and n - 1 in mem:
                d = mem[n]["total"]["pss_mb"] - mem[n - 1]["total"]["pss_mb"]
                newest = mem[n]["replica"][-1]
                extra.append({"n": n, "marginal_pss_mb": round(d, 1),
                              "marginal_fraction": round(d / first, 3) if first else None,
                              "newest_uss_mb": newest["uss_mb"],
                              "newest_uss_fraction": round(newest["uss_mb"] / first, 3)
                              if first else None})
        out["extra"] = extra
    rs = [r for r in doc.get("respawn", []) if "spawn_to_first_token_s" in r]
    if rs:
        for k in ("kill_to_spawn_s", "spawn_to_first_token_s", "kill_to_first_token_s",
                  "kill_to_seed_answer_s", "controller_running_after_spawn_s"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                out[f"respawn_median_{k}"] = round(statistics.median(vals), 3)
    return out


def run(h, name, dtype, save):
    """Entry point from harness.main(); h is the harness module."""
    doc = {"system": name, "kind": "replicas", "levels": [], "dtype": dtype,
           "how": (f"`build/cserve serve --config FILE` (one application at \"/\", "
                   f"TextGenService, dtype {dtype}, num_cpus {h.THREADS} per replica); replicas "
                   f"1 -> 2 -> 3 with the admin API's scale call, {RESPAWNS} kill -9 respawns"),
           "version": h.cserve_version(), "git": h.git_state(),
           "memory": [], "scale": [], "respawn": []}
    if not h.cserve_usable(doc, name, ("--config", "--admin-port")):
        return doc
    cs = h.CserveProc(name, dtype, lambda port: h.cserve_config(port, dtype, 1))
    doc["packed_cache_before_start"] = ("present" if cs.cache_present
                                        else "absent (this start packs the weights)")
    if not cs.cache_present:
        # Cold start is measured with the cache present: pack it with a first start.
        h.say(f"{name}: packing the {dtype} weights first (cserve generate)")
        import subprocess
        subprocess.run([h.CSERVE, "generate", "--model", h.MODEL, "--dtype", dtype,
                        "--max-new-tokens", "1", "--threads", str(h.THREADS), h.PROMPT],
                       env=dict(os.environ, CS_CACHE_DIR=cs.cache), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=600)
        doc["packed_cache_before_start"] += "; packed by `cserve generate` before the start"
    try:
        h.say(f"{name}: cserve serve --config (dtype {dtype}, port {cs.port}, admin "
              f"{cs.admin_port}) ...")
        h.wait_quiet(cs.procs)
        t0 = cs.start()
        doc["cold_start"] = cold_start(h, cs, t0)
        doc["start_to_first_response_s"] = doc["cold_start"]["first_response_s"]
        h.say(f"{name}: cold start {doc['cold_start']}")
        save()
        doc["memory"].append(memory_at(h, cs, 1))
        h.say(f"{name}: 1 replica: {doc['memory'][-1]['total']} MB")
        for i in range(RESPAWNS):
            wait_until(lambda: len(running(replicas_of(h, cs.admin_port))) == 1, 30)
            h.wait_quiet(cs.procs)
            r = respawn(h, cs)
            doc["respawn"].append(r)
            h.say(f"{name}: respawn {i + 1}: {r}")
        save()
        for n in range(2, MAX_REPLICAS + 1):
            h.wait_system_idle(cs.procs, 30)
            s = scale(h, cs, n)
            doc["scale"].append(s)
            h.say(f"{name}: scale to {n}: {s}")
            if s.get("error"):
                break
            doc["memory"].append(memory_at(h, cs, n))
            h.say(f"{name}: {n} replicas: {doc['memory'][-1]['total']} MB")
            save()
        doc["summary"] = summary(doc)
        h.say(f"{name}: {doc['summary']}")
        if not cs.alive():
            doc["error_after"] = f"cserve exited with {cs.p.returncode} during the run"
    except Exception as e:  # noqa: BLE001 - any failure becomes the row's reason
        doc["error"] = f"{type(e).__name__}: {e}"
        if cs.p is not None and cs.p.poll() is not None:
            doc["error"] += f" (exit {cs.p.returncode}; see build/bench-serving/logs/{name}.log)"
        h.say(f"{name}: n/a ({doc['error']})")
        if doc["memory"]:
            doc["summary"] = summary(doc)
    finally:
        cs.stop()
    return doc
