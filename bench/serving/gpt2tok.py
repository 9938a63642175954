"""GPT-2 byte-level BPE token counter for bench/serving (stdlib only; uses the `regex` module for
the exact pre-tokenizer pattern when it is installed).

harness.py counts the continuation tokens of every response with the model directory's tokenizer.
With the seed's venv that is transformers' AutoTokenizer; a run of the cserve systems alone does
not need that venv, and then this module counts them from the same vocab.json/merges.txt with the
same algorithm (GPT-2's pre-tokenizer, byte-to-unicode map, merges by rank). Without `regex`, the
pattern's Unicode classes are approximated with the `re` module (\\p{L}: a word character that is
not a digit or `_`; \\p{N}: a decimal digit), which differs only on rare characters (e.g. `²`).

    tok = Gpt2Counter("build/models/distil")
    tok.count("Once upon a time")   # -> 4
"""
import json
import os

try:
    import regex as _re
    PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    EXACT = True
except ImportError:
    import re as _re
    PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
    EXACT = False

EOT = "<|endoftext|>"
MAX_MERGES = 1_000_000      # lines read from merges.txt at most
MAX_WORD_CACHE = 200_000    # pre-tokens whose BPE split is remembered


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Gpt2Counter:
    def __init__(self, model_dir):
        self.ranks = {}
        with open(os.path.join(model_dir, "merges.txt"), encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i > MAX_MERGES:
                    break
                if line.startswith("#version") or not line.strip():
                    continue
                parts = line.rstrip("\n").split(" ")
                if len(parts) == 2:
                    self.ranks.setdefault((parts[0], parts[1]), len(self.ranks))
        vocab_path = os.path.join(model_dir, "vocab.json")
        self.vocab = None
        if os.path.exists(vocab_path):
            with open(vocab_path, encoding="utf-8") as f:
                self.vocab = json.load(f)
        self.byte_map = bytes_to_unicode()
        self.pat = _re.compile(PATTERN)
        self.cache = {}
        self.exact = EXACT

    def bpe(self, word):
        """The BPE pieces of one pre-token (already mapped to GPT-2's byte characters)."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, best_i = None, -1
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            a, b = parts[best_i], parts[best_i + 1]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self.cache) < MAX_WORD_CACHE:
            self.cache[word] = parts
        return parts

    def pieces(self, text):
        """BPE pieces; the special token <|endoftext|> stays one piece (as transformers does)."""
        out = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                out.append(EOT)
            for piece in self.pat.findall(part):
                out.extend(self.bpe("".join(self.byte_map[b] for b in piece.encode("utf-8"))))
        return out

    def count(self, text):
        return len(self.pieces(text))

    def ids(self, text):
        """Token ids (needs vocab.json); for checking against another tokenizer."""
        return [self.vocab[p] for p in self.pieces(text)]
