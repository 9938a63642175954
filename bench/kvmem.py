"""make bench: the "KV cache memory" section of bench/RESULTS.md.

Runs `cserve bench --kv-memory` (no model needed): for distilgpt2's shape (6 layers x 768) and
gpt2-large's (36 x 1280), in fp32, bf16 and int8, a 4 GiB KV pool is filled with 512-token sequences,
every block written, and the process's resident memory is read before and after.
Standard library only.

Environment: BENCH_CSERVE (default build/cserve), BENCH_OUT (default build/bench),
KV_RESULTS (markdown file to update, default bench/RESULTS.md; "-" for none).
"""
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mdsection  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## KV cache memory"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main():
    binary = os.environ.get("BENCH_CSERVE") or os.path.join(ROOT, "build", "cserve")
    out = os.environ.get("BENCH_OUT") or os.path.join(ROOT, "build", "bench")
    os.makedirs(out, exist_ok=True)
    res = json.loads(subprocess.run([binary, "bench", "--kv-memory"], capture_output=True, text=True,
                                    check=True).stdout)
    with open(os.path.join(out, "kv-memory.json"), "w") as f:
        json.dump(res, f, indent=1)
    rows = ["| model shape | KV dtype | bytes per 1,000 cached tokens (computed) | measured (RSS) | "
            "512-token sequences in 4 GiB: paged | before: one 1,024-token buffer per slot |",
            "|---|---|---|---|---|---|"]
    for r in res["kv_memory"]:
        rows.append(f"| {r['shape']} ({r['n_layer']} x {r['n_embd']}) | {r['kv_dtype']} | "
                    f"{r['bytes_per_1000_tokens'] / 1e6:.1f} MB | {r['measured_rss_per_1000_tokens'] / 1e6:.1f} MB | "
                    f"**{r['seqs_512_in_4gib']}** | {r['full_context_slots_in_4gib']} (fp32) |")
        print(f"kvmem: {r['shape']} {r['kv_dtype']}: {r['seqs_512_in_4gib']} x 512-token sequences in 4 GiB "
              f"(full-context slots: {r['full_context_slots_in_4gib']})")
    text = "\n".join([
        SECTION, "",
        f"`cserve bench --kv-memory` (bench/kvmem.py, part of `make bench`), "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, git {git_rev()}, on {cpu_name()}. "
        "The KV cache is paged (engine/kvpool.h): blocks of 16 positions x every layer, taken from one pool per "
        "replica as sequences grow and given back when they end, so memory follows the tokens held. A 4 GiB pool "
        "is filled with 512-token sequences, every block written; \"measured\" is the process's resident memory "
        "growth per 1,000 cached tokens. Before paging each slot held a full-context fp32 buffer whatever its "
        "length. `--kv-cache-dtype bf16` halves the bytes; `int8` stores each head's row (64 elements) as bytes "
        "with its fp32 scale, 68 bytes for fp32's 256 (error bounds: tests/engine/test_kvcache.c).", "",
        *rows, ""])
    results = os.environ.get("KV_RESULTS") or os.path.join(ROOT, "bench", "RESULTS.md")
    if results != "-":
        mdsection.replace(results, SECTION, text)
        print(f"kvmem: wrote the '{SECTION[3:]}' section of {results}")


if __name__ == "__main__":
    main()
