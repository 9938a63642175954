"""Turns build/bench/results.json into bench/RESULTS.md (tables) and bench/results.png (plot).

  python bench/report.py [RESULTS_JSON] [OUT_MD] [OUT_PNG]

Rooflines (see bench/README.md): from the model's safetensors header,
  M = parameters of every matrix used per token = the 6 layers' qkv, attention output, MLP up
      and down matrices + the LM head (the tied 50257 x 768 token embedding, counted once),
  bytes per weight pass = M x bytes per weight (fp32 4, bf16 2, int8 1; int8 scales and the
      1-D norm/bias parameters are ignored: < 7 % and < 0.1 %),
  matrix ops per token = 2 M (2 per multiply-add), attention FLOPs per token = 4 x n_embd x
      context length per layer (small here).
Each dtype has its own compute peak, measured by bench/roofline.c for the instruction its matrix
products use on this CPU: fp32 the FMA peak; bf16 the vdpbf16ps peak where the CPU has
AVX512_BF16, else the FMA peak (the bf16 kernels then widen the weights to fp32 and use FMA);
int8 the vpdpbusd peak (AVX512_VNNI, else AVX-VNNI), else the AVX2 vpmaddubsw sequence.
Attention runs in fp32 in every dtype, so its FLOPs go at the FMA peak. Attainable tok/s when N
tokens share one pass over the weights (N = batch size B for a decode step; N = prompt length
for prefill):
  min(N x bandwidth / bytes per pass,
      1 / (matrix ops per token / dtype peak + attention FLOPs per token / FMA peak)).
For prefill only the last position's logits are computed, so its ops per token use the LM
head once per prompt, not once per token.
"""
import json
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mdsection  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BPW = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0}
ENGINE_ORDER = ["cserve", "transformers", "llama.cpp", "ctranslate2"]
DTYPE_ORDER = ["fp32", "bf16", "int8"]


def model_stats(model_dir):
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    total = mat = head = 0
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        k = math.prod(t["shape"])
        base = name[len("transformer."):] if name.startswith("transformer.") else name
        if base.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # legacy causal-mask buffers, not parameters
        total += k
        if len(t["shape"]) == 2 and base.startswith("h."):
            mat += k
        if base in ("wte.weight", "lm_head.weight") and len(t["shape"]) == 2:
            head = max(head, k)
    return {"params_total": total, "params_layers_matrices": mat, "params_lm_head": head,
            "params_per_token": mat + head, "n_embd": cfg["n_embd"], "n_layer": cfg["n_layer"],
            "vocab": cfg["vocab_size"]}


def attn_flops(ms, ctx):
    return 4 * ms["n_embd"] * ctx * ms["n_layer"]


def compute_peak(rl, dtype):
    """(G ops/s with all threads, label) of the instruction dtype's matrix products use on the
    measured CPU; results.json files written before the per-instruction peaks fall back to the
    fp32 FMA peak for every dtype."""
    fma = rl.get("fma_gflops_total")
    fma_label = f"fp32 FMA, {rl.get('fma_instr') or rl.get('isa') or '?'}"
    if dtype == "int8":
        if rl.get("int8_dot_gops_total"):
            return rl["int8_dot_gops_total"], f"int8 dot, {rl.get('int8_dot_instr')}"
        return fma, fma_label + " (no int8 peak measured in this run)"
    if dtype == "bf16":
        if rl.get("bf16_dot_gflops_total"):
            return rl["bf16_dot_gflops_total"], f"bf16 dot, {rl.get('bf16_dot_instr')}"
        if "bf16_dot_instr" in rl:
            return fma, fma_label + " (no AVX512_BF16 on this CPU: the bf16 kernel computes in fp32)"
        return fma, fma_label + " (no bf16 peak measured in this run)"
    return fma, fma_label


def roofline_tok_s(rl, ms, dtype, n_tokens, ops_per_token):
    """ops_per_token = (matrix ops at the dtype's peak, attention FLOPs at the FMA peak); a plain
    number counts as matrix ops. Returns (attainable tok/s, "memory" or "compute")."""
    mat, attn = ops_per_token if isinstance(ops_per_token, tuple) else (ops_per_token, 0.0)
    bw = rl.get("bandwidth_gbs")
    fl = rl.get("fma_gflops_total")
    peak = compute_peak(rl, dtype)[0]
    if not bw or not fl or not peak:
        return None, None
    mem = n_tokens * bw * 1e9 / (ms["params_per_token"] * BPW.get(dtype, 4.0))
    comp = 1.0 / (mat / (peak * 1e9) + attn / (fl * 1e9))
    return min(mem, comp), ("memory" if mem < comp else "compute")


def ops_per_token(ms, prompt_len, gen):
    """{"prefill": (matrix ops, attention FLOPs), "decode": (...)} per token: prefill counts the
    body per token, the LM head once per prompt and causal attention averaged over the prompt;
    decode 2M and attention over the mean context (16-token prompt + gen / 2)."""
    return {"prefill": (2 * ms["params_layers_matrices"] + 2 * ms["params_lm_head"] / prompt_len,
                        attn_flops(ms, (prompt_len + 1) / 2)),
            "decode": (2 * ms["params_per_token"], attn_flops(ms, 16 + gen / 2))}


def roofline_table(rl, ms, prompt_len, gen, batches):
    """Attainable tok/s for every dtype, prefill and each decode batch size, with the compute
    peak used: the "rooflines" key of results.json (written by harness.py)."""
    ops = ops_per_token(ms, prompt_len, gen)
    out = {}
    for d in DTYPE_ORDER:
        peak, label = compute_peak(rl, d)
        pre, kind = roofline_tok_s(rl, ms, d, prompt_len, ops["prefill"])
        dec = {str(b): roofline_tok_s(rl, ms, d, b, ops["decode"]) for b in batches}
        out[d] = {"compute_peak_total": peak, "compute_peak": label,
                  "prefill_tok_s": None if pre is None else round(pre, 1), "prefill_bound": kind,
                  "decode_tok_s": {b: None if v is None else round(v, 1) for b, (v, _) in dec.items()},
                  "decode_bound": {b: k for b, (_, k) in dec.items()}}
    return out


def run_fractions(run, table):
    """Measured tok/s / attainable tok/s of the run's own dtype: prefill and each decode batch."""
    t = table.get(run.get("dtype"))
    if not t or "error" in run:
        return None
    pre, rp = run.get("prefill_tokens_per_s"), t["prefill_tok_s"]
    dec = {}
    for b, rf in t["decode_tok_s"].items():
        v = (run.get("decode") or {}).get(b)
        dec[b] = round(v / rf, 3) if v and rf else None
    return {"prefill": round(pre / rp, 3) if pre and rp else None, "decode": dec}


def fmt(x, digits=1):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def ratio(a, b):
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def other_load(r):
    o = r.get("other_cpu")
    if o is None:
        return "?"
    return f"{100 * o:.0f}%" + (" **!**" if o > 0.25 else "")


def disturbed(r, b):
    o = (r.get("other_cpu_by_batch") or {}).get(str(b))
    return " !" if o is not None and o > 0.25 else ""


def sort_key(r):
    e = ENGINE_ORDER.index(r["engine"]) if r["engine"] in ENGINE_ORDER else 99
    d = DTYPE_ORDER.index(r["dtype"]) if r["dtype"] in DTYPE_ORDER else 99
    return (e, d)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build/bench/results.json")
    out_md = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "bench/RESULTS.md")
    out_png = sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, "bench/results.png")
    with open(src) as f:
        doc = json.load(f)
    cfg, mach, rl = doc["config"], doc["machine"], doc.get("roofline", {})
    ms = model_stats(os.path.join(ROOT, cfg["model"]))
    batches = [int(b) for b in str(cfg["batches"]).split(",")]
    P, G = cfg["prompt_len"], cfg["gen"]
    runs = sorted(doc["runs"], key=sort_key)
    ok = [r for r in runs if "error" not in r]

    M = ms["params_per_token"]
    ops = ops_per_token(ms, P, G)
    decode_flops = sum(ops["decode"])

    def prefill_roof(dtype):
        return roofline_tok_s(rl, ms, dtype, P, ops["prefill"])

    def decode_roof(dtype, b):
        return roofline_tok_s(rl, ms, dtype, b, ops["decode"])

    L = []
    w = L.append
    w("# cserve benchmark results\n")
    w(f"Generated by `make bench` (bench/run.sh) on {mach.get('date', '?')}. "
      "All engines ran in the same run, on the same machine, one after another, each in its own "
      "process, on the same synthetic distilgpt2-sized weights "
      f"(`{cfg['model']}`: {ms['n_layer']} layers, {ms['n_embd']} wide, vocab {ms['vocab']}; "
      f"{ms['params_total'] / 1e6:.1f} M parameters), the same prompt token ids and the same "
      f"number of generated tokens (EOS ignored). **cserve numbers are those of the engine as it "
      f"was at the time of this run ({next((r.get('version') for r in ok if r['engine'] == 'cserve'), '') or 'version unknown'}); "
      "the engine is under active development, rerun `make bench` for current numbers.**\n")
    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| CPU | {mach.get('cpu', '?')} |")
    w(f"| CPUs | {mach.get('cpus_online')} online, {mach.get('cpus_affinity')} usable; "
      f"every engine used **{cfg['threads']} threads** |")
    caches = ", ".join(f"{k} {mach[k]}" for k in ("L1", "L2", "L3") if k in mach)
    w(f"| caches (per instance) | {caches or '?'} |")
    w(f"| memory | {mach.get('mem_gb', '?')} GB |")
    w(f"| load average (1, 5, 15 min) | before: {mach.get('loadavg_start', '?')}; after: "
      f"{mach.get('loadavg_end', '?')} (other work on the machine moves the numbers) |")
    w(f"| kernel, compiler, python | {mach.get('kernel')}, {mach.get('cc', '?')}, "
      f"Python {mach.get('python')} |")
    w(f"| settings | prompt {P} tokens (prefill), decode prompt 16 tokens + {G} generated, "
      f"batches {cfg['batches']}{' (BENCH_QUICK)' if cfg.get('quick') else ''} |")
    w(f"| whole run | {doc.get('duration_s', 0) / 60:.1f} min (engines + roofline, "
      "excluding venv set-up and builds) |\n")

    w("## Roofline (measured by bench/roofline.c in this run)\n")
    if len(doc.get("roofline_runs", [])) == 2:
        a, b = doc["roofline_runs"]
        w(f"Measured at the start and at the end of the run; each limit is the better of the two "
          f"(DRAM bandwidth {a.get('bandwidth_gbs')} and {b.get('bandwidth_gbs')} GB/s, FMA total "
          f"{a.get('fma_gflops_total')} and {b.get('fma_gflops_total')} GFLOP/s"
          + (f", int8 dot total {a.get('int8_dot_gops_total')} and {b.get('int8_dot_gops_total')} GOP/s"
             if a.get("int8_dot_gops_total") else "")
          + (f", bf16 dot total {a.get('bf16_dot_gflops_total')} and {b.get('bf16_dot_gflops_total')} "
             "GFLOP/s" if a.get("bf16_dot_gflops_total") else "") + ").\n")
    if "error" in rl:
        w(f"roofline failed: {rl['error']}\n")
    else:
        w("| measure | value |\n|---|---|")
        w(f"| memory read bandwidth, {rl.get('threads')} threads ({rl.get('array_mb')} MiB array) "
          f"| **{rl.get('bandwidth_gbs')} GB/s** (1 thread: {rl.get('bandwidth_gbs_1thread')} GB/s) |")
        if rl.get("bandwidth_gbs_64mb"):
            w(f"| read bandwidth, 64 MiB array (cache-resident where the L3 holds it) "
              f"| {rl['bandwidth_gbs_64mb']} GB/s |")
        w(f"| fp32 FMA peak ({rl.get('fma_instr') or rl.get('isa')}) | **{rl.get('fma_gflops_per_core')} "
          f"GFLOP/s per core**, {rl.get('fma_gflops_total')} GFLOP/s all {rl.get('threads')} threads |")
        if "bf16_dot_instr" in rl:
            if rl.get("bf16_dot_gflops_total"):
                w(f"| bf16 dot peak ({rl['bf16_dot_instr']}) | **{rl.get('bf16_dot_gflops_per_core')} "
                  f"GFLOP/s per core**, {rl['bf16_dot_gflops_total']} GFLOP/s all threads |")
            else:
                w("| bf16 dot peak | none: no AVX512_BF16 on this CPU; the bf16 kernel widens the "
                  "weights to fp32 and uses FMA, so bf16's compute roofline is the fp32 FMA peak |")
        if rl.get("int8_dot_gops_total"):
            w(f"| int8 dot peak ({rl.get('int8_dot_instr')}) | **{rl.get('int8_dot_gops_per_core')} "
              f"GOP/s per core**, {rl['int8_dot_gops_total']} GOP/s all threads |")
        if rl.get("int8_kernel_gops_total"):
            w(f"| int8, the AVX2 int8 kernel's exact tile sequence ({rl.get('int8_kernel_instr')}; "
              "for reference, not a roofline) "
              f"| {rl.get('int8_kernel_gops_per_core')} GOP/s per core, "
              f"{rl['int8_kernel_gops_total']} GOP/s all threads |")
        if rl.get("features") is not None:
            feats = rl["features"] or "none of avx2, fma, avx512f, avx512bf16, avx512vnni, avxvnni"
            w(f"| CPU features seen by the probe | {feats} (ops counted as 2 per multiply-add) |")
        w(f"| weights read per token (M = {M / 1e6:.2f} M matrix parameters incl. the LM head once) "
          f"| fp32 {4 * M / 1e6:.0f} MB, bf16 {2 * M / 1e6:.0f} MB, int8 {M / 1e6:.0f} MB |")
        w(f"| FLOPs per decoded token (2M + attention) | {decode_flops / 1e9:.3f} GFLOP |")
        for d in DTYPE_ORDER:
            r1, _ = decode_roof(d, 1)
            w(f"| {d}: decode batch 1 roofline (bandwidth / bytes per token) | {fmt(r1)} tok/s |")
        for d in DTYPE_ORDER:
            rc, _ = decode_roof(d, 10 ** 6)
            w(f"| {d}: compute roofline at large batch (1 / (2M / peak + attention / FMA peak); "
              f"peak: {compute_peak(rl, d)[1]}) | {fmt(rc)} tok/s |")
        for d in DTYPE_ORDER:
            rp, kind = prefill_roof(d)
            w(f"| {d}: prefill ({P} tokens) roofline | {fmt(rp)} tok/s ({kind}-bound) |")
        w("")
        l3 = mach.get("L3", "")
        if l3.endswith("MiB") and int(l3.split()[0]) * 2 ** 20 > M:
            w(f"This machine's L3 ({l3}) can hold the int8 weights ({M / 1e6:.0f} MB)"
              + (f" and the bf16 weights ({2 * M / 1e6:.0f} MB)" if int(l3.split()[0]) * 2 ** 20 > 2 * M else "")
              + ": an engine that keeps them there reads them faster than from DRAM (see the "
              "64 MiB row), so its batch-1 fraction of the DRAM roofline can exceed 100%.\n")
        if (rl.get("other_cpu") or 0) > 0.25:
            w(f"**Warning**: other processes took {100 * rl['other_cpu']:.0f}% of the CPUs during "
              "the roofline measurement; the roofline is underestimated.\n")

    w("## Results\n")
    w("Throughput in tokens/s (higher is better). Decode = aggregate tokens/s of B sequences "
      "decoding together. *other load*: share of all CPUs that other processes on the machine "
      "used while that engine ran (for cserve the worst of its processes, one per batch size, "
      "and a cell marked ! is one whose process was disturbed); above 25% (marked **!**) the "
      "row's numbers are depressed: rerun on a quiet machine.\n")
    head = ("| engine | dtype | load s | peak RSS MB | prefill tok/s | "
            + " | ".join(f"decode B={b}" for b in batches) + " | other load |")
    w(head)
    w("|" + "---|" * (6 + len(batches)))
    notes = []
    for r in runs:
        if "error" in r:
            w(f"| {r['engine']} | {r['dtype']} | n/a | n/a | n/a | "
              + " | ".join("n/a" for _ in batches) + " | |")
            notes.append(f"- **{r['engine']} {r['dtype']}**: n/a, {r['error']}")
            continue
        dec = [r["decode"].get(str(b)) for b in batches]
        w(f"| {r['engine']} | {r['dtype']} | {fmt(r.get('load_s'), 2)} | {fmt(r.get('peak_rss_mb'))} "
          f"| {fmt(r.get('prefill_tokens_per_s'))} | "
          + " | ".join(fmt(x) + disturbed(r, b) for x, b in zip(dec, batches))
          + f" | {other_load(r)} |")
        for k, v in (r.get("notes") or {}).items():
            if k.isdigit():
                notes.append(f"- {r['engine']} {r['dtype']} batch {k}: {v}")
    w("")
    if notes:
        w("Missing entries:\n")
        L.extend(notes)
        w("")

    w("## Fraction of the roofline\n")
    w("Measured tok/s divided by the attainable tok/s of that dtype at that batch size: the "
      "min of its bandwidth roofline (its bytes per weight) and its compute roofline (the peak of "
      "the instruction its matrix products use on this CPU, see the roofline table and the "
      "definitions below).\n")
    w("| engine | dtype | prefill | " + " | ".join(f"decode B={b}" for b in batches) + " |")
    w("|" + "---|" * (3 + len(batches)))
    w("| *roofline tok/s* | fp32 | " + fmt(prefill_roof("fp32")[0]) + " | "
      + " | ".join(fmt(decode_roof("fp32", b)[0]) for b in batches) + " |")
    for d in ("bf16", "int8"):
        w(f"| *roofline tok/s* | {d} | " + fmt(prefill_roof(d)[0]) + " | "
          + " | ".join(fmt(decode_roof(d, b)[0]) for b in batches) + " |")
    for r in ok:
        d = r["dtype"]
        pr = prefill_roof(d)[0]
        cells = [pct(r["prefill_tokens_per_s"] / pr if pr and r.get("prefill_tokens_per_s") else None)]
        for b in batches:
            v, rf = r["decode"].get(str(b)), decode_roof(d, b)[0]
            cells.append(pct(v / rf if v and rf else None))
        w(f"| {r['engine']} | {d} | " + " | ".join(cells) + " |")
    w("")

    w("## cserve relative to each peer\n")
    w("cserve tok/s divided by the peer's tok/s for the same dtype (above 1.00x: cserve is "
      "faster); load time and peak RSS as peer / cserve (above 1.00x: cserve loads faster, "
      "uses less memory). **!**: one of the two rows was disturbed by other processes.\n")
    w("| cserve vs | prefill | " + " | ".join(f"decode B={b}" for b in batches)
      + " | load time | peak RSS |")
    w("|" + "---|" * (4 + len(batches)))
    by = {(r["engine"], r["dtype"]): r for r in ok}
    any_ratio = False
    for d in DTYPE_ORDER:
        c = by.get(("cserve", d))
        for e in ENGINE_ORDER[1:]:
            p = by.get((e, d))
            if not p:
                continue
            if not c:
                w(f"| {e} {d} | cserve {d} n/a | " + " | ".join("n/a" for _ in batches)
                  + " | n/a | n/a |")
                continue
            any_ratio = True
            cells = [ratio(c.get("prefill_tokens_per_s"), p.get("prefill_tokens_per_s"))]
            cells += [ratio(c["decode"].get(str(b)), p["decode"].get(str(b))) for b in batches]
            cells += [ratio(p.get("load_s"), c.get("load_s")),
                      ratio(p.get("peak_rss_mb"), c.get("peak_rss_mb"))]
            flag = " **!**" if max(c.get("other_cpu") or 0, p.get("other_cpu") or 0) > 0.25 else ""
            w(f"| {e} {d}{flag} | " + " | ".join(cells) + " |")
    if not any_ratio:
        w("\n(no cserve row and peer row share a dtype in this run)")
    w("")

    w("## Engines\n")
    w("| engine | dtype | version / format | notes |\n|---|---|---|---|")
    for r in ok:
        n = {k: v for k, v in (r.get("notes") or {}).items()
             if not k.isdigit() and k != "system_info"}
        note = "; ".join(f"{k}: {v}" for k, v in n.items())
        w(f"| {r['engine']} | {r['dtype']} | {r.get('version', '')}"
          f"{', ' + r['format'] if r.get('format') else ''} | {note} |")
    w("")
    inst = {k: v for k, v in (doc.get("install") or {}).items() if not v.get("ok")}
    if inst:
        w("Packages that failed to install:\n")
        for k, v in inst.items():
            w(f"- {k}: " + " / ".join(v.get("log_tail", [])[-3:]))
        w("")

    w("## Definitions\n")
    w(f"- **prefill**: one sequence, a {P}-token prompt, time until the last token's logits "
      "(only those logits are computed); tok/s = prompt length / time. The Python peers take "
      "the best of 3 after a warm-up at full size; so does each `cserve bench` process (since "
      "2026-12-02; before, it timed one call after a 16-token warm-up), and the best of its (one "
      "per batch size) processes is kept.")
    w(f"- **decode B**: B sequences, each first prefilled with the same 16-token prompt, then {G} "
      "greedy decode steps each with EOS ignored; only the decode steps are timed; tok/s = "
      f"B x {G} / time; cserve times the second of two identical passes (since 2026-12-03), so "
      "that its KV pages are first touched untimed, as llama.cpp's are when it creates the "
      "batch's context. transformers and CTranslate2 only expose whole generate() calls, so their "
      f"decode time is time(generate {G + 1} new tokens) - time(generate 1 new token) (the "
      f"second is the prefill plus one argmax: the difference is exactly {G} decode steps).")
    w("- prompt token ids: ids[i] = (i x 7919 + 13) mod 50000.")
    w("- **load s**: process start to model ready (includes interpreter start and imports for "
      "the Python peers; llama.cpp memory-maps the file, so its pages are read later during the "
      "untimed warm-up).")
    w("- **peak RSS**: the process's maximum resident set (wait4), whole run incl. batch 64 "
      "KV caches; for cserve the largest of its per-batch processes.")
    w("- a batch size is skipped (n/a) when its decode is predicted, from the previous batch "
      f"size's time with no batching gain, to exceed {cfg['max_batch_s']:.0f} s "
      "(BENCH_MAX_BATCH_S).")
    w("- roofline: see the table above and bench/README.md. Attainable tok/s = min(N x bandwidth "
      "/ (M x bytes per weight), 1 / (matrix ops per token / dtype peak + attention FLOPs per "
      "token / fp32 FMA peak)), N tokens sharing one pass over the weights (B for decode, the "
      "prompt for prefill), 2 ops per multiply-add. The dtype peak is that of the instruction the "
      "dtype's matrix products use on this CPU: fp32 FMA; bf16 vdpbf16ps (AVX512_BF16), else the "
      "fp32 FMA peak (the bf16 kernel then computes in fp32); int8 vpdpbusd (AVX512_VNNI or "
      "AVX-VNNI), else the AVX2 vpmaddubsw + vpmaddwd + vpaddd sequence.\n")
    w("Raw JSON: build/bench/results.json; logs: build/bench/logs/.")
    kept = mdsection.owned_sections(out_md)  # sections other scripts write (overload, KV memory)
    with open(out_md, "w") as f:
        f.write("\n".join(L) + "\n" + "".join("\n" + k for k in kept))

    plot(doc, ok, batches, decode_roof, prefill_roof, out_png, P)
    print(f"report: wrote {os.path.relpath(out_md, ROOT)} and {os.path.relpath(out_png, ROOT)}")


def plot(doc, ok, batches, decode_roof, prefill_roof, out_png, P):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"cserve": "tab:red", "transformers": "tab:blue", "llama.cpp": "tab:green",
              "ctranslate2": "tab:purple"}
    styles = {"fp32": "-", "bf16": "--", "int8": ":"}
    markers = {"fp32": "o", "bf16": "s", "int8": "^"}
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 6),
                                        gridspec_kw={"width_ratios": [1.6, 1.2, 1]})
    for d in DTYPE_ORDER:
        ys = [decode_roof(d, b)[0] for b in batches]
        if all(ys):
            ax1.plot(batches, ys, color="gray", ls=styles[d], lw=1, alpha=0.7,
                     label=f"roofline {d}")
    for r in ok:
        xs = [b for b in batches if r["decode"].get(str(b))]
        ys = [r["decode"][str(b)] for b in xs]
        if xs:
            ax1.plot(xs, ys, color=colors.get(r["engine"], "black"), ls=styles.get(r["dtype"], "-"),
                     marker=markers.get(r["dtype"], "o"), label=f"{r['engine']} {r['dtype']}")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xticks(batches)
    ax1.set_xticklabels([str(b) for b in batches])
    ax1.set_xlabel("batch size (sequences decoding together)")
    ax1.set_ylabel("aggregate decode tokens/s (log)")
    ax1.set_title("decode throughput vs batch size")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)

    names = [f"{r['engine']}\n{r['dtype']}" for r in ok]
    vals = [r.get("prefill_tokens_per_s") or 0 for r in ok]
    ax2.bar(range(len(ok)), vals, color=[colors.get(r["engine"], "black") for r in ok])
    for d in DTYPE_ORDER:
        rp = prefill_roof(d)[0]
        if rp:
            ax2.axhline(rp, color="gray", ls=styles[d], lw=1, label=f"roofline {d} {rp:,.0f} tok/s")
    ax2.legend(fontsize=8)
    ax2.set_xticks(range(len(ok)))
    ax2.set_xticklabels(names, fontsize=7, rotation=60)
    ax2.set_ylabel("tokens/s")
    ax2.set_title(f"prefill, {P}-token prompt")
    ax2.grid(True, axis="y", alpha=0.3)

    rss = [r.get("peak_rss_mb") or 0 for r in ok]
    ax3.bar(range(len(ok)), rss, color=[colors.get(r["engine"], "black") for r in ok])
    ax3b = ax3.twinx()
    ax3b.plot(range(len(ok)), [r.get("load_s") or 0 for r in ok], "kD", label="load s")
    ax3b.set_ylabel("load time, s (diamonds)")
    ax3.set_xticks(range(len(ok)))
    ax3.set_xticklabels(names, fontsize=7, rotation=60)
    ax3.set_ylabel("peak RSS, MB (bars)")
    ax3.set_title("memory and load time")
    m = doc["machine"]
    fig.suptitle(f"cserve vs peers, distilgpt2-sized synthetic model, {doc['config']['threads']} "
                 f"threads, {m.get('cpu', '?')}, {m.get('date', '')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


if __name__ == "__main__":
    main()
