"""Shared pieces of the peer runners: arguments, prompt ids, timing, the JSON result.

Every runner prints one JSON object with the shape `cserve bench` prints:
  {"engine", "dtype", "load_s", "prefill_tokens", "prefill_tokens_per_s", "gen",
   "decode": {"1": tok_s, ...}, "peak_rss_mb"}
plus "version", "threads", "decode_s" (seconds of the timed decode per batch), "notes".

Definitions (the same for every engine, see bench/README.md):
  prefill: one sequence, a PROMPT_LEN-token prompt, time to the last token's logits.
  decode:  B sequences, each prefilled with a 16-token prompt, then GEN decode steps each
           (greedy, EOS ignored); only the decode steps are timed; tok/s = B * GEN / time.
  prompt ids: ids[i] = (i * 7919 + 13) % 50000.
  load_s:  process start -> model ready (the harness passes its spawn time in BENCH_SPAWN_T,
           so interpreter start-up and imports are included).
"""
import argparse
import json
import os
import resource
import sys
import time

DECODE_PROMPT = 16


def bench_ids(n):
    return [(i * 7919 + 13) % 50000 for i in range(n)]


def parse_args(extra=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model file or directory for this engine")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--max-batch-s", type=float,
                    default=float(os.environ.get("BENCH_MAX_BATCH_S", "300")),
                    help="skip a batch size whose predicted decode time exceeds this")
    if extra:
        extra(ap)
    a = ap.parse_args()
    a.batch_list = [int(b) for b in a.batches.split(",") if b.strip()]
    return a


def spawn_time():
    """Wall-clock time at which the harness started this process (or our best guess)."""
    t = os.environ.get("BENCH_SPAWN_T")
    if t:
        return float(t)
    # Fallback: process start time from /proc (10 ms resolution).
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class Result:
    def __init__(self, engine, dtype, args, version=""):
        self.t_spawn = spawn_time()
        self.d = {"engine": engine, "dtype": dtype, "version": version, "threads": args.threads,
                  "load_s": None, "prefill_tokens": args.prompt_len, "prefill_tokens_per_s": None,
                  "gen": args.gen, "decode": {}, "decode_s": {}, "notes": {}}
        self.args = args

    def loaded(self, model_load_s=None):
        self.d["load_s"] = round(time.time() - self.t_spawn, 4)
        if model_load_s is not None:
            self.d["model_load_s"] = round(model_load_s, 4)

    def prefill(self, seconds):
        self.d["prefill_s"] = round(seconds, 5)
        self.d["prefill_tokens_per_s"] = round(self.args.prompt_len / seconds, 2)

    def decode_loop(self, run_batch):
        """run_batch(B) -> seconds of B x GEN decode steps. Skips a batch size whose decode is
        predicted (from the previous one, assuming no batching gain) to exceed --max-batch-s."""
        prev = None
        for b in self.args.batch_list:
            if prev is not None:
                pb, ps = prev
                predicted = ps * b / pb
                if predicted > self.args.max_batch_s:
                    self.d["decode"][str(b)] = None
                    self.d["notes"][str(b)] = (f"skipped: predicted {predicted:.0f} s > "
                                               f"{self.args.max_batch_s:.0f} s limit")
                    log(f"batch {b}: skipped (predicted {predicted:.0f} s)")
                    continue
            s = run_batch(b)
            self.d["decode_s"][str(b)] = round(s, 4)
            self.d["decode"][str(b)] = round(b * self.args.gen / s, 2)
            log(f"batch {b}: {b * self.args.gen / s:.1f} tok/s ({s:.2f} s)")
            prev = (b, s)

    def note(self, key, text):
        self.d["notes"][key] = text

    def emit(self):
        self.d["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(self.d), flush=True)


def log(msg):
    print(f"  [{os.path.basename(sys.argv[0])}] {msg}", file=sys.stderr, flush=True)


def best_of(fn, n=3):
    """Minimum wall time of n calls of fn()."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
