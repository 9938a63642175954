"""Overload benchmark: goodput of `cserve serve` past its admission limit, and the latency of
ordinary requests during a slowloris. Writes build/bench/overload.json and the "Overload"
section of bench/RESULTS.md.

Goodput: closed-loop clients (each one keep-alive connection, one request at a time) at 0.5x,
1x, 2x and 10x the admission limit (max_ongoing_requests + max_queued_requests); a client that
gets a 503 sends again at once, honouring no Retry-After (as the crowd in issue 11 did).
Goodput = 200 answers per second in the measured window, shown relative to the best level.

Slowloris: OVL_SLOW_CONNS connections, each sending one header byte every 2 s and never
finishing its request (reconnecting when cut off), while a few ordinary clients send requests,
each on a new connection; p50/p99 of their latency (and how many failed or timed out).

Standard library only: `make bench-overload`. Environment (all optional):
  BENCH_CSERVE       cserve binary (default build/cserve)
  BENCH_MODEL        model directory (default build/models/distil)
  OVL_DTYPE          default int8
  OVL_ONGOING        --max-ongoing-requests (default 32)
  OVL_QUEUED         --max-queued-requests (default 256)
  OVL_LEVELS         multiples of the admission limit (default 0.5,1,2,10)
  OVL_WARM_S         seconds before each measured window (default 5)
  OVL_SECONDS        measured window per level (default 30)
  OVL_MAX_TOKENS     tokens per request (default 8)
  OVL_SLOW_CONNS     slowloris connections (default 5000; 0: skip)
  OVL_SLOW_SECONDS   slowloris window (default 30)
  OVL_SLOW_ADDRS     loopback addresses the slowloris comes from (127.0.1.x; default 10: a
                     distributed attack, each address under the per-address cap); the
                     ordinary clients come from 127.0.0.2 and the goodput crowd from 16
                     addresses 127.0.2.x
  OVL_RESULTS        markdown file to update (default bench/RESULTS.md; "-" for none)
"""
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mdsection  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "bench")
SECTION = "## Overload"
CROWD_ADDRS = 16     # source addresses of the goodput crowd
NORMAL_ADDR = "127.0.0.2"  # source address of the ordinary clients during the slowloris
TICK = os.sysconf("SC_CLK_TCK")


def env_num(name, default):
    v = (os.environ.get(name) or "").strip()
    return type(default)(v) if v else default


def say(msg):
    print(f"overload: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine():
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} vCPUs, {platform.system()} {platform.release()}"


# ------------------------------------------------------------------ HTTP client


def request_bytes(port, max_tokens, i):
    body = json.dumps({"prompt": f"Request number {i} says", "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0}).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(body))) + body


async def read_response(reader):
    """(status, keep_alive) of one response; reads its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close, chunked = 0, False, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k, v = k.strip().lower(), v.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "connection" and v == "close":
            close = True
        elif k == "transfer-encoding" and "chunked" in v:
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, not close


class Counts:
    def __init__(self):
        self.ok = self.r503 = self.other = self.errors = 0
        self.lat = []
        self.measuring = False


def crowd_addr(i):
    """Loopback source address of crowd client i: the crowd stands for many clients, so it comes
    from CROWD_ADDRS addresses (127.0.2.x), each under the server's per-address connection cap."""
    return f"127.0.2.{i % CROWD_ADDRS + 1}"


async def closed_loop_client(port, max_tokens, idx, counts, stop):
    """One keep-alive connection; sends again at once after any answer."""
    req = request_bytes(port, max_tokens, idx)
    writer = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(crowd_addr(idx), 0))
            t0 = time.monotonic()
            writer.write(req)
            status, keep = await read_response(reader)
            if counts.measuring:
                if status == 200:
                    counts.ok += 1
                    counts.lat.append(time.monotonic() - t0)
                elif status == 503:
                    counts.r503 += 1
                else:
                    counts.other += 1
            if not keep:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if counts.measuring:
                counts.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def goodput_level(port, n_clients, max_tokens, warm_s, seconds, server_pid):
    counts = Counts()
    stop = asyncio.Event()
    tasks = []
    for i in range(n_clients):  # open the connections over about a second, as a crowd arrives
        tasks.append(asyncio.create_task(closed_loop_client(port, max_tokens, i, counts, stop)))
        if i % 64 == 63:
            await asyncio.sleep(1.0 / max(1, n_clients // 64))
    await asyncio.sleep(warm_s)
    cpu0, t0, c0 = proc_cpu_s(server_pid), time.monotonic(), os.times()
    counts.measuring = True
    await asyncio.sleep(seconds)
    counts.measuring = False
    dt, cpu, c1 = time.monotonic() - t0, proc_cpu_s(server_pid) - cpu0, os.times()
    client_cpu = (c1.user - c0.user + c1.system - c0.system) / dt
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    lat = sorted(counts.lat)
    return {"clients": n_clients, "goodput_rps": counts.ok / dt, "rejected_rps": counts.r503 / dt,
            "other": counts.other, "errors": counts.errors, "server_cpu": cpu / dt, "client_cpu": client_cpu,
            "p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None}


async def wait_idle(port, timeout=120):
    """Until /metrics says nothing runs or waits (the previous level's crowd has left)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await reader.read()
            writer.close()
            text = data.decode("utf-8", "replace")
            run = re.search(r"^cserve_scheduler_running(?:\{[^}]*\})? (\S+)", text, re.M)
            q = re.search(r"^cserve_scheduler_queue_depth(?:\{[^}]*\})? (\S+)", text, re.M)
            if run and q and float(run.group(1)) == 0 and float(q.group(1)) == 0:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------- slowloris


async def trickler(port, addr, stop, stats):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(addr, 0))
            stats["open"] += 1
            writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
            while not stop.is_set():
                await asyncio.sleep(2.0)
                writer.write(b"a")
                await writer.drain()
                if reader.at_eof():
                    break
            writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        stats["open"] -= 1
        if not stop.is_set():
            stats["reconnects"] += 1
            await asyncio.sleep(0.5)


async def fresh_connection_request(port, max_tokens, i, timeout):
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(NORMAL_ADDR, 0)), timeout)
        writer.write(request_bytes(port, max_tokens, i))
        status, _ = await asyncio.wait_for(read_response(reader), timeout - (time.monotonic() - t0))
        writer.close()
        return status, time.monotonic() - t0
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
        return None, time.monotonic() - t0


async def slowloris(port, n_conns, n_addrs, seconds, max_tokens, n_normal=4, timeout=30.0):
    stop = asyncio.Event()
    stats = {"open": 0, "reconnects": 0}
    tasks = []
    for i in range(n_conns):
        tasks.append(asyncio.create_task(trickler(port, f"127.0.1.{i % n_addrs + 1}", stop, stats)))
        if i % 250 == 249:
            await asyncio.sleep(0.1)
    await asyncio.sleep(3)
    lat, fails, codes = [], 0, {}
    end = time.monotonic() + seconds

    async def normal(k):
        nonlocal fails
        i = 0
        while time.monotonic() < end:
            status, dt = await fresh_connection_request(port, max_tokens, k * 100000 + i, timeout)
            i += 1
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                lat.append(dt)
            else:
                fails += 1

    await asyncio.gather(*(normal(k) for k in range(n_normal)))
    held = stats["open"]
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    lat.sort()
    return {"connections": n_conns, "addresses": n_addrs, "open_at_end": held, "reconnects": stats["reconnects"],
            "normal_ok": len(lat), "normal_failed": fails, "codes": {str(k): v for k, v in codes.items()},
            "p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None}


# -------------------------------------------------------------------------- main


def fmt(v, spec=".0f"):
    return "n/a" if v is None else format(v, spec)


def write_section(path, res):
    lim = res["limit"]
    rows = ["| load (x limit) | clients | goodput req/s | vs peak | 503/s | other errors | server CPU (cores) | "
            "client CPU | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["levels"]:
        rows.append(f"| {r['x']:g}x | {r['clients']} | {r['goodput_rps']:.1f} | {100 * r['vs_peak']:.0f}% | "
                    f"{r['rejected_rps']:.0f} | {r['other'] + r['errors']} | {r['server_cpu']:.2f} | {r['client_cpu']:.2f} | "
                    f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} |")
    s = res.get("slowloris")
    slow = []
    if s:
        slow = ["", f"Slowloris (a fresh server with its default connection limits): {s['connections']} connections "
                    f"from {s['addresses']} addresses, each sending one header byte every 2 s "
                    f"({s['open_at_end']} still open at the end, {s['reconnects']} reconnects after being cut off), "
                    f"while 4 clients (another address) send ordinary requests, each on a new connection (30 s client "
                    f"timeout): "
                    f"p50 {fmt(s['p50_ms'])} ms, p99 {fmt(s['p99_ms'])} ms, {s['normal_ok']} answered, "
                    f"{s['normal_failed']} failed or timed out (status counts: {s['codes']})."]
    text = "\n".join([
        SECTION, "",
        f"`make bench-overload` (bench/overload.py), {res['date']}, git {res['git']}, on {res['machine']} "
        f"(a shared machine: other work ran on it at the same time, so absolute numbers vary). Server: "
        f"`cserve serve --model {res['model']} --dtype {res['dtype']}`, max_ongoing_requests {res['ongoing']} + "
        f"max_queued_requests {res['queued']} = admission limit {lim} sequences"
        f". Closed-loop clients from {CROWD_ADDRS} loopback addresses on keep-alive "
        f"connections, {res['max_tokens']}-token greedy /v1/completions, retrying a 503 at once (no Retry-After); "
        f"{res['seconds']} s measured per level after {res['warm_s']} s. The client runs on the same CPUs.", "",
        *rows, *slow, "",
        "Refusals are held before they are answered (serve/shed.h): hold = refusals held / 100 per second, "
        "between 0.02 and 30 s, so a crowd that retries at once comes back about max(100, crowd size / 30) times a "
        "second, and a full server refuses before parsing the body.", ""])
    mdsection.replace(path, SECTION, text)


def main():
    raise_nofile()
    binary = os.environ.get("BENCH_CSERVE") or os.path.join(ROOT, "build", "cserve")
    model = os.environ.get("BENCH_MODEL") or os.path.join(ROOT, "build", "models", "distil")
    dtype = os.environ.get("OVL_DTYPE") or "int8"
    ongoing, queued = env_num("OVL_ONGOING", 32), env_num("OVL_QUEUED", 256)
    levels = [float(x) for x in (os.environ.get("OVL_LEVELS") or "0.5,1,2,10").split(",") if x.strip()]
    warm_s, seconds = env_num("OVL_WARM_S", 5.0), env_num("OVL_SECONDS", 30.0)
    max_tokens = env_num("OVL_MAX_TOKENS", 8)
    slow_conns, slow_s = env_num("OVL_SLOW_CONNS", 5000), env_num("OVL_SLOW_SECONDS", 30.0)
    slow_addrs = env_num("OVL_SLOW_ADDRS", 10)
    results = os.environ.get("OVL_RESULTS") or os.path.join(ROOT, "bench", "RESULTS.md")
    os.makedirs(OUT, exist_ok=True)
    limit = ongoing + queued
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine(), "model": os.path.relpath(model, ROOT), "dtype": dtype, "ongoing": ongoing,
           "queued": queued, "limit": limit, "max_tokens": max_tokens, "warm_s": warm_s, "seconds": seconds,
           "binary": binary, "levels": []}
    try:
        out["git"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() + " (+ working tree)"
    except OSError:
        out["git"] = "unknown"

    def start(extra, logname):
        port = free_port()
        env = dict(os.environ)
        env.setdefault("CS_CACHE_DIR", os.path.join(OUT, "pack-cache"))
        cmd = [binary, "serve", "--model", model, "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port),
               "--max-ongoing-requests", str(ongoing), "--max-queued-requests", str(queued), "--no-access-log",
               *extra]
        say(" ".join(cmd))
        log = open(os.path.join(OUT, logname), "w")
        srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, preexec_fn=raise_nofile)
        end = time.time() + 300
        while time.time() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if b" 200 " in c.recv(200):
                        return srv, port
            except OSError:
                pass
            if srv.poll() is not None:
                sys.exit(f"overload: the server exited; see build/bench/{logname}")
            time.sleep(0.2)
        srv.kill()
        sys.exit("overload: the server did not become ready")

    def stop(srv):
        srv.terminate()
        try:
            srv.wait(60)
        except subprocess.TimeoutExpired:
            srv.kill()

    srv, port = start([], "overload-server.log")
    try:
        for x in levels:
            n = max(1, int(round(x * limit)))
            asyncio.run(wait_idle(port))
            say(f"{x:g}x the limit: {n} closed-loop clients")
            r = asyncio.run(goodput_level(port, n, max_tokens, warm_s, seconds, srv.pid))
            r["x"] = x
            say(f"  goodput {r['goodput_rps']:.1f} req/s, 503 {r['rejected_rps']:.0f}/s, server CPU "
                f"{r['server_cpu']:.2f}, client CPU {r['client_cpu']:.2f}, p50 {fmt(r['p50_ms'])} ms, "
                f"errors {r['errors'] + r['other']}")
            out["levels"].append(r)
    finally:
        stop(srv)
    peak = max(r["goodput_rps"] for r in out["levels"]) or 1
    for r in out["levels"]:
        r["vs_peak"] = r["goodput_rps"] / peak
    if slow_conns > 0:  # the server's own defaults (a fresh process)
        srv, port = start([], "overload-server-slowloris.log")
        try:
            say(f"slowloris: {slow_conns} connections for {slow_s:g} s")
            out["slowloris"] = asyncio.run(slowloris(port, slow_conns, slow_addrs, slow_s, max_tokens))
            say(f"  {out['slowloris']}")
        finally:
            stop(srv)
    with open(os.path.join(OUT, "overload.json"), "w") as f:
        json.dump(out, f, indent=1)
    if results != "-":
        write_section(results, out)
        say(f"wrote the {SECTION[3:]} section of {os.path.relpath(results, ROOT)}")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
