"""Contention benchmark: cserve decode tok/s with 1 and N threads, each alone and with a
busy-loop process pinned to one of the CPUs it runs on (a noisy neighbour). Writes
build/bench/contention.json and the "Contention" section of bench/RESULTS.md.

Standard library only (no venv): `make bench-contention`, or bench/run.sh after the peers.
Environment (all optional):
  BENCH_CSERVE          cserve binary (default build/cserve)
  BENCH_BASELINE        a second cserve binary measured in the same run, interleaved (e.g. an
                        older build), shown as extra rows
  BENCH_MODEL           model directory (default build/models/distil)
  CONT_DTYPES           default int8,fp32
  CONT_BATCHES          default 1,16
  CONT_THREADS          thread counts, default 1,<CPUs in the affinity mask>
  CONT_GEN              decode steps per sequence (default 64)
  CONT_REPEATS          runs per cell, interleaved (default 3)
  CONT_SPIN_CPU         CPU the busy loop is pinned to (default: the last one in the mask)
  CONT_WAIT_IDLE_S      before each run, wait up to this long for other processes to quiet
                        down (default 60)
  CONT_RESULTS          markdown file to update (default bench/RESULTS.md; "-" for none)
Usage: contention.py                   measure, write the JSON and the section
       contention.py --save-section F  copy the section out of RESULTS.md into F
       contention.py --insert F        put the section saved in F back into RESULTS.md
"""
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "bench")
TICK = os.sysconf("SC_CLK_TCK")
NCPU_ALL = os.cpu_count() or 1
BUSY_LIMIT = 0.25   # other processes' share of all CPUs above which a run is rerun
SECTION = "## Contention"


def env_list(name, default):
    return [x.strip() for x in (os.environ.get(name) or default).split(",") if x.strip()]


def env_num(name, default):
    v = (os.environ.get(name) or "").strip()
    return type(default)(v) if v else default


def say(msg):
    print(f"contention: {msg}", flush=True)


def cpu_busy_s():
    """Machine-wide busy CPU seconds so far (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    guest = sum(v[8:10]) if len(v) > 9 else 0
    return (sum(v) - idle - guest) / TICK


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def wait_quiet(limit_s):
    """Waits (at most limit_s) until other processes use < 15% of the CPUs over half a second."""
    t0 = time.time()
    while True:
        b0, s0 = cpu_busy_s(), time.time()
        time.sleep(0.5)
        b1, s1 = cpu_busy_s(), time.time()
        if b0 is None or (b1 - b0) / ((s1 - s0) * NCPU_ALL) < 0.15 or time.time() - t0 > limit_s:
            return time.time() - t0


def start_spinner(cpu):
    """A shell busy loop pinned to one CPU: the noisy neighbour."""
    p = subprocess.Popen(["sh", "-c", "while :; do :; done"], preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
                         start_new_session=True)
    time.sleep(0.2)
    return p


def stop_spinner(p):
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def run_once(binary, model, dtype, threads, batches, gen, spin_cpu):
    """One `cserve bench` process (with the busy loop running when spin_cpu is set); returns its JSON."""
    cmd = [binary, "bench", "--model", model, "--dtype", dtype, "--threads", str(threads),
           "--batches", batches, "--gen", str(gen), "--prompt-len", "16"]
    env = dict(os.environ, CS_CACHE_DIR=os.environ.get("CS_CACHE_DIR") or os.path.join(OUT, "cserve-cache"))
    spinner = start_spinner(spin_cpu) if spin_cpu is not None else None
    try:
        p = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
    finally:
        if spinner:
            stop_spinner(spinner)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


class ChildCPU:
    """Children's CPU seconds (os.times), to subtract our own processes from /proc/stat."""

    def __init__(self):
        t = os.times()
        self.v = t.children_user + t.children_system

    def delta(self):
        t = os.times()
        v = t.children_user + t.children_system
        d, self.v = v - self.v, v
        return d


def measure(binary, model, dtype, threads, batches, gen, spin_cpu, wait_s):
    """One cell run, rerun (twice at most) when other processes took > 25% of the CPUs."""
    best = None
    for attempt in range(3):
        wait_quiet(wait_s)
        cc = ChildCPU()
        busy0, t0 = cpu_busy_s(), time.time()
        res = run_once(binary, model, dtype, threads, batches, gen, spin_cpu)
        busy1, wall = cpu_busy_s(), time.time() - t0
        ours = cc.delta()
        other = None if busy0 is None else max(0.0, (busy1 - busy0) - ours) / (wall * NCPU_ALL)
        rec = {"decode": {int(k): v for k, v in res["decode"].items()}, "other_cpu": other,
               "kernels": res.get("kernels"), "threads": res.get("threads"), "attempts": attempt + 1}
        if best is None or (other or 0) < (best["other_cpu"] or 0):
            best = rec
        if other is None or other <= BUSY_LIMIT:
            break
    return best


def git_rev():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def fmt(v):
    return "n/a" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def cell(vals):
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    return fmt(med) if len(vals) == 1 else f"{fmt(med)} ({fmt(min(vals))}-{fmt(max(vals))})"


def section(doc):
    """The markdown section from the JSON document."""
    th = doc["threads"]
    lo, hi = th[0], th[-1]
    L = [SECTION, "",
         f"Generated by `make bench-contention` (bench/contention.py) on {doc['date']}, git {doc['git']}. "
         f"Decode tok/s of `cserve bench` (same model, prompts and {doc['gen']} greedy steps as above) with "
         f"{lo} and {hi} threads, each **alone** and **contended**: with a busy-loop process "
         f"(`sh -c 'while :; do :; done'`) pinned to CPU {doc['spin_cpu']} of the {doc['ncpu']} the engine "
         f"may use, started before the engine and stopped after it, a noisy neighbour taking one core. "
         f"Each cell: median of {doc['repeats']} runs (min-max in brackets), runs interleaved over the "
         f"cells; a run during which other processes took more than 25% of the CPUs was repeated "
         f"(twice at most). Load average before: {doc['load_before']}; after: {doc['load_after']}.", "",
         f"| engine | dtype | B | {lo}T alone | {hi}T alone | {lo}T contended | {hi}T contended | "
         f"**{hi}T/{lo}T contended** | {hi}T contended / alone | other load |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        c = row["cells"]

        def vals(t, mode):
            return [r["decode"].get(str(row["B"]), r["decode"].get(row["B"])) for r in c.get(f"{t}/{mode}", [])]
        a1, a2, c1, c2 = vals(lo, "alone"), vals(hi, "alone"), vals(lo, "contended"), vals(hi, "contended")
        ratio = f"**{statistics.median(c2) / statistics.median(c1):.2f}x**" if c1 and c2 else "n/a"
        keep = f"{statistics.median(c2) / statistics.median(a2):.0%}" if a2 and c2 else "n/a"
        others = [r["other_cpu"] for k in c for r in c[k] if r.get("other_cpu") is not None]
        worst = max(others) if others else None
        load = "n/a" if worst is None else f"{worst:.0%}" + (" **!**" if worst > BUSY_LIMIT else "")
        L.append(f"| {row['engine']} | {row['dtype']} | {row['B']} | {cell(a1)} | {cell(a2)} | {cell(c1)} | "
                 f"{cell(c2)} | {ratio} | {keep} | {load} |")
    L += ["", f"*{hi}T/{lo}T contended*: the goal is at least 1.00x: an engine given {hi} threads must not "
          f"decode slower than with {lo} when a neighbour takes one of its cores. *other load*: the largest "
          f"share of all CPUs that processes other than the engine and the busy loop took during one of the "
          f"row's runs (above 25% the numbers are depressed). Raw JSON: build/bench/contention.json.", ""]
    return "\n".join(L)


def put_section(path, text):
    """Replaces the Contention section of path (or inserts it before "## Definitions", else at the end)."""
    try:
        with open(path) as f:
            doc = f.read()
    except OSError:
        doc = ""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == SECTION:
            i += 1
            while i < len(lines) and not lines[i].startswith("## "):
                i += 1
            continue
        out.append(lines[i])
        i += 1
    at = next((k for k, ln in enumerate(out) if ln.startswith("## Definitions")), len(out))
    out[at:at] = text.rstrip("\n").splitlines() + [""]
    with open(path, "w") as f:
        f.write("\n".join(out).rstrip("\n") + "\n")


def get_section(path):
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for i, ln in enumerate(lines):
        if ln.strip() == SECTION:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("## "):
                j += 1
            return "\n".join(lines[i:j]).rstrip("\n") + "\n"
    return None


def main():
    results = os.environ.get("CONT_RESULTS") or os.path.join(ROOT, "bench", "RESULTS.md")
    if len(sys.argv) == 3 and sys.argv[1] == "--save-section":
        text = get_section(results)
        if text:
            with open(sys.argv[2], "w") as f:
                f.write(text)
        elif os.path.exists(sys.argv[2]):
            os.remove(sys.argv[2])
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "--insert":
        if os.path.exists(sys.argv[2]) and results != "-":
            with open(sys.argv[2]) as f:
                put_section(results, f.read())
        return 0
    if len(sys.argv) > 1:
        print(__doc__)
        return 2

    binary = os.path.abspath(os.environ.get("BENCH_CSERVE") or os.path.join(ROOT, "build", "cserve"))
    baseline = os.environ.get("BENCH_BASELINE")
    model = os.path.abspath(os.environ.get("BENCH_MODEL") or os.path.join(ROOT, "build", "models", "distil"))
    cpus = sorted(os.sched_getaffinity(0))
    dtypes = env_list("CONT_DTYPES", "int8,fp32")
    batches = env_list("CONT_BATCHES", "1,16")
    threads = [int(t) for t in env_list("CONT_THREADS", f"1,{len(cpus)}")]
    gen = env_num("CONT_GEN", 64)
    repeats = env_num("CONT_REPEATS", 3)
    spin_cpu = env_num("CONT_SPIN_CPU", cpus[-1])
    wait_s = env_num("CONT_WAIT_IDLE_S", 60.0)
    for path in [binary] + ([baseline] if baseline else []):
        if not os.access(path, os.X_OK):
            say(f"{path} not built (make bench-contention builds it)")
            return 1
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        say(f"{model} missing (make models)")
        return 1
    engines = [("cserve", binary)] + ([(f"baseline ({os.path.relpath(baseline, ROOT)})", os.path.abspath(baseline))]
                                      if baseline else [])
    t_start = time.time()
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M %Z"), "git": git_rev(),
           "gen": gen, "repeats": repeats, "threads": threads, "spin_cpu": spin_cpu, "ncpu": len(cpus),
           "load_before": loadavg(), "rows": []}
    # Untimed first loads fill the packed-weight cache, as in bench/harness.py.
    for _, path in engines:
        for d in dtypes:
            run_once(path, model, d, 1, "1", 2, None)
    cells = {}
    for rep in range(repeats):
        for d in dtypes:
            for mode in ("alone", "contended"):
                for t in threads:
                    for name, path in engines:
                        r = measure(path, model, d, t, ",".join(batches), gen,
                                    spin_cpu if mode == "contended" else None, wait_s)
                        cells.setdefault((name, d), {}).setdefault(f"{t}/{mode}", []).append(r)
                        say(f"run {rep + 1}/{repeats} {name} {d} {t}T {mode}: {r['decode']} tok/s, other load "
                            f"{100 * (r['other_cpu'] or 0):.0f}%")
    for name, _ in engines:
        for d in dtypes:
            for b in batches:
                c = {k: [{"decode": {str(kk): vv for kk, vv in r["decode"].items()}, "other_cpu": r["other_cpu"],
                          "attempts": r["attempts"]} for r in v] for k, v in cells[(name, d)].items()}
                doc["rows"].append({"engine": name, "dtype": d, "B": int(b), "cells": c})
    doc["load_after"] = loadavg()
    doc["seconds"] = round(time.time() - t_start, 1)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "contention.json"), "w") as f:
        json.dump(doc, f, indent=1)
    text = section(doc)
    if results != "-":
        put_section(results, text)
    print(text)
    say(f"done in {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
