"""The paged KV cache behind HTTP: `--kv-cache-mb` / `--kv-cache-dtype` (and args.kv_cache_mb /
args.kv_cache_dtype in a config), the KV metrics, and requests that outgrow the cache.

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_kvcache.py
"""
import concurrent.futures as cf
import os
import re
import subprocess
import threading

import pytest
import requests

from test_api import BIN, ROOT, T, TINY, Server, stop_clean  # noqa: F401
from test_api import pytestmark  # noqa: F401
from test_control import ControlServer

# tiny: 2 layers x 64 wide, fp32: 1,024 bytes per token, so 1 MB holds 1,024 tokens
N_REQ = 24
MAX_TOKENS = 100


def metric(text, name):
    m = re.search(r"^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def complete(s, i, barrier=None):
    if barrier:
        barrier.wait(timeout=60)  # all requests leave together, so they overlap on a slow machine too
    r = requests.post(s.url("/v1/completions"), json={"prompt": f"request number {i} says", "max_tokens": MAX_TOKENS,
                                                      "temperature": 0, "ignore_eos": True}, timeout=120)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["choices"][0]["text"]


@pytest.fixture(scope="module")
def small_cache():
    s = Server("--kv-cache-mb", "1", "--max-ongoing-requests", str(N_REQ), "--threads", "2")
    yield s
    stop_clean(s)


def test_requests_outgrowing_the_cache_all_complete_exactly(small_cache):
    """24 concurrent greedy requests need ~2,700 tokens of KV (any 10 of them at their full length
    more than the pool's 1,024). Sequences are preempted and computed again, and every answer equals
    the same request sent alone."""
    s = small_cache
    m0 = requests.get(s.url("/metrics"), timeout=T).text
    assert metric(m0, "cserve_kv_cache_capacity_tokens") == 1024
    start = threading.Barrier(N_REQ)
    with cf.ThreadPoolExecutor(N_REQ) as ex:
        together = list(ex.map(lambda i: complete(s, i, start), range(N_REQ)))
    m1 = requests.get(s.url("/metrics"), timeout=T).text
    assert metric(m1, "cserve_scheduler_preemptions_total") > metric(m0, "cserve_scheduler_preemptions_total")
    assert metric(m1, "vllm:num_preemptions_total") == metric(m1, "cserve_scheduler_preemptions_total")
    alone = [complete(s, i) for i in range(N_REQ)]
    assert together == alone
    assert 0 <= metric(m1, "vllm:kv_cache_usage_perc") <= 1
    assert metric(m1, "cserve_kv_cache_bytes") <= 1024 * 1024 + 16384


def test_request_longer_than_the_cache_is_refused():
    """A pool smaller than the model's context caps it: a longer request gets 400, not a hang."""
    s = Server("--kv-cache-mb", "1", model=os.path.join(ROOT, "build", "models", "distil"))  # 1 block: 16 tokens
    try:
        r = requests.post(s.url("/v1/completions"), json={"prompt": "one two three four five six seven eight nine "
                                                          "ten eleven twelve thirteen", "max_tokens": 8}, timeout=T)
        assert r.status_code == 400, r.text
        assert "16" in r.json()["error"]["message"]
        r = requests.post(s.url("/v1/completions"), json={"prompt": "short", "max_tokens": 4}, timeout=T)
        assert r.status_code == 200, r.text
    finally:
        stop_clean(s)


# tiny: 2 layers x 4 heads of 16; per token bf16 2*2*64*2 = 512 bytes, int8 2*2*4*(16 + 4) = 320 bytes
# (each head row's 16 bytes and its fp32 scale); capacity in whole blocks of 16 tokens
@pytest.mark.parametrize("dtype,per_token", [("bf16", 512), ("int8", 320)])
def test_low_precision_cache_serves(dtype, per_token):
    s = Server("--kv-cache-dtype", dtype, "--kv-cache-mb", "1")
    try:
        m = requests.get(s.url("/metrics"), timeout=T).text
        assert metric(m, "cserve_kv_cache_capacity_tokens") == (1 << 20) // per_token // 16 * 16
        assert len(complete(s, 0)) > 0
    finally:
        stop_clean(s)


# --kv-cache-dtype auto (the default): fp32 weights keep an fp32 cache (tiny: 1,024 bytes per token),
# bf16 and int8 weights get a bf16 one (512); an explicit type wins over the weights.
@pytest.mark.parametrize("args,per_token,name", [
    ([], 1024, "fp32"),
    (["--dtype", "bf16"], 512, "bf16"),
    (["--dtype", "int8"], 512, "bf16"),
    (["--dtype", "int8", "--kv-cache-dtype", "auto"], 512, "bf16"),
    (["--kv-cache-dtype", "auto", "--dtype", "fp32"], 1024, "fp32"),
    (["--dtype", "int8", "--kv-cache-dtype", "fp32"], 1024, "fp32"),
    (["--kv-cache-dtype", "int8", "--dtype", "bf16"], 320, "int8"),
])
def test_auto_cache_follows_the_weights(args, per_token, name):
    s = Server(*args, "--kv-cache-mb", "1")
    try:
        m = requests.get(s.url("/metrics"), timeout=T).text
        assert metric(m, "cserve_kv_cache_capacity_tokens") == (1 << 20) // per_token // 16 * 16
        assert f" weights, {name} KV cache" in s.log(), s.log()[-3000:]
        assert len(complete(s, 0)) > 0
    finally:
        stop_clean(s)


@pytest.mark.parametrize("args,msg", [
    (["--kv-cache-dtype", "fp16"], "--kv-cache-dtype: expected auto, fp32, bf16 or int8, got 'fp16'"),
    (["--kv-cache-dtype", "AUTO"], "--kv-cache-dtype: expected auto, fp32, bf16 or int8, got 'AUTO'"),
    (["--kv-cache-mb", "lots"], "--kv-cache-mb"),
    (["--kv-cache-mb", "-3"], "--kv-cache-mb"),
    (["--kv-cache-mb", "0.5"], "--kv-cache-mb: expected a whole number of MB, got '0.5'"),
])
def test_bad_options(args, msg):
    r = subprocess.run([BIN, "serve", "--model", TINY, "--port", "0", *args], capture_output=True, text=True,
                       timeout=T)
    assert r.returncode == 2 and msg in r.stderr, r.stderr


def replica_cmdlines(s):
    cmdlines = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == s.proc.pid and b"replica" in cmd:
            cmdlines.append(cmd)
    assert cmdlines, "no replica process found"
    return cmdlines


@pytest.mark.parametrize("kv", [None, "auto"])
def test_config_auto_cache_follows_each_versions_weights(kv):
    """args.kv_cache_dtype unset or auto: no flag reaches the replicas, and each version's replica
    picks by its own weights: the fp32 version an fp32 cache, the int8 version a bf16 one."""
    args = {"model": TINY, "versions": {"q": {"model": TINY, "dtype": "int8"}}, "traffic": {"TextGenService": 50, "q": 50}}
    if kv:
        args["kv_cache_dtype"] = kv
    cfg = {"applications": [{"name": "app", "route_prefix": "/", "import_path": "cserve.apps:text_generation",
                             "args": args, "deployments": [{"name": "TextGenService", "num_replicas": 1}]}]}
    s = ControlServer(cfg)
    try:
        r = requests.post(s.url("/v1/completions"), json={"prompt": "hello", "max_tokens": 4}, timeout=T)
        assert r.status_code == 200, r.text
        cmdlines = replica_cmdlines(s)
        assert len(cmdlines) == 2, cmdlines
        assert all(b"--kv-cache-dtype" not in cmd for cmd in cmdlines), cmdlines
        log = s.log()
        assert "fp32 weights, fp32 KV cache" in log and "int8 weights, bf16 KV cache" in log, log[-5000:]
    finally:
        s.stop()


def test_config_args_reach_the_replicas():
    cfg = {"applications": [{"name": "app", "route_prefix": "/", "import_path": "cserve.apps:text_generation",
                             "args": {"model": TINY, "kv_cache_mb": 2, "kv_cache_dtype": "int8"},
                             "deployments": [{"name": "TextGenService", "num_replicas": 1}]}]}
    s = ControlServer(cfg)
    try:
        r = requests.post(s.url("/v1/completions"), json={"prompt": "hello", "max_tokens": 4}, timeout=T)
        assert r.status_code == 200, r.text
        for cmd in replica_cmdlines(s):
            i = cmd.index(b"--kv-cache-mb")
            assert cmd[i + 1] == b"2"
            assert cmd[cmd.index(b"--kv-cache-dtype") + 1] == b"int8"
    finally:
        s.stop()
