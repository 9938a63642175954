"""Turns build/bench-serving/results.json into bench/serving/RESULTS.md and results.png.

  python bench/serving/report.py [RESULTS_JSON] [OUT_MD] [OUT_PNG]

Ratios: throughput (req/s, tok/s) as cserve / seed (> 1: cserve serves more); latency, start-up
time and memory as seed / cserve (> 1: cserve is that many times faster or smaller).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ORDER = ["seed", "seed-batch", "cserve", "cserve-proxy", "cserve-int8", "cserve-int8-kvint8", "cserve-int8-kvfp32", "cserve-proxy-int8",
         "seed-legacy", "seed-batch-legacy", "cserve-legacy", "cserve-int8-legacy",
         "cserve-bf16", "cserve-proxy-bf16", "cserve-replicas", "cserve-replicas-int8",
         "cserve-replicas-bf16", "cserve-platform"]
LABEL = {"seed": "seed (Ray Serve + FastAPI + pipeline)",
         "seed-batch": "seed + @serve.batch",
         "cserve": "cserve serve (fp32)",
         "cserve-int8": "cserve serve (int8)",
         "cserve-int8-kvint8": "cserve serve (int8, int8 KV cache)",
         "cserve-int8-kvfp32": "cserve serve (int8, fp32 KV cache)",
         "cserve-bf16": "cserve serve (bf16)",
         "cserve-platform": "cserve serve --config, mirror and scale to zero",
         "seed-legacy": "seed, max_length 50 (transformers <= 4.51 lengths)",
         "seed-batch-legacy": "seed + @serve.batch, max_length 50",
         "cserve-legacy": "cserve serve --pipeline-defaults 4.51 (fp32)",
         "cserve-int8-legacy": "cserve serve --pipeline-defaults 4.51 (int8)"}
for _d in ("fp32", "int8", "bf16"):
    _sfx = "" if _d == "fp32" else "-" + _d
    LABEL["cserve-proxy" + _sfx] = f"cserve serve --config, proxy + 1 replica ({_d})"
    LABEL["cserve-replicas" + _sfx] = f"cserve serve --config, replicas ({_d})"


def f(x, nd=1, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, float) and nd == 0:
        return f"{x:.0f}{unit}"
    return f"{x:.{nd}f}{unit}"


def ratio(a, b, nd=1):
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.{nd}f}x"


def lat(lv, key):
    if lv.get(key.replace("_s", "_failed")):
        return "failed"
    v = lv.get(key)
    return "n/a" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def sort_runs(runs):
    return sorted(runs, key=lambda r: ORDER.index(r["system"]) if r["system"] in ORDER else 99)


def levels(run):
    return {lv["concurrency"]: lv for lv in run.get("levels", [])}


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build/bench-serving/results.json")
    out_md = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "RESULTS.md")
    out_png = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "results.png")
    with open(src) as fh:
        doc = json.load(fh)
    allruns = sort_runs(doc["runs"])
    by = {r["system"]: r for r in allruns}
    # The replica runs have no load levels: they get their own section.
    runs = [r for r in allruns if r.get("kind") not in ("replicas", "platform")]
    cfg, m = doc["config"], doc["machine"]
    L = []
    w = L.append
    w("# bench-serving: the seed's serving stack vs `cserve serve`\n")
    w("Written by `make bench-serving` (bench/serving/run.sh); see bench/serving/README.md for the "
      "method and what each number means. Same machine, same run, same model directory, same "
      "request.\n")
    w(f"- **machine**: {m.get('cpu')}, {m.get('cpus_affinity')} CPUs, {m.get('mem_gb')} GB, "
      f"Linux {m.get('kernel')}; {m.get('date')}; load average at start "
      f"{' '.join(m.get('loadavg_start', []))}, at end {' '.join(m.get('loadavg_end', []))}")
    w(f"- **model**: `{cfg['model']}` (synthetic distilgpt2-shaped GPT-2 checkpoint, random "
      "weights; `make models`)")
    w(f"- **request**: `POST /text/simple-gen {{\"input\": \"{cfg['prompt']}\"}}`, the seed's "
      "request with the pipeline's default generation: sampling, top_k 50 and, with the seed's "
      "transformers (>= 4.52), 256 new tokens; the `-legacy` systems use transformers <= 4.51's "
      "max_length 50 counting the prompt (~46 new tokens); tok/req in the table shows which")
    w(f"- **load**: closed loop, concurrency {', '.join(map(str, cfg['concurrency']))}; "
      f"{cfg['duration_s']:.0f} s per level (at most {cfg['max_requests']} requests); client "
      f"timeout {cfg['timeout_s']:.0f} s; every system gets {cfg['threads']} CPUs / threads")
    # one line per binary: kept runs may come from an earlier commit than the rest
    states = {}
    for r in runs:
        if not (r["system"].startswith("cserve") and r.get("git")):
            continue
        g = r["git"]
        subj = g.get("subject") or ""
        if len(subj) > 80:
            subj = subj[:subj.rfind(" ", 0, 80)] + " ..."
        state = (f"{r.get('version') or 'build/cserve'}: commit `{g.get('commit')}` ({subj})"
                 + (f" + {g['src_uncommitted_files']} uncommitted file(s) under src/"
                    if g.get("src_uncommitted_files") else ", src/ clean")
                 + f"; binary built {g.get('binary_mtime')}")
        states.setdefault(state, []).append(r["system"])
    if len(states) == 1:
        w(f"- **cserve measured**: {next(iter(states))}")
    for state, systems in (states.items() if len(states) > 1 else ()):
        w(f"- **cserve measured** ({', '.join(systems)}): {state}")
    seed = by.get("seed") or by.get("seed-batch")
    if seed and seed.get("versions"):
        v = seed["versions"]
        web = (f"FastAPI {v['fastapi']}, uvicorn {v['uvicorn']}" if v.get("fastapi")
               else "FastAPI/uvicorn from the same venv")
        w(f"- **seed stack**: ray {v['ray']} (Serve), transformers {v['transformers']}, torch "
          f"{v['torch']} (PyPI build, CPU kernels), {web}")
    earlier = [r for r in allruns if r.get("earlier_run")]
    if earlier:
        dates = sorted({str(r["earlier_run"].get("date")) for r in earlier})
        w(f"- **kept from an earlier run** (`BENCH_SERVING_KEEP=1`, same machine and settings): "
          f"{', '.join(LABEL.get(r['system'], r['system']) for r in earlier)}, measured "
          f"{', '.join(dates)}; the other systems were measured {m.get('date')}")
    if cfg.get("token_counter"):
        w(f"- **tokens counted by**: {cfg['token_counter']}")
    w(f"- **whole run**: {doc.get('duration_s', 0):.0f} s\n")

    # ---- main table
    w("## Throughput and latency\n")
    w("req/s = successful responses / time from the level's start to the last of them (clients "
      "start requests only inside the window, then the requests in flight are waited for); gen "
      "tok/s = continuation tokens of those responses (the returned text re-tokenized with the "
      "GPT-2 tokenizer) over the same time; tok/req = their mean; p50/p99 over every request sent (a failed or timed-out request counts as "
      "infinitely slow, shown as `failed`); errors = failed / sent; server CPUs = CPU time of the "
      "system's processes / wall time; other = CPU share taken by unrelated processes on the "
      "machine during the level (the numbers are unreliable above ~25%).\n")
    w("| concurrency | system | req/s | gen tok/s | tok/req | p50 s | p99 s | errors | "
      "server CPUs | other |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cfg["concurrency"]:
        for r in runs:
            lv = levels(r).get(c)
            name = LABEL.get(r["system"], r["system"])
            if r.get("error") or lv is None:
                w(f"| {c} | {name} | n/a | n/a | | | | | | |")
                continue
            if lv.get("skipped"):
                w(f"| {c} | {name} | skipped: {lv['skipped']} | | | | | | | |")
                continue
            tpr = lv["tokens_per_request"]["mean"]
            oth = lv.get("other_cpu")
            oth_s = "n/a" if oth is None else f"{100 * oth:.0f}%" + (" (!)" if oth > 0.25 else "")
            w(f"| {c} | {name} | {f(lv['req_per_s'], 2)} | {f(lv['tok_per_s'], 0)} | "
              f"{f(tpr, 1)} | {lat(lv, 'p50_s')} | {lat(lv, 'p99_s')} | "
              f"{lv['errors']}/{lv['sent']} | {f(lv.get('server_cpu'), 2)} | {oth_s} |")
    w("")

    # ---- start-up and memory
    w("## Start-up and memory\n")
    w("start = process launch to the first successful `POST /text/simple-gen` (for the seed: "
      "`ray start --head`, then `serve run`, model load in the replica, first generation). "
      "Memory: sum over every process of the system (seed: gcs_server, raylet, agents, "
      "controller, proxy, replica, the `serve run` driver); RSS counts shared pages once per "
      "process, PSS splits them; idle = after start-up and one more request, peak = highest "
      "1-second sample during the load.\n")
    w("| system | start s | processes | idle RSS MB | idle PSS MB | peak RSS MB | peak PSS MB |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        name = LABEL.get(r["system"], r["system"])
        if r.get("error") and not r.get("memory_idle"):
            w(f"| {name} | n/a | | | | | |")
            continue
        mi, mp = r.get("memory_idle") or {}, r.get("memory_peak") or {}
        start = f(r.get("start_to_first_response_s"), 1)
        if r.get("ray_start_s") is not None:
            start += f" (ray start {r['ray_start_s']:.1f})"
        w(f"| {name} | {start} | {mi.get('processes', 'n/a')} | {f(mi.get('rss_mb'), 0)} | "
          f"{f(mi.get('pss_mb'), 0)} | {f(mp.get('rss_mb'), 0)} | {f(mp.get('pss_mb'), 0)} |")
    w("")

    # ---- ratios
    pairs = [(c, s) for c in ("cserve", "cserve-int8", "cserve-int8-kvint8", "cserve-int8-kvfp32", "cserve-bf16") for s in ("seed", "seed-batch")
             if c in by and s in by and not by[c].get("error") and not by[s].get("error")]
    pairs += [(c, s) for c in ("cserve-legacy", "cserve-int8-legacy") for s in ("seed-legacy", "seed-batch-legacy")
              if c in by and s in by and not by[c].get("error") and not by[s].get("error")]
    if pairs:
        w("## cserve / seed\n")
        w("Throughput: cserve / seed (req/s at each concurrency). Latency (p50), start-up and "
          "memory (idle PSS, peak RSS): seed / cserve, i.e. how many times faster or smaller "
          "cserve is. n/a where one side has no number (e.g. every seed request timed out).\n")
        cols = cfg["concurrency"]
        w("| cserve vs | " + " | ".join(f"req/s c={c}" for c in cols) + " | "
          + " | ".join(f"p50 c={c}" for c in cols) + " | start | idle PSS | peak RSS |")
        w("|---|" + "---:|" * (2 * len(cols) + 3))
        for c, s in pairs:
            a, b = levels(by[c]), levels(by[s])
            thr = [ratio(a.get(k, {}).get("req_per_s"), b.get(k, {}).get("req_per_s"))
                   for k in cols]
            p50 = []
            for k in cols:
                la, lb = a.get(k, {}), b.get(k, {})
                if lb.get("p50_failed") and la.get("p50_s") is not None:
                    p50.append("seed failed")
                else:
                    p50.append(ratio(lb.get("p50_s"), la.get("p50_s")))
            st = ratio(by[s].get("start_to_first_response_s"), by[c].get("start_to_first_response_s"))
            pss = ratio((by[s].get("memory_idle") or {}).get("pss_mb"),
                        (by[c].get("memory_idle") or {}).get("pss_mb"))
            rss = ratio((by[s].get("memory_peak") or {}).get("rss_mb"),
                        (by[c].get("memory_peak") or {}).get("rss_mb"))
            w(f"| {LABEL[c]} vs {LABEL[s]} | " + " | ".join(thr) + " | " + " | ".join(p50)
              + f" | {st} | {pss} | {rss} |")
        w("")

    control_plane(w, by, cfg)
    platform_section(w, by)

    # ---- details
    w("## Systems\n")
    for r in allruns:
        name = LABEL.get(r["system"], r["system"])
        w(f"- **{name}**: {r.get('how', '')}")
        if r.get("earlier_run"):
            w(f"  - measured in an earlier run ({r['earlier_run'].get('date')}, load average at "
              f"its start {' '.join(r['earlier_run'].get('loadavg_start') or [])})")
        if r.get("error"):
            w(f"  - **n/a**: {r['error']}")
        if r.get("error_after"):
            w(f"  - {r['error_after']}")
        if r.get("packed_cache_before_start"):
            w(f"  - packed-weight cache before start: {r['packed_cache_before_start']}")
        for ln in r.get("log_excerpt") or []:
            w(f"  - replica log: `{ln.split(' -- ')[-1]}`")
        errs = {}
        for lv in r.get("levels", []):
            for k, n in (lv.get("error_kinds") or {}).items():
                errs.setdefault(k, []).append(f"{n} at c={lv['concurrency']}")
        for k, v in errs.items():
            w(f"  - errors `{k}`: {', '.join(v)}")
    w("")
    seedrun = by.get("seed") or by.get("seed-batch")
    if seedrun and (seedrun.get("memory_idle") or {}).get("by_process"):
        w(f"Idle memory of the seed's processes ({seedrun['system']}):\n")
        w("| process | RSS MB | PSS MB |")
        w("|---|---:|---:|")
        for p in seedrun["memory_idle"]["by_process"]:
            w(f"| `{p['cmd']}` | {p['rss_mb']:.0f} | {p['pss_mb']:.0f} |")
        w("")
    w("Raw numbers: `build/bench-serving/results.json`; server logs: `build/bench-serving/logs/`.")
    with open(out_md, "w") as fh:
        fh.write("\n".join(L) + "\n")
    if not plot(runs, cfg, out_png):
        with open(out_md, "a") as fh:
            fh.write("\n(matplotlib is not installed: results.png was not redrawn by this run.)\n")


def pct_s(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def secs(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def other_s(lv):
    o = lv.get("other_cpu")
    return "n/a" if o is None else f"{100 * o:.0f}%" + (" (!)" if o > 0.25 else "")


def lat_pair(a, b, key):
    """'in-process / proxy' latency cell."""
    return f"{lat(a, key)} / {lat(b, key)}"


def control_plane(w, by, cfg):
    """The control-plane section: proxy vs in-process, replica memory, replica cold start."""
    dtypes = [d for d in ("fp32", "int8", "bf16")
              if any(by.get(f"cserve-{k}{'' if d == 'fp32' else '-' + d}")
                     for k in ("proxy", "replicas"))]
    if not dtypes:
        return
    w("## Control plane: `cserve serve --config`\n")
    w("`cserve serve --config FILE` runs the controller, the HTTP proxy and the admin API in one "
      "process and each replica as a child process (`cserve replica`) behind a Unix socket; the "
      "config has one application at `/` (`cserve.apps:text_generation`), TextGenService with "
      f"max_ongoing_requests 32 and `ray_actor_options.num_cpus: {cfg['threads']}` (the replica's "
      "threads). The request and the load generator are the same as above.\n")
    for d in dtypes:
        sfx = "" if d == "fp32" else "-" + d
        inp, px = by.get("cserve" + sfx), by.get("cserve-proxy" + sfx)
        if not px:
            continue
        w(f"### Proxy vs in-process ({d})\n")
        if px.get("error"):
            w(f"n/a: {px['error']}\n")
            continue
        if not inp or inp.get("error"):
            why = (inp or {}).get("error") or f"cserve{sfx} not run"
            w(f"Levels side by side: n/a ({why})\n")
        else:
            levels_side_by_side(w, inp, px, cfg)
        ab = px.get("ab") or {}
        if ab.get("pairs"):
            ab_table(w, ab)
        elif ab.get("error") or ab.get("skipped"):
            w(f"Interleaved A/B: n/a ({ab.get('error') or ab.get('skipped')})\n")
    reps = [by[k] for k in (f"cserve-replicas{'' if d == 'fp32' else '-' + d}" for d in dtypes)
            if k in by]
    if reps:
        replica_tables(w, reps)


def levels_side_by_side(w, inp, px, cfg):
    w("The levels of the table above, side by side (the two systems ran one after the other, "
      "minutes apart): proxy / in-process for throughput (1.00 = the same; the issue's target "
      "is >= 0.95 at 32 clients), latencies as in-process / proxy.\n")
    w("| concurrency | in-process req/s | proxy req/s | proxy / in-process | p50 s in / proxy | "
      "p99 s in / proxy | other in / proxy |")
    w("|---:|---:|---:|---:|---:|---:|---:|")
    a_lv, b_lv = levels(inp), levels(px)
    for c in cfg["concurrency"]:
        a, b = a_lv.get(c), b_lv.get(c)
        if not a or not b or a.get("skipped") or b.get("skipped"):
            w(f"| {c} | n/a | n/a | n/a | | | |")
            continue
        w(f"| {c} | {f(a['req_per_s'], 2)} | {f(b['req_per_s'], 2)} | "
          f"{ratio(b['req_per_s'], a['req_per_s'], 3)} | {lat_pair(a, b, 'p50_s')} | "
          f"{lat_pair(a, b, 'p99_s')} | {other_s(a)} / {other_s(b)} |")
    w("")


def ab_table(w, ab):
    w(f"Interleaved A/B at {ab['concurrency']} clients, the number to judge the target "
      "by: an in-process `cserve serve --model` started next to the `--config` one "
      "(each idle while the other is measured), then pairs of "
      f"{ab['duration_s']:.0f}-second levels alternately in ABBA order, so that a change "
      "in what else the machine runs hits both sides alike.\n")
    w("| pair | in-process req/s | proxy req/s | proxy / in-process | p50 s in / proxy | "
      "p99 s in / proxy | other in / proxy |")
    w("|---:|---:|---:|---:|---:|---:|---:|")
    for i, p in enumerate(ab["pairs"], 1):
        a, b = p["inprocess"], p["proxy"]
        w(f"| {i} | {f(a['req_per_s'], 2)} | {f(b['req_per_s'], 2)} | "
          f"{secs(p.get('ratio_req_per_s'), 3)} | {lat_pair(a, b, 'p50_s')} | "
          f"{lat_pair(a, b, 'p99_s')} | {other_s(a)} / {other_s(b)} |")
    r = ab.get("ratio_of_means_req_per_s")
    verdict = "n/a" if r is None else ("met" if r >= 0.95 else "not met")
    w("")
    w(f"**proxy / in-process at {ab['concurrency']} clients**: {secs(r, 3)} (mean req/s "
      f"over the pairs; median of the pairs {secs(ab.get('median_ratio_req_per_s'), 3)}); "
      f"p50 {secs(ab.get('ratio_of_means_p50_s'), 3)}x, p99 "
      f"{secs(ab.get('ratio_of_means_p99_s'), 3)}x the in-process latency. Target "
      f"(within 5%, >= 0.95): **{verdict}**.\n")


def replica_tables(w, reps):
    w("### Replica memory\n")
    w("After a few rounds of 4 concurrent seed requests per replica (until every replica has "
      "answered at least 4, so that its KV cache slots and activations are allocated as in use), "
      "1 s of quiet: PSS of the controller (`cserve serve --config`: controller + proxy + admin "
      "API) and of each replica, oldest first. PSS splits shared pages (the packed weights, "
      "mmapped from one cache file by every replica) between the processes that map them, so a "
      "replica's own PSS falls as replicas are added while the total grows by what a replica "
      "really adds: **+ per extra replica** = growth of the total PSS, as a share of the PSS of "
      "the only replica with 1 replica (the goal: < 15%); USS = the newest replica's private "
      "pages (memory no other process shares).\n")
    w("| dtype | replicas | controller PSS MB | replica PSS MB | total PSS MB | total RSS MB | "
      "+ per extra replica | newest replica USS MB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in reps:
        if r.get("error") and not r.get("memory"):
            w(f"| {r['dtype']} | n/a ({r['error'][:120]}) | | | | | | |")
            continue
        extra = {e["n"]: e for e in (r.get("summary") or {}).get("extra", [])}
        for m in r.get("memory", []):
            e = extra.get(m["replicas"])
            add = "" if not e else (f"+{e['marginal_pss_mb']:.1f} MB "
                                    f"({pct_s(e['marginal_fraction'])})")
            newest = m["replica"][-1]["uss_mb"] if m["replica"] else None
            if e:
                newest_s = f"{newest:.1f} ({pct_s(e['newest_uss_fraction'])})"
            else:
                newest_s = f(newest, 1)
            per = " + ".join(f"{x['pss_mb']:.1f}" for x in m["replica"])
            ctl = f((m.get("controller") or {}).get("pss_mb"), 1)
            w(f"| {r['dtype']} | {m['replicas']} | {ctl} | {per} | {f(m['total']['pss_mb'], 1)} | {f(m['total']['rss_mb'], 1)} | {add} | "
              f"{newest_s} |")
    w("")
    for r in reps:
        sm = r.get("summary") or {}
        ex = sm.get("extra") or []
        if sm.get("first_replica_pss_mb") is not None and ex:
            worst = max(e["marginal_fraction"] for e in ex)
            w(f"- **{r['dtype']}**: first replica {sm['first_replica_pss_mb']:.1f} MB PSS "
              f"(controller {f(sm.get('controller_pss_mb'), 1)} MB); each extra replica adds "
              + ", ".join(f"{e['marginal_pss_mb']:.1f} MB ({pct_s(e['marginal_fraction'])})"
                          for e in ex)
              + f" of PSS: goal < 15% **{'met' if worst < 0.15 else 'not met'}**")
    w("")
    w("### Replica cold start (packed-weight cache present)\n")
    w("Whole server: `cserve serve --config` launch to the admin API's first answer, to the "
      "replica RUNNING in `GET /api/serve/applications/`, and to the first successful seed "
      "request (sent every 20 ms from the launch; the proxy queues it until the replica runs; "
      "includes its ~46-token generation). Scale: `POST /api/v1/applications/default/deployments/"
      "TextGenService/scale` to the new replica's spawn (its start_time_s) and to it RUNNING in "
      "the status JSON (polled every 20 ms); the controller's own spawn-to-RUNNING from its log "
      "in brackets. Respawn: `kill -9` of the only replica, then at once a streaming `POST "
      "/v1/completions` and a seed request, which wait in the proxy's queue for the replacement: "
      "kill to spawn, spawn to the stream's first token, kill to first token, kill to the seed "
      "request's answer (median of the repetitions, range in brackets; each answer checked in "
      "the access log to come from the new replica).\n")
    w("| dtype | launch to admin API s | launch to replica RUNNING s | launch to first response "
      "s | scale 1->2: POST to spawn / RUNNING s | scale 2->3: POST to spawn / RUNNING s |")
    w("|---|---:|---:|---:|---:|---:|")
    for r in reps:
        cs = r.get("cold_start") or {}
        sc = {s["to"]: s for s in r.get("scale", [])}

        def scl(n):
            s = sc.get(n)
            if not s:
                return "n/a"
            if s.get("error"):
                return "error"
            return (f"{secs(s.get('post_to_spawn_s'))} / {secs(s.get('post_to_running_s'))} "
                    f"({secs(s.get('controller_running_after_spawn_s'))})")
        w(f"| {r['dtype']} | {secs(cs.get('admin_api_s'), 3)} | "
          f"{secs(cs.get('replica_running_s'), 3)} | {secs(cs.get('first_response_s'), 3)} | "
          f"{scl(2)} | {scl(3)} |")
    w("")
    w("| dtype | respawns | kill to spawn s | spawn to first token s | kill to first token s | "
      "kill to seed answer s | answered by the new replica |")
    w("|---|---:|---:|---:|---:|---:|---|")
    for r in reps:
        rs = r.get("respawn") or []
        good = [x for x in rs if "spawn_to_first_token_s" in x]

        def med(k):
            v = sorted(x[k] for x in good if x.get(k) is not None)
            if not v:
                return "n/a"
            m = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
            return f"{m:.3f} ({v[0]:.3f}-{v[-1]:.3f})" if len(v) > 1 else f"{m:.3f}"
        errs = [x for x in rs if x not in good]
        w(f"| {r['dtype']} | {len(good)}/{len(rs)} | {med('kill_to_spawn_s')} | "
          f"{med('spawn_to_first_token_s')} | {med('kill_to_first_token_s')} | "
          f"{med('kill_to_seed_answer_s')} | "
          f"{sum(1 for x in good if x.get('answered_by_new'))}/{len(good)} |")
        for x in errs:
            w(f"|  | error: {x.get('error') or x.get('stream_error') or x.get('seed_error')} "
              "| | | | | |")
    w("")


def platform_section(w, by):
    """Mirror overhead and scale to zero (system cserve-platform, bench/serving/mirror_zero.py)."""
    r = by.get("cserve-platform")
    if not r:
        return
    w("## Shadow traffic and scale to zero: `cserve serve --config`\n")
    g = r.get("git") or {}
    when = (r.get("earlier_run") or {}).get("date")
    w(f"Measured with {r.get('version') or 'build/cserve'}, commit `{g.get('commit')}`"
      + (f" + {g['src_uncommitted_files']} uncommitted file(s) under src/"
         if g.get("src_uncommitted_files") else ", src/ clean")
      + f"; binary built {g.get('binary_mtime')}" + (f"; run of {when}" if when else "") + ".\n")
    if r.get("error"):
        w(f"n/a: {r['error']}\n")
        return
    mirror_tables(w, r.get("mirror") or {})
    zero_tables(w, r.get("zero") or [])


def mirror_tables(w, mi):
    w(f"### Mirror at {mi.get('percent', 10):g}%: cost to the primary\n")
    w("One server, one application at `/`: TextGenService and a version `cand` (the same model, "
      "fp32), `ray_actor_options.num_cpus: 1` each (one thread per replica, one core each on "
      "this machine). The application's `args.mirror` is switched on "
      f"(`{{deployment: cand, percent: {mi.get('percent', 10):g}}}`) and off with `PUT "
      "/api/serve/applications/` (the same replicas on both sides: their ids are checked), then "
      f"closed-loop seed requests for {mi.get('duration_s', 0):.0f} s per side, pairs in ABBA "
      "order. p50 / p99 / mean: client-side latency of the primary's answers; shadow copies: "
      "`cserve_deployment_requests_total{deployment=\"cand\",role=\"shadow\"}` over the side "
      "(ok / error / dropped) against the primary's answers; CPUs: CPU seconds / wall seconds of "
      "the whole server, of the primary's replica and of the mirror's replica (the mirror's "
      "copies run on the core the primary does not use, but the proxy, the load generator and "
      "the copies share the machine's 2 cores).\n")
    if mi.get("error") and not mi.get("levels"):
        w(f"n/a: {mi['error']}\n")
        return
    w("| clients | pair | side | p50 s | p99 s | mean s | req/s | shadow ok / error / dropped "
      "of primary | CPUs server / primary / mirror | other | replicas kept |")
    w("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for lvl in mi.get("levels", []):
        for i, p in enumerate(lvl.get("pairs", []), 1):
            order = ("without", "with") if i % 2 else ("with", "without")
            for side in order:
                x = p.get(side) or {}
                w(f"| {lvl['concurrency']} | {i} | {side} mirror | {lat(x, 'p50_s')} | "
                  f"{lat(x, 'p99_s')} | {secs(x.get('mean_ok_s'), 3)} | "
                  f"{f(x.get('req_per_s'), 2)} | {x.get('shadow_ok', 0)} / "
                  f"{x.get('shadow_error', 0)} / {x.get('shadow_dropped', 0)} of "
                  f"{x.get('primary_ok', 0)} | {f(x.get('server_cpu'), 2)} / "
                  f"{f(x.get('primary_replica_cpu'), 2)} / {f(x.get('mirror_replica_cpu'), 2)} | "
                  f"{other_s(x)} | {'yes' if x.get('replicas_kept') else 'NO'} |")
    w("")
    for lvl in mi.get("levels", []):
        rr = lvl.get("ratio_of_means_p50_s")
        verdict = "n/a" if rr is None else ("met" if rr < 1.02 else "not met")
        pairs = ", ".join(secs(p.get("ratio_p50"), 3) for p in lvl.get("pairs", []))
        w(f"- **{lvl['concurrency']} client(s)**: primary p50 with / without mirror "
          f"**{secs(rr, 3)}** (mean p50 over the pairs; per pair {pairs or 'n/a'}); mean latency "
          f"{secs(lvl.get('ratio_of_means_mean_ok_s'), 3)}x, p99 "
          f"{secs(lvl.get('ratio_of_means_p99_s'), 3)}x, req/s "
          f"{secs(lvl.get('ratio_of_means_req_per_s'), 3)}x. Goal (< 2% added to p50): "
          f"**{verdict}**" + (f" ({lvl['skipped']})" if lvl.get("skipped") else ""))
    if mi.get("error"):
        w(f"- stopped early: {mi['error']}")
    w("")


def zero_tables(w, zero):
    if not zero:
        return
    a = zero[0].get("autoscaling_config") or {}
    w("### Scale to zero and back (packed-weight cache present)\n")
    w("TextGenService with `autoscaling_config: "
      + ", ".join(f"{k} {v}" for k, v in a.items())
      + f"`, `num_cpus: {zero[0].get('threads')}`. After a warm-up request (the first after the "
      "launch, which also starts from no replica), each repetition waits until "
      "`GET /api/serve/applications/` lists no replica at all for the deployment, then sends one "
      "streaming `POST /v1/completions` (8 tokens): request to the new replica's spawn (its "
      "start_time_s), spawn to first token, request to first token; then waits for zero again and "
      "sends one seed request (`POST /text/simple-gen`, ~46 tokens): request to answer. Medians "
      "of the repetitions (range in brackets); idle to zero = previous answer to no replica "
      "listed (downscale_to_zero_delay_s plus the look-back window); each answer checked in the "
      "access log to come from the replica started for it.\n")
    w("| dtype | requests from zero | idle to zero s | request to spawn s | spawn to RUNNING s "
      "(controller) | spawn to first token s | **request to first token s** | request to seed "
      "answer s | answered by the new replica | server PSS at zero MB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for z in zero:
        rows = z.get("reps") or []
        if z.get("error") and not rows:
            w(f"| {z['dtype']} | n/a ({z['error'][:120]}) | | | | | | | | |")
            continue

        def med(k):
            v = sorted(x[k] for x in rows if x.get(k) is not None)
            if not v:
                return "n/a"
            m = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
            return f"{m:.3f} ({v[0]:.3f}-{v[-1]:.3f})" if len(v) > 1 else f"{m:.3f}"
        sm = z.get("summary") or {}
        w(f"| {z['dtype']} | {len(rows)} | {med('wait_zero_s')} | {med('request_to_spawn_s')} | "
          f"{med('controller_running_after_spawn_s')} | {med('spawn_to_first_token_s')} | "
          f"**{med('request_to_first_token_s')}** | {med('request_to_answer_s')} | "
          f"{sm.get('answered_by_new', 0)}/{len(rows)} | "
          f"{f(sm.get('server_pss_at_zero_mb'), 1)} |")
    w("")
    for z in zero:
        sm = z.get("summary") or {}
        t = sm.get("request_to_first_token_s")
        verdict = "n/a" if t is None else ("met" if t < 0.5 else "not met")
        w(f"- **{z['dtype']}**: request to first token from zero replicas, median "
          f"{secs(t, 3)} s; goal (< 0.5 s with the cache present): **{verdict}**"
          + (f"; {z['error']}" if z.get("error") else ""))
    w("")


def plot(runs, cfg, out_png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    ok = [r for r in runs if not r.get("error")]
    for r in ok:
        lv = [x for x in r.get("levels", []) if "req_per_s" in x]
        cs = [x["concurrency"] for x in lv]
        ax[0][0].plot(cs, [x["tok_per_s"] for x in lv], marker="o",
                      label=LABEL.get(r["system"], r["system"]))
        p50 = [(x["concurrency"], x["p50_s"]) for x in lv if x.get("p50_s") is not None]
        ax[0][1].plot([a for a, _ in p50], [b for _, b in p50], marker="o",
                      label=LABEL.get(r["system"], r["system"]))
    for a, title, yl in ((ax[0][0], "generated tokens/s (closed loop)", "tok/s"),
                         (ax[0][1], "p50 latency per request (failed levels omitted)", "s")):
        a.set_xscale("log", base=2)
        a.set_xticks(cfg["concurrency"], [str(c) for c in cfg["concurrency"]])
        a.set_xlabel("concurrent clients")
        a.set_ylabel(yl)
        a.set_title(title)
        a.grid(True, alpha=0.3)
    ax[0][0].legend(fontsize=7, loc="upper left")
    ax[0][1].legend(fontsize=7, loc="lower right")
    ax[0][1].set_yscale("log")
    names = [(f"cserve --config\n({r.get('dtype', 'fp32')}, proxy)"
              if r["system"].startswith("cserve-proxy")
              else LABEL.get(r["system"], r["system"]).replace(" (", "\n(")) for r in ok]
    starts = [r.get("start_to_first_response_s") or 0 for r in ok]
    ax[1][0].bar(names, starts, color="tab:blue")
    ax[1][0].set_title("launch to first response (s)")
    for i, v in enumerate(starts):
        ax[1][0].text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    idle = [(r.get("memory_idle") or {}).get("pss_mb") or 0 for r in ok]
    peak = [(r.get("memory_peak") or {}).get("rss_mb") or 0 for r in ok]
    xs = range(len(ok))
    ax[1][1].bar([x - 0.2 for x in xs], idle, 0.4, label="idle PSS")
    ax[1][1].bar([x + 0.2 for x in xs], peak, 0.4, label="peak RSS")
    ax[1][1].set_xticks(list(xs), names)
    ax[1][1].set_title("memory of all the system's processes (MB)")
    ax[1][1].legend(fontsize=8)
    for a in (ax[1][0], ax[1][1]):
        a.tick_params(axis="x", labelsize=7)
        a.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"seed stack vs cserve serve: POST /text/simple-gen, {cfg['threads']} CPUs, "
                 f"{cfg['duration_s']:.0f} s per level")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return True


if __name__ == "__main__":
    main()
