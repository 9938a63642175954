"""llama.cpp through llama-cpp-python's low-level API (the C API via ctypes), on a GGUF written by
bench/convert_gguf.py from the same safetensors.

prefill: one llama_decode of PROMPT_LEN tokens (sequence 0), logits requested for the last
         token only; warm-up then best of 3 (KV cache cleared between runs).
decode:  a context with n_seq_max = B (llama.cpp's default per-sequence KV streams); B sequences
         prefilled with the 16-token prompt in one batch, then GEN steps of one llama_batch holding
         one token of each of the B sequences, greedy argmax over each row of logits (numpy);
         only the GEN llama_decode + argmax steps are timed.
The GGUF is memory-mapped (llama.cpp's default), so load_s is short and the pages are read on the
first decode (the untimed warm-up).
"""
import time

from common import DECODE_PROMPT, Result, bench_ids, log, parse_args, best_of

import numpy as np  # noqa: E402
import llama_cpp as L  # noqa: E402


def main():
    a = parse_args()
    r = Result("llama.cpp", a.dtype, a, f"llama-cpp-python {L.__version__}")
    t0 = time.time()
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        raise SystemExit(f"llama.cpp: cannot load {a.model}")
    vocab = L.llama_model_get_vocab(model)
    V = L.llama_vocab_n_tokens(vocab)
    r.loaded(time.time() - t0)
    r.note("kv_cache", "f16 (llama.cpp's default); per-sequence KV streams")
    r.note("system_info", L.llama_print_system_info().decode(errors="replace").strip())

    def context(n_seq, n_ctx_seq, n_batch):
        cp = L.llama_context_default_params()
        cp.n_ctx = n_seq * n_ctx_seq
        cp.n_batch = max(n_batch, 32)
        cp.n_ubatch = min(cp.n_batch, 512)
        cp.n_seq_max = n_seq
        cp.n_threads = a.threads
        cp.n_threads_batch = a.threads
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            raise SystemExit(f"llama.cpp: cannot create a context for {n_seq} sequences")
        return ctx

    def fill(batch, toks, pos, seqs, want_logits):
        batch.n_tokens = len(toks)
        for i, (t, p, s, w) in enumerate(zip(toks, pos, seqs, want_logits)):
            batch.token[i] = t
            batch.pos[i] = p
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = 1 if w else 0

    def decode(ctx, batch):
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode failed: {rc}")

    # ---- prefill ----
    P = a.prompt_len
    ctx = context(1, P + 1, P)
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(P, 0, 1)
    ids = bench_ids(P)
    fill(batch, ids, range(P), [0] * P, [i == P - 1 for i in range(P)])

    def prefill_once():
        L.llama_memory_clear(mem, True)
        decode(ctx, batch)
        L.llama_get_logits_ith(ctx, -1)[0]

    prefill_once()  # warm-up (also faults in the memory-mapped weights)
    r.prefill(best_of(prefill_once))
    log(f"prefill: {r.d['prefill_tokens_per_s']} tok/s")
    L.llama_batch_free(batch)
    L.llama_free(ctx)

    # ---- decode ----
    prompt = bench_ids(DECODE_PROMPT)

    def run_batch(B):
        ctx = context(B, DECODE_PROMPT + a.gen + 1, B * DECODE_PROMPT)
        batch = L.llama_batch_init(B * DECODE_PROMPT, 0, 1)
        toks, pos, seqs, want = [], [], [], []
        for s in range(B):
            toks += prompt
            pos += range(DECODE_PROMPT)
            seqs += [s] * DECODE_PROMPT
            want += [i == DECODE_PROMPT - 1 for i in range(DECODE_PROMPT)]
        fill(batch, toks, pos, seqs, want)
        decode(ctx, batch)

        def argmax_rows():
            lp = L.llama_get_logits(ctx)
            return np.ctypeslib.as_array(lp, shape=(B, V)).argmax(axis=1).tolist()

        nxt = argmax_rows()
        t = time.perf_counter()
        for g in range(a.gen):
            fill(batch, nxt, [DECODE_PROMPT + g] * B, range(B), [True] * B)
            decode(ctx, batch)
            nxt = argmax_rows()
        dt = time.perf_counter() - t
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        return dt

    run_batch(1)  # warm-up
    r.decode_loop(run_batch)
    L.llama_model_free(model)
    r.emit()


if __name__ == "__main__":
    main()
