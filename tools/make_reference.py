#!/usr/bin/env python3
"""Writes tests/data/ref/: what Hugging Face transformers computes on the synthetic
checkpoints that build/cs-synth makes (see tests/data/ref/models.txt).

Developer machines only (needs torch + transformers; CI only reads the output):
    make reference          # builds the models, then runs this in build/venv-ref

Per model NAME, tests/data/ref/NAME/ gets
    meta.json        prompts (token ids), vocab indices, greedy continuations, versions
    logits_last.f32  (n_full, V)  float32 LE: last-position logits of the first n_full prompts
    logits_pos.f32   (T0, K)      float32 LE: logits of prompt 0 at every position, at K vocab ids
plus tests/data/ref/sampler.json (logits processors on fixed score vectors) and
tests/data/ref/SHA256SUMS (the checkpoint files these numbers belong to).
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import GPT2LMHeadModel, GPT2TokenizerFast
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "tests", "data", "ref")
MODELS = os.path.join(ROOT, "build", "models")

PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 1969, Apollo 11 landed on the Moon",
    "Hello, world!",
    "Ray Serve scales model inference across a cluster of machines, and",
    "Le café était très bon, mais l'addition était salée.",
    "Привет, как дела?",
    "東京は日本の首都です。",
    "🙂 emoji and 👨‍👩‍👧 families",
    "   leading spaces and\ttabs",
    "I'm sure you'll see they've done it.",
    "SELECT name, COUNT(*) FROM users GROUP BY name;",
    "3.14159 2.71828 1,000,000",
    "<|endoftext|>A new document begins",
    "The meaning of life is",
    "Question: What is the capital of France?\nAnswer:",
    "for (int i = 0; i < n; i++) {",
    "Breaking news:",
    "Dear Sir or Madam,\n\nI am writing to",
]
N_GREEDY_NEW = 64


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}


def model_names():
    names = []
    with open(os.path.join(REF, "models.txt")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                names.append(line.split()[0])
    return names


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_reference(name, tok):
    d = os.path.join(MODELS, name)
    model = GPT2LMHeadModel.from_pretrained(d, dtype=torch.float32)
    model.eval()
    cfg = model.config
    V = cfg.vocab_size
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    # Keep prompt + continuation inside the context window.
    n_new = min(N_GREEDY_NEW, cfg.n_positions - max(len(p) for p in prompts))
    assert n_new >= 16, name
    out = os.path.join(REF, name)
    os.makedirs(out, exist_ok=True)
    n_full = 2
    last = []
    with torch.no_grad():
        for p in prompts[:n_full]:
            last.append(model(torch.tensor([p])).logits[0, -1].numpy().astype(np.float32))
        rng = np.random.default_rng(1234)
        vidx = np.sort(rng.choice(V, size=512, replace=False)).astype(int)
        pos = model(torch.tensor([prompts[5]])).logits[0].numpy()[:, vidx].astype(np.float32)
        greedy = []
        for i, p in enumerate(prompts):
            g = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                eos_token_id=None,
                pad_token_id=0,
            )
            greedy.append(g[0, len(p):].tolist())
            # The continuation must be what argmax over full forward passes gives
            # (cross-check of generate() against plain forward on the first prompt).
            if i == 0:
                seq = list(p)
                for _ in range(n_new):
                    seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
                assert seq[len(p):] == greedy[0], name
    np.stack(last).astype("<f4").tofile(os.path.join(out, "logits_last.f32"))
    pos.astype("<f4").tofile(os.path.join(out, "logits_pos.f32"))
    meta = {
        "model": name,
        "vocab_size": V,
        "prompts": prompts,
        "prompt_texts": PROMPTS,
        "n_full": n_full,
        "pos_prompt": 5,
        "pos_vocab_idx": vidx.tolist(),
        "greedy_new_tokens": n_new,
        "greedy": greedy,
        "versions": versions(),
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f)
    return sha256(os.path.join(d, "model.safetensors"))


def sampler_reference():
    """Logits processors in generate()'s order for sampling: repetition penalty,
    then temperature, top-k, top-p. Records the surviving ids and their scores."""
    rng = np.random.default_rng(99)
    cases = []
    V = 400
    base = []
    for i in range(6):
        s = (rng.standard_normal(V) * (1.0 + i)).astype(np.float32)
        if i % 2 == 1:  # ties at and around the cut points
            s[rng.choice(V, 40, replace=False)] = s[int(rng.integers(V))]
            s[rng.choice(V, 10, replace=False)] = np.float32(3.5)
        base.append(s)
    base.append(np.full(V, 0.25, dtype=np.float32))  # all equal
    params = []
    for k in (0, 1, 2, 5, 10, 50, 399, 400, 1000):
        for p in (1.0, 0.95, 0.9, 0.5, 0.1, 1e-6):
            params.append((k, p, 1.0, 1.0))
    for t in (0.5, 0.7, 1.3, 2.0):
        params.append((50, 0.9, t, 1.0))
        params.append((0, 0.8, t, 1.3))
    for r in (1.2, 0.8, 2.0):
        params.append((20, 1.0, 1.0, r))
    for si, s in enumerate(base):
        hist = rng.choice(V, 25).tolist() + [int(np.argmax(s))] * 3
        for k, p, t, r in params:
            scores = torch.tensor(s[None, :])
            ids = torch.tensor([hist])
            if r != 1.0:
                scores = RepetitionPenaltyLogitsProcessor(penalty=r)(ids, scores)
            if t != 1.0:
                scores = TemperatureLogitsWarper(temperature=t)(ids, scores)
            if k != 0:
                scores = TopKLogitsWarper(top_k=k)(ids, scores)
            if p < 1.0:
                scores = TopPLogitsWarper(top_p=p)(ids, scores)
            out = scores[0].numpy()
            kept = np.nonzero(np.isfinite(out))[0]
            cases.append(
                {
                    "scores": si,
                    "history": hist,
                    "top_k": k,
                    "top_p": p,
                    "temperature": t,
                    "repetition_penalty": r,
                    "kept": kept.tolist(),
                    "kept_values": [float(out[j]) for j in kept],
                }
            )
    doc = {"versions": versions(), "vocab": V, "scores": [[float(x) for x in s] for s in base], "cases": cases}
    with open(os.path.join(REF, "sampler.json"), "w") as f:
        json.dump(doc, f)
    return len(cases)


def main():
    torch.manual_seed(0)
    # Every synthetic model directory carries tests/data/gpt2-tokenizer's files.
    tok = GPT2TokenizerFast.from_pretrained(os.path.join(MODELS, model_names()[0]))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    sums = []
    for name in model_names():
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        print("reference:", name, flush=True)
        sums.append(f"{model_reference(name, tok)}  {name}/model.safetensors")
    if len(sys.argv) == 1:
        with open(os.path.join(REF, "SHA256SUMS"), "w") as f:
            f.write("\n".join(sums) + "\n")
        print("sampler cases:", sampler_reference())


if __name__ == "__main__":
    main()
