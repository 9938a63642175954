"""Writes GGUF files for llama.cpp from a Hugging Face GPT-2 directory, with the `gguf` package.

  python bench/convert_gguf.py MODEL_DIR OUT_DIR [--types f32,bf16,q8_0]

Produces OUT_DIR/model-f32.gguf, model-bf16.gguf, model-q8_0.gguf. llama.cpp's architecture
"gpt2": token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up,
ffn_down}.{weight,bias}, output_norm, output (= a copy of token_embd when the head is tied, as
in every GPT-2 checkpoint). HF's Conv1D weights are stored (in, out); ggml wants (out, in) in
numpy order, so they are transposed. bf16 and q8_0 apply to the six kinds of matrices (token
embedding, LM head, qkv, attention output, MLP up and down, as llama.cpp's own quantizer does);
position embeddings, norms and biases stay f32. Q8_0 (blocks of 32 int8 with one fp16 scale,
8.5 bits per weight) is computed by the gguf package's numpy quantizer, the reference
implementation of llama.cpp's format.

The safetensors file is read directly (header + memory map), so F32, F16 and BF16 checkpoints
work without torch.
"""
import argparse
import json
import mmap
import os
import struct
import sys
import time

import numpy as np
import gguf

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(path):
    f = open(path, "rb")
    (hlen,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(hlen))
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in ST_DTYPES:
            raise SystemExit(f"{path}: tensor {name} has dtype {dt}, only F32/F16/BF16 supported")
        b, e = info["data_offsets"]
        a = np.frombuffer(mm, dtype=ST_DTYPES[dt], count=(e - b) // np.dtype(ST_DTYPES[dt]).itemsize,
                          offset=8 + hlen + b).reshape(info["shape"])
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float32)
    return out


QTYPES = {"f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
          "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
          "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
MATRICES = ("token_embd.weight", "output.weight", "attn_qkv.weight", "attn_output.weight",
            "ffn_up.weight", "ffn_down.weight")


def gguf_tensors(st, n_layer):
    """(gguf name, float32 array in ggml's numpy layout) for every tensor."""
    st = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in st.items()}
    yield "token_embd.weight", st["wte.weight"]
    yield "position_embd.weight", st["wpe.weight"]
    for i in range(n_layer):
        p = f"h.{i}."
        for src, dst, transpose in (("ln_1", "attn_norm", False), ("attn.c_attn", "attn_qkv", True),
                                    ("attn.c_proj", "attn_output", True), ("ln_2", "ffn_norm", False),
                                    ("mlp.c_fc", "ffn_up", True), ("mlp.c_proj", "ffn_down", True)):
            w = st[p + src + ".weight"]
            yield f"blk.{i}.{dst}.weight", np.ascontiguousarray(w.T) if transpose else w
            yield f"blk.{i}.{dst}.bias", st[p + src + ".bias"]
    yield "output_norm.weight", st["ln_f.weight"]
    yield "output_norm.bias", st["ln_f.bias"]
    yield "output.weight", st.get("lm_head.weight", st["wte.weight"])


def vocab(model_dir, cfg):
    with open(os.path.join(model_dir, "vocab.json"), encoding="utf-8") as f:
        enc = json.load(f)
    n = cfg["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(n)]
    for tok, i in enc.items():
        if i < n:
            tokens[i] = tok
    special = {cfg.get("bos_token_id", 50256), cfg.get("eos_token_id", 50256)}
    types = [gguf.TokenType.CONTROL if (i in special or t.startswith("<|")) else
             gguf.TokenType.USER_DEFINED if t.startswith("[PAD") else gguf.TokenType.NORMAL
             for i, t in enumerate(tokens)]
    merges = []
    with open(os.path.join(model_dir, "merges.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#version"):
                merges.append(line)
    return tokens, types, merges


def write(model_dir, st, cfg, kind, path):
    qtype, ftype = QTYPES[kind]
    w = gguf.GGUFWriter(path, "gpt2")
    E, L = cfg["n_embd"], cfg["n_layer"]
    w.add_name(os.path.basename(os.path.normpath(model_dir)))
    w.add_context_length(cfg.get("n_ctx", cfg.get("n_positions", 1024)))
    w.add_embedding_length(E)
    w.add_feed_forward_length(cfg.get("n_inner") or 4 * E)
    w.add_block_count(L)
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(cfg.get("layer_norm_epsilon", 1e-5))
    w.add_file_type(ftype)
    tokens, types, merges = vocab(model_dir, cfg)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.get("bos_token_id", 50256))
    w.add_eos_token_id(cfg.get("eos_token_id", 50256))
    w.add_add_bos_token(False)
    for name, a in gguf_tensors(st, L):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if qtype != gguf.GGMLQuantizationType.F32 and name.endswith(MATRICES):
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--types", default="f32,bf16,q8_0")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    src = os.path.join(a.model_dir, "model.safetensors")
    st = None
    for kind in a.types.split(","):
        path = os.path.join(a.out_dir, f"model-{kind}.gguf")
        if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(src):
            print(f"convert_gguf: {path} is up to date", file=sys.stderr)
            continue
        if st is None:
            st = read_safetensors(src)
        t0 = time.time()
        write(a.model_dir, st, cfg, kind, path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"convert_gguf: wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB, "
              f"{time.time() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
