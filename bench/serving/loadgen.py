"""Closed-loop HTTP load generator for `make bench-serving` (stdlib only: threads + http.client).

C client threads each keep one keep-alive connection and send the seed's request,
POST /text/simple-gen {"input": "Once upon a time"}, back to back, until the level's window
(duration_s) has passed or max_requests have been started, whichever comes first. A request that
is in flight when the window closes is allowed to finish (bounded by timeout_s), so throughput is
successful responses / time to the last of them (the steady-state rate of a closed loop, also when
one request takes longer than the window).

Only loopback addresses are accepted as targets.

    python bench/serving/loadgen.py --port 8000 --concurrency 8 --duration 10
"""
import argparse
import http.client
import json
import socket
import threading
import time

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PATH = "/text/simple-gen"
PROMPT = "Once upon a time"


def request_once(conn, path, body, headers):
    """Sends one request on conn; returns (status, parsed JSON or None, error or None)."""
    conn.request("POST", path, body, headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        return resp.status, None, f"HTTP {resp.status}", resp.will_close
    try:
        doc = json.loads(data)
    except ValueError:
        return resp.status, None, "bad JSON", resp.will_close
    return resp.status, doc, None, resp.will_close


def generated_text(doc):
    """The seed's response shape: [{"generated_text": ...}] (a list per input)."""
    while isinstance(doc, list) and doc:
        doc = doc[0]
    if isinstance(doc, dict) and isinstance(doc.get("generated_text"), str):
        return doc["generated_text"]
    return None


def run_level(host, port, concurrency, duration_s, max_requests, timeout_s,
              prompt=PROMPT, path=PATH, extra=None):
    """Runs one concurrency level. Returns a dict with the raw per-request records:
    records: [(t_start, t_end, error or None, generated text or None)], times relative to the
    window start (seconds); window_s; wall_s (until the last request finished); incomplete
    (requests still running when the join deadline passed: counted as timeouts)."""
    if host not in LOOPBACK:
        raise ValueError(f"load generator only targets loopback addresses, not {host!r}")
    body = json.dumps(dict({"input": prompt}, **(extra or {}))).encode()
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    lock = threading.Lock()
    state = {"issued": 0, "inflight": 0}
    records = []
    t0 = time.monotonic()
    t_end = t0 + duration_s

    def worker():
        conn = None
        while True:
            with lock:
                if time.monotonic() >= t_end or state["issued"] >= max_requests:
                    break
                state["issued"] += 1
                state["inflight"] += 1
            s = time.monotonic()
            err, text = None, None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
                status, doc, err, will_close = request_once(conn, path, body, headers)
                if err is None:
                    text = generated_text(doc)
                    if text is None:
                        err = "unexpected response shape"
                if will_close:
                    conn.close()
                    conn = None
            except socket.timeout:
                err = "timeout"
            except (OSError, http.client.HTTPException) as e:
                err = type(e).__name__
            if err is not None and conn is not None:
                conn.close()
                conn = None
            e = time.monotonic()
            with lock:
                records.append((s - t0, e - t0, err, text))
                state["inflight"] -= 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # A request started just before the window closed may take up to timeout_s (per socket
    # operation); a little slack on top, then whatever still runs is given up on.
    deadline = t_end + timeout_s + 15
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        incomplete = state["inflight"]
        recs = list(records)
    return {"records": recs, "window_s": duration_s, "incomplete": incomplete,
            "wall_s": time.monotonic() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--max-requests", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--prompt", default=PROMPT)
    a = ap.parse_args()
    r = run_level(a.host, a.port, a.concurrency, a.duration, a.max_requests, a.timeout, a.prompt)
    ok = [x for x in r["records"] if x[2] is None]
    lat = sorted(x[1] - x[0] for x in ok)
    print(json.dumps({"ok": len(ok), "errors": len(r["records"]) - len(ok),
                      "incomplete": r["incomplete"],
                      "req_per_s": round(len(ok) / max([x[1] for x in ok] + [r["window_s"]]), 3),
                      "p50_s": round(lat[len(lat) // 2], 3) if lat else None}))


if __name__ == "__main__":
    main()
