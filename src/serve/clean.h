/* cs_clean: the text clean-up of the built-in preprocessing deployment
 * (`cserve.apps:clean_text`, the seed's Preprocessor in
 * `Generator.bind(Preprocessor.bind())`): what a prompt goes through before
 * the generator sees it.
 *
 * cs_clean_text applies, in this order:
 *   1. invalid UTF-8 repaired: each maximal invalid subsequence becomes one
 *      U+FFFD (cs_utf8_repair, as Python's decode(errors="replace"));
 *   2. strip_control: line breaks normalized (CR LF, and a lone CR, VT, FF
 *      or NEL U+0085, become LF: words they separate stay apart), then removed:
 *        - C0 controls U+0000-001F except TAB and LF, DEL U+007F, and C1
 *          controls U+0080-009F;
 *        - U+FEFF (byte order mark / zero width no-break space), U+200B
 *          (zero width space), U+2060 (word joiner);
 *        - the bidirectional embeddings/overrides U+202A-202E and isolates
 *          U+2066-2069 (the "Trojan Source" characters).
 *      Kept on purpose: U+200C/U+200D (ZWNJ/ZWJ: they shape Indic and
 *      Persian text and join emoji sequences), U+200E/U+200F (LRM/RLM marks,
 *      which override nothing), TAB and LF;
 *   3. normalize: Unicode NFC or NFKC (utf8proc), or none. NFKC folds
 *      compatibility forms: "ﬁ" -> "fi", full-width "１２" -> "12",
 *      U+3000 -> space;
 *   4. collapse_whitespace: every run of White_Space characters (U+0009-000D,
 *      U+0020, U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F,
 *      U+205F, U+3000) becomes one LF when the run holds a line break
 *      (U+000A-000D, U+0085, U+2028, U+2029), else one space; leading and
 *      trailing whitespace is removed. So paragraphs stay on separate lines
 *      but blank lines are not kept;
 *   5. max_chars: at most that many Unicode code points are kept, cut at an
 *      extended grapheme cluster boundary at or before the limit (a letter
 *      never loses its accents, an emoji sequence is not split; a single
 *      cluster longer than the cap yields nothing of it); counted on the
 *      cleaned text; whitespace left at the end by the cut is removed too
 *      (when collapse_whitespace);
 *   6. template: every "{input}" is replaced by the text, "{{" and "}}" stand
 *      for "{" and "}". The template is trusted configuration: not cleaned,
 *      not counted in max_chars.
 * Without a template the result is a fixed point: clean(clean(x)) == clean(x);
 * it is always valid UTF-8.
 *
 * cs_clean_request applies that to a request body of the generation API:
 * "input" when it is a string (the seed's /text/simple-gen), and "prompt"
 * when it is a string or a list (each string of the list; token-id prompts
 * and other values are left alone: the API itself reports wrong types, the
 * preprocessor does not validate requests). Nothing else is touched.
 *
 * Options (the application's args.preprocess, JSON): see
 * cs_clean_opts_from_json. Errors name the key ("max_chars: ..."); callers
 * prefix the path of the object (cs_err_prefix).
 *
 * Pure functions; thread-safe (options are read-only during a call). */
#ifndef CS_SERVE_CLEAN_H
#define CS_SERVE_CLEAN_H

#include <jansson.h>
#include <stddef.h>

#include "engine/err.h"

#define CS_CLEAN_MAX_CHARS ((size_t)1 << 20)     /* largest max_chars accepted */
#define CS_CLEAN_MAX_TEMPLATE 4096               /* template bytes */
#define CS_CLEAN_MAX_INPUT ((size_t)16 << 20)    /* bytes of one text to clean (longer: error) */
#define CS_CLEAN_DEFAULT_MAX_CHARS 4096

typedef enum cs_clean_norm {
    CS_CLEAN_NORM_NONE = 0,
    CS_CLEAN_NORM_NFC,
    CS_CLEAN_NORM_NFKC,
} cs_clean_norm;

typedef struct cs_clean_opts {
    cs_clean_norm normalize;   /* NFKC */
    size_t max_chars;          /* CS_CLEAN_DEFAULT_MAX_CHARS; 0: no cap (JSON null) */
    int collapse_whitespace;   /* 1 */
    int strip_control;         /* 1 */
    int has_template;          /* 0 */
    char tmpl[CS_CLEAN_MAX_TEMPLATE + 1]; /* NUL-terminated, when has_template */
} cs_clean_opts;

/* The defaults above. */
void cs_clean_opts_default(cs_clean_opts *o);

/* 0 when the options are usable: normalize known, max_chars <= CS_CLEAN_MAX_CHARS,
 * a template that is valid UTF-8, holds at least one "{input}" and no other
 * brace except the "{{" "}}" escapes. */
int cs_clean_opts_check(const cs_clean_opts *o, cs_err *err);

/* Defaults, then the keys of obj (NULL or JSON null: defaults only):
 *   normalize            "NFKC" | "NFC" | "none" (case-insensitive; null: none)
 *   max_chars            integer 1..CS_CLEAN_MAX_CHARS, or null (no cap)
 *   template             string with "{input}", or null (none)
 *   collapse_whitespace  boolean
 *   strip_control        boolean
 * Unknown keys are errors. On error *o is unchanged. */
int cs_clean_opts_from_json(cs_clean_opts *o, const json_t *obj, cs_err *err);

/* Like cs_clean_opts_from_json but starts from *o instead of the defaults
 * (a user_config that changes some options of the application's args). */
int cs_clean_opts_merge_json(cs_clean_opts *o, const json_t *obj, cs_err *err);

/* The options as a JSON object with every key (new reference; NULL on OOM). */
json_t *cs_clean_opts_to_json(const cs_clean_opts *o);

/* Cleans in[0..n) (any bytes) into a malloc'd NUL-terminated buffer *out of
 * *out_len bytes (caller frees; it may contain NUL when !strip_control).
 * Errors: input over CS_CLEAN_MAX_INPUT, out of memory. */
int cs_clean_text(const cs_clean_opts *o, const char *in, size_t n, char **out, size_t *out_len, cs_err *err);

/* Rewrites body's "input" and "prompt" strings in place (see above). A body
 * that is not an object is left alone. *changed (may be NULL) gets the number
 * of strings whose value changed. On error the body may be partly rewritten. */
int cs_clean_request(const cs_clean_opts *o, json_t *body, int *changed, cs_err *err);

#endif
