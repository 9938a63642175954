#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/ except safetensors/ (see
gen_st_seeds.c). The outputs are committed; rerun only to change them:
    python3 tests/fuzz/gen_seeds.py tests/fuzz/corpus
"""
import json
import os
import sys


def bytes_to_unicode():
    # GPT-2's byte-level alphabet (the mapping vocab.json keys are written in)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def put(root, target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main(root):
    # fuzz_tokenizer: text
    texts = {
        "ascii": "Hello, world! It's a test of GPT-2's tokenizer: 1234 + 5678 = 6912.\n",
        "unicode": "caf\u00e9 na\u00efve \u4e2d\u6587 \U0001F600 \u00a0nbsp \u2028sep \u0661\u0662\u0663",
        "special": "a<|endoftext|>b <|endoftext|><|endoftext|> <|endo<|endoftext|>ftext|>",
        "spaces": "   leading\t\ttabs\n\n\n  trailing   \r\n",
        "contractions": "I'll we've they're it's I'd you'm 'S 'LL",
    }
    for k, v in texts.items():
        put(root, "tokenizer", k, v)
    put(root, "tokenizer", "invalid-utf8", b"ok \xff\xfe \xc0\xaf \xed\xa0\x80 \xe2\x82 \xf0\x9f\x98 end\xe2")

    # fuzz_tok_load: vocab.json NUL merges.txt
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    sp = b2u[ord(" ")]
    for a, b in [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (sp, "w"), (sp + "w", "o"), ("r", "l"),
                 (sp + "wo", "rl"), (sp + "worl", "d"), (sp, "t"), ("i", "s")]:
        vocab.setdefault(a + b, len(vocab))
        merges.append(f"{a} {b}")
    eot = dict(vocab)
    eot["<|endoftext|>"] = len(eot)
    put(root, "tok_load", "small",
        json.dumps(vocab, ensure_ascii=False).encode() + b"\0" + ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    put(root, "tok_load", "small-eot", json.dumps(eot).encode() + b"\0" + "\r\n".join(merges).encode())
    put(root, "tok_load", "bytes-only", json.dumps({b2u[b]: 255 - b for b in range(256)}, ensure_ascii=False).encode() + b"\0")

    # fuzz_config: mode byte (0 config.json, 1 generation_config.json, 2 both split at NUL) + JSON
    gpt2 = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256,
            "eos_token_id": 50256, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
            "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 6, "n_positions": 1024,
            "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
            "vocab_size": 50257}
    put(root, "config", "distilgpt2", b"\0" + json.dumps(gpt2, indent=2).encode())
    small = {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_inner": 96, "vocab_size": 300, "n_positions": 128,
             "scale_attn_by_inverse_layer_idx": True, "tie_word_embeddings": False, "activation_function": "relu"}
    put(root, "config", "synthetic", b"\0" + json.dumps(small).encode())
    gen = {"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": [50256, 50255], "do_sample": True,
           "temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 32,
           "transformers_version": "4.40.0"}
    put(root, "config", "generation", b"\1" + json.dumps(gen).encode())
    put(root, "config", "both", b"\2" + json.dumps(gpt2).encode() + b"\0" + json.dumps({"max_length": 64}).encode())

    # fuzz_api: flags byte, tokens byte, body (see fuzz_api.c)
    def api(name, flags, ntok, body):
        put(root, "api", name, bytes([flags, ntok]) + (body if isinstance(body, bytes) else json.dumps(body).encode()))
    api("simple", 0x00, 4, {"input": "Hello, my name is", "max_new_tokens": 8})
    api("simple-full", 0x00, 6, {"input": "Once upon a time", "max_length": 12, "do_sample": True, "temperature": 0.8,
                                 "top_k": 10, "top_p": 0.95, "repetition_penalty": 1.1, "seed": 7,
                                 "num_return_sequences": 3, "return_full_text": False})
    api("simple-stream", 0x00, 8, {"input": "The quick brown fox", "stream": True, "max_new_tokens": 5})
    api("compl", 0x01, 4, {"model": "gpt2", "prompt": "Say this is a test", "max_tokens": 7, "temperature": 0})
    api("compl-batch", 0x01, 5, {"prompt": ["first prompt", "second one", [15496, 11, 995]], "n": 2, "echo": True,
                                 "stop": ["\n", "one"], "seed": -3, "top_k": -1, "best_of": 2, "logprobs": None,
                                 "presence_penalty": 0, "logit_bias": {}, "suffix": ""})
    api("compl-ids", 0x01, 3, {"prompt": [464, 2068, 7586, 21831], "stop": "fox", "ignore_eos": True})
    api("compl-stream", 0x01, 6, {"prompt": "a b a b a b", "stream": True, "stream_options": {"include_usage": True},
                                  "stop": ["b a"]})
    api("compl-eos", 0x81, 6, {"prompt": "end here", "max_tokens": 10, "stream": True})
    api("compl-error", 0x11, 4, {"prompt": ["x", "y"], "max_tokens": 4})
    api("compl-gone", 0x21, 4, {"prompt": "bye", "stream": True})
    api("compl-timeout", 0x31, 4, {"prompt": "slow", "max_tokens": 3})
    api("compl-full", 0x41, 4, {"prompt": ["one", "two"]})
    api("keyed", 0x0d, 2, {"prompt": "with a key"})
    api("keyed-wrong", 0x05, 2, {"prompt": "wrong key"})
    api("bad-json", 0x01, 2, b'{"prompt": "unterminated')
    api("deep", 0x00, 2, b"[" * 40 + b"]" * 40)
    api("invalid-utf8", 0x00, 2, b'{"input": "caf\xc3 \xff end"}')
    # byte 1 bit 6: a user_config (the body's "user_config", else a fixed one picked by bit 7)
    api("simple-uc", 0x00, 0x44, {"input": "Hello there", "user_config": {"max_new_tokens": 2, "top_k": 3, "do_sample": True}})
    api("simple-uc-fixed", 0x00, 0xc4, {"input": "Once upon a time", "max_new_tokens": 4})
    api("simple-uc-bad", 0x00, 0x44, {"input": "x", "user_config": {"top_p": 2, "bogus": 1}})
    for name, path in [("get-models", "/v1/models"), ("get-model", "/v1/models/gpt2"), ("get-health", "/-/healthz"),
                       ("get-routes", "/-/routes"), ("get-metrics", "/metrics"), ("get-404", "/nope")]:
        put(root, "api", name, bytes([0x02, 0]) + path.encode())
    put(root, "api", "post-models", bytes([0x03, 0]) + b"/v1/models")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus")
