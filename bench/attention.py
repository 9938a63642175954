"""make bench: the "Decode attention" section of bench/RESULTS.md.

Runs `cserve bench --attention` (no model needed): one decode step's attention for 32 sequences
of distilgpt2's shape (6 layers x 12 heads of 64) over the engine's paged KV pool, the sequences'
blocks taken in lockstep, at 64, 256 and 1,024 cached positions, fp32, bf16 and int8 caches, on one
thread; the kernel table's attend against the per-key form (the same table's dot and axpy called
key by key) in the same run, and against the one-thread memory bandwidth that bench/roofline.c
measured by the latest `make bench` run (the "roofline" of build/bench/results.json, when present).
Standard library only.

Environment: BENCH_CSERVE (default build/cserve), BENCH_OUT (default build/bench),
ATT_RESULTS (markdown file to update, default bench/RESULTS.md; "-" for none).
"""
import datetime
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mdsection  # noqa: E402
from kvmem import cpu_name, git_rev  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Decode attention"


def one_thread_bandwidth(out):
    try:
        with open(os.path.join(out, "results.json")) as f:
            return float(json.load(f)["roofline"]["bandwidth_gbs_1thread"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main():
    binary = os.environ.get("BENCH_CSERVE") or os.path.join(ROOT, "build", "cserve")
    out = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "build", "bench")
    os.makedirs(out, exist_ok=True)
    res = json.loads(subprocess.run([binary, "bench", "--attention"], capture_output=True, text=True,
                                    check=True).stdout)
    with open(os.path.join(out, "attention.json"), "w") as f:
        json.dump(res, f, indent=1)
    bw = one_thread_bandwidth(out)
    rows = ["| cached positions | KV dtype | cache read | attend kernel | GB/s | per-key form | GB/s | "
            "kernel / per-key | kernel / 1-thread bandwidth |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in res["attention"]:
        frac = f"{r['kernel_gbs'] / bw:.0%}" if bw else "n/a"
        rows.append(f"| {r['positions']} | {r['kv_dtype']} | {r['cache_mb']:.0f} MB | {r['kernel_ms']:.1f} ms | "
                    f"{r['kernel_gbs']:.1f} | {r['per_key_ms']:.1f} ms | {r['per_key_gbs']:.1f} | "
                    f"**{r['per_key_ms'] / r['kernel_ms']:.2f}x** | {frac} |")
        print(f"attention: {r['positions']} positions {r['kv_dtype']}: {r['kernel_ms']:.1f} ms "
              f"({r['kernel_gbs']:.1f} GB/s), per-key {r['per_key_ms']:.1f} ms")
    text = "\n".join([
        SECTION, "",
        f"`cserve bench --attention` (bench/attention.py, part of `make bench`), "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_rev()}, on {cpu_name()}, "
        f"kernels {res['kernels']}. One decode step's attention (every layer and head) for "
        f"{res['sequences']} sequences of distilgpt2's shape on one thread, best of 5: the cache is the engine's "
        "paged pool with the sequences' blocks taken in lockstep, as a batch that grows together takes them, so "
        "every 16 positions of a head start a new 4 KiB page (fp32). The kernel prefetches one block ahead; the "
        "per-key form calls the same table's dot and axpy key by key (the bits are the same). An int8 cache "
        "row is its 64 bytes and their fp32 scale (68 bytes; fp32 256, bf16 128): \"GB/s\" counts the bytes "
        "of the cache's own dtype, so at a given time int8 reads fewer of them. "
        + (f"One-thread memory bandwidth measured by bench/roofline.c in the latest `make bench` run "
           f"(build/bench/results.json): {bw:.1f} GB/s."
           if bw else "No roofline in build/bench/results.json: no bandwidth column."), "",
        *rows, ""])
    results = os.environ.get("ATT_RESULTS") or os.path.join(ROOT, "bench", "RESULTS.md")
    if results != "-":
        mdsection.replace(results, SECTION, text)
        print(f"attention: wrote the '{SECTION[3:]}' section of {results}")


if __name__ == "__main__":
    main()
