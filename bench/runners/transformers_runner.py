"""Hugging Face transformers (torch, CPU) on the same model directory.

prefill: model(input_ids[1 x PROMPT_LEN]) computing only the last position's logits
         (logits_to_keep=1, as generate() does), warm-up then best of 3.
decode:  generate() with the KV cache, B identical 16-token prompts, greedy, EOS ignored
         (min_new_tokens = max_new_tokens, eos_token_id=None, pad_token_id=0).
         time(generate GEN+1 new tokens) - time(generate 1 new token) = the time of GEN decode
         steps (generating 1 token is the prefill plus one argmax, no decode step), so
         tok/s = B * GEN / that difference. Both generate() calls are timed after a warm-up.
"""
import time

from common import DECODE_PROMPT, Result, bench_ids, log, parse_args, best_of

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    r = Result("transformers", a.dtype, a,
               f"transformers {transformers.__version__}, torch {torch.__version__}")
    if a.dtype not in DTYPES:
        raise SystemExit(f"transformers runner: dtype {a.dtype} not supported")
    t0 = time.time()
    try:
        model = GPT2LMHeadModel.from_pretrained(a.model, dtype=DTYPES[a.dtype])
    except TypeError:  # transformers < 4.56 calls it torch_dtype
        model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=DTYPES[a.dtype])
    model.eval()
    r.loaded(time.time() - t0)
    r.note("attn_implementation", str(getattr(model.config, "_attn_implementation", "")))

    with torch.inference_mode():
        ids = torch.tensor([bench_ids(a.prompt_len)])
        kw = {"use_cache": True}
        try:
            model(ids[:, :8], logits_to_keep=1, **kw)
            kw["logits_to_keep"] = 1
        except TypeError:
            model(ids[:, :8], **kw)
            r.note("prefill", "full-sequence logits (no logits_to_keep in this version)")
        model(ids, **kw)  # warm-up at full size
        r.prefill(best_of(lambda: model(ids, **kw)))
        log(f"prefill: {r.d['prefill_tokens_per_s']} tok/s")

        prompt = torch.tensor([bench_ids(DECODE_PROMPT)])

        def gen(B, n):
            inp = prompt.expand(B, -1).contiguous()
            t = time.perf_counter()
            out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                                 max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                 pad_token_id=0, use_cache=True)
            dt = time.perf_counter() - t
            if out.shape != (B, DECODE_PROMPT + n):
                raise SystemExit(f"generate returned shape {tuple(out.shape)}, "
                                 f"expected {(B, DECODE_PROMPT + n)}")
            return dt

        gen(1, 4)  # warm-up

        def run_batch(B):
            t1 = min(gen(B, 1), gen(B, 1))
            tn = gen(B, a.gen + 1)
            return tn - t1

        r.decode_loop(run_batch)
    r.emit()


if __name__ == "__main__":
    main()
