#!/usr/bin/env python3
"""Writes the GPT-2 tokenizer test corpus and its reference token ids.

Outputs (relative to the repository root):
  tests/data/tokenizer/corpus.txt      raw bytes; every line ends with b"\\n"
  tests/data/tokenizer/expected.jsonl  one JSON object per record
  tests/data/tokenizer/README.md       description, versions, rules

Records: every line on its own, plus blocks of 2-6 consecutive lines joined with
b"\\n". Each expected.jsonl object is
  {"line": first_line_index, "count": number_of_lines, "ids": [...]}
plus "replaced": hex of the UTF-8 text after replacement, only for records that
are not valid UTF-8.

Reference ids: Hugging Face transformers' GPT-2 tokenizer (the tokenizers-backed
"fast" one) built from tests/data/gpt2-tokenizer/{vocab.json,merges.txt}, applied
to bytes.decode("utf-8", "replace"). Cross-check: tiktoken's "gpt2" encoding,
built by tiktoken's own loader from the same two files (so no download); the
script stops with an error when the two references disagree on any record.

Usage (developer machine; needs transformers and tiktoken, not needed by CI):
  /work/venv-ref/bin/python tools/make_tokenizer_corpus.py
The output is deterministic for a given Python version (source lines are taken
from that Python's standard library) and the fixed seed below.
"""
import hashlib
import json
import os
import random
import sys
import sysconfig

SEED = 20240601
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK_DIR = os.path.join(ROOT, "tests", "data", "gpt2-tokenizer")
OUT_DIR = os.path.join(ROOT, "tests", "data", "tokenizer")
VOCAB = os.path.join(TOK_DIR, "vocab.json")
MERGES = os.path.join(TOK_DIR, "merges.txt")
# sha256 of OpenAI's encoder.json / vocab.bpe (tiktoken_ext.openai_public.gpt2)
VOCAB_SHA = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_SHA = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

STDLIB_FILES = [
    "textwrap.py", "json/decoder.py", "json/encoder.py", "collections/__init__.py",
    "argparse.py", "string.py", "shlex.py", "csv.py", "difflib.py", "heapq.py",
    "bisect.py", "fractions.py", "calendar.py", "base64.py", "html/parser.py",
    "http/client.py", "unittest/case.py", "email/utils.py",
]
LICENSES = ["GPL-3", "Apache-2.0", "MPL-2.0", "Artistic"]

# ---------------------------------------------------------------------------
# Hand-written lines. Escapes are used where the exact code points matter.

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "Hello, world! How are you doing today?",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "GPT-2 is a large transformer-based language model with 1.5 billion parameters.",
    "Mr. Smith went to Washington D.C. on Jan. 3rd, 2021 -- or so he said...",
    "E-mail: john.doe+test@example.com; URL: https://example.org/path?q=1&r=two#frag",
    "\"Quoted text,\" she said, 'and single quotes too.'",
    "(parentheses) [brackets] {braces} <angles> /slashes\\ |pipes|",
    "Ellipsis... em-dash \u2014 en-dash \u2013 bullet \u2022 section \u00a7 pilcrow \u00b6",
    "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS #@!",
    "camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_CASE",
    "A sentence that ends with a space ",
    "Tabs\tbetween\twords\tand\ttrailing\ttab\t",
    "Multiple   spaces    between     words      here",
    "    Four leading spaces and text",
    "\tA leading tab",
    "  \t  mixed leading whitespace",
    "trailing mixed whitespace \t \t ",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 10000 100000",
    "!!! ??? ... ,,, ;;; ::: --- ___ *** +++ === ~~~ ^^^",
    "x=1;y=2;z=x+y*3/4-5%6",
    "if (a && b || !c) { return a[i] << 2 >> 1; }",
]

CONTRACTIONS = [
    "I'm sure you'll see they've done what we'd said; it's John's, isn't it?",
    "DON'T SHOUT: I'M HERE, YOU'LL SEE, IT'S FINE, WE'VE WON, THEY'RE OK, HE'D GO.",
    "He's here 's 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D",
    "He\u2019s here \u2014 it\u2019s John\u2019s car, isn\u2019t it? \u2018single\u2019 \u201cdouble\u201d",
    "'twas the night before Christmas; rock'n'roll; y'all'd've; o'clock",
    "''s '''t 's's 'll'll 'dd 'mm 'ree 'vee",
    "The cat's toy, the cats' toys, the children's books.",
    "Can't won't shouldn't wouldn't couldn't mustn't needn't ain't",
    "'S'T'RE'VE'M'LL'D and 's't're've'm'll'd run together",
    "It`s a backtick apostrophe and it\u02bcs a modifier letter apostrophe",
]

NUMBERS = [
    "1,000,000 and 1.000.000 and 1 000 000 and 1_000_000",
    "3.14159265358979 2.718281828 -0.5 +42 1e-10 6.022e23",
    "+1 (555) 123-4567, 555.123.4567, +44 20 7946 0958",
    "2024-06-01T12:34:56Z 12/31/1999 31.12.1999 1999\u5e7412\u670831\u65e5",
    "$1,234.56 \u20ac99,99 \u00a31.50 \u00a51000 \u20b9500 \u20bf0.001",
    "0x7fffffff 0b1010 0o755 1234567890123456789012345678901234567890",
    "Version 3.11.7, build 20240601, port 8080, IPv4 192.168.0.1, IPv6 ::1",
    "Arabic-Indic \u0661\u0662\u0663\u0664\u0665 and Devanagari \u0967\u0968\u0969 and Thai \u0e51\u0e52\u0e53",
    "Superscripts x\u00b2 + y\u00b3 = z\u2074, fractions \u00bd \u00bc \u2153, Roman \u216b \u2167",
    "Fullwidth \uff11\uff12\uff13 and circled \u2460\u2461\u2462 and subscript H\u2082O",
    "10% 50 % 99.9% 1st 2nd 3rd 4th 21st 100th",
    "12:30pm 23:59:59.999 -273.15\u00b0C 98.6\u00b0F",
]

LATIN = [
    "caf\u00e9 na\u00efve fa\u00e7ade \u00c5ngstr\u00f6m Z\u00fcrich S\u00e3o Paulo \u00e9l\u00e8ve",
    "cafe\u0301 nai\u0308ve fac\u0327ade A\u030angstro\u0308m (combining marks)",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357L\u0306G\u0311O text",
    "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u: Ng\u01b0\u1eddi ta n\u00f3i r\u1eb1ng",
    "Stra\u00dfe, \u0153uvre, \u00e6ther, \u00f8re, \u0142\u00f3d\u017a, \u010de\u0161tina, \u0219i \u021b",
    "Espa\u00f1ol: \u00bfD\u00f3nde est\u00e1 el ba\u00f1o? \u00a1Ol\u00e9!",
    "Portugu\u00eas: a\u00e7\u00e3o, cora\u00e7\u00e3o, p\u00e3o, irm\u00e3",
    "T\u00fcrk\u00e7e: \u0130stanbul, \u0131\u015f\u0131k, \u011fa\u011f, \u015fe\u015f",
    "Dansk/Norsk: bl\u00e5b\u00e6rsyltet\u00f8y, \u00c6\u00d8\u00c5",
    "\ufb01 \ufb02 ligatures and \u1e9e capital sharp s",
]

SCRIPTS = [
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 \u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a.",
    "\u0423\u043a\u0440\u0430\u0457\u043d\u0441\u044c\u043a\u0430: \u0490\u0430\u043d\u043e\u043a, \u0457\u0436\u0430\u043a, \u0454\u0434\u043d\u0456\u0441\u0442\u044c",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5 \u2014 \u03be\u03b5\u03c3\u03ba\u03b5\u03c0\u03ac\u03b6\u03c9 \u03c4\u03b7\u03bd \u03c8\u03c5\u03c7\u03bf\u03c6\u03b8\u03cc\u03c1\u03b1 \u03b2\u03b4\u03b5\u03bb\u03c5\u03b3\u03bc\u03af\u03b1",
    "\u6211\u80fd\u541e\u4e0b\u73bb\u7483\u800c\u4e0d\u4f24\u8eab\u4f53\u3002",
    "\u4e2d\u534e\u4eba\u6c11\u5171\u548c\u56fd\u6210\u7acb\u4e8e1949\u5e74\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u5427\uff01",
    "\u7e41\u9ad4\u4e2d\u6587\uff1a\u81fa\u7063\u3001\u9999\u6e2f\u3001\u6fb3\u9580\u3002",
    "\u3044\u308d\u306f\u306b\u307b\u3078\u3068 \u3061\u308a\u306c\u308b\u3092 \u30ab\u30bf\u30ab\u30ca \uff76\uff80\uff76\uff85 \u6f22\u5b57\u304b\u306a\u4ea4\u3058\u308a\u6587",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u6771\u4eac\u30bf\u30ef\u30fc\u306f333\u30e1\u30fc\u30c8\u30eb\u3067\u3059\u3002",
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4! \ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4.",
    "Hangul jamo \u1100\u1161\u11a8 \u1112\u1161\u11ab and compatibility \u3131\u314f",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0647\u0630\u0627 \u0646\u0635 \u0639\u0631\u0628\u064a.",
    "\u0627\u064e\u0644\u0652\u0639\u064e\u0631\u064e\u0628\u0650\u064a\u0651\u064e\u0629\u064f with harakat; \u0641\u0627\u0631\u0633\u06cc \u06af\u0686\u067e\u0698",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd! \u05d6\u05d4\u05d5 \u05d8\u05e7\u05e1\u05d8 \u05d1\u05e2\u05d1\u05e8\u05d9\u05ea.",
    "\u05d1\u05b0\u05bc\u05e8\u05b5\u05d0\u05e9\u05b4\u05c1\u05d9\u05ea \u05d1\u05b8\u05bc\u05e8\u05b8\u05d0 (niqqud)",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e, \u092f\u0939 \u0939\u093f\u0928\u094d\u0926\u0940 \u0939\u0948\u0964",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\u0e44\u0e21\u0e48\u0e21\u0e35\u0e01\u0e32\u0e23\u0e40\u0e27\u0e49\u0e19\u0e27\u0e23\u0e23\u0e04",
    "\u0532\u0561\u0580\u0565\u0582 \u0561\u0577\u056d\u0561\u0580\u0570 (Armenian) \u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0 (Georgian)",
    "\u1230\u120b\u121d \u12d3\u1208\u121d (Ethiopic) \u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd (Tamil) \u09a8\u09ae\u09b8\u09cd\u0995\u09be\u09b0 (Bengali)",
    "\u13a3\u13b3\u13a9 (Cherokee) \u1780\u1798\u17d2\u1796\u17bb\u1787\u17b6 (Khmer) \u0f56\u0f7c\u0f51 (Tibetan) \u1019\u103c\u1014\u103a\u1019\u102c (Burmese)",
    "Math: \u2200x\u2208\u211d: x\u00b2\u22650, \u2211\u1d62 a\u1d62 \u2264 \u221e, \u222b f(x) dx \u2248 \u03c0, A\u2229B \u2286 A\u222aB",
    "Box \u250c\u2500\u2500\u2510 \u2502ab\u2502 \u2514\u2500\u2500\u2518 arrows \u2190\u2191\u2192\u2193 \u21d2 \u21d4 blocks \u2588\u2593\u2592\u2591",
    "Fullwidth \uff21\uff22\uff23\uff41\uff42\uff43\uff01\uff1f and halfwidth \uff71\uff72\uff73",
    "Math alphanumerics \U0001d400\U0001d401\U0001d402 \U0001d538\U0001d539 and Gothic \U00010330\U00010331",
    "CJK ext B \U00020000\U00020001\U0002a6d6 and Linear B \U00010000\U00010001",
]

EMOJI = [
    "\U0001f600\U0001f603\U0001f604\U0001f601\U0001f606\U0001f605\U0001f923\U0001f602",
    "Thumbs \U0001f44d \U0001f44d\U0001f3fb \U0001f44d\U0001f3fc \U0001f44d\U0001f3fd \U0001f44d\U0001f3fe \U0001f44d\U0001f3ff",
    "ZWJ \U0001f469\u200d\U0001f4bb \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f9d1\U0001f3ff\u200d\U0001f680 \U0001f3f3\ufe0f\u200d\U0001f308",
    "Flags \U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5\U0001f1e9\U0001f1ea\U0001f1eb\U0001f1f7 \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "Hearts \u2764\ufe0f \u2764 \U0001f494 \U0001f9e1 keycaps 1\ufe0f\u20e3 #\ufe0f\u20e3 *\ufe0f\u20e3 text \u2714\ufe0e \u260e\ufe0f",
    "I love pizza\U0001f355!!! and tacos \U0001f32e\U0001f32e\U0001f32e ...",
    "\U0001f680\U0001f680\U0001f680 launch in 3.. 2.. 1..",
    "Mixed: caf\u00e9\u2615 \u6771\u4eac\U0001f5fc \u041c\u043e\u0441\u043a\u0432\u0430\U0001f1f7\U0001f1fa",
]

SPECIAL_WS = [
    "<|endoftext|>",
    "before<|endoftext|>after",
    " <|endoftext|> ",
    "<|endoftext|><|endoftext|>",
    "Document one ends here.<|endoftext|>Document two starts here.",
    "<|endoftext",
    "endoftext|>",
    "< |endoftext| >",
    "<|endofprompt|> <|fim_prefix|> <|im_start|>",
    "  <|endoftext|>  \t<|endoftext|>\t",
    "\u00a0non-breaking\u00a0spaces\u00a0here\u00a0",
    "ideographic\u3000space\u3000\u3000and en\u2002em\u2003thin\u2009hair\u200a spaces",
    "line\u2028separator and paragraph\u2029separator",
    "next\u0085line NEL and \u0085\u0085! and a\u0085.",
    "mongolian\u180evowel\u180e\u180e! separator a\u180e. and \u180e",
    "zero\u200bwidth\u200bspace and \u200c ZWNJ \u200d ZWJ \ufeffBOM",
    "ogham\u1680space and narrow\u202fnbsp and math\u205fspace",
    "form\x0cfeed and vertical\x0btab and \x1c\x1d\x1e\x1f separators",
    "NUL \x00 SOH \x01 ESC \x1b[31mred\x1b[0m DEL \x7f BEL \x07",
    "lone\rcarriage return inside a line",
    "Private use \ue000\uf8ff and noncharacters \ufdd0\ufffe\uffff and max \U0010ffff",
    "Replacement char literally: \ufffd \ufffd\ufffd",
    "Unicode 15/16 letters \u1c89\u1c8a \ua7cb \U000105c0\U000105c1 \U00016100 \U00031350 digits \U00011f50\U00011f51 \U0001ccf0",
    "Variation selectors \u845b\U000e0100 and tags and combining \u20dd enclosing",
]


def bad_lines(rng):
    """Lines that are not valid UTF-8 (never containing b'\\n')."""
    fixed = [
        b"\x80", b"abc\x80def", b"\xbf\xbf\xbf", b"\xc3", b"caf\xc3", b"caf\xc3 au lait",
        b"\xc3\x28", b"\xe2\x82", b"\xe2\x82 euro", b"price \xe2\x82\xac10 \xe2\x82",
        b"\xf0\x9f\x98", b"\xf0\x9f\x98 face", b"\xf0\x9f", b"\xf0",
        b"\xc0\xaf overlong slash", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xe0\x9f\xbf",
        b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80 surrogate",
        b"\xed\xbf\xbf", b"\xed\xa0\xbd\xed\xb8\x80 (CESU-8 emoji)", b"\xed\x9f\xbf ok",
        b"\xf4\x90\x80\x80 above max", b"\xf4\x8f\xbf\xbf ok max", b"\xf5\x80\x80\x80",
        b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xfe", b"\xff",
        b"\xff\xfe UTF-16 BOM", b"\xfe\xff", b"caf\xe9 na\xefve (latin-1)",
        b"\x93smart quotes\x94 cp1252 \x85 \x96 dash", b"end of line truncated \xe4\xb8",
        b"\xe4\xb8\xad\xe6\x96 partial CJK", b"\xc2\xc2\xa0", b"\xe0\xa0", b"\xe0\xa0 \xe0\xa0\x80",
        b"\xef\xbb\xbf BOM then \xef\xbb", b"  \x80  \x80\x80  ", b"\t\xff\t", b"\xf0\x90\x80 \xf0\x90",
        b"<|endoftext|>\xff<|endoftext|>", b"\xe2\x80<|endoftext|>", b"'s\x80'll\xc3'd",
        b"123\xff456", b"\xc3\xa9\xc3", b"\xcc\x81\xcc", b"\xe1\x80\x80\xe1\x80",
    ]
    pools = [bytes(range(0x80, 0xC0)), bytes(range(0xC0, 0x100)), b"\xc2\xdf\xe0\xed\xef\xf0\xf4"]
    out = list(fixed)
    for _ in range(110):
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.35:
                parts.append(rng.choice([b"abc", b"Hello", b" world", b"123", b" ", b"  ", b"\t", b"'s",
                                         "\u00e9".encode(), "\u4e2d".encode(), "\U0001f600".encode()]))
            elif r < 0.7:
                pool = rng.choice(pools)
                parts.append(bytes(rng.choice(pool) for _ in range(rng.randint(1, 4))))
            else:  # a valid multi-byte character cut short
                ch = rng.choice(["\u00e9", "\u20ac", "\u4e2d", "\U0001f600", "\U0001f44d\U0001f3fd"]).encode()
                parts.append(ch[: rng.randint(1, len(ch) - 1)])
        out.append(b"".join(parts).replace(b"\n", b" "))
    return out


def class_probe_lines():
    """One line per code point whose regex class is easy to get wrong: every
    White_Space character, U+180E (PCRE2's \\s has it, Unicode's White_Space does
    not), and the first and last letter/digit of each range assigned in Unicode
    15.0-16.0 (missing from older regex tables). The contexts put the character
    next to spaces, letters, digits and punctuation so that a wrong class changes
    the pre-token boundaries in a way BPE can see (c + "'s" does: as punctuation
    c takes the apostrophe, as a letter or digit it leaves "'s" whole)."""
    ws = [0x09, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B)) + \
         [0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0x180E, 0x200B, 0xFEFF]
    new = [(0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3),
           (0x10D40, 0x10D49), (0x10D4A, 0x10D65), (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4),
           (0x1123F, 0x11240), (0x11380, 0x11389), (0x11390, 0x113B5), (0x116D0, 0x116E3),
           (0x11BC0, 0x11BE0), (0x11BF0, 0x11BF9), (0x11F04, 0x11F10), (0x11F50, 0x11F59),
           (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16130, 0x16139), (0x16D40, 0x16D6C),
           (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3), (0x1E030, 0x1E06D),
           (0x1E4D0, 0x1E4EB), (0x1E4F0, 0x1E4F9), (0x1E5D0, 0x1E5ED), (0x1E5F1, 0x1E5FA),
           (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF)]
    cps = ws + sorted({c for a, b in new for c in (a, b)})
    out = []
    for cp in cps:
        c = chr(cp)
        out.append("U+%04X: x%sy %sz 1%s2 %s1 a %s%s! %s .%s. it%ss x%s's 1%s's %s" % ((cp,) + (c,) * 12))
    return out


# ---------------------------------------------------------------------------

def chunks_from(path, rng, n_chunks, size):
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    out = []
    for _ in range(n_chunks):
        start = rng.randrange(0, max(1, len(lines) - size))
        out.extend(lines[start:start + size])
    return out


def generated_lines(rng, n):
    words = [
        "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on",
        "are", "as", "with", "his", "they", "I", "at", "be", "this", "have", "from", "or",
        "Language", "model", "tokenizer", "Byte", "pair", "encoding", "GPT", "antidisestablishmentarianism",
        "caf\u00e9", "\u00fcber", "se\u00f1or", "\u043f\u0440\u0438\u0432\u0435\u0442", "\u043c\u0438\u0440",
        "\u03ba\u03cc\u03c3\u03bc\u03bf\u03c2", "\u4e16\u754c", "\u4f60\u597d", "\u3053\u3093\u306b\u3061\u306f",
        "\u30ab\u30bf\u30ab\u30ca", "\ud55c\uad6d\uc5b4", "\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd",
        "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", "\U0001f600", "\U0001f44d\U0001f3fd",
        "\U0001f469\u200d\U0001f4bb", "\U0001f1ef\U0001f1f5", "it's", "we'll", "they've", "I'm", "you'd",
        "she's", "CAN'T", "he\u2019s", "x86_64", "foo.bar()", "a[i]", "->", "=>", "::", "...", "!!",
        "--", "==", "&&", "||", "<|endoftext|>", "#include", "\\n", "\\t", "@user", "#hashtag",
    ]
    seps = [" ", " ", " ", " ", "  ", "   ", "\t", "", " \t", ", ", ". ", "; ", "\u00a0", "\u3000"]
    out = []
    for _ in range(n):
        parts = []
        if rng.random() < 0.15:
            parts.append(rng.choice([" ", "  ", "\t", "    ", " \t "]))
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.7:
                w = rng.choice(words)
                if rng.random() < 0.1:
                    w = w.upper()
                elif rng.random() < 0.1:
                    w = w.capitalize()
                parts.append(w)
            elif r < 0.85:
                parts.append(rng.choice([
                    str(rng.randint(0, 10 ** rng.randint(1, 12))),
                    "%.*f" % (rng.randint(1, 6), rng.uniform(-1000, 1000)),
                    "{:,}".format(rng.randint(1000, 10 ** 9)),
                    "%04d-%02d-%02d" % (rng.randint(1900, 2100), rng.randint(1, 12), rng.randint(1, 28)),
                    "(%03d) %03d-%04d" % (rng.randint(200, 999), rng.randint(0, 999), rng.randint(0, 9999)),
                ]))
            else:
                parts.append(rng.choice(list("!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`'\"") + ["\u2026", "\u00bf", "\u00a1", "\u3002"]))
            parts.append(rng.choice(seps))
        if rng.random() < 0.7:
            parts.pop()
        if rng.random() < 0.15:
            parts.append(rng.choice([" ", "  ", "\t", "   ", " \t"]))
        out.append("".join(parts))
    return out


def whitespace_lines():
    return ["", " ", "  ", "      ", "\t", "\t\t", " \t ", "\t \t", "\u00a0", "\u3000", "\r", " \r",
            "", "", "x", " x", "x ", "  x  ", "\tx\t", "a \r", "a\t\r"]


def build_lines(rng):
    blocks = []  # groups of lines; groups are shuffled, lines inside keep their order
    for group in (PROSE, CONTRACTIONS, NUMBERS, LATIN, SCRIPTS, EMOJI, SPECIAL_WS):
        for s in group:
            blocks.append([s.encode("utf-8")])
    for s in class_probe_lines():
        blocks.append([s.encode("utf-8")])
    for s in whitespace_lines():
        blocks.append([s.encode("utf-8")])
    for b in bad_lines(rng):
        blocks.append([b])

    stdlib = sysconfig.get_paths()["stdlib"]
    for i, rel in enumerate(STDLIB_FILES):
        chunk = chunks_from(os.path.join(stdlib, rel), rng, 2, 20)
        if i % 6 == 0:  # a Windows-style file: CRLF endings
            chunk = [l + b"\r" for l in chunk]
        blocks.append(chunk)
    for i, lic in enumerate(LICENSES):
        chunk = chunks_from(os.path.join("/usr/share/common-licenses", lic), rng, 4, 30)
        if i == 1:
            chunk = [l + b"\r" for l in chunk]
        blocks.append(chunk)

    gen = generated_lines(rng, 900)
    for i in range(0, len(gen), 10):
        blocks.append([s.encode("utf-8") for s in gen[i:i + 10]])
    # Multi-line free text written as paragraphs with blank lines and trailing blanks.
    para = []
    for _ in range(60):
        para.append(rng.choice(PROSE + CONTRACTIONS + LATIN + SCRIPTS).encode("utf-8")
                    + rng.choice([b"", b"", b" ", b"   ", b"\t", b"\r", b" \r"]))
        if rng.random() < 0.3:
            para.append(rng.choice([b"", b"", b" ", b"\r"]))
    blocks.append(para)

    rng.shuffle(blocks)
    lines = [l for b in blocks for l in b]
    for l in lines:
        assert b"\n" not in l
    return lines


def records(lines, rng):
    recs = [(i, 1) for i in range(len(lines))]
    seen = set(recs)

    def add(start, count):
        count = min(count, len(lines) - start)
        if count >= 2 and (start, count) not in seen:
            seen.add((start, count))
            recs.append((start, count))

    for _ in range(700):
        add(rng.randrange(len(lines) - 1), rng.randint(2, 6))
    # Make sure blank lines, CR, whitespace-only lines and trailing whitespace
    # meet a newline on both sides.
    for i, l in enumerate(lines):
        interesting = (l.strip() == b"" or l.endswith((b" ", b"\t", b"\r"))
                       or l.startswith((b" ", b"\t")))
        if interesting and i > 0 and rng.random() < 0.6:
            add(i - 1, rng.randint(2, 4))
    return recs


def main():
    try:
        import tiktoken
        import tiktoken.load
        import tiktoken_ext.openai_public as openai_public
        import tokenizers
        import transformers
        from transformers import GPT2TokenizerFast
    except ImportError as e:
        sys.exit("make_tokenizer_corpus: needs transformers and tiktoken (%s)" % e)

    for path, want in ((VOCAB, VOCAB_SHA), (MERGES, MERGES_SHA)):
        got = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if got != want:
            sys.exit("%s: sha256 %s, expected %s" % (path, got, want))

    # transformers >= 5 ignores vocab_file=/merges_file= keyword arguments (the
    # tokenizer silently comes up empty); from_pretrained on the directory
    # loads vocab.json and merges.txt by name in every version.
    hf = GPT2TokenizerFast.from_pretrained(TOK_DIR)
    if len(hf) != 50257 or hf.encode("Hello world") != [15496, 995]:
        sys.exit("transformers GPT-2 tokenizer did not load the vocabulary")

    # tiktoken's own "gpt2" constructor, with local files instead of URLs.
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=MERGES, encoder_json_file=VOCAB,
        vocab_bpe_hash=MERGES_SHA, encoder_json_hash=VOCAB_SHA)
    tt = tiktoken.Encoding(name="gpt2", pat_str=openai_public.r50k_pat_str,
                           mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256},
                           explicit_n_vocab=50257)

    rng = random.Random(SEED)
    lines = build_lines(rng)
    recs = records(lines, rng)

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "corpus.txt"), "wb") as f:
        f.write(b"".join(l + b"\n" for l in lines))

    n_invalid = 0
    n_tokens = 0
    with open(os.path.join(OUT_DIR, "expected.jsonl"), "w", encoding="ascii", newline="\n") as f:
        for start, count in recs:
            raw = b"\n".join(lines[start:start + count])
            text = raw.decode("utf-8", "replace")
            ids = hf.encode(text, add_special_tokens=False)
            ref2 = tt.encode(text, allowed_special="all")
            if ids != ref2:
                sys.exit("references disagree on record line=%d count=%d %r:\n hf=%s\n tiktoken=%s"
                         % (start, count, raw, ids, ref2))
            if hf.decode(ids, clean_up_tokenization_spaces=False) != text:
                sys.exit("reference round trip failed on line=%d count=%d" % (start, count))
            rec = {"line": start, "count": count, "ids": ids}
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                rec["replaced"] = text.encode("utf-8").hex()
                n_invalid += 1
            n_tokens += len(ids)
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    versions = {
        "python": sys.version.split()[0],
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tiktoken": tiktoken.__version__,
    }
    corpus_sha = hashlib.sha256(open(os.path.join(OUT_DIR, "corpus.txt"), "rb").read()).hexdigest()
    with open(os.path.join(OUT_DIR, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write(README.format(n_lines=len(lines), n_records=len(recs),
                              n_multi=len(recs) - len(lines), n_invalid=n_invalid,
                              n_tokens=n_tokens, seed=SEED, corpus_sha=corpus_sha, **versions))
    print("corpus: %d lines, %d records (%d multi-line, %d invalid UTF-8), %d tokens; "
          "transformers and tiktoken agree on all records" %
          (len(lines), len(recs), len(recs) - len(lines), n_invalid, n_tokens))
    print("versions:", versions)


README = """\
# GPT-2 tokenizer test corpus

Checks `src/engine/tokenizer.c` (`cs_tok`) against the reference GPT-2 tokenizer with the real GPT-2
vocabulary (`../gpt2-tokenizer/vocab.json`, `merges.txt`). Used by `tests/engine/test_tokenizer.c`.
Generated by `tools/make_tokenizer_corpus.py`; do not edit by hand.

## Files

- `corpus.txt`: {n_lines} lines of raw bytes, each terminated by `\\n` (sha256 `{corpus_sha}`).
  Lines may contain `\\r` (CRLF blocks), tabs, control characters and invalid UTF-8, so treat the
  file as binary (no end-of-line conversion, no re-encoding).
- `expected.jsonl`: {n_records} records, one JSON object per line:
  `{{"line": L, "count": C, "ids": [...]}}`. The record text is corpus lines `L .. L+C-1` joined with
  `\\n` (no trailing `\\n`). Every line is a record on its own ({n_lines}); {n_multi} more records are
  blocks of 2-6 lines, so newlines, blank lines, `\\r\\n` and whitespace runs before a newline are
  covered. The {n_invalid} records that are not valid UTF-8 also carry `"replaced"`: the hex of the UTF-8
  text after replacement (below). {n_tokens} reference tokens in all.

## Content

English prose and license text (`/usr/share/common-licenses`: GPL-3, Apache-2.0, MPL-2.0, Artistic),
Python source (lines of Python {python}'s standard library), numbers (integers, decimals, `1,000,000`,
phone numbers, dates, currencies, non-ASCII digits), contractions (`'s 't 're 've 'm 'll 'd`, uppercase,
curly quotes), Latin with precomposed and combining accents, Cyrillic, Greek, Chinese, Japanese kana,
Korean hangul and jamo, Arabic, Hebrew, Devanagari, Thai and other scripts, emoji with skin tones, flags,
tags and ZWJ sequences, whitespace runs, tabs, trailing spaces, CR/LF, every Unicode White_Space
character plus U+180E, letters and digits new in Unicode 15-16, `<|endoftext|>` in various positions,
randomly generated mixed lines (seed {seed}), and invalid UTF-8 (lone continuation bytes, truncated
sequences, overlong encodings, UTF-8-encoded surrogates, bytes C0, C1, F5-FF, Latin-1/cp1252 text).

## Reference

Expected ids are those of Hugging Face `transformers` {transformers} (`GPT2TokenizerFast.from_pretrained`
on `../gpt2-tokenizer`, backed by `tokenizers` {tokenizers}), on `raw.decode("utf-8", "replace")`,
with `<|endoftext|>` as the special token 50256 and no added BOS/EOS. Every record is also encoded
with tiktoken {tiktoken}'s `gpt2` encoding, built by tiktoken's own loader from the same two files
(sha256-checked; tiktoken cannot download here); the generator fails if the two references differ on
any record. Python {python}.

Note: with transformers 5 the keyword arguments `vocab_file=`/`merges_file=` of `GPT2TokenizerFast(...)`
are ignored and give an empty tokenizer; the generator therefore uses `from_pretrained` on the directory
and checks that the vocabulary has 50,257 entries.

## Invalid UTF-8 rule

Text is decoded as Python's `bytes.decode("utf-8", "replace")` does: each *maximal subpart* of an
ill-formed sequence becomes one U+FFFD (Unicode ch. 3, "U+FFFD Substitution of Maximal Subparts").
A maximal subpart is the longest prefix of a well-formed sequence that is present, at least one byte:

- bytes 80-BF (lone continuation), C0, C1 and F5-FF are one U+FFFD each;
- a lead byte followed by fewer continuation bytes than it needs (truncated sequence, also at the end of
  the text) is one U+FFFD for the lead and the continuation bytes that fit, e.g. `F0 9F 98` -> 1 U+FFFD;
- the second byte is restricted after E0 (A0-BF), ED (80-9F), F0 (90-BF) and F4 (80-8F), so overlong
  forms, UTF-8-encoded surrogates and values above U+10FFFF end the subpart after the lead byte:
  `E0 80 AF` -> 3 U+FFFD, `ED A0 80` -> 3 U+FFFD, `F4 90 80 80` -> 4 U+FFFD, `C0 AF` -> 2 U+FFFD.

Replacement happens before `<|endoftext|>` splitting and pre-tokenization, so the ids are those of the
reference on the replaced string; `decode(encode(x))` gives the replaced text (the `"replaced"` field).

## Regenerating

    /work/venv-ref/bin/python tools/make_tokenizer_corpus.py   # any venv with transformers + tiktoken
    make build/tests/engine/test_tokenizer && ./build/tests/engine/test_tokenizer

The output depends only on the seed, the two vocabulary files, the Python standard library version
and the license texts; with the versions above it is byte-identical.
"""

if __name__ == "__main__":
    main()
