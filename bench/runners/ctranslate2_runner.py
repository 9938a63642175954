"""CTranslate2 on a model converted from the same directory (TransformersConverter, done by the
harness in a separate process before this one: `--convert` mode).

prefill: generate_batch([prompt], max_length=1, include_prompt_in_result=False): the prompt goes
         through the decoder at once (all but its last token as the initial state, then one step
         on the last token) and one greedy token is picked from the last position's logits, i.e.
         time to the last token's logits + argmax; warm-up then best of 3.
decode:  generate_batch with B identical 16-token prompts, greedy (sampling_topk=1), EOS ignored
         (min_length = max_length, so the end token can never be chosen), and the same
         subtraction as for transformers: time(GEN+1 new tokens) - time(1 new token) = GEN
         decode steps; tok/s = B * GEN / difference.
dtype fp32 -> a float32 model, compute_type float32; int8 -> an int8 model, compute_type int8
(int8 weights and int8 GEMMs with dynamically quantized activations, the rest float32).
"""
import json
import os
import time

from common import DECODE_PROMPT, Result, bench_ids, log, parse_args, best_of

import ctranslate2  # noqa: E402

COMPUTE = {"fp32": "float32", "int8": "int8", "bf16": "bfloat16"}


def convert(model_dir, out, dtype):
    quant = {"fp32": "float32", "int8": "int8", "bf16": "bfloat16"}[dtype]
    conv = ctranslate2.converters.TransformersConverter(model_dir)
    conv.convert(out, quantization=quant, force=True)


def main():
    def extra(ap):
        ap.add_argument("--convert-from", help="convert this HF directory into --model and exit")
    a = parse_args(extra)
    if a.convert_from:
        convert(a.convert_from, a.model, a.dtype)
        return
    if a.dtype not in COMPUTE:
        raise SystemExit(f"ctranslate2 runner: dtype {a.dtype} not supported")
    r = Result("ctranslate2", a.dtype, a, f"ctranslate2 {ctranslate2.__version__}")
    t0 = time.time()
    gen = ctranslate2.Generator(a.model, device="cpu", compute_type=COMPUTE[a.dtype],
                                inter_threads=1, intra_threads=a.threads)
    with open(os.path.join(a.model, "vocabulary.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    r.loaded(time.time() - t0)
    r.note("compute_type", gen.compute_type)

    def generate(prompts, n):
        res = gen.generate_batch(prompts, max_length=n, min_length=n, sampling_topk=1,
                                 include_prompt_in_result=False, beam_size=1)
        for x in res:
            if len(x.sequences_ids[0]) != n:
                raise SystemExit(f"ctranslate2 returned {len(x.sequences_ids[0])} tokens, "
                                 f"expected {n}")
        return res

    prompt = [vocab[i] for i in bench_ids(a.prompt_len)]
    generate([prompt], 1)
    r.prefill(best_of(lambda: generate([prompt], 1)))
    log(f"prefill: {r.d['prefill_tokens_per_s']} tok/s")

    short = [vocab[i] for i in bench_ids(DECODE_PROMPT)]
    generate([short], 4)  # warm-up

    def timed(B, n):
        t = time.perf_counter()
        generate([short] * B, n)
        return time.perf_counter() - t

    def run_batch(B):
        t1 = min(timed(B, 1), timed(B, 1))
        return timed(B, a.gen + 1) - t1

    r.decode_loop(run_batch)
    r.emit()


if __name__ == "__main__":
    main()
