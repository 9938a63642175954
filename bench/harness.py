"""Runs every engine of the benchmark, each in its own subprocess, and collects their JSON into
build/bench/results.json (bench/report.py turns it into bench/RESULTS.md and bench/results.png).

Called by bench/run.sh with the venv's python. Environment (all optional):
  BENCH_THREADS      threads for every engine (default: CPUs in this process's affinity mask)
  BENCH_QUICK=1      batches 1,16 instead of 1,4,16,64
  BENCH_BATCHES      explicit batch list, e.g. 1,4,16,64
  BENCH_GEN          decode steps per sequence (default 64)
  BENCH_PROMPT_LEN   prefill prompt length (default 128)
  BENCH_ENGINES      subset, e.g. cserve,llama.cpp (default: cserve,transformers,llama.cpp,ctranslate2)
  BENCH_MAX_BATCH_S  skip a batch size whose decode is predicted to take longer (default 300)
  BENCH_STEP_TIMEOUT seconds before one engine run is killed (default 900)
  BENCH_MODEL        model directory (default build/models/distil)
  BENCH_ROOFLINE_MB  array size of the bandwidth test (default 2048)
  BENCH_WAIT_IDLE_S  before each engine run, wait up to this long for a quiet machine (120)
  BENCH_RETRIES      reruns of a run disturbed by other processes (default 2)
  BENCH_CSERVE       the cserve binary (default build/cserve)
  BENCH_OUT          output directory: results.json, logs, roofline binary (default build/bench)

results.json also gets, after all runs, "rooflines" (attainable tok/s per dtype, prefill and each
decode batch size, and the compute peak used: bench/report.py's roofline_table) and, in every
run, "roofline_fraction" (measured / attainable of the run's own dtype).
"""
import datetime
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.abspath(os.environ.get("BENCH_OUT") or os.path.join(ROOT, "build", "bench"))
RUNNERS = os.path.join(ROOT, "bench", "runners")
PY = sys.executable


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


THREADS = env_int("BENCH_THREADS", len(os.sched_getaffinity(0)))
GEN = env_int("BENCH_GEN", 64)
PROMPT_LEN = env_int("BENCH_PROMPT_LEN", 128)
QUICK = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
BATCHES = os.environ.get("BENCH_BATCHES") or ("1,16" if QUICK else "1,4,16,64")
MAX_BATCH_S = float(os.environ.get("BENCH_MAX_BATCH_S") or 300)
STEP_TIMEOUT = float(os.environ.get("BENCH_STEP_TIMEOUT") or 900)
MODEL = os.path.abspath(os.environ.get("BENCH_MODEL") or os.path.join(ROOT, "build/models/distil"))
ENGINES = (os.environ.get("BENCH_ENGINES") or "cserve,transformers,llama.cpp,ctranslate2").split(",")
ROOFLINE_MB = env_int("BENCH_ROOFLINE_MB", 2048)
CSERVE = os.path.abspath(os.environ.get("BENCH_CSERVE") or os.path.join(ROOT, "build", "cserve"))
# cserve's packed-weight cache goes under build/ rather than the user's ~/.cache
CSERVE_ENV = {"CS_CACHE_DIR": os.environ.get("CS_CACHE_DIR") or os.path.join(OUT, "cserve-cache")}


WAIT_IDLE_S = float(os.environ.get("BENCH_WAIT_IDLE_S") or 120)
RETRIES = env_int("BENCH_RETRIES", 2)
BUSY_LIMIT = 0.25   # other processes' share of all CPUs above which a run counts as disturbed
TICK = os.sysconf("SC_CLK_TCK")
NCPU_ALL = os.cpu_count() or 1


def cpu_busy_s():
    """Machine-wide busy CPU seconds so far (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
    guest = sum(v[8:10]) if len(v) > 9 else 0    # already counted in user/nice
    return (sum(v) - idle - guest) / TICK


def wait_quiet():
    """Waits (at most BENCH_WAIT_IDLE_S) until other processes use < 15% of the CPUs over
    half a second; returns the seconds waited."""
    t0 = time.time()
    while True:
        b0, s0 = cpu_busy_s(), time.time()
        time.sleep(0.5)
        b1, s1 = cpu_busy_s(), time.time()
        if b0 is None or (b1 - b0) / ((s1 - s0) * NCPU_ALL) < 0.15:
            return time.time() - t0
        if time.time() - t0 > WAIT_IDLE_S:
            return time.time() - t0


def say(msg):
    print(f"bench: {msg}", flush=True)


def run(cmd, log_name, timeout=STEP_TIMEOUT, env_extra=None):
    """Runs cmd in its own process; returns (rc, stdout, stderr tail, seconds, peak RSS MB).
    Peak RSS comes from wait4's rusage of that child."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_SPAWN_T=repr(time.time()),
               PYTHONPATH=RUNNERS, **(env_extra or {}))
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    log_path = os.path.join(OUT, "logs", log_name + ".log")
    out_path = log_path[:-4] + ".out"
    busy0 = cpu_busy_s()
    t0 = time.time()
    with open(log_path, "w") as err, open(out_path, "w") as out:
        err.write("$ " + " ".join(cmd) + "\n")
        err.flush()
        env["BENCH_SPAWN_T"] = repr(time.time())
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT,
                             start_new_session=True)
        rc, ru = None, None
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.time() - t0 > timeout:
                os.killpg(p.pid, signal.SIGKILL)
                _, status, ru = os.wait4(p.pid, 0)
                rc = 124
                break
            time.sleep(0.05)
        p.returncode = rc
    secs = time.time() - t0
    busy1 = cpu_busy_s()
    other = None
    if busy0 is not None and busy1 is not None and secs > 0:
        own = ru.ru_utime + ru.ru_stime
        other = max(0.0, (busy1 - busy0) - own) / (secs * NCPU_ALL)
    with open(out_path) as f:
        stdout = f.read()
    with open(log_path, errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    tail = " / ".join(lines[1:][-2:])[-400:]
    if rc == 124:
        tail = f"killed after {timeout:.0f} s (BENCH_STEP_TIMEOUT)"
    run.other_cpu = other
    return rc, stdout, tail, secs, ru.ru_maxrss / 1024.0


def last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


def failed(engine, dtype, why):
    say(f"{engine} {dtype}: n/a ({why})")
    return {"engine": engine, "dtype": dtype, "error": why}


def run_engine(engine, dtype, cmd, log_name, retries=None, env_extra=None):
    """Runs one engine process. Other processes on the machine distort the numbers (a 2-thread
    engine on 2 cores stalls whenever one core is taken), so it first waits for a quiet machine,
    measures the CPU share that other processes took during the run, and reruns a disturbed run
    (other processes > 25% of the CPUs) up to BENCH_RETRIES times, keeping the least disturbed."""
    best = None
    retries = RETRIES if retries is None else retries
    for attempt in range(retries + 1):
        waited = wait_quiet()
        if waited > 1:
            say(f"waited {waited:.0f} s for other processes to quiet down")
        say(f"{engine} {dtype} ...")
        rc, stdout, tail, secs, rss = run(cmd, log_name if not attempt else f"{log_name}-retry{attempt}",
                                          env_extra=env_extra)
        res = last_json(stdout)
        if rc != 0 or res is None:
            if best is not None:   # a disturbed but complete earlier attempt
                return best
            return failed(engine, dtype, f"exit {rc}: {tail}" if rc else f"no JSON in output: {tail}")
        res["peak_rss_mb_self"] = res.get("peak_rss_mb")
        res["peak_rss_mb"] = round(rss, 1)
        res["wall_s"] = round(secs, 1)
        other = run.other_cpu
        res["other_cpu"] = None if other is None else round(other, 3)
        res["attempts"] = attempt + 1
        say(f"{engine} {dtype}: prefill {res.get('prefill_tokens_per_s')} tok/s, decode "
            f"{res.get('decode')} tok/s, load {res.get('load_s')} s, RSS {res['peak_rss_mb']} MB "
            f"({secs:.0f} s, other processes {100 * (other or 0):.0f}% of the CPUs)")
        if best is None or (other or 0) < (best.get("other_cpu") or 0):
            best = res
        if other is None or other <= BUSY_LIMIT:
            break
        if attempt < retries:
            say(f"{engine} {dtype}: disturbed by other processes, running it again")
    best["attempts"] = res["attempts"]
    return best


# ---------------------------------------------------------------- cserve

def run_cserve(dtype):
    """One process per batch size, so that a slow batch can be skipped (same prediction rule as
    the Python runners) and a crash loses only that batch. Load time comes from the first
    measured run, prefill is the best of all runs, peak RSS the largest."""
    if not os.access(CSERVE, os.X_OK):
        return failed("cserve", dtype, f"{CSERVE} not built")
    # An untimed first run: cserve packs the weights for this dtype into its cache file
    # (CS_CACHE_DIR) on the first load, as the peers' models are converted before they run.
    # Its load time and RSS are kept as the cold-start figures.
    cold = run_engine("cserve", dtype, [CSERVE, "bench", "--model", MODEL, "--dtype", dtype,
                                        "--threads", str(THREADS), "--prompt-len", "16",
                                        "--gen", "1", "--batches", "1"],
                      f"cserve-{dtype}-cold", retries=0, env_extra=CSERVE_ENV)
    if "error" in cold:
        return cold
    merged, prev, loads, by_batch = None, None, [], {}
    for b in [int(x) for x in BATCHES.split(",")]:
        if prev is not None:
            pb, ps = prev
            predicted = ps * b / pb
            if predicted > MAX_BATCH_S:
                merged["decode"][str(b)] = None
                merged.setdefault("notes", {})[str(b)] = (
                    f"skipped: predicted {predicted:.0f} s > {MAX_BATCH_S:.0f} s limit")
                say(f"cserve {dtype}: batch {b} skipped (predicted {predicted:.0f} s)")
                continue
        cmd = [CSERVE, "bench", "--model", MODEL, "--dtype", dtype, "--threads", str(THREADS),
               "--prompt-len", str(PROMPT_LEN), "--gen", str(GEN), "--batches", str(b)]
        res = run_engine("cserve", dtype, cmd, f"cserve-{dtype}-b{b}", env_extra=CSERVE_ENV)
        if "error" in res:
            if merged is None:
                return res
            merged["decode"][str(b)] = None
            merged.setdefault("notes", {})[str(b)] = res["error"]
            continue
        tok_s = res["decode"].get(str(b))
        loads.append((res.get("load_s"), res.get("packed_cache_hit")))
        by_batch[str(b)] = res.get("other_cpu")
        if merged is None:
            merged = res
            merged["runs"] = 1
        else:
            merged["decode"][str(b)] = tok_s
            # every process times one prefill: keep the best, as the peers keep their best of 3
            if (res.get("prefill_tokens_per_s") or 0) > (merged.get("prefill_tokens_per_s") or 0):
                merged["prefill_tokens_per_s"] = res["prefill_tokens_per_s"]
            merged["peak_rss_mb"] = max(merged["peak_rss_mb"], res["peak_rss_mb"])
            if res.get("other_cpu") is not None:
                merged["other_cpu"] = max(merged.get("other_cpu") or 0, res["other_cpu"])
            merged["wall_s"] = round(merged["wall_s"] + res["wall_s"], 1)
            merged["runs"] += 1
        if tok_s:
            merged.setdefault("decode_s", {})[str(b)] = round(b * GEN / tok_s, 4)
            prev = (b, b * GEN / tok_s)
    merged["other_cpu_by_batch"] = by_batch
    merged.setdefault("version", GIT_VERSION)
    extra = {"method": "one `cserve bench` process per batch size, after an untimed first load"}
    if cold.get("packed_cache_hit") is False:
        extra["first load (packs the weights into the cache)"] = (
            f"{cold.get('load_s')} s, peak RSS {cold.get('peak_rss_mb')} MB")
    if merged.get("kernels"):
        extra["kernels"] = merged["kernels"]
    if merged.get("kv_cache_dtype"):
        extra["KV cache"] = f"{merged['kv_cache_dtype']} (--kv-cache-dtype auto)"
    if any(h is not None for _, h in loads):
        extra["load_s per process (packed-weight cache hit)"] = ", ".join(
            f"{ls} ({'hit' if h else 'miss'})" for ls, h in loads)
    merged["notes"] = dict(merged.get("notes", {}), **extra)
    return merged


def git_version():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True).stdout.strip()
        return f"git {rev}{' + uncommitted changes' if dirty else ''}" if rev else ""
    except OSError:
        return ""


# ---------------------------------------------------------------- peers

def have(module):
    return importlib.util.find_spec(module) is not None


def install_reason(pkg):
    try:
        with open(os.path.join(OUT, "install_status.json")) as f:
            st = json.load(f).get(pkg)
    except (OSError, ValueError):
        st = None
    if st and not st.get("ok"):
        tail = " / ".join(st.get("log_tail", [])[-3:])
        return f"pip install {pkg} failed: {tail}"
    return f"Python package {pkg} is not installed"


def runner(name, model, dtype, extra=()):
    return [PY, os.path.join(RUNNERS, name), "--model", model, "--dtype", dtype,
            "--threads", str(THREADS), "--prompt-len", str(PROMPT_LEN), "--gen", str(GEN),
            "--batches", BATCHES, "--max-batch-s", str(MAX_BATCH_S), *extra]


def up_to_date(path):
    src = os.path.join(MODEL, "model.safetensors")
    return os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(src)


def run_transformers():
    if not (have("torch") and have("transformers")):
        why = install_reason("torch" if not have("torch") else "transformers")
        return [failed("transformers", d, why) for d in ("fp32", "bf16")]
    return [run_engine("transformers", d, runner("transformers_runner.py", MODEL, d),
                       f"transformers-{d}") for d in ("fp32", "bf16")]


def run_llamacpp():
    dtypes = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0"}
    if not have("llama_cpp"):
        return [failed("llama.cpp", d, install_reason("llama-cpp-python")) for d in dtypes]
    if not have("gguf"):
        return [failed("llama.cpp", d, install_reason("gguf")) for d in dtypes]
    gdir = os.path.join(OUT, "gguf")
    say("converting the model to GGUF (f32, bf16, q8_0) ...")
    rc, _, tail, secs, _ = run([PY, os.path.join(ROOT, "bench", "convert_gguf.py"), MODEL, gdir,
                                "--types", ",".join(dtypes.values())], "convert-gguf")
    if rc != 0:
        return [failed("llama.cpp", d, f"GGUF conversion failed: {tail}") for d in dtypes]
    out = []
    for d, g in dtypes.items():
        res = run_engine("llama.cpp", d, runner("llamacpp_runner.py",
                                                os.path.join(gdir, f"model-{g}.gguf"), d),
                         f"llamacpp-{d}")
        if "error" not in res:
            res["format"] = {"f32": "GGUF F32", "bf16": "GGUF BF16 (matrices)",
                             "q8_0": "GGUF Q8_0 (matrices)"}[g]
        out.append(res)
    return out


def run_ctranslate2():
    dtypes = ("fp32", "int8")
    if not have("ctranslate2"):
        return [failed("ctranslate2", d, install_reason("ctranslate2")) for d in dtypes]
    out = []
    for d in dtypes:
        cdir = os.path.join(OUT, f"ct2-{d}")
        if not up_to_date(os.path.join(cdir, "model.bin")):
            say(f"converting the model for CTranslate2 ({d}) ...")
            rc, _, tail, _, _ = run(runner("ctranslate2_runner.py", cdir, d,
                                           ("--convert-from", MODEL)), f"convert-ct2-{d}")
            if rc != 0:
                out.append(failed("ctranslate2", d, f"conversion failed: {tail}"))
                continue
        out.append(run_engine("ctranslate2", d, runner("ctranslate2_runner.py", cdir, d),
                              f"ctranslate2-{d}"))
    return out


# ---------------------------------------------------------------- machine, roofline

def machine():
    m = {"cpu": platform.processor() or platform.machine(), "cpus_online": os.cpu_count(),
         "cpus_affinity": len(os.sched_getaffinity(0)), "kernel": platform.release(),
         "python": platform.python_version(), "date": datetime.datetime.now().astimezone()
         .strftime("%Y-%m-%d %H:%M %Z"), "loadavg_start": loadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    m["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            m["mem_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    for idx in range(5):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{idx}/"
        try:
            with open(base + "level") as f:
                level = f.read().strip()
            with open(base + "size") as f:
                size = f.read().strip()
            with open(base + "type") as f:
                typ = f.read().strip()
            if typ != "Instruction":
                if size.endswith("K") and int(size[:-1]) >= 4096:
                    size = f"{int(size[:-1]) // 1024} MiB"
                elif size.endswith("K"):
                    size = f"{size[:-1]} KiB"
                m[f"L{level}"] = size
        except OSError:
            pass
    try:
        m["cc"] = subprocess.run(["cc", "--version"], text=True, capture_output=True
                                 ).stdout.splitlines()[0]
    except (OSError, IndexError):
        pass
    return m


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def roofline():
    exe = os.path.join(OUT, "roofline")
    if not os.access(exe, os.X_OK):
        return {"error": "bench/roofline.c was not built"}
    best = None
    for attempt in range(RETRIES + 1):
        wait_quiet()
        say(f"roofline: memory bandwidth ({ROOFLINE_MB} MiB array) and instruction peaks, "
            f"{THREADS} threads ...")
        rc, stdout, tail, secs, _ = run([exe, str(THREADS), str(ROOFLINE_MB)], "roofline")
        res = last_json(stdout)
        if rc != 0 or res is None:
            return {"error": f"exit {rc}: {tail}"}
        res["other_cpu"] = None if run.other_cpu is None else round(run.other_cpu, 3)
        say(f"roofline: {res}")
        if best is None or (res["other_cpu"] or 0) < (best["other_cpu"] or 0):
            best = res
        if (res["other_cpu"] or 0) <= BUSY_LIMIT:
            break
    return best


def add_fractions(doc):
    """Every run's tok/s as a fraction of the roofline of its own dtype (the compute part uses
    the peak of the instruction that dtype's matrix products use: bench/report.py)."""
    try:
        import report   # bench/report.py, next to this file; its plotting imports are lazy
        ms = report.model_stats(MODEL)
        batches = [int(b) for b in BATCHES.split(",")]
        table = report.roofline_table(doc.get("roofline") or {}, ms, PROMPT_LEN, GEN, batches)
    except (OSError, ValueError, KeyError, ImportError) as e:
        say(f"rooflines per dtype not computed: {e}")
        return
    doc["rooflines"] = table
    for d, t in table.items():
        say(f"roofline {d}: prefill {t['prefill_tok_s']} tok/s, decode {t['decode_tok_s']} tok/s "
            f"(compute peak {t['compute_peak_total']}: {t['compute_peak']})")
    for r in doc["runs"]:
        f = report.run_fractions(r, table)
        if f:
            r["roofline_fraction"] = f
            say(f"{r['engine']} {r['dtype']}: fraction of its roofline: prefill {f['prefill']}, "
                f"decode {f['decode']}")


GIT_VERSION = git_version()   # at start: the commit build/cserve was just built from


def main():
    os.makedirs(OUT, exist_ok=True)
    t0 = time.time()
    say(f"threads={THREADS} batches={BATCHES} gen={GEN} prompt_len={PROMPT_LEN} model={MODEL}")
    doc = {"machine": machine(),
           "config": {"threads": THREADS, "batches": BATCHES, "gen": GEN,
                      "prompt_len": PROMPT_LEN, "quick": QUICK, "max_batch_s": MAX_BATCH_S,
                      "model": os.path.relpath(MODEL, ROOT)},
           "runs": []}
    doc["roofline"] = roofline()
    # Written after every engine, so that an interrupted run still leaves a report.
    path = os.path.join(OUT, "results.json")

    def save():
        doc["duration_s"] = round(time.time() - t0, 1)
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(path + ".tmp", path)

    for e in ENGINES:
        e = e.strip()
        if not e:
            continue
        if e == "cserve":
            for d in ("fp32", "bf16", "int8"):
                doc["runs"].append(run_cserve(d))
                save()
        elif e == "transformers":
            doc["runs"] += run_transformers()
        elif e in ("llama.cpp", "llamacpp", "llama_cpp"):
            doc["runs"] += run_llamacpp()
        elif e in ("ctranslate2", "ct2"):
            doc["runs"] += run_ctranslate2()
        elif e:
            say(f"unknown engine {e!r} in BENCH_ENGINES")
        save()
    # The roofline again at the end: memory bandwidth in particular drops while other processes
    # use the memory bus, which the CPU-share check does not see. The limits are the best seen.
    end = roofline()
    if "error" not in end:
        start = doc["roofline"]
        doc["roofline_runs"] = [start, end]
        if "error" in start:
            doc["roofline"] = end
        else:
            doc["roofline"] = {k: (max(v, end[k]) if isinstance(v, float) and isinstance(end.get(k), float)
                                   and k != "other_cpu" else v) for k, v in start.items()}
            doc["roofline"]["other_cpu"] = min(start.get("other_cpu") or 0, end.get("other_cpu") or 0)
    add_fractions(doc)
    doc["machine"]["loadavg_end"] = loadavg()
    try:
        with open(os.path.join(OUT, "install_status.json")) as f:
            st = json.load(f)
    except (OSError, ValueError):
        st = {}
    # only failures that still stand (the package is not importable now)
    mod = {"llama-cpp-python": "llama_cpp", "cmake": None}
    doc["install"] = {k: v for k, v in st.items() if not v.get("ok") and mod.get(k, k)
                      and not have(mod.get(k, k).replace("-", "_"))}
    save()
    say(f"all engines done in {time.time() - t0:.0f} s; results in {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
