/* cs_tok: GPT-2 byte-level BPE tokenizer (vocab.json + merges.txt).
 *
 * Produces exactly the ids of Hugging Face's GPT-2 tokenizer (and tiktoken's
 * "gpt2" encoding) for valid UTF-8 text. Pre-tokenization uses GPT-2's pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * through PCRE2 (UTF + UCP), then BPE by merge rank over the byte-to-unicode map.
 * \s is spelled as Unicode White_Space and \p{L}/\p{N} are extended to Unicode 16,
 * so every code point is classified as the references classify it (tokenizer.c).
 *
 * Invalid UTF-8: each maximal invalid subsequence is replaced by U+FFFD before
 * pre-tokenization, which is what Python's bytes.decode("utf-8", "replace")
 * does; ids therefore equal the reference tokenizer's ids on the decoded string.
 *
 * Special tokens: the literal text "<|endoftext|>" encodes to its single id (as
 * the Hugging Face tokenizer does) when `allow_special` is non-zero.
 *
 * Thread-safety: a loaded cs_tok is immutable; encode/decode on the same
 * cs_tok may run concurrently from many threads. */
#ifndef CS_TOKENIZER_H
#define CS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct cs_tok cs_tok;

/* Loads vocab.json and merges.txt. On failure returns -1, *out = NULL and
 * err names the file and line/key at fault. The vocabulary must hold a token
 * for each of the 256 bytes; every merge's parts and result must be tokens. */
int cs_tok_load(cs_tok **out, const char *vocab_path, const char *merges_path, cs_err *err);
void cs_tok_free(cs_tok *t); /* NULL is a no-op */

/* Encodes len bytes of text. On success *ids is a malloc'd array (caller frees;
 * may be NULL when *n_ids == 0). Returns 0, or -1 (with *ids = NULL) on
 * allocation failure or when the text is longer than CS_TOK_MAX_INPUT bytes.
 * Time is O(n log n) in the longest pre-token, so callers bound input size. */
#define CS_TOK_MAX_INPUT ((size_t)64 << 20)
int cs_tok_encode(const cs_tok *t, const char *text, size_t len, int allow_special,
                  int32_t **ids, size_t *n_ids, cs_err *err);

/* Decodes ids into raw bytes (not necessarily valid UTF-8 when a multi-byte
 * character is split across tokens). *out is malloc'd and NUL-terminated
 * (caller frees); *out_len excludes the NUL. Unknown ids are an error. */
int cs_tok_decode(const cs_tok *t, const int32_t *ids, size_t n, char **out, size_t *out_len,
                  cs_err *err);

/* The same, optionally leaving out special tokens (<|endoftext|>), as
 * transformers' decode(skip_special_tokens=True) does for pipeline output. */
int cs_tok_decode_ex(const cs_tok *t, const int32_t *ids, size_t n, int skip_special, char **out,
                     size_t *out_len, cs_err *err);

/* Raw bytes of one token (not NUL-terminated), or NULL for an unknown id.
 * The pointer stays valid until cs_tok_free. For streaming decode. */
const char *cs_tok_token_bytes(const cs_tok *t, int32_t id, size_t *len);

/* transformers' clean_up_tokenization, in its order: " ." -> ".", " ?" -> "?",
 * " !" -> "!", " ," -> ",", " ' " -> "'", " n't" -> "n't", " 'm" -> "'m",
 * " 's" -> "'s", " 've" -> "'ve", " 're" -> "'re"; each one left-to-right pass
 * of non-overlapping replacements, as Python's str.replace. In place; returns
 * the new length. */
size_t cs_tok_clean_up_spaces(char *s, size_t len);

/* Code points at the end of a cleaned text that more text may still change
 * (each pass above can rewrite at most pattern length - 1 of its last ones). */
#define CS_TOK_CLEAN_HOLD 32

/* The text-generation pipeline's continuation text:
 *     decode(prompt + new)[len(decode(prompt)):]      (Python, in code points)
 * with both decodes U+FFFD-repaired and, when clean, cleaned up as above; so a
 * clean-up across the boundary (prompt "He said '" + " yes" -> "He said'yes")
 * shifts the cut and eats the continuation's first characters, as it does in
 * transformers. prompt, gen: raw decoded bytes (special tokens left out); with
 * pl == 0 this is just the cleaned decode of gen.
 * final == 0 (more tokens may come): a possibly incomplete character at the
 * end is left out and *stable is the length of the prefix of *out that no
 * later token changes; final: *stable = *out_len. *out is malloc'd and
 * NUL-terminated. Returns 0, or -1 when out of memory. Thread-safe. */
int cs_tok_pipeline_text(const char *prompt, size_t pl, const char *gen, size_t gl, int clean, int final,
                         char **out, size_t *out_len, size_t *stable);

/* clean_up_tokenization_spaces of DIR/tokenizer_config.json: 0 when the file
 * or the key is absent (transformers' default since 4.45). */
int cs_tok_config_clean_up(const char *dir, int *clean, cs_err *err);

int32_t cs_tok_vocab_size(const cs_tok *t); /* number of ids (max id + 1) */
int32_t cs_tok_eos_id(const cs_tok *t);     /* id of <|endoftext|>, or -1 */

#endif
