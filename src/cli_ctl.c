/* cserve deploy | status | config | shutdown: the admin client of a running
 * `cserve serve --config` (or of a Ray cluster's dashboard), the counterpart
 * of Ray Serve 2.50's `serve deploy/status/config/shutdown`.
 *
 * Each command talks REST to the admin API (ServeSubmissionClient's paths):
 *   deploy FILE   PUT    /api/serve/applications/   the config, as JSON
 *   status        GET    /api/serve/applications/   printed as `serve status` prints it
 *   config        GET    /api/serve/applications/   each deployed_app_config, as `serve config`
 *   shutdown      GET, then DELETE /api/serve/applications/
 *
 * Output format: what Ray's CLI prints (PyYAML's safe_dump), byte for byte,
 * so scripts that grep or parse `serve status` keep working: PyYAML's
 * representer rules (a string that would read back as another type, like
 * null, true, 1.5 or 2024-01-01, is quoted; floats as Python's repr()) and
 * its emitter's choice of scalar style, line folding at 80 columns and
 * escapes, reproduced below. `status` also writes multi-line strings as
 * literal blocks and strips ANSI escapes, as Ray's str_presenter and
 * process_dict_for_yaml_dump do; `config` orders each deployed_app_config
 * by the schema's fields, as pydantic's .dict() does.
 *
 * Where cserve differs on purpose: a missing application (status/config
 * --name) is an error on stderr with exit status 1 (Ray prints and exits 0);
 * shutdown without -y and without a terminal refuses (exit 2) instead of
 * failing on the prompt; config keeps fields the Ray schema does not know
 * (cserve's extensions), after the known ones.
 *
 * Exit status: 0 ok, 1 the server refused or could not be reached,
 * 2 a usage error or a bad config file (reported before anything is sent). */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "engine/err.h"
#include "serve/config.h"

int cs_cmd_deploy(int argc, char **argv);
int cs_cmd_status(int argc, char **argv);
int cs_cmd_config(int argc, char **argv);
int cs_cmd_shutdown(int argc, char **argv);

#define CTL_DEFAULT_ADDRESS "http://127.0.0.1:8265"
#define CTL_PATH "/api/serve/applications/"
#define CTL_CONNECT_TIMEOUT_S 10L
#define CTL_TIMEOUT_S 30L                      /* whole request; CSERVE_ADMIN_TIMEOUT_S overrides */
#define CTL_MAX_TIMEOUT_S 3600L
#define CTL_MAX_ANSWER ((size_t)64 << 20)      /* bytes of an admin API answer */
#define CTL_MAX_URL 2048                       /* bytes of the address */
#define CTL_MAX_API_KEY 4096                   /* bytes of CSERVE_API_KEY */
#define CTL_MAX_SHOWN_ERROR 4000               /* bytes of a server's error text we print */
#define CTL_MAX_PROMPT_LINE 256

/* ------------------------------------------------------------------ buffers */

typedef struct ctl_buf {
    char *p;      /* NUL-terminated once anything was added */
    size_t n, cap;
    size_t limit; /* 0: no limit */
    int failed;   /* out of memory or over the limit; content incomplete */
} ctl_buf;

static int buf_add(ctl_buf *b, const void *d, size_t n) {
    if (b->failed) return -1;
    if ((b->limit && n > b->limit - b->n) || n > SIZE_MAX / 2 - b->n) {
        b->failed = 1;
        return -1;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int buf_puts(ctl_buf *b, const char *s) { return buf_add(b, s, strlen(s)); }

static void buf_free(ctl_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ HTTP */

typedef struct ctl_client {
    const char *cmd;           /* "deploy", ... for messages */
    char base[CTL_MAX_URL];    /* the address, trailing '/' removed */
    const char *address;       /* as given (messages) */
    const char *api_key;       /* NULL: none */
    long timeout_s;
} ctl_client;

static size_t on_body(char *d, size_t size, size_t n, void *ud) {
    ctl_buf *b = ud;
    return buf_add(b, d, size * n) ? 0 : size * n;
}

/* One request. Returns 0 when an HTTP answer came back (*status, body in
 * resp), -1 with a one-line err when none did. */
static int ctl_http(const ctl_client *c, const char *method, const char *path, const char *body, long *status,
                    ctl_buf *resp, cs_err *err) {
    char url[CTL_MAX_URL + 64], curl_msg[CURL_ERROR_SIZE] = "";
    snprintf(url, sizeof url, "%s%s", c->base, path);
    CURL *h = curl_easy_init();
    if (!h) return cs_err_set(err, "cannot initialise libcurl");
    struct curl_slist *hdr = NULL, *t;
    char auth[CTL_MAX_API_KEY + 32];
    int rc = -1;
#define ADD_HEADER(s)                                                                                        \
    do {                                                                                                     \
        if (!(t = curl_slist_append(hdr, (s)))) {                                                            \
            cs_err_set(err, "out of memory");                                                                \
            goto done;                                                                                       \
        }                                                                                                    \
        hdr = t;                                                                                             \
    } while (0)
    ADD_HEADER("Accept: application/json");
    ADD_HEADER("Expect:"); /* no 100-continue round trip for the PUT body */
    if (body) ADD_HEADER("Content-Type: application/json");
    if (c->api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->api_key);
        ADD_HEADER(auth);
    }
#undef ADD_HEADER
    resp->limit = CTL_MAX_ANSWER;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "cserve-admin-client");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CTL_CONNECT_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, c->timeout_s);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_msg);
    if (strcmp(method, "GET") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    CURLcode cc = curl_easy_perform(h);
    const char *why = curl_msg[0] ? curl_msg : curl_easy_strerror(cc);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
        rc = 0;
    } else if (cc == CURLE_WRITE_ERROR && resp->failed) {
        cs_err_set(err, "the answer of the admin API at %s is larger than %zu bytes", c->address,
                   (size_t)CTL_MAX_ANSWER);
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
        curl_off_t connected = 0; /* microseconds until connected; 0: never */
        curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connected);
        if (connected > 0 || !strstr(why, "onnect"))
            cs_err_set(err, "the admin API at %s did not answer within %ld s (%s)", c->address, c->timeout_s, why);
        else
            cs_err_set(err, "cannot reach the admin API at %s: %s", c->address, why);
    } else if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST || cc == CURLE_COULDNT_RESOLVE_PROXY ||
               cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL || cc == CURLE_SSL_CONNECT_ERROR ||
               cc == CURLE_PEER_FAILED_VERIFICATION) {
        cs_err_set(err, "cannot reach the admin API at %s: %s", c->address, why);
    } else {
        cs_err_set(err, "request to the admin API at %s failed: %s", c->address, why);
    }
done:
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return rc;
}

/* The server's explanation of a refusal: {"error": {"message"}} (cserve),
 * {"error": "..."} / {"message": "..."}, or the body as text (Ray answers
 * plain text). Written into out (cut at CTL_MAX_SHOWN_ERROR bytes). */
static void server_message(const ctl_buf *resp, char *out, size_t cap) {
    const char *text = resp->p ? resp->p : "";
    json_t *j = resp->p ? json_loads(resp->p, JSON_DECODE_ANY, NULL) : NULL;
    const char *m = NULL;
    if (json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        if (json_is_object(e)) m = json_string_value(json_object_get(e, "message"));
        else if (json_is_string(e)) m = json_string_value(e);
        if (!m) m = json_string_value(json_object_get(j, "message"));
        if (!m) m = json_string_value(json_object_get(j, "detail"));
    } else if (json_is_string(j)) {
        m = json_string_value(j);
    }
    if (m) text = m;
    size_t n = strlen(text);
    while (n && strchr(" \t\r\n", text[n - 1])) n--;
    if (n == 0) snprintf(out, cap, "(empty answer)");
    else if (n > CTL_MAX_SHOWN_ERROR) snprintf(out, cap, "%.*s...", CTL_MAX_SHOWN_ERROR, text);
    else snprintf(out, cap, "%.*s", (int)n, text);
    json_decref(j);
}

/* A request whose answer must be 2xx. Returns 0, or prints the error and
 * returns 1 (the exit status). */
static int ctl_call(const ctl_client *c, const char *method, const char *body, ctl_buf *resp) {
    cs_err err = {{0}};
    long status = 0;
    if (ctl_http(c, method, CTL_PATH, body, &status, resp, &err)) {
        fprintf(stderr, "cserve %s: %s\n", c->cmd, err.msg);
        return 1;
    }
    if (status < 200 || status > 299) {
        char msg[CTL_MAX_SHOWN_ERROR + 32];
        server_message(resp, msg, sizeof msg);
        fprintf(stderr, "cserve %s: request failed with status code %ld: %s\n", c->cmd, status, msg);
        return 1;
    }
    return 0;
}

/* GET the ServeInstanceDetails document. Returns 0 with *out, else the exit status. */
static int ctl_get_details(const ctl_client *c, json_t **out) {
    ctl_buf resp = {0};
    int rc = ctl_call(c, "GET", NULL, &resp);
    if (rc) {
        buf_free(&resp);
        return rc;
    }
    json_error_t je;
    json_t *j = resp.p ? json_loadb(resp.p, resp.n, JSON_ALLOW_NUL, &je) : NULL;
    if (!json_is_object(j)) {
        fprintf(stderr, "cserve %s: the admin API at %s did not answer a JSON object: %s\n", c->cmd, c->address,
                j ? "another JSON value" : resp.p ? je.text : "empty answer");
        json_decref(j);
        buf_free(&resp);
        return 1;
    }
    buf_free(&resp);
    *out = j;
    return 0;
}

/* ------------------------------------------------------------------ options */

static void usage_common(FILE *f) {
    fprintf(f,
            "  -a, --address URL   admin API (default: $RAY_DASHBOARD_ADDRESS, else " CTL_DEFAULT_ADDRESS ")\n"
            "  -h, --help          this text\n\n"
            "environment:\n"
            "  CSERVE_API_KEY          sent as 'Authorization: Bearer KEY' when set\n"
            "  RAY_DASHBOARD_ADDRESS   default address\n"
            "  CSERVE_ADMIN_TIMEOUT_S  seconds allowed for a whole request (default %ld; connecting: %ld)\n",
            CTL_TIMEOUT_S, CTL_CONNECT_TIMEOUT_S);
}

/* Fills c from the address option and the environment. Returns 0 or 2. */
static int ctl_client_init(ctl_client *c, const char *cmd, const char *address) {
    memset(c, 0, sizeof *c);
    c->cmd = cmd;
    if (!address) {
        const char *e = getenv("RAY_DASHBOARD_ADDRESS");
        address = e && *e ? e : CTL_DEFAULT_ADDRESS;
    }
    c->address = address;
    if (strncasecmp(address, "http://", 7) != 0 && strncasecmp(address, "https://", 8) != 0) {
        fprintf(stderr,
                "cserve %s: got the address '%s': the admin API's address must start with http:// or https:// "
                "(if it was not passed with -a, it comes from RAY_DASHBOARD_ADDRESS)\n",
                cmd, address);
        return 2;
    }
    size_t n = strlen(address);
    if (n >= sizeof c->base) {
        fprintf(stderr, "cserve %s: the address is longer than %d bytes\n", cmd, CTL_MAX_URL - 1);
        return 2;
    }
    memcpy(c->base, address, n + 1);
    while (n > 0 && c->base[n - 1] == '/') c->base[--n] = 0;
    const char *key = getenv("CSERVE_API_KEY");
    if (key && *key) {
        if (strlen(key) > CTL_MAX_API_KEY || strpbrk(key, "\r\n")) {
            fprintf(stderr, "cserve %s: CSERVE_API_KEY: longer than %d bytes or holds a line break\n", cmd,
                    CTL_MAX_API_KEY);
            return 2;
        }
        c->api_key = key;
    }
    c->timeout_s = CTL_TIMEOUT_S;
    const char *ts = getenv("CSERVE_ADMIN_TIMEOUT_S");
    if (ts && *ts) {
        char *end;
        errno = 0;
        long v = strtol(ts, &end, 10);
        if (errno || *end || v < 1 || v > CTL_MAX_TIMEOUT_S) {
            fprintf(stderr, "cserve %s: CSERVE_ADMIN_TIMEOUT_S: expected an integer in [1, %ld], got '%s'\n", cmd,
                    CTL_MAX_TIMEOUT_S, ts);
            return 2;
        }
        c->timeout_s = v;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

/* ------------------------------------------------------------------ YAML output
 *
 * What PyYAML's yaml.safe_dump(..., sort_keys=False) writes, which is what
 * Ray's CLI prints: block style, indent 2, lines folded at 80 columns,
 * allow_unicode=False (non-ASCII escaped in double quotes). The representer
 * rules come first (a string that would read back as another type is
 * quoted; floats as Python's repr()), then the emitter's choice of scalar
 * style and its writers, which follow PyYAML's emitter step by step:
 * libyaml's emitter folds long double-quoted strings differently, and a
 * traceback in a DEPLOY_FAILED message is exactly such a string.
 *
 * PyYAML's implicit resolvers (YAML 1.1): a plain scalar matching one of
 * these reads back as bool, float, int, '<<', null, timestamp or '='. */
static const char YAML_IMPLICIT_RE[] =
    "^(?:"
    "(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)"
    "|(?:[-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+][0-9]+)?"
    "|\\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    "|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*"
    "|[-+]?\\.(?:inf|Inf|INF)"
    "|\\.(?:nan|NaN|NAN))"
    "|(?:[-+]?0b[0-1_]+"
    "|[-+]?0[0-7_]+"
    "|[-+]?(?:0|[1-9][0-9_]*)"
    "|[-+]?0x[0-9a-fA-F_]+"
    "|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)"
    "|(?:<<)"
    "|(?:~|null|Null|NULL|)"
    "|(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
    "|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?"
    "(?:[Tt]|[ \\t]+)[0-9][0-9]?"
    ":[0-9][0-9]:[0-9][0-9](?:\\.[0-9]*)?"
    "(?:[ \\t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)"
    "|(?:=)"
    ")$";

#define Y_INDENT 2
#define Y_WIDTH 80
#define Y_SIMPLE_KEY_MAX 128 /* longer keys are written as '? key' */

typedef struct yw {
    ctl_buf out;
    pcre2_code *re;
    pcre2_match_data *md;
    int literal_multiline; /* `serve status`: multi-line strings as | blocks (Ray's str_presenter) */
    int strip_ansi;        /* `serve status`: ANSI escapes removed from values */
    int failed;
    /* emitter state, as PyYAML's Emitter has it */
    long indent; /* -1: none yet */
    int flow_level;
    size_t column;
    int whitespace, indention, open_ended;
    int root_context, mapping_context, simple_key_context;
} yw;

/* A scalar as code points, with PyYAML's analysis of it. */
typedef struct yscalar {
    uint32_t *s;
    size_t n;
    int plain_implicit; /* plain would read back as a string */
    int literal;        /* '|' requested */
    int empty, multiline, allow_flow_plain, allow_block_plain, allow_single_quoted, allow_block;
} yscalar;

static int y_init(yw *y, int literal_multiline, int strip) {
    memset(y, 0, sizeof *y);
    int ec;
    PCRE2_SIZE eo;
    y->re = pcre2_compile((PCRE2_SPTR)YAML_IMPLICIT_RE, PCRE2_ZERO_TERMINATED, 0, &ec, &eo, NULL);
    if (!y->re) return -1;
    if (!(y->md = pcre2_match_data_create_from_pattern(y->re, NULL))) {
        pcre2_code_free(y->re);
        return -1;
    }
    y->literal_multiline = literal_multiline;
    y->strip_ansi = strip;
    return 0;
}

static void y_free(yw *y) {
    pcre2_match_data_free(y->md);
    pcre2_code_free(y->re);
    buf_free(&y->out);
}

static int is_break(uint32_t c) { return c == '\n' || c == 0x85 || c == 0x2028 || c == 0x2029; }
static int is_blank_or_break(uint32_t c) { /* PyYAML's '\0 \t\r\n\x85\u2028\u2029' */
    return c == 0 || c == ' ' || c == '\t' || c == '\r' || is_break(c);
}

static void put_cp(yw *y, uint32_t c) {
    char b[4];
    size_t n;
    if (c < 0x80) b[0] = (char)c, n = 1;
    else if (c < 0x800) b[0] = (char)(0xc0 | c >> 6), b[1] = (char)(0x80 | (c & 0x3f)), n = 2;
    else if (c < 0x10000)
        b[0] = (char)(0xe0 | c >> 12), b[1] = (char)(0x80 | ((c >> 6) & 0x3f)), b[2] = (char)(0x80 | (c & 0x3f)), n = 3;
    else
        b[0] = (char)(0xf0 | c >> 18), b[1] = (char)(0x80 | ((c >> 12) & 0x3f)), b[2] = (char)(0x80 | ((c >> 6) & 0x3f)),
        b[3] = (char)(0x80 | (c & 0x3f)), n = 4;
    buf_add(&y->out, b, n);
}

/* s[start, end) written as is; the column moves by the code points. */
static void put_span(yw *y, const yscalar *sc, size_t start, size_t end) {
    for (size_t i = start; i < end; i++) put_cp(y, sc->s[i]);
    y->column += end - start;
}

static void w_indicator(yw *y, const char *ind, int need_ws, int ws, int indention) {
    if (!y->whitespace && need_ws) {
        buf_puts(&y->out, " ");
        y->column++;
    }
    buf_puts(&y->out, ind);
    y->column += strlen(ind);
    y->whitespace = ws;
    y->indention = y->indention && indention;
    y->open_ended = 0;
}

static void w_line_break(yw *y, uint32_t br) {
    put_cp(y, br ? br : '\n');
    y->whitespace = 1;
    y->indention = 1;
    y->column = 0;
}

static void w_indent(yw *y) {
    size_t ind = y->indent < 0 ? 0 : (size_t)y->indent;
    if (!y->indention || y->column > ind || (y->column == ind && !y->whitespace)) w_line_break(y, 0);
    if (y->column < ind) {
        y->whitespace = 1;
        for (; y->column < ind; y->column++) buf_puts(&y->out, " ");
    }
}

/* PyYAML's Emitter.increase_indent; returns the indent to restore. */
static long increase_indent(yw *y, int flow, int indentless) {
    long saved = y->indent;
    if (y->indent < 0) y->indent = flow ? Y_INDENT : 0;
    else if (!indentless) y->indent += Y_INDENT;
    return saved;
}

/* Decodes UTF-8 (valid: it came out of jansson) into sc->s. */
static int decode_utf8(const char *p, size_t n, yscalar *sc) {
    sc->s = malloc((n + 1) * sizeof *sc->s);
    if (!sc->s) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)p[i];
        uint32_t cp;
        size_t w;
        if (c < 0x80) cp = c, w = 1;
        else if (c >> 5 == 6 && i + 1 < n) cp = (uint32_t)(c & 0x1f) << 6 | (p[i + 1] & 0x3f), w = 2;
        else if (c >> 4 == 14 && i + 2 < n)
            cp = (uint32_t)(c & 0x0f) << 12 | (uint32_t)(p[i + 1] & 0x3f) << 6 | (p[i + 2] & 0x3f), w = 3;
        else if (c >> 3 == 30 && i + 3 < n)
            cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(p[i + 1] & 0x3f) << 12 | (uint32_t)(p[i + 2] & 0x3f) << 6 |
                 (p[i + 3] & 0x3f),
            w = 4;
        else cp = 0xfffd, w = 1;
        sc->s[k++] = cp;
        i += w;
    }
    sc->n = k;
    return 0;
}

/* PyYAML's Emitter.analyze_scalar (allow_unicode=False). */
static void analyze(yscalar *sc) {
    const uint32_t *s = sc->s;
    size_t n = sc->n;
    if (n == 0) {
        sc->empty = 1;
        sc->multiline = 0;
        sc->allow_flow_plain = 0;
        sc->allow_block_plain = 1;
        sc->allow_single_quoted = 1;
        sc->allow_block = 0;
        return;
    }
    int block_ind = 0, flow_ind = 0, line_breaks = 0, special = 0;
    int leading_space = 0, leading_break = 0, trailing_space = 0, trailing_break = 0, break_space = 0,
        space_break = 0;
    if (n >= 3 && ((s[0] == '-' && s[1] == '-' && s[2] == '-') || (s[0] == '.' && s[1] == '.' && s[2] == '.')))
        block_ind = flow_ind = 1;
    int preceded_ws = 1, followed_ws = n == 1 || is_blank_or_break(s[1]), prev_space = 0, prev_break = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t ch = s[i];
        if (i == 0) {
            if (ch < 0x80 && strchr("#,[]{}&*!|>'\"%@`", (int)ch) && ch) flow_ind = block_ind = 1;
            if (ch == '?' || ch == ':') {
                flow_ind = 1;
                if (followed_ws) block_ind = 1;
            }
            if (ch == '-' && followed_ws) flow_ind = block_ind = 1;
        } else {
            if (ch < 0x80 && ch && strchr(",?[]{}", (int)ch)) flow_ind = 1;
            if (ch == ':') {
                flow_ind = 1;
                if (followed_ws) block_ind = 1;
            }
            if (ch == '#' && preceded_ws) flow_ind = block_ind = 1;
        }
        if (is_break(ch)) line_breaks = 1;
        if (!(ch == '\n' || (ch >= 0x20 && ch <= 0x7e))) special = 1; /* unicode too: allow_unicode=False */
        if (ch == ' ') {
            if (i == 0) leading_space = 1;
            if (i == n - 1) trailing_space = 1;
            if (prev_break) break_space = 1;
            prev_space = 1;
            prev_break = 0;
        } else if (is_break(ch)) {
            if (i == 0) leading_break = 1;
            if (i == n - 1) trailing_break = 1;
            if (prev_space) space_break = 1;
            prev_space = 0;
            prev_break = 1;
        } else {
            prev_space = prev_break = 0;
        }
        preceded_ws = is_blank_or_break(ch);
        followed_ws = i + 2 >= n || is_blank_or_break(s[i + 2]);
    }
    int flow_plain = 1, block_plain = 1, single = 1, block = 1;
    if (leading_space || leading_break || trailing_space || trailing_break) flow_plain = block_plain = 0;
    if (trailing_space) block = 0;
    if (break_space) flow_plain = block_plain = single = 0;
    if (space_break || special) flow_plain = block_plain = single = block = 0;
    if (line_breaks) flow_plain = block_plain = 0;
    if (flow_ind) flow_plain = 0;
    if (block_ind) block_plain = 0;
    sc->empty = 0;
    sc->multiline = line_breaks;
    sc->allow_flow_plain = flow_plain;
    sc->allow_block_plain = block_plain;
    sc->allow_single_quoted = single;
    sc->allow_block = block;
}

/* PyYAML's choose_scalar_style: 'p' plain, '|', '\'' or '"'. */
static char choose_style(const yw *y, const yscalar *sc) {
    if (!sc->literal && sc->plain_implicit) {
        if (!(y->simple_key_context && (sc->empty || sc->multiline)) &&
            ((y->flow_level && sc->allow_flow_plain) || (!y->flow_level && sc->allow_block_plain)))
            return 'p';
    }
    if (sc->literal) {
        if (!y->flow_level && !y->simple_key_context && sc->allow_block) return '|';
        return '"';
    }
    if (sc->allow_single_quoted && !(y->simple_key_context && sc->multiline)) return '\'';
    return '"';
}

static void w_plain(yw *y, const yscalar *sc, int split) {
    if (y->root_context) y->open_ended = 1;
    if (!sc->n) return;
    if (!y->whitespace) {
        buf_puts(&y->out, " ");
        y->column++;
    }
    y->whitespace = y->indention = 0;
    int spaces = 0, breaks = 0;
    size_t start = 0;
    for (size_t end = 0; end <= sc->n; end++) {
        int none = end == sc->n;
        uint32_t ch = none ? 0 : sc->s[end];
        if (spaces) {
            if (none || ch != ' ') {
                if (start + 1 == end && y->column > Y_WIDTH && split) {
                    w_indent(y);
                    y->whitespace = y->indention = 0;
                } else {
                    put_span(y, sc, start, end);
                }
                start = end;
            }
        } else if (breaks) {
            if (none || !is_break(ch)) {
                if (sc->s[start] == '\n') w_line_break(y, 0);
                for (size_t i = start; i < end; i++) w_line_break(y, sc->s[i] == '\n' ? 0 : sc->s[i]);
                w_indent(y);
                y->whitespace = y->indention = 0;
                start = end;
            }
        } else if (none || ch == ' ' || is_break(ch)) {
            put_span(y, sc, start, end);
            start = end;
        }
        if (!none) {
            spaces = ch == ' ';
            breaks = is_break(ch);
        }
    }
}

static void w_single_quoted(yw *y, const yscalar *sc, int split) {
    w_indicator(y, "'", 1, 0, 0);
    int spaces = 0, breaks = 0;
    size_t start = 0;
    for (size_t end = 0; end <= sc->n; end++) {
        int none = end == sc->n;
        uint32_t ch = none ? 0 : sc->s[end];
        if (spaces) {
            if (none || ch != ' ') {
                if (start + 1 == end && y->column > Y_WIDTH && split && start != 0 && end != sc->n) w_indent(y);
                else put_span(y, sc, start, end);
                start = end;
            }
        } else if (breaks) {
            if (none || !is_break(ch)) {
                if (sc->s[start] == '\n') w_line_break(y, 0);
                for (size_t i = start; i < end; i++) w_line_break(y, sc->s[i] == '\n' ? 0 : sc->s[i]);
                w_indent(y);
                start = end;
            }
        } else if (none || ch == ' ' || is_break(ch) || ch == '\'') {
            if (start < end) {
                put_span(y, sc, start, end);
                start = end;
            }
        }
        if (!none && ch == '\'') {
            buf_puts(&y->out, "''");
            y->column += 2;
            start = end + 1;
        }
        if (!none) {
            spaces = ch == ' ';
            breaks = is_break(ch);
        }
    }
    w_indicator(y, "'", 0, 0, 0);
}

static void w_double_quoted(yw *y, const yscalar *sc, int split) {
    w_indicator(y, "\"", 1, 0, 0);
    size_t start = 0;
    for (size_t end = 0; end <= sc->n; end++) {
        int none = end == sc->n;
        uint32_t ch = none ? 0 : sc->s[end];
        if (none || ch == '"' || ch == '\\' || ch == 0x85 || ch == 0x2028 || ch == 0x2029 || ch == 0xfeff ||
            !(ch >= 0x20 && ch <= 0x7e)) {
            if (start < end) {
                put_span(y, sc, start, end);
                start = end;
            }
            if (!none) {
                char e[16];
                const char *rep = NULL;
                switch (ch) {
                case 0: rep = "0"; break;
                case 0x07: rep = "a"; break;
                case 0x08: rep = "b"; break;
                case 0x09: rep = "t"; break;
                case 0x0a: rep = "n"; break;
                case 0x0b: rep = "v"; break;
                case 0x0c: rep = "f"; break;
                case 0x0d: rep = "r"; break;
                case 0x1b: rep = "e"; break;
                case '"': rep = "\""; break;
                case '\\': rep = "\\"; break;
                case 0x85: rep = "N"; break;
                case 0xa0: rep = "_"; break;
                case 0x2028: rep = "L"; break;
                case 0x2029: rep = "P"; break;
                }
                if (rep) snprintf(e, sizeof e, "\\%s", rep);
                else if (ch <= 0xff) snprintf(e, sizeof e, "\\x%02X", (unsigned)ch);
                else if (ch <= 0xffff) snprintf(e, sizeof e, "\\u%04X", (unsigned)ch);
                else snprintf(e, sizeof e, "\\U%08X", (unsigned)ch);
                buf_puts(&y->out, e);
                y->column += strlen(e);
                start = end + 1;
            }
        }
        if (end > 0 && end + 1 < sc->n && (ch == ' ' || start >= end) && y->column + (end - start) > Y_WIDTH &&
            split) {
            /* text[start:end] + '\\' (start may be past end right after an escape: nothing then) */
            if (start < end) {
                put_span(y, sc, start, end);
                start = end;
            }
            buf_puts(&y->out, "\\");
            y->column++;
            w_indent(y);
            y->whitespace = y->indention = 0;
            if (sc->s[start] == ' ') {
                buf_puts(&y->out, "\\");
                y->column++;
            }
        }
    }
    w_indicator(y, "\"", 0, 0, 0);
}

static void w_literal(yw *y, const yscalar *sc) {
    char hints[4] = "|";
    size_t h = 1;
    if (sc->n) {
        uint32_t first = sc->s[0], last = sc->s[sc->n - 1];
        if (first == ' ' || is_break(first)) hints[h++] = '0' + Y_INDENT;
        if (!is_break(last)) hints[h++] = '-';
        else if (sc->n == 1 || is_break(sc->s[sc->n - 2])) hints[h++] = '+';
    }
    hints[h] = 0;
    w_indicator(y, hints, 1, 0, 0);
    if (hints[h - 1] == '+') y->open_ended = 1;
    w_line_break(y, 0);
    int breaks = 1;
    size_t start = 0;
    for (size_t end = 0; end <= sc->n; end++) {
        int none = end == sc->n;
        uint32_t ch = none ? 0 : sc->s[end];
        if (breaks) {
            if (none || !is_break(ch)) {
                for (size_t i = start; i < end; i++) w_line_break(y, sc->s[i] == '\n' ? 0 : sc->s[i]);
                if (!none) w_indent(y);
                start = end;
            }
        } else if (none || is_break(ch)) {
            for (size_t i = start; i < end; i++) put_cp(y, sc->s[i]);
            if (none) w_line_break(y, 0);
            start = end;
        }
        if (!none) breaks = is_break(ch);
    }
}

/* Python's str.splitlines() count > 1 (Ray's str_presenter test): line
 * boundaries are \n \r \r\n \v \f \x1c \x1d \x1e U+0085 U+2028 U+2029. */
static int more_than_one_line(const yscalar *sc) {
    size_t seps = 0;
    int text_after = 0;
    for (size_t i = 0; i < sc->n; i++) {
        uint32_t c = sc->s[i];
        if (c == '\r' && i + 1 < sc->n && sc->s[i + 1] == '\n') i++;
        if (c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1e) || c == 0x85 || c == 0x2028 ||
            c == 0x2029) {
            seps++;
            text_after = 0;
        } else {
            text_after = 1;
        }
    }
    return seps + (size_t)text_after > 1;
}

/* Ray's remove_ansi_escape_sequences: ESC followed by one of @-Z \ ] ^ _, or
 * by a CSI sequence '[' [0-?]* [ -/]* [@-~]. In place. */
static void strip_ansi(yscalar *sc) {
    uint32_t *s = sc->s;
    size_t n = sc->n, o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == 0x1b && i + 1 < n) {
            uint32_t c = s[i + 1];
            if ((c >= '@' && c <= 'Z') || (c >= '\\' && c <= '_')) {
                i += 2;
                continue;
            }
            if (c == '[') {
                size_t j = i + 2;
                while (j < n && s[j] >= 0x30 && s[j] <= 0x3f) j++;
                while (j < n && s[j] >= 0x20 && s[j] <= 0x2f) j++;
                if (j < n && s[j] >= 0x40 && s[j] <= 0x7e) {
                    i = j + 1;
                    continue;
                }
            }
        }
        s[o++] = s[i++];
    }
    sc->n = o;
}

/* Python's repr(float), then PyYAML's represent_float (".0" before an
 * exponent without a dot; .inf, -.inf, .nan). */
static void py_float(double x, char *out, size_t cap) {
    if (isnan(x)) {
        snprintf(out, cap, ".nan");
        return;
    }
    if (isinf(x)) {
        snprintf(out, cap, x > 0 ? ".inf" : "-.inf");
        return;
    }
    char e[48];
    for (int p = 0; p <= 17; p++) { /* the shortest digits that read back as x */
        snprintf(e, sizeof e, "%.*e", p, x);
        if (strtod(e, NULL) == x) break;
    }
    const char *q = e; /* [-]D[.DDD]e(+|-)XX */
    int neg = *q == '-';
    if (neg) q++;
    char digits[24];
    size_t nd = 0;
    for (; *q && *q != 'e'; q++)
        if (*q != '.' && nd < sizeof digits - 1) digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp10 = *q ? atoi(q + 1) : 0;
    int decpt = exp10 + 1; /* x = 0.DIGITS * 10^decpt */
    static const char zeros[] = "0000000000000000";
    char fixed[64];
    if (decpt > -4 && decpt <= 16) { /* Python's repr switches to an exponent outside this range */
        if (decpt <= 0) snprintf(fixed, sizeof fixed, "0.%.*s%s", -decpt, zeros, digits);
        else if ((size_t)decpt >= nd) snprintf(fixed, sizeof fixed, "%s%.*s.0", digits, decpt - (int)nd, zeros);
        else snprintf(fixed, sizeof fixed, "%.*s.%s", decpt, digits, digits + decpt);
    } else {
        snprintf(fixed, sizeof fixed, "%c.%se%c%02d", digits[0], nd > 1 ? digits + 1 : "0", exp10 < 0 ? '-' : '+',
                 abs(exp10));
    }
    snprintf(out, cap, "%s%s", neg ? "-" : "", fixed);
}

static void emit_node(yw *y, const json_t *v, int root, int mapping, int simple_key);

/* A scalar node: text with its representer facts. */
static void emit_scalar(yw *y, yscalar *sc) {
    analyze(sc);
    char style = choose_style(y, sc);
    long saved = increase_indent(y, 1, 0);
    int split = !y->simple_key_context;
    switch (style) {
    case '"': w_double_quoted(y, sc, split); break;
    case '\'': w_single_quoted(y, sc, split); break;
    case '|': w_literal(y, sc); break;
    default: w_plain(y, sc, split); break;
    }
    y->indent = saved;
}

/* A JSON scalar as PyYAML represents it; is_value: not a mapping key. */
static int make_scalar(yw *y, const json_t *v, const char *key, int is_value, yscalar *sc) {
    memset(sc, 0, sizeof *sc);
    char num[80];
    const char *text;
    size_t len;
    int is_str = 0;
    if (key) text = key, len = strlen(key), is_str = 1;
    else switch (json_typeof(v)) {
        case JSON_STRING: text = json_string_value(v), len = json_string_length(v), is_str = 1; break;
        case JSON_INTEGER:
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            text = num, len = strlen(num);
            break;
        case JSON_REAL: py_float(json_real_value(v), num, sizeof num), text = num, len = strlen(num); break;
        case JSON_TRUE: text = "true", len = 4; break;
        case JSON_FALSE: text = "false", len = 5; break;
        default: text = "null", len = 4; break;
        }
    if (decode_utf8(text, len, sc)) return -1;
    if (!is_str) {
        sc->plain_implicit = 1; /* int/float/bool/null read back as themselves */
        return 0;
    }
    if (y->strip_ansi && is_value) strip_ansi(sc);
    /* the resolver sees the (stripped) text: re-encode for the match */
    yw tmp = {.out = {0}};
    for (size_t i = 0; i < sc->n; i++) put_cp(&tmp, sc->s[i]);
    const char *t = tmp.out.p ? tmp.out.p : "";
    sc->plain_implicit = pcre2_match(y->re, (PCRE2_SPTR)t, tmp.out.n, 0, 0, y->md, NULL) < 0;
    buf_free(&tmp.out);
    if (y->literal_multiline && more_than_one_line(sc)) sc->literal = 1;
    return 0;
}

static void emit_node(yw *y, const json_t *v, int root, int mapping, int simple_key) {
    if (y->failed) return;
    y->root_context = root;
    y->mapping_context = mapping;
    y->simple_key_context = simple_key;
    if (json_is_object(v) || json_is_array(v)) {
        int obj = json_is_object(v);
        size_t size = obj ? json_object_size(v) : json_array_size(v);
        if (size == 0) { /* PyYAML writes empty collections in flow style */
            w_indicator(y, obj ? "{" : "[", 1, 1, 0);
            y->flow_level++;
            long saved = increase_indent(y, 1, 0);
            y->indent = saved;
            y->flow_level--;
            w_indicator(y, obj ? "}" : "]", 0, 0, 0);
            return;
        }
        if (!obj) {
            long saved = increase_indent(y, 0, y->mapping_context && !y->indention);
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) {
                w_indent(y);
                w_indicator(y, "-", 1, 0, 1);
                emit_node(y, x, 0, 0, 0);
            }
            y->indent = saved;
            return;
        }
        long saved = increase_indent(y, 0, 0);
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) {
            w_indent(y);
            yscalar key;
            if (make_scalar(y, NULL, k, 0, &key)) {
                y->failed = 1;
                return;
            }
            analyze(&key);
            int simple = key.n < Y_SIMPLE_KEY_MAX && !key.empty && !key.multiline;
            if (simple) {
                y->root_context = 0;
                y->mapping_context = 1;
                y->simple_key_context = 1;
                emit_scalar(y, &key);
                free(key.s);
                w_indicator(y, ":", 0, 0, 0);
            } else {
                w_indicator(y, "?", 1, 0, 1);
                y->root_context = 0;
                y->mapping_context = 1;
                y->simple_key_context = 0;
                emit_scalar(y, &key);
                free(key.s);
                w_indent(y);
                w_indicator(y, ":", 1, 0, 1);
            }
            emit_node(y, x, 0, 1, 0);
        }
        y->indent = saved;
        return;
    }
    yscalar sc;
    if (make_scalar(y, v, NULL, 1, &sc)) {
        y->failed = 1;
        return;
    }
    emit_scalar(y, &sc);
    free(sc.s);
}

/* One YAML document (PyYAML's safe_dump of v) appended to y->out. */
static int y_document(yw *y, const json_t *v) {
    y->indent = -1;
    y->flow_level = 0;
    y->column = 0;
    y->whitespace = y->indention = 1;
    y->open_ended = 0;
    emit_node(y, v, 1, 0, 0);
    w_indent(y); /* document end */
    if (y->open_ended) { /* stream end after an open-ended scalar */
        w_indicator(y, "...", 1, 0, 0);
        w_indent(y);
    }
    return y->failed || y->out.failed ? -1 : 0;
}

/* v as YAML on stdout. Returns 0 or 1. */
static int print_yaml(const char *cmd, const json_t *v, int status_style) {
    yw y;
    if (y_init(&y, status_style, status_style)) {
        fprintf(stderr, "cserve %s: out of memory\n", cmd);
        return 1;
    }
    int rc = 0;
    if (y_document(&y, v)) {
        fprintf(stderr, "cserve %s: out of memory while writing YAML\n", cmd);
        rc = 1;
    } else {
        fwrite(y.out.p, 1, y.out.n, stdout);
    }
    y_free(&y);
    return rc;
}

/* ------------------------------------------------------------------ deploy */

static void usage_deploy(FILE *f) {
    fprintf(f, "usage: cserve deploy [-a URL] FILE\n\n"
               "Deploys the Serve config in FILE (YAML or JSON, Ray Serve's schema, or a KubeRay RayService\n"
               "manifest whose spec.serveConfigV2 holds it) to a running server: a full replace, so\n"
               "applications missing from FILE are deleted. The file is checked here first: a schema error\n"
               "is reported with file:line and nothing is sent. The server applies the config\n"
               "asynchronously; follow it with `cserve status`.\n\n");
    usage_common(f);
}

/* Parses -a/-h (and -y / -n for the commands that have them). */
typedef struct ctl_opts {
    const char *address, *name;
    int yes;
} ctl_opts;

static int parse_opts(int argc, char **argv, const char *shortopts, ctl_opts *o, void (*usage)(FILE *)) {
    static const struct option opts[] = {{"address", required_argument, 0, 'a'},
                                         {"name", required_argument, 0, 'n'},
                                         {"yes", no_argument, 0, 'y'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
        if (c != 'h' && c != '?' && !strchr(shortopts, c)) c = '?'; /* a long option this command lacks */
        switch (c) {
        case 'a': o->address = optarg; break;
        case 'n': o->name = optarg; break;
        case 'y': o->yes = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    return -1; /* go on */
}

int cs_cmd_deploy(int argc, char **argv) {
    ctl_opts o;
    int rc = parse_opts(argc, argv, "a:h", &o, usage_deploy);
    if (rc >= 0) return rc;
    if (optind != argc - 1) {
        fprintf(stderr, "cserve deploy: exactly one FILE is required\n");
        usage_deploy(stderr);
        return 2;
    }
    const char *path = argv[optind];
    ctl_client c;
    if ((rc = ctl_client_init(&c, "deploy", o.address))) return rc;
    cs_err err = {{0}};
    cs_scfg *cfg = NULL;
    if (cs_scfg_load_file(&cfg, path, &err)) {
        fprintf(stderr, "cserve deploy: %s\n", err.msg);
        return 2;
    }
    /* Ray's CLI validates only the schema; what the server cannot build
     * shows up as DEPLOY_FAILED. Say so now rather than after a status. */
    for (size_t i = 0; i < cfg->n_apps; i++)
        if (cfg->apps[i].error[0])
            fprintf(stderr, "cserve deploy: warning: application '%s' will fail to deploy: %s\n", cfg->apps[i].name,
                    cfg->apps[i].error);
    char *body = json_dumps(cfg->doc, JSON_COMPACT);
    cs_scfg_free(cfg);
    if (!body) {
        fprintf(stderr, "cserve deploy: cannot encode the config as JSON\n");
        return 1;
    }
    ctl_buf resp = {0};
    rc = ctl_call(&c, "PUT", body, &resp);
    free(body);
    buf_free(&resp);
    if (rc) return rc;
    printf("\nSent deploy request successfully.\n"
           " * Use `cserve status` to check applications' statuses.\n"
           " * Use `cserve config` to see the current application config(s).\n\n");
    return 0;
}

/* ------------------------------------------------------------------ status */

static void usage_status(FILE *f) {
    fprintf(f, "usage: cserve status [-a URL] [-n APP]\n\n"
               "Prints the status of every application and deployment as YAML, as `serve status` does:\n"
               "proxies {node: STATUS}, applications {name: {status, message, last_deployed_time_s,\n"
               "deployments {name: {status, status_trigger, replica_states {STATE: n}, message}}}},\n"
               "target_capacity.\n"
               "Applications: NOT_STARTED, DEPLOYING, DEPLOY_FAILED, RUNNING, UNHEALTHY, DELETING.\n"
               "Deployments: UPDATING, HEALTHY, UNHEALTHY, DEPLOY_FAILED, UPSCALING, DOWNSCALING.\n\n"
               "  -n, --name APP      only this application's status (exit 1 when it does not exist)\n");
    usage_common(f);
}

typedef struct shape_err {
    char where[640];
} shape_err;

/* Field `key` of obj as a string/number; on a wrong shape records where. */
static json_t *need_str(const json_t *obj, const char *key, const char *ctx, shape_err *se) {
    json_t *s = json_object_get(obj, key);
    if (json_is_string(s)) return s;
    if (!se->where[0]) snprintf(se->where, sizeof se->where, "%s.%s: expected a string", ctx, key);
    return NULL;
}

/* dst[key] = s (a string of the answer), "" when missing (an error is recorded then). */
static void put_str(json_t *dst, const char *key, json_t *s) {
    json_object_set_new(dst, key, s ? json_incref(s) : json_string(""));
}

static json_t *need_real(const json_t *obj, const char *key, const char *ctx, shape_err *se) {
    json_t *v = json_object_get(obj, key);
    if (json_is_number(v)) return json_real(json_number_value(v)); /* a float field in Ray's schema */
    if (!se->where[0]) snprintf(se->where, sizeof se->where, "%s.%s: expected a number", ctx, key);
    return NULL;
}

static const json_t *need_obj(const json_t *obj, const char *key, const char *ctx, shape_err *se) {
    json_t *v = json_object_get(obj, key);
    if (!json_is_object(v) && !se->where[0])
        snprintf(se->where, sizeof se->where, "%s.%s: expected an object", ctx, key);
    return json_is_object(v) ? v : NULL;
}

/* ServeInstanceDetails._get_status(): the document `serve status` prints. */
static json_t *status_doc(const json_t *d, shape_err *se) {
    json_t *out = json_object(), *proxies = json_object(), *apps = json_object();
    json_object_set_new(out, "proxies", proxies);
    json_object_set_new(out, "applications", apps);
    const char *k;
    json_t *x;
    char ctx[200];
    const json_t *jp = need_obj(d, "proxies", "answer", se), *ja = need_obj(d, "applications", "answer", se);
    if (jp) json_object_foreach((json_t *)jp, k, x) {
            snprintf(ctx, sizeof ctx, "proxies[%.64s]", k);
            put_str(proxies, k, need_str(x, "status", ctx, se));
        }
    if (ja) json_object_foreach((json_t *)ja, k, x) {
            snprintf(ctx, sizeof ctx, "applications[%.64s]", k);
            json_t *st = need_str(x, "status", ctx, se), *msg = need_str(x, "message", ctx, se);
            json_t *t = need_real(x, "last_deployed_time_s", ctx, se), *deps = json_object();
            const json_t *jd = need_obj(x, "deployments", ctx, se);
            const char *dk;
            json_t *dx;
            if (jd) json_object_foreach((json_t *)jd, dk, dx) {
                    char dctx[400];
                    snprintf(dctx, sizeof dctx, "%s.deployments[%.64s]", ctx, dk);
                    json_t *ds = need_str(dx, "status", dctx, se), *dt = need_str(dx, "status_trigger", dctx, se),
                           *dm = need_str(dx, "message", dctx, se);
                    json_t *states = json_object(), *reps = json_object_get(dx, "replicas"), *r;
                    size_t i;
                    if (!json_is_array(reps) && !se->where[0])
                        snprintf(se->where, sizeof se->where, "%s.replicas: expected an array", dctx);
                    json_array_foreach(reps, i, r) { /* Counter(state) in first-seen order */
                        const char *rs = json_string_value(need_str(r, "state", dctx, se));
                        if (!rs) continue;
                        json_t *n = json_object_get(states, rs);
                        json_object_set_new(states, rs, json_integer(n ? json_integer_value(n) + 1 : 1));
                    }
                    json_t *dep = json_object();
                    put_str(dep, "status", ds);
                    put_str(dep, "status_trigger", dt);
                    json_object_set_new(dep, "replica_states", states);
                    put_str(dep, "message", dm);
                    json_object_set_new(deps, dk, dep);
                }
            json_t *app = json_object();
            put_str(app, "status", st);
            put_str(app, "message", msg);
            json_object_set_new(app, "last_deployed_time_s", t ? t : json_null());
            json_object_set_new(app, "deployments", deps);
            json_object_set_new(apps, k, app);
        }
    json_t *cap = json_object_get(d, "target_capacity");
    if (json_is_number(cap)) json_object_set_new(out, "target_capacity", json_real(json_number_value(cap)));
    else if (!cap || json_is_null(cap)) json_object_set_new(out, "target_capacity", json_null());
    else if (!se->where[0]) snprintf(se->where, sizeof se->where, "answer.target_capacity: expected a number or null");
    if (se->where[0]) {
        json_decref(out);
        return NULL;
    }
    return out;
}

int cs_cmd_status(int argc, char **argv) {
    ctl_opts o;
    int rc = parse_opts(argc, argv, "a:n:h", &o, usage_status);
    if (rc >= 0) return rc;
    if (optind != argc) {
        fprintf(stderr, "cserve status: unexpected argument '%s'\n", argv[optind]);
        usage_status(stderr);
        return 2;
    }
    ctl_client c;
    if ((rc = ctl_client_init(&c, "status", o.address))) return rc;
    json_t *d = NULL;
    if ((rc = ctl_get_details(&c, &d))) return rc;
    shape_err se = {{0}};
    json_t *st = status_doc(d, &se);
    json_decref(d);
    if (!st) {
        fprintf(stderr, "cserve status: unexpected answer from the admin API at %s: %s\n", c.address, se.where);
        return 1;
    }
    if (!o.name) {
        rc = print_yaml("status", st, 1);
    } else {
        json_t *app = json_object_get(json_object_get(st, "applications"), o.name);
        if (!app) {
            fprintf(stderr, "cserve status: Application \"%s\" does not exist.\n", o.name);
            rc = 1;
        } else {
            rc = print_yaml("status", app, 1);
        }
    }
    json_decref(st);
    return rc;
}

/* ------------------------------------------------------------------ config */

static void usage_config(FILE *f) {
    fprintf(f, "usage: cserve config [-a URL] [-n APP]\n\n"
               "Prints the config each application was deployed with (its deployed_app_config) as YAML,\n"
               "one document per application separated by ---, as `serve config` does.\n\n"
               "  -n, --name APP      only this application's config (exit 1 when it has none)\n");
    usage_common(f);
}

/* `serve config` prints ServeApplicationSchema(...).dict(exclude_unset=True):
 * the fields in the schema's order, float fields as floats. Fields the
 * schema does not know (cserve's extensions) follow, as they were. */
static const char *const APP_FIELDS[] = {"name", "route_prefix", "import_path", "runtime_env", "host",
                                         "port", "deployments",  "args",        "logging_config", NULL};
static const char *const DEP_FIELDS[] = {"name",
                                         "num_replicas",
                                         "max_ongoing_requests",
                                         "max_queued_requests",
                                         "user_config",
                                         "autoscaling_config",
                                         "graceful_shutdown_wait_loop_s",
                                         "graceful_shutdown_timeout_s",
                                         "health_check_period_s",
                                         "health_check_timeout_s",
                                         "ray_actor_options",
                                         "placement_group_bundles",
                                         "placement_group_strategy",
                                         "max_replicas_per_node",
                                         "logging_config",
                                         "request_router_config",
                                         NULL};
static const char *const DEP_FLOATS[] = {"graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s",
                                         "health_check_period_s", "health_check_timeout_s", NULL};
static const char *const RAO_FIELDS[] = {"runtime_env", "num_cpus", "num_gpus", "memory", "resources",
                                         "accelerator_type", NULL};
static const char *const RAO_FLOATS[] = {"num_cpus", "num_gpus", "memory", NULL};
static const char *const LOG_FIELDS[] = {"encoding", "log_level", "logs_dir", "enable_access_log",
                                         "additional_log_standard_attrs", NULL};

static int in_list(const char *const *l, const char *k) {
    for (; l && *l; l++)
        if (strcmp(*l, k) == 0) return 1;
    return 0;
}

/* A new object: obj's fields, known ones first in `order`, integers of
 * `floats` fields as reals; the value of each field made by fix(key, value)
 * (a new reference). */
static json_t *reorder(const json_t *obj, const char *const *order, const char *const *floats,
                       json_t *(*fix)(const char *, json_t *)) {
    json_t *out = json_object();
    const char *k;
    json_t *v;
    for (const char *const *f = order; *f; f++) {
        if (!(v = json_object_get(obj, *f))) continue;
        json_t *nv = json_is_integer(v) && in_list(floats, *f) ? json_real((double)json_integer_value(v))
                     : fix                                     ? fix(*f, v)
                                                               : json_incref(v);
        json_object_set_new(out, *f, nv);
    }
    json_object_foreach((json_t *)obj, k, v) {
        if (!in_list(order, k)) json_object_set(out, k, v);
    }
    return out;
}

static json_t *fix_floats_dict(json_t *v) { /* Dict[str, float] */
    if (!json_is_object(v)) return json_incref(v);
    json_t *out = json_object(), *x;
    const char *k;
    json_object_foreach(v, k, x) json_object_set_new(
        out, k, json_is_integer(x) ? json_real((double)json_integer_value(x)) : json_incref(x));
    return out;
}

static json_t *fix_dep_field(const char *k, json_t *v) {
    if (strcmp(k, "ray_actor_options") == 0 && json_is_object(v)) return reorder(v, RAO_FIELDS, RAO_FLOATS, NULL);
    if (strcmp(k, "logging_config") == 0 && json_is_object(v)) return reorder(v, LOG_FIELDS, NULL, NULL);
    if (strcmp(k, "placement_group_bundles") == 0 && json_is_array(v)) {
        json_t *out = json_array(), *x;
        size_t i;
        json_array_foreach(v, i, x) json_array_append_new(out, fix_floats_dict(x));
        return out;
    }
    return json_incref(v);
}

static json_t *fix_app_field(const char *k, json_t *v) {
    if (strcmp(k, "logging_config") == 0 && json_is_object(v)) return reorder(v, LOG_FIELDS, NULL, NULL);
    if (strcmp(k, "deployments") == 0 && json_is_array(v)) {
        json_t *out = json_array(), *x;
        size_t i;
        json_array_foreach(v, i, x) json_array_append_new(
            out, json_is_object(x) ? reorder(x, DEP_FIELDS, DEP_FLOATS, fix_dep_field) : json_incref(x));
        return out;
    }
    return json_incref(v);
}

/* One application's config as a YAML document appended to out. */
static int config_yaml(const json_t *cfg, ctl_buf *out) {
    json_t *norm = reorder(cfg, APP_FIELDS, NULL, fix_app_field);
    yw y;
    int rc = -1;
    if (!y_init(&y, 0, 0)) {
        if (y_document(&y, norm) == 0 && buf_add(out, y.out.p, y.out.n) == 0) rc = 0;
        y_free(&y);
    }
    json_decref(norm);
    return rc;
}

int cs_cmd_config(int argc, char **argv) {
    ctl_opts o;
    int rc = parse_opts(argc, argv, "a:n:h", &o, usage_config);
    if (rc >= 0) return rc;
    if (optind != argc) {
        fprintf(stderr, "cserve config: unexpected argument '%s'\n", argv[optind]);
        usage_config(stderr);
        return 2;
    }
    ctl_client c;
    if ((rc = ctl_client_init(&c, "config", o.address))) return rc;
    json_t *d = NULL;
    if ((rc = ctl_get_details(&c, &d))) return rc;
    json_t *apps = json_object_get(d, "applications");
    if (!json_is_object(apps)) {
        fprintf(stderr, "cserve config: unexpected answer from the admin API at %s: answer.applications: expected "
                        "an object\n", c.address);
        json_decref(d);
        return 1;
    }
    ctl_buf out = {0};
    const char *k;
    json_t *app;
    size_t n = 0;
    rc = 0;
    json_object_foreach(apps, k, app) {
        if (o.name && strcmp(k, o.name) != 0) continue;
        json_t *cfg = json_object_get(app, "deployed_app_config");
        if (!json_is_object(cfg)) continue;
        if (n++ > 0) buf_puts(&out, "\n---\n\n");
        if (config_yaml(cfg, &out)) {
            fprintf(stderr, "cserve config: cannot write the config of application '%s' as YAML\n", k);
            rc = 1;
            break;
        }
    }
    if (!rc && out.failed) {
        fprintf(stderr, "cserve config: out of memory\n");
        rc = 1;
    }
    if (!rc) {
        if (n > 0) fwrite(out.p, 1, out.n, stdout);
        else if (!o.name) puts("No configuration was found.");
        else {
            fprintf(stderr, "cserve config: No config has been deployed for application \"%s\".\n", o.name);
            rc = 1;
        }
    }
    buf_free(&out);
    json_decref(d);
    return rc;
}

/* ------------------------------------------------------------------ shutdown */

static void usage_shutdown(FILE *f) {
    fprintf(f, "usage: cserve shutdown [-a URL] [-y]\n\n"
               "Shuts down Serve on the server: every application is deleted (asynchronously). Asks for\n"
               "confirmation first unless -y is given; without a terminal to ask on, -y is required.\n\n"
               "  -y, --yes           do not ask for confirmation\n");
    usage_common(f);
}

/* Asks on the terminal. Returns 1 yes, 0 no (or end of input). */
static int confirm(const char *question) {
    char line[CTL_MAX_PROMPT_LINE];
    for (;;) {
        printf("%s [y/N]: ", question);
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) {
            putchar('\n');
            return 0;
        }
        line[strcspn(line, "\r\n")] = 0;
        if (strcasecmp(line, "y") == 0 || strcasecmp(line, "yes") == 0) return 1;
        if (!line[0] || strcasecmp(line, "n") == 0 || strcasecmp(line, "no") == 0) return 0;
        printf("Error: invalid input\n");
    }
}

int cs_cmd_shutdown(int argc, char **argv) {
    ctl_opts o;
    int rc = parse_opts(argc, argv, "a:yh", &o, usage_shutdown);
    if (rc >= 0) return rc;
    if (optind != argc) {
        fprintf(stderr, "cserve shutdown: unexpected argument '%s'\n", argv[optind]);
        usage_shutdown(stderr);
        return 2;
    }
    ctl_client c;
    if ((rc = ctl_client_init(&c, "shutdown", o.address))) return rc;
    if (!o.yes && !isatty(STDIN_FILENO)) {
        fprintf(stderr, "cserve shutdown: refusing to shut down without confirmation: standard input is not a "
                        "terminal (pass -y)\n");
        return 2;
    }
    /* Like `serve shutdown`: look first, so an unreachable or empty server
     * is reported before asking anything. */
    json_t *d = NULL;
    if ((rc = ctl_get_details(&c, &d))) return rc;
    json_t *node = json_object_get(json_object_get(d, "controller_info"), "node_id");
    json_t *apps = json_object_get(d, "applications");
    int running = json_is_string(node) || json_object_size(apps) > 0;
    json_decref(d);
    if (!running) {
        fprintf(stderr, "cserve shutdown: No Serve instance found running on the cluster at %s.\n", c.address);
        return 0;
    }
    if (!o.yes) {
        char q[CTL_MAX_URL + 200];
        snprintf(q, sizeof q,
                 "This will shut down Serve on the cluster at address \"%s\" and delete all applications there. "
                 "Do you want to continue?",
                 c.address);
        if (!confirm(q)) {
            fprintf(stderr, "Aborted!\n");
            return 1;
        }
    }
    ctl_buf resp = {0};
    rc = ctl_call(&c, "DELETE", NULL, &resp);
    buf_free(&resp);
    if (rc) return rc;
    puts("Sent shutdown request; applications will be deleted asynchronously.");
    return 0;
}
