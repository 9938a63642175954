#!/usr/bin/env python3
"""Writes tests/data/ref/pipeline/pipeline-MAJOR.MINOR.json: what transformers'
pipeline("text-generation") answers on the synthetic checkpoints in build/models, with
do_sample=False (greedy, so cserve must give the same text), for the cases that decide the
pipeline's semantics: default lengths with and without task_specific_params and
generation_config.json, tokenizer_config.json present or not, prompts below, at and over the
length limits and the context, request lengths (max_new_tokens, max_length), return_full_text,
the clean-up of tokenization spaces, and the calls where transformers raises.

Developer machines only (needs torch + transformers; CI reads the committed JSON):
    make reference                                  # 4.57.6, then 4.51.3 (the legacy option)
    build/venv-ref/bin/python tools/make_pipeline_ref.py [--models DIR] [--out DIR]

The model variants are made by copying a directory of build/models and deleting or adding
files; the recipe is written into the JSON so that tests/serve/test_pipeline.py builds the
very same directories.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from transformers import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> base model, files deleted, files added (name -> JSON content)
VARIANTS = {
    "distil": {"base": "distil", "delete": [], "add": {}},
    "distil-nogencfg": {"base": "distil", "delete": ["generation_config.json"], "add": {}},
    "distil-tokcfg": {"base": "distil", "delete": [],
                      "add": {"tokenizer_config.json": {"model_max_length": 1024,
                                                        "clean_up_tokenization_spaces": True}}},
    "tiny": {"base": "tiny", "delete": [], "add": {}},
    "tiny-bare": {"base": "tiny", "delete": ["generation_config.json"], "add": {}},
    "tiny-genlen": {"base": "tiny", "delete": [],
                    "add": {"generation_config.json": {"bos_token_id": 50256, "eos_token_id": 50256,
                                                       "max_length": 40, "top_k": 10, "temperature": 0.9,
                                                       "transformers_version": "4.57.6"}}},
}

SHORT = ["Once upon a time", "He said '", "She wrote '", "A '", "I don", "The end ", "Hello , world . It is",
         "It 's what you 're doing , isn 't it ?", "Le café était très bon", "🙂 emoji",
         "<|endoftext|>A new document begins"]


def make_variant(models, name, dest):
    v = VARIANTS[name]
    d = os.path.join(dest, name)
    shutil.copytree(os.path.join(models, v["base"]), d)
    for f in v["delete"]:
        os.remove(os.path.join(d, f))
    for f, content in v["add"].items():
        with open(os.path.join(d, f), "w") as fh:
            json.dump(content, fh)
    return d


def words(tok, n, head="Once upon a time"):
    """A prompt of exactly n tokens: head followed by ' the' repeated."""
    k = len(tok(head)["input_ids"])
    s = head + " the" * (n - k)
    assert len(tok(s)["input_ids"]) == n, n
    return s


def cases_for(name, tok, n_pos, max_new):
    """The requests for one variant. The 1024-position model's variants without anything new
    to show get a few only; where the pipeline's 256 new tokens are in force there (4.52 on),
    every case costs 256 tokens of a distilgpt2-sized model on both sides, so it gets the
    short prompts (the clean-up across the boundary among them) and the 50-token one; the
    small model shows the length and context rules."""
    if n_pos >= 1024 and max_new == 256:
        c = [{"input": p, "do_sample": False} for p in SHORT[:4 if name == "distil" else 2]]
        if name == "distil":
            c.append({"input": words(tok, 50), "do_sample": False})
        return c
    c = []
    small = n_pos < 1024
    minor = name in ("distil-nogencfg", "distil-tokcfg")
    for p in SHORT if (small or not minor) else SHORT[:3]:
        c.append({"input": p, "do_sample": False})
    # the legacy max_length 50 of distilgpt2's task_specific_params: below, at, over
    for n in (49, 50, 51) if not minor else (49, 50):
        c.append({"input": words(tok, n), "do_sample": False})
    if minor:
        return c
    c.append({"input": SHORT[0], "do_sample": False, "return_full_text": False})
    c.append({"input": SHORT[1], "do_sample": False, "max_new_tokens": 5})
    c.append({"input": SHORT[2], "do_sample": False, "max_new_tokens": 1})
    # request max_length: with the pipeline's max_new_tokens it only truncates the prompt
    c.append({"input": words(tok, 40), "do_sample": False, "max_length": 30})
    c.append({"input": words(tok, 20), "do_sample": False, "max_length": 30})
    c.append({"input": words(tok, 40), "do_sample": False, "max_length": 30, "max_new_tokens": 7})
    c.append({"input": words(tok, 20), "do_sample": False, "max_length": 30, "max_new_tokens": 7})
    # the context: n_positions + 1 tokens fit (the last token is never fed back)
    if not small:
        for n in (n_pos - 255, n_pos - 254):
            c.append({"input": words(tok, n), "do_sample": False})
    else:
        a = (n_pos * 57) // 128
        b = n_pos + 1 - a
        for m in (b - 1, b, b + 1):
            c.append({"input": words(tok, a), "do_sample": False, "max_new_tokens": m})
    for n in (n_pos - 1, n_pos, n_pos + 1):
        c.append({"input": words(tok, n), "do_sample": False, "max_new_tokens": 1})
    c.append({"input": words(tok, n_pos), "do_sample": False, "max_new_tokens": 2})
    return c


def run_case(pipe, case):
    kw = {k: v for k, v in case.items() if k != "input"}
    try:
        out = pipe(case["input"], **kw)
    except Exception as e:  # noqa: BLE001 - the reference records what raises
        return {"error": type(e).__name__, "message": str(e).splitlines()[0][:300]}
    return {"generated_text": [o["generated_text"] for o in out]}


def default_request(pipe, tok, prompt):
    """The seed's request {"input": prompt}: sampled, so only the number of new tokens is
    compared (EOS is not in the top 50 of these random-weight models)."""
    torch.manual_seed(0)
    try:
        out = pipe(prompt, return_tensors=True)
    except Exception as e:  # noqa: BLE001
        return {"input": prompt, "error": type(e).__name__, "message": str(e).splitlines()[0][:300]}
    ids = out[0]["generated_token_ids"]
    n_prompt = len(tok(prompt)["input_ids"])
    return {"input": prompt, "n_prompt": n_prompt, "n_new": len(ids) - n_prompt}


GEN_KEYS = ["do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_length", "max_new_tokens",
            "eos_token_id"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=os.path.join(ROOT, "build", "models"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "ref", "pipeline"))
    ap.add_argument("--only", help="comma-separated variant names")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    transformers.logging.set_verbosity_error()
    ver = transformers.__version__
    series = ".".join(ver.split(".")[:2])
    names = args.only.split(",") if args.only else list(VARIANTS)
    doc = {"transformers": ver, "torch": torch.__version__, "tokenizers": __import__("tokenizers").__version__,
           "variants": {n: VARIANTS[n] for n in names}, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            d = make_variant(args.models, name, tmp)
            pipe = pipeline("text-generation", model=d, device="cpu")
            tok = pipe.tokenizer
            n_pos = pipe.model.config.n_positions
            gc = {k: getattr(pipe.generation_config, k, None) for k in GEN_KEYS}
            cases = []
            for case in cases_for(name, tok, n_pos, gc["max_new_tokens"]):
                res = run_case(pipe, case)
                n_in = len(tok(case["input"])["input_ids"])
                cases.append({"request": case, "n_prompt": n_in, **res})
                print(f"{name}: n_prompt={n_in} {json.dumps({k: v for k, v in case.items() if k != 'input'})} "
                      f"-> {res.get('error') or len(res['generated_text'][0])}", file=sys.stderr, flush=True)
            prompts = (SHORT[0], words(tok, 60))[:1 if n_pos >= 1024 else 2]
            if name == "distil-tokcfg" and gc["max_new_tokens"] == 256:
                prompts = ()  # the same as distil's: 256 tokens saved
            defaults = [default_request(pipe, tok, p) for p in prompts]
            doc["models"][name] = {"n_positions": n_pos, "generation_config": gc,
                                   "tokenizer_clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
                                   "cases": cases, "default_request": defaults}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"pipeline-{series}.json")
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
