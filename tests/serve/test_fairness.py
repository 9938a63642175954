"""Fair scheduling and overload behaviour of `cserve serve`.

A request of 16 prompts x n=16 (256 sequences) may not hold the server: a small
request sent while it streams answers about as fast as it does when the server
is merely full of ordinary requests. Also: admission counts sequences, a
request that could never fit is refused with a 4xx, refusals carry
Retry-After, and --max-stream-duration-s ends a stream that runs too long.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_fairness.py
"""
import concurrent.futures as cf
import json
import statistics
import threading
import time

import pytest
import requests

from test_api import BIN, DISTIL, T, TINY, Server, check_v1_error, stop_clean  # noqa: F401  (pytestmark below)
from test_api import pytestmark  # noqa: F401

ONGOING = 16  # n=16 fits in one batch, so today's FIFO admission accepts the huge request too
SAMPLES = 7  # small requests per phase; the medians are compared


def post(s, path, body, **kw):
    kw.setdefault("timeout", T)
    return requests.post(s.url(path), json=body, **kw)


def small_latency(s):
    """Seconds for one 4-token greedy request (it must succeed)."""
    t0 = time.monotonic()
    r = post(s, "/v1/completions", {"prompt": "small one", "max_tokens": 4, "temperature": 0}, timeout=120)
    dt = time.monotonic() - t0
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["usage"]["completion_tokens"] == 4
    return dt


@pytest.fixture(scope="module")
def srv_fair():
    s = Server("--max-ongoing-requests", str(ONGOING), "--max-queued-requests", "256")
    yield s
    stop_clean(s)


def test_small_request_not_starved_by_huge_stream(srv_fair):
    s = srv_fair
    for _ in range(3):  # warm up
        small_latency(s)

    # Phase 1: the server is full with ONGOING closed-loop clients of ordinary requests.
    stop = threading.Event()

    def ordinary(i):
        n = 0
        while not stop.is_set():
            r = post(s, "/v1/completions", {"prompt": f"ordinary {i}", "max_tokens": 48, "ignore_eos": True,
                                            "temperature": 0}, timeout=120)
            assert r.status_code == 200, (r.status_code, r.text)
            n += 1
        return n

    with cf.ThreadPoolExecutor(ONGOING) as ex:
        futs = [ex.submit(ordinary, i) for i in range(ONGOING)]
        time.sleep(0.5)
        busy = [small_latency(s) for _ in range(SAMPLES)]
        stop.set()
        assert all(f.result() > 0 for f in futs)

    # Phase 2: one streaming request of 16 prompts x n=16 (256 sequences) runs.
    body = {"prompt": [f"huge prompt {i}" for i in range(16)], "n": 16, "max_tokens": 110, "ignore_eos": True,
            "stream": True, "temperature": 0}
    chunks = [0]
    started = threading.Event()
    finished = threading.Event()
    quit_stream = threading.Event()

    def huge():
        with requests.post(s.url("/v1/completions"), json=body, stream=True, timeout=600) as r:
            assert r.status_code == 200, (r.status_code, r.text)
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    chunks[0] += 1
                    started.set()
                if quit_stream.is_set():
                    return  # closing the connection cancels it
        finished.set()

    th = threading.Thread(target=huge, daemon=True)
    th.start()
    assert started.wait(60), "the huge request did not start"
    time.sleep(0.3)  # it holds every slot and the queue behind them
    during = [small_latency(s) for _ in range(SAMPLES)]
    huge_running = not finished.is_set()
    quit_stream.set()
    th.join(120)

    b, d = statistics.median(busy), statistics.median(during)
    print(f"small request median: {b * 1e3:.1f} ms under full load, {d * 1e3:.1f} ms beside the huge stream")
    assert d <= 2 * b, f"small request: median {d * 1e3:.1f} ms beside the huge stream, {b * 1e3:.1f} ms under " \
                       f"ordinary full load (busy {busy}, during {during})"
    assert huge_running, "the huge request ended before the measurement did: make it longer"
    # the server is whole afterwards
    assert small_latency(s) < 60


def test_sequences_count_against_admission():
    s = Server("--max-ongoing-requests", "2", "--max-queued-requests", "4")
    try:
        # 2 prompts x n=4 = 8 sequences: more than the 6 places the server has, at any time
        r = post(s, "/v1/completions", {"prompt": ["a", "b"], "n": 4, "max_tokens": 2})
        e = check_v1_error(r, 400)
        assert "8 sequences" in e["message"] and "at most 6 per request" in e["message"], e
        r = post(s, "/text/simple-gen", {"input": "a", "num_return_sequences": 7, "max_new_tokens": 2})
        assert r.status_code == 422 and "at most 6 per request" in r.text, r.text
        # 3 prompts x n=2 = 6 fits (taking turns on the 2 slots)
        r = post(s, "/v1/completions", {"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        assert len(r.json()["choices"]) == 6
        # a stream of 6 sequences takes every place: the next request is refused, with Retry-After
        body = {"prompt": ["x", "y", "z"], "n": 2, "max_tokens": 120, "ignore_eos": True, "stream": True}
        with requests.post(s.url("/v1/completions"), json=body, stream=True, timeout=120) as big:
            assert big.status_code == 200
            it = big.iter_lines()
            while not next(it).startswith(b"data: {"):
                pass
            r = post(s, "/v1/completions", {"prompt": "late", "max_tokens": 2})
            if r.status_code != 200:  # (unless the stream already ended on a very fast machine)
                e = check_v1_error(r, 503)
                assert int(r.headers["Retry-After"]) >= 1
                r = post(s, "/text/simple-gen", {"input": "late"})
                assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable", r.text
        # closing the stream cancels it; its places are free once the engine has seen that
        deadline = time.monotonic() + 60
        while True:
            r = post(s, "/v1/completions", {"prompt": "after", "max_tokens": 2})
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200, (r.status_code, r.text)
    finally:
        stop_clean(s)


def test_max_stream_duration():
    import os
    if not os.path.isdir(DISTIL):
        pytest.skip("needs build/models/distil")
    s = Server("--max-stream-duration-s", "1", model=DISTIL)
    try:
        # 900 tokens of the distilgpt2-sized model take far longer than 1 s on one thread
        body = {"prompt": "a long story", "max_tokens": 900, "ignore_eos": True, "stream": True}
        finish, n = None, 0
        with requests.post(s.url("/v1/completions"), json=body, stream=True, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    ch = json.loads(line[6:])["choices"][0]
                    n += 1
                    finish = ch.get("finish_reason") or finish
        assert finish == "length" and 0 < n < 900, (finish, n)
    finally:
        stop_clean(s)
