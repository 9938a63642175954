/* Hugging Face Hub client: metadata by HEAD, downloads by GET with libcurl, the
 * huggingface_hub cache layout on disk. See hub.h for the contract.
 *
 * A pull has three phases so that a failure never leaves a half-made snapshot:
 *   1. HEAD every file (revision -> commit, ETag, size, download URL);
 *   2. make sure every blob is in blobs/ (download under the per-blob flock, resume,
 *      verify, fsync, rename);
 *   3. link snapshots/COMMIT/FILE -> ../../blobs/ETAG, write .no_exist and refs. */
#include "hub/hub.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "hub/sha256.h"

#define HUB_DEFAULT_ENDPOINT "https://huggingface.co"
#define HUB_USER_AGENT "cserve/0.1 (libcurl)"
#define REF_FILE_MAX 256          /* bytes read from refs/REVISION */
#define ERR_BODY_MAX 512          /* bytes kept of an error response body */
#define HDR_SHORT_MAX 256         /* X-Error-Message and friends (truncated) */
#define STALL_TIMEOUT_S 60L       /* abort a transfer slower than 1 byte/s for this long */
#define HEAD_TIMEOUT_S 60L        /* whole HEAD request */
#define BACKOFF_MAX_S 8
#define LOCK_REOPEN_MAX 100       /* lock file replaced under us this many times: give up */
#define PROGRESS_INTERVAL_S 0.1
#define PROGRESS_MAX_COLS 512     /* widest progress line drawn, whatever the terminal says */
#define PROGRESS_NAME_COLS 24     /* file name column (longer names are cut) */
#define PROGRESS_BAR_MAX 40
#define PROGRESS_BAR_MIN 5        /* narrower than this: no bar at all */
#define PROGRESS_BAR_ALIGNED_MIN 16 /* aligned columns only when the bar keeps this much room */
#define HASH_CHUNK (1 << 20)      /* bytes read at a time when hashing a partial download */
#define SMALL_FILE_MAX (64 << 20) /* a file kept in git, not LFS (the Hub's own cap is 10 MB) */

typedef struct hub_file {
    const char *name;
    int required;
} hub_file;

/* Small files first: when the big one fails, the rest is already cached for the retry. */
static const hub_file FILES[] = {
    {"config.json", 1}, {"generation_config.json", 0}, {"vocab.json", 1}, {"merges.txt", 1}, {"model.safetensors", 1},
};
#define N_FILES (sizeof FILES / sizeof *FILES)

/* ------------------------------------------------------------------ small helpers */

static int fmt_buf(char *out, size_t cap, cs_err *err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fmt_buf(char *out, size_t cap, cs_err *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) return cs_err_set(err, "path or URL longer than %zu bytes: %.120s...", cap, out);
    return 0;
}

static int copy_str(char *out, size_t cap, const char *s, cs_err *err) { return fmt_buf(out, cap, err, "%s", s); }

static int is_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return s[n] == '\0';
}

static int is_commit(const char *s) { return strlen(s) == CS_HUB_COMMIT_LEN && is_hex(s, CS_HUB_COMMIT_LEN); }

static int is_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

/* Text from the network in a message: printable ASCII only. */
static void sanitize(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) *s = '?';
}

/* mkdir -p; path is copied. */
static int mkdir_p(const char *path, cs_err *err) {
    char p[CS_HUB_PATH_MAX];
    if (copy_str(p, sizeof p, path, err)) return -1;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) return cs_err_set(err, "cannot create directory %s: %s", p, strerror(errno));
        *s = c;
        if (!c) break;
    }
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) return cs_err_set(err, "%s: not a directory", p);
    return 0;
}

static int mkdir_parent(const char *path, cs_err *err) {
    char p[CS_HUB_PATH_MAX];
    if (copy_str(p, sizeof p, path, err)) return -1;
    char *slash = strrchr(p, '/');
    if (!slash || slash == p) return 0;
    *slash = '\0';
    return mkdir_p(p, err);
}

/* Reads a small file into buf (NUL-terminated). 0 ok, 1 missing, -1 error or larger than cap-1. */
static int read_small(const char *path, char *buf, size_t cap, cs_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return 1;
        return cs_err_set(err, "cannot open %s: %s", path, strerror(errno));
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            close(fd);
            return cs_err_set(err, "cannot read %s: %s", path, strerror(errno));
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n >= cap) {
            close(fd);
            return cs_err_set(err, "%s: larger than %zu bytes", path, cap - 1);
        }
    }
    close(fd);
    buf[n] = '\0';
    return 0;
}

static void trim(char *s) {
    size_t n = strlen(s), i = 0;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) s[--n] = '\0';
    while (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') i++;
    memmove(s, s + i, n - i + 1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(unsigned s) {
    struct timespec ts = {.tv_sec = s, .tv_nsec = 0};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* A name unique to this process and thread-call, for temporary files next to their target. */
static void tmp_name(char *out, size_t cap, const char *path) {
    static atomic_uint counter;
    snprintf(out, cap, "%s.%ld.%u.tmp", path, (long)getpid(), atomic_fetch_add(&counter, 1));
}

/* ------------------------------------------------------------------ environment */

static const char *getenv_set(const char *name) {
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int expand_home(const char *in, char *out, size_t cap, cs_err *err) {
    if (in[0] == '~' && (in[1] == '/' || in[1] == '\0')) {
        const char *home = getenv_set("HOME");
        if (!home) return cs_err_set(err, "cannot expand '%s': HOME is not set", in);
        return fmt_buf(out, cap, err, "%s%s", home, in + 1);
    }
    return copy_str(out, cap, in, err);
}

static int env_true(const char *v) {
    return v && (strcasecmp(v, "1") == 0 || strcasecmp(v, "on") == 0 || strcasecmp(v, "yes") == 0 ||
                 strcasecmp(v, "true") == 0);
}

/* Tokens end up in an HTTP header: visible ASCII only (no CR/LF injection). */
static int token_ok(const char *t) {
    for (; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f) return 0;
    return 1;
}

int cs_hub_env_init(cs_hub_env *env, cs_err *err) {
    memset(env, 0, sizeof *env);
    env->progress = 1;
    char hf_home[CS_HUB_PATH_MAX] = "";
    const char *v;
    if ((v = getenv_set("HF_HOME"))) {
        if (expand_home(v, hf_home, sizeof hf_home, err)) return -1;
    } else if ((v = getenv_set("XDG_CACHE_HOME"))) {
        char x[CS_HUB_PATH_MAX];
        if (expand_home(v, x, sizeof x, err) || fmt_buf(hf_home, sizeof hf_home, err, "%s/huggingface", x)) return -1;
    } else if ((v = getenv_set("HOME"))) {
        if (fmt_buf(hf_home, sizeof hf_home, err, "%s/.cache/huggingface", v)) return -1;
    }
    if ((v = getenv_set("HF_HUB_CACHE")) || (v = getenv_set("HUGGINGFACE_HUB_CACHE"))) {
        if (expand_home(v, env->cache, sizeof env->cache, err)) return -1;
    } else if (hf_home[0]) {
        if (fmt_buf(env->cache, sizeof env->cache, err, "%s/hub", hf_home)) return -1;
    } else {
        return cs_err_set(err, "cannot locate the Hugging Face cache: set HF_HUB_CACHE, HF_HOME or HOME");
    }
    size_t n = strlen(env->cache);
    while (n > 1 && env->cache[n - 1] == '/') env->cache[--n] = '\0';

    v = getenv_set("HF_ENDPOINT");
    if (copy_str(env->endpoint, sizeof env->endpoint, v ? v : HUB_DEFAULT_ENDPOINT, err)) return -1;
    n = strlen(env->endpoint);
    while (n && env->endpoint[n - 1] == '/') env->endpoint[--n] = '\0';
    if ((strncasecmp(env->endpoint, "http://", 7) != 0 && strncasecmp(env->endpoint, "https://", 8) != 0) ||
        !token_ok(env->endpoint))
        return cs_err_set(err, "HF_ENDPOINT must be an http:// or https:// URL, got '%.200s'", env->endpoint);

    v = getenv_set("HF_HUB_OFFLINE");
    if (!v) v = getenv_set("TRANSFORMERS_OFFLINE");
    env->offline = env_true(v);

    env->connect_timeout_s = CS_HUB_CONNECT_TIMEOUT_S;
    if ((v = getenv_set("HF_HUB_ETAG_TIMEOUT"))) {
        char *end;
        errno = 0;
        double t = strtod(v, &end);
        if (errno || end == v || *end || !(t > 0 && t <= CS_HUB_CONNECT_TIMEOUT_MAX_S))
            return cs_err_set(err, "HF_HUB_ETAG_TIMEOUT must be a number of seconds in (0, %g], got '%.40s'",
                              CS_HUB_CONNECT_TIMEOUT_MAX_S, v);
        env->connect_timeout_s = t;
    }

    if ((v = getenv_set("HF_TOKEN")) || (v = getenv_set("HUGGING_FACE_HUB_TOKEN"))) {
        if (copy_str(env->token, sizeof env->token, v, err)) return cs_err_set(err, "HF_TOKEN is too long");
        trim(env->token);
        if (!token_ok(env->token)) return cs_err_set(err, "HF_TOKEN contains spaces or control characters");
    } else {
        char path[CS_HUB_PATH_MAX];
        int have_path = 0;
        if ((v = getenv_set("HF_TOKEN_PATH"))) {
            if (expand_home(v, path, sizeof path, err)) return -1;
            have_path = 1;
        } else if (hf_home[0]) {
            if (fmt_buf(path, sizeof path, err, "%s/token", hf_home)) return -1;
            have_path = 1;
        }
        if (have_path) {
            /* An unreadable token file is as good as none: a cached model must still load. */
            cs_err scratch;
            if (read_small(path, env->token, sizeof env->token, &scratch) != 0) env->token[0] = '\0';
            trim(env->token);
            if (!token_ok(env->token)) return cs_err_set(err, "%s: the token contains spaces or control characters", path);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ names and cache */

static int repo_ok(const char *r, size_t n, const char **why) {
    if (n == 0) return *why = "empty name", 0;
    if (n > CS_HUB_REPO_MAX) return *why = "longer than 96 characters", 0;
    int parts = 1;
    for (size_t i = 0; i < n; i++) {
        char c = r[i];
        if (c == '/') {
            parts++;
            continue;
        }
        if (!is_alnum(c) && c != '-' && c != '_' && c != '.')
            return *why = "only letters, digits, '-', '_', '.' and one '/' are allowed", 0;
    }
    if (parts > 2) return *why = "at most one '/' (ORG/NAME)", 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((r[i] == '-' && r[i + 1] == '-') || (r[i] == '.' && r[i + 1] == '.')) return *why = "'--' and '..' are not allowed", 0;
    for (size_t i = 0; i < n; i++) {
        int start = i == 0 || r[i - 1] == '/', end = i + 1 == n || r[i + 1] == '/';
        if (r[i] == '/' && (start || end)) return *why = "empty ORG or NAME", 0;
        if ((start || end) && (r[i] == '-' || r[i] == '.')) return *why = "a part starts or ends with '-' or '.'", 0;
    }
    return 1;
}

static int revision_ok(const char *r) {
    size_t n = strlen(r);
    if (n == 0 || n > CS_HUB_REV_MAX || r[0] == '/' || r[0] == '.' || r[n - 1] == '/') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = r[i];
        if (!is_alnum(c) && c != '-' && c != '_' && c != '.' && c != '/' && c != '+') return 0;
        if (i + 1 < n && ((c == '.' && r[i + 1] == '.') || (c == '/' && r[i + 1] == '/'))) return 0;
        if (c == '/' && r[i + 1] == '.') return 0;
    }
    return 1;
}

int cs_hub_parse_ref(const char *model, cs_hub_ref *out, cs_err *err) {
    memset(out, 0, sizeof *out);
    if (!model || !*model) return cs_err_set(err, "empty model name");
    const char *at = strchr(model, '@');
    size_t n = at ? (size_t)(at - model) : strlen(model);
    const char *why = NULL;
    if (!repo_ok(model, n, &why))
        return cs_err_set(err, "'%.200s' is not a valid Hub model name (ORG/NAME[@REVISION]): %s", model, why);
    memcpy(out->repo, model, n);
    out->repo[n] = '\0';
    const char *rev = at ? at + 1 : "main";
    if (!revision_ok(rev))
        return cs_err_set(err, "'%.200s': bad revision '%.200s' (a branch, tag or commit hash)", model, rev);
    memcpy(out->revision, rev, strlen(rev) + 1);
    return 0;
}

int cs_hub_repo_dir(const cs_hub_env *env, const char *repo, char *out, size_t cap, cs_err *err) {
    char folder[2 * CS_HUB_REPO_MAX + 16] = "models--";
    size_t k = strlen(folder);
    for (const char *s = repo; *s && k + 3 < sizeof folder; s++) {
        if (*s == '/') {
            folder[k++] = '-';
            folder[k++] = '-';
        } else {
            folder[k++] = *s;
        }
    }
    folder[k] = '\0';
    return fmt_buf(out, cap, err, "%s/%s", env->cache, folder);
}

/* refs/REVISION -> commit. 0 ok, 1 missing, -1 error. */
static int read_ref(const char *repo_dir, const char *revision, char commit[CS_HUB_COMMIT_LEN + 1], cs_err *err) {
    char path[CS_HUB_PATH_MAX], buf[REF_FILE_MAX + 1];
    if (fmt_buf(path, sizeof path, err, "%s/refs/%s", repo_dir, revision)) return -1;
    int r = read_small(path, buf, sizeof buf, err);
    if (r) return r;
    trim(buf);
    if (!is_commit(buf)) return cs_err_set(err, "%s: not a commit hash", path);
    memcpy(commit, buf, CS_HUB_COMMIT_LEN + 1);
    return 0;
}

int cs_hub_find_cached(const cs_hub_env *env, const cs_hub_ref *ref, char *dir_out, size_t cap, cs_err *err) {
    char repo_dir[CS_HUB_PATH_MAX], snap[CS_HUB_PATH_MAX], p[CS_HUB_PATH_MAX], commit[CS_HUB_COMMIT_LEN + 1];
    if (cs_hub_repo_dir(env, ref->repo, repo_dir, sizeof repo_dir, err)) return -1;
    if (is_commit(ref->revision)) {
        memcpy(commit, ref->revision, sizeof commit);
    } else {
        int r = read_ref(repo_dir, ref->revision, commit, err);
        if (r < 0) return -1;
        if (r == 1) {
            cs_err_set(err, "no refs/%s", ref->revision);
            return 1;
        }
    }
    if (fmt_buf(snap, sizeof snap, err, "%s/snapshots/%s", repo_dir, commit)) return -1;
    for (size_t i = 0; i < N_FILES; i++) {
        if (!FILES[i].required) continue;
        struct stat st;
        if (fmt_buf(p, sizeof p, err, "%s/%s", snap, FILES[i].name)) return -1;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode)) {
            cs_err_set(err, "snapshot %s lacks %s", commit, FILES[i].name);
            return 1;
        }
    }
    return copy_str(dir_out, cap, snap, err);
}

/* ------------------------------------------------------------------ HTTP */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* Headers of the last response (the status line resets them). */
typedef struct resp {
    long status;
    char etag[CS_HUB_ETAG_MAX + 8];
    char linked_etag[CS_HUB_ETAG_MAX + 8];
    char commit[CS_HUB_COMMIT_LEN + 1];
    char linked_size[24];
    char content_length[24];
    char content_range[96];
    char error_code[64];
    char error_msg[HDR_SHORT_MAX];
    char location[CS_HUB_URL_MAX]; /* raw Location header */
    const char *overlong;          /* name of a header too long for its field */
} resp;

enum { FAIL_NONE, FAIL_HEADERS, FAIL_WRITE, FAIL_RANGE, FAIL_TOO_MUCH, FAIL_REDIRECTS, FAIL_URL };

/* A file being downloaded (the body sink). */
typedef struct dl {
    int fd;
    unsigned long long have; /* bytes in the file, all hashed into sha */
    long long expected;      /* -1: unknown */
    unsigned long long limit; /* most bytes accepted: expected, else a per-kind cap */
    int verify;              /* keep sha256 */
    cs_sha256 sha;
    int started;             /* first body byte of this response seen */
    int write_errno;
    /* progress */
    const char *name;
    int bar;                 /* draw on stderr */
    double t0, last;
    unsigned long long have0;
} dl;

typedef struct xfer {
    CURL *curl;
    const cs_hub_env *env;
    resp r;
    dl *sink;                /* NULL: body discarded (HEAD, errors) */
    int fail;                /* FAIL_*: why a callback stopped the transfer */
    size_t header_bytes;     /* of the current response, bounded by CS_HUB_MAX_HEADER_BYTES */
    char redirect[CS_HUB_URL_MAX]; /* absolute target of the last redirect, "" if none */
    char errbody[ERR_BODY_MAX];
    size_t n_errbody;
    char curl_msg[CURL_ERROR_SIZE];
} xfer;

static void set_hdr(resp *r, char *field, size_t cap, const char *name, const char *v, size_t n, int truncate_ok) {
    if (n >= cap) {
        if (!truncate_ok) {
            field[0] = '\0';
            r->overlong = name;
            return;
        }
        n = cap - 1;
    }
    memcpy(field, v, n);
    field[n] = '\0';
}

static size_t on_header(char *buf, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    resp *r = &x->r;
    size_t len = size * nmemb;
    x->header_bytes += len;
    if (x->header_bytes > CS_HUB_MAX_HEADER_BYTES) {
        x->fail = FAIL_HEADERS;
        return 0;
    }
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) { /* a new response (1xx, or the final one) */
        memset(r, 0, sizeof *r);
        const char *sp = memchr(buf, ' ', len);
        if (sp && (size_t)(sp - buf) + 4 <= len) r->status = strtol(sp + 1, NULL, 10);
        return len;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon) return len;
    size_t nn = (size_t)(colon - buf);
    const char *v = colon + 1, *end = buf + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
    size_t vn = (size_t)(end - v);
#define HDR(NAME, FIELD, TRUNC) \
    if (nn == sizeof NAME - 1 && strncasecmp(buf, NAME, nn) == 0) set_hdr(r, FIELD, sizeof FIELD, NAME, v, vn, TRUNC)
    HDR("ETag", r->etag, 0);
    else HDR("X-Linked-Etag", r->linked_etag, 0);
    else HDR("X-Repo-Commit", r->commit, 0);
    else HDR("X-Linked-Size", r->linked_size, 0);
    else HDR("Content-Length", r->content_length, 0);
    else HDR("Content-Range", r->content_range, 0);
    else HDR("X-Error-Code", r->error_code, 1);
    else HDR("X-Error-Message", r->error_msg, 1);
    else HDR("Location", r->location, 0);
#undef HDR
    return len;
}

/* Parses a decimal size; -1 when absent, -2 when malformed or over the limit. */
static long long parse_size(const char *s) {
    if (!*s) return -1;
    unsigned long long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -2;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > CS_HUB_MAX_FILE_BYTES) return -2;
    }
    return (long long)v;
}

/* "12.3 MB"-style sizes for the progress bar. */
static void fmt_size(char *out, size_t cap, double bytes) {
    if (bytes < 1e6) snprintf(out, cap, "%.1f kB", bytes / 1e3);
    else if (bytes < 1e9) snprintf(out, cap, "%.1f MB", bytes / 1e6);
    else snprintf(out, cap, "%.2f GB", bytes / 1e9);
}

/* Columns of the terminal on stderr: TIOCGWINSZ, else $COLUMNS, else 80. Asked at
 * every redraw, so a resized window gets a line that fits. */
static int term_width(void) {
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    const char *c = getenv_set("COLUMNS");
    long n = c ? strtol(c, NULL, 10) : 0;
    return n > 0 && n < PROGRESS_MAX_COLS ? (int)n : 80;
}

/* One line, at most width-1 columns (a full-width line would wrap on some terminals and
 * the next \r would then redraw only its second half, leaving fragments): name, percent,
 * a bar as wide as the room left, sizes, rate. The first layout that fits wins: aligned
 * columns, then unpadded, then without the bar, then without the rate, then cut. */
static void progress_draw(dl *d, int final) {
    if (!d->bar) return;
    double t = now_s();
    if (!final && t - d->last < PROGRESS_INTERVAL_S) return;
    d->last = t;
    double rate = t > d->t0 ? (double)(d->have - d->have0) / (t - d->t0) / 1e6 : 0;
    int cols = term_width() - 1;
    if (cols > PROGRESS_MAX_COLS) cols = PROGRESS_MAX_COLS;
    if (cols < 1) cols = 1;
    const int known = d->expected > 0;
    char have[32], total[32], pct[8] = "";
    fmt_size(have, sizeof have, (double)d->have);
    fmt_size(total, sizeof total, (double)d->expected);
    if (known) snprintf(pct, sizeof pct, "%3d%%", (int)(100.0 * (double)d->have / (double)d->expected));
    static const struct { int pad, bar_min, speed; } layouts[] = {
        {1, PROGRESS_BAR_ALIGNED_MIN, 1}, {0, PROGRESS_BAR_MIN, 1}, {0, 0, 1}, {0, 0, 0}};
    char line[PROGRESS_MAX_COLS + 160];
    for (size_t i = 0; i < sizeof layouts / sizeof *layouts; i++) {
        const int pad = layouts[i].pad;
        char head[64], tail[96], sizes[72], bar[PROGRESS_BAR_MAX + 4] = "";
        snprintf(head, sizeof head, "%-*.*s%s%s", pad ? PROGRESS_NAME_COLS : 0, PROGRESS_NAME_COLS, d->name,
                 known ? " " : "", pct);
        if (known) snprintf(sizes, sizeof sizes, pad ? "%10s / %-10s" : "%s / %s", have, total);
        else snprintf(sizes, sizeof sizes, pad ? "%10s" : "%s", have);
        if (layouts[i].speed) snprintf(tail, sizeof tail, pad ? "%s %7.1f MB/s" : "%s %.1f MB/s", sizes, rate);
        else snprintf(tail, sizeof tail, "%s", sizes);
        const int fixed = (int)strlen(head) + 1 + (int)strlen(tail);
        int bar_w = layouts[i].bar_min && known ? cols - fixed - 3 : 0; /* " [" and "]" */
        if (bar_w > PROGRESS_BAR_MAX) bar_w = PROGRESS_BAR_MAX;
        if (layouts[i].bar_min && bar_w < layouts[i].bar_min) continue;
        if (bar_w > 0) {
            int fill = (int)((double)bar_w * (double)d->have / (double)d->expected);
            if (fill > bar_w) fill = bar_w;
            bar[0] = '[';
            memset(bar + 1, '#', (size_t)fill);
            memset(bar + 1 + fill, '-', (size_t)(bar_w - fill));
            bar[bar_w + 1] = ']';
            bar[bar_w + 2] = '\0';
        }
        snprintf(line, sizeof line, "%s%s%s %s", head, bar_w > 0 ? " " : "", bar, tail);
        if ((int)strlen(line) <= cols) break;
    }
    if ((int)strlen(line) > cols) line[cols] = '\0'; /* narrower than the shortest layout */
    fprintf(stderr, "\r%s\x1b[K", line);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    xfer *x = ud;
    if (x->sink) progress_draw(x->sink, 0);
    return 0;
}

static int write_all(int fd, const char *p, size_t n, off_t off) {
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* First body byte of a 200/206: a 200 restarts the file; a 206 must continue where we are. */
static int sink_start(xfer *x) {
    dl *d = x->sink;
    if (x->r.status == 200) {
        if (d->have > 0) {
            if (ftruncate(d->fd, 0) != 0) {
                d->write_errno = errno;
                x->fail = FAIL_WRITE;
                return -1;
            }
            d->have = d->have0 = 0;
            cs_sha256_init(&d->sha);
        }
        return 0;
    }
    unsigned long long a, b;
    char total[32];
    if (sscanf(x->r.content_range, "bytes %llu-%llu/%31s", &a, &b, total) != 3 || a != d->have || b < a)
        return x->fail = FAIL_RANGE, -1;
    if (d->expected >= 0 && strcmp(total, "*") != 0 && parse_size(total) != d->expected) return x->fail = FAIL_RANGE, -1;
    return 0;
}

static size_t on_body(char *buf, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    size_t len = size * nmemb;
    dl *d = x->sink;
    if (!d || (x->r.status != 200 && x->r.status != 206)) { /* keep the start of an error body */
        size_t room = sizeof x->errbody - 1 - x->n_errbody, k = len < room ? len : room;
        memcpy(x->errbody + x->n_errbody, buf, k);
        x->n_errbody += k;
        x->errbody[x->n_errbody] = '\0';
        return len;
    }
    if (!d->started) {
        d->started = 1;
        if (sink_start(x)) return 0;
    }
    if (len > d->limit - d->have) {
        x->fail = FAIL_TOO_MUCH;
        return 0;
    }
    if (write_all(d->fd, buf, len, (off_t)d->have)) {
        d->write_errno = errno;
        x->fail = FAIL_WRITE;
        return 0;
    }
    if (d->verify) cs_sha256_update(&d->sha, buf, len);
    d->have += len;
    return len;
}

/* "scheme://host:port" of a URL, lowercased, default port filled in. */
static int origin_of(const char *url, char *out, size_t cap) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = -1;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        int n = snprintf(out, cap, "%s://%s:%s", scheme, host, port);
        if (n > 0 && (size_t)n < cap) {
            for (char *s = out; *s; s++)
                if (*s >= 'A' && *s <= 'Z') *s = (char)(*s - 'A' + 'a');
            rc = 0;
        }
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

static int same_origin(const char *a, const char *b) {
    char oa[512], ob[512];
    return origin_of(a, oa, sizeof oa) == 0 && origin_of(b, ob, sizeof ob) == 0 && strcmp(oa, ob) == 0;
}

/* One HTTP request with its redirects (at most CS_HUB_MAX_REDIRECTS). A HEAD follows only
 * relative redirects (a renamed repo, as huggingface_hub does) and stops at a redirect to
 * another place: x->redirect then says where the file is downloaded from. A GET follows
 * every redirect. Authorization is sent to the Hub's own origin only, never to a CDN.
 * final_url (CS_HUB_URL_MAX bytes) receives the last URL requested. */
static CURLcode request(xfer *x, const char *url0, int head, unsigned long long range_from, char *final_url) {
    char url[CS_HUB_URL_MAX], auth[CS_HUB_TOKEN_MAX + 32], range[64];
    if (strlen(url0) >= sizeof url) {
        x->fail = FAIL_URL;
        return CURLE_URL_MALFORMAT;
    }
    memcpy(url, url0, strlen(url0) + 1);
    for (int hop = 0;; hop++) {
        CURL *c = x->curl;
        curl_easy_reset(c);
        struct curl_slist *h = NULL, *t;
        int oom = !(t = curl_slist_append(h, "Accept-Encoding: identity"));
        if (t) h = t;
        if (!oom && x->env->token[0] && same_origin(url, x->env->endpoint)) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", x->env->token);
            if (!(t = curl_slist_append(h, auth))) oom = 1;
            else h = t;
        }
        if (!oom && !head && range_from) {
            snprintf(range, sizeof range, "Range: bytes=%llu-", range_from);
            if (!(t = curl_slist_append(h, range))) oom = 1;
            else h = t;
        }
        if (oom) {
            curl_slist_free_all(h);
            return CURLE_OUT_OF_MEMORY;
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_USERAGENT, HUB_USER_AGENT);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
        const double cto = x->env->connect_timeout_s > 0 ? x->env->connect_timeout_s : CS_HUB_CONNECT_TIMEOUT_S;
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(cto * 1000));
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, STALL_TIMEOUT_S);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x->curl_msg);
        if (head) {
            curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
            curl_easy_setopt(c, CURLOPT_TIMEOUT, HEAD_TIMEOUT_S);
        }
        if (x->sink && x->sink->bar) {
            curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
            curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
            curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
        }
        memset(&x->r, 0, sizeof x->r);
        x->redirect[0] = x->errbody[0] = x->curl_msg[0] = '\0';
        x->n_errbody = 0;
        x->fail = FAIL_NONE;
        x->header_bytes = 0;
        if (x->sink) x->sink->started = 0;
        CURLcode rc = curl_easy_perform(c);
        curl_slist_free_all(h);
        if (rc != CURLE_OK) return rc;
        long st = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
        x->r.status = st;
        memcpy(final_url, url, strlen(url) + 1);
        if (!(st == 301 || st == 302 || st == 303 || st == 307 || st == 308) || !x->r.location[0]) return CURLE_OK;
        char *next = NULL;
        if (curl_easy_getinfo(c, CURLINFO_REDIRECT_URL, &next) != CURLE_OK || !next) return CURLE_OK;
        if (strlen(next) >= sizeof url) {
            x->fail = FAIL_URL;
            return CURLE_URL_MALFORMAT;
        }
        memcpy(x->redirect, next, strlen(next) + 1);
        if (head && (x->r.location[0] != '/' || x->r.location[1] == '/')) return CURLE_OK;
        if (hop + 1 > CS_HUB_MAX_REDIRECTS) {
            x->fail = FAIL_REDIRECTS;
            return CURLE_TOO_MANY_REDIRECTS;
        }
        memcpy(url, x->redirect, strlen(x->redirect) + 1);
    }
}

/* Worth another try: a cut or stalled transfer, or the server asking us to come back.
 * A connection that timed out before it was made is not: with no route to the Hub,
 * retrying only multiplies the wait (the first `make run` offline took minutes). */
static int transient(const xfer *x, CURLcode rc) {
    if (x->fail != FAIL_NONE) return 0;
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        double connected = 0;
        if (curl_easy_getinfo(x->curl, CURLINFO_CONNECT_TIME, &connected) != CURLE_OK || connected <= 0) return 0;
    }
    if (rc == CURLE_OK) {
        long st = x->r.status;
        return st == 429 || st == 500 || st == 502 || st == 503 || st == 504;
    }
    return rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
           rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_GOT_NOTHING || rc == CURLE_HTTP2 ||
           rc == CURLE_HTTP2_STREAM;
}

static void backoff(int attempt) {
    unsigned s = 1u << (attempt < 4 ? attempt : 4);
    sleep_s(s < BACKOFF_MAX_S ? s : BACKOFF_MAX_S);
}

static const char *curl_detail(const xfer *x, CURLcode rc) {
    if (x->fail == FAIL_HEADERS) return "response headers too large";
    if (x->fail == FAIL_REDIRECTS) return "too many redirects";
    if (x->fail == FAIL_URL) return "URL too long";
    return x->curl_msg[0] ? x->curl_msg : curl_easy_strerror(rc);
}

/* ------------------------------------------------------------------ pull */

typedef struct meta {
    int present;  /* 0: optional file absent upstream */
    int lfs;      /* the ETag is the SHA-256 of the content */
    long long size;                  /* -1: unknown */
    char etag[CS_HUB_ETAG_MAX + 1];  /* normalized: the blob's file name */
    char commit[CS_HUB_COMMIT_LEN + 1];
    char url[CS_HUB_URL_MAX];        /* where to GET it */
} meta;

typedef struct pull {
    const cs_hub_env *env;
    const cs_hub_ref *ref;
    xfer x;
    int bar;                         /* progress bar on a terminal */
    int unreachable;                 /* the Hub could not be reached at all */
    char name[CS_HUB_REPO_MAX + CS_HUB_REV_MAX + 2]; /* the model, as messages show it */
    char repo_dir[CS_HUB_PATH_MAX];
    char lock_dir[CS_HUB_PATH_MAX];
    char commit[CS_HUB_COMMIT_LEN + 1];
    meta m[N_FILES];
} pull;

static void display_name(const cs_hub_ref *ref, char *out, size_t cap) {
    if (strcmp(ref->revision, "main") == 0) snprintf(out, cap, "%s", ref->repo);
    else snprintf(out, cap, "%s@%s", ref->repo, ref->revision);
}

static void url_escape(const char *s, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (; *s && k + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (is_alnum((char)c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out[k++] = (char)c;
        } else {
            out[k++] = '%';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
    }
    out[k] = '\0';
}

static int http_error(pull *p, const hub_file *f, const char *revision, int first, meta *m, const char *url,
                      cs_err *err) {
    const resp *r = &p->x.r;
    const char *code = r->error_code, *name = p->name;
    char msg[HDR_SHORT_MAX];
    snprintf(msg, sizeof msg, "%s", r->error_msg);
    sanitize(msg);
    long st = r->status;
    if (st == 404) {
        if (strcmp(code, "RevisionNotFound") == 0)
            return cs_err_set(err, "model %s: revision '%s' not found on the Hub", p->ref->repo, revision);
        int entry = strcmp(code, "EntryNotFound") == 0 || (!first && !code[0]);
        if (entry && !f->required) {
            m->present = 0;
            return 0;
        }
        if (entry) return cs_err_set(err, "model %s has no %s (is it a GPT-2 transformers model?)", name, f->name);
        return cs_err_set(err, "model %s not found on the Hub (check the name)", name);
    }
    if (st == 401 || st == 403) {
        int has_token = p->env->token[0] != '\0';
        if (strcmp(code, "RepoNotFound") == 0)
            return has_token ? cs_err_set(err, "model %s not found on the Hub (check the name), or HF_TOKEN has no access to it", name)
                             : cs_err_set(err, "model %s not found on the Hub (check the name), or it is private and requires "
                                               "authentication: set HF_TOKEN", name);
        if (!has_token)
            return cs_err_set(err, "model %s requires authentication: set HF_TOKEN%s", name,
                              strcmp(code, "GatedRepo") == 0 ? " (and accept the model's terms on its Hub page)" : "");
        return cs_err_set(err, "model %s: the Hub refused HF_TOKEN (HTTP %ld%s%s): check that the token is valid and has "
                               "read access (gated models: accept the terms on the model's page)",
                          name, st, msg[0] ? ": " : "", msg);
    }
    return cs_err_set(err, "model %s: HTTP %ld for %s%s%s", name, st, url, msg[0] ? ": " : "", msg);
}

/* HEAD one file: commit, ETag, size, download URL. */
static int fetch_meta(pull *p, const hub_file *f, const char *revision, int first, meta *m, cs_err *err) {
    memset(m, 0, sizeof *m);
    m->size = -1;
    char rev[3 * CS_HUB_REV_MAX + 1], url[CS_HUB_URL_MAX], final[CS_HUB_URL_MAX];
    url_escape(revision, rev, sizeof rev);
    if (fmt_buf(url, sizeof url, err, "%s/%s/resolve/%s/%s", p->env->endpoint, p->ref->repo, rev, f->name)) return -1;
    xfer *x = &p->x;
    CURLcode rc;
    for (int attempt = 0;; attempt++) {
        rc = request(x, url, 1, 0, final);
        if (!transient(x, rc) || attempt == CS_HUB_MAX_RETRIES) break;
        backoff(attempt);
    }
    if (rc != CURLE_OK) {
        p->unreachable = 1;
        return cs_err_set(err, "cannot reach the Hub at %s: %s", p->env->endpoint, curl_detail(x, rc));
    }
    const resp *r = &x->r;
    if (r->overlong) return cs_err_set(err, "%s: the %s header is too long", url, r->overlong);
    int redirect = r->status / 100 == 3 && x->redirect[0];
    if (r->status != 200 && !redirect) return http_error(p, f, revision, first, m, url, err);

    if (!is_commit(r->commit))
        return cs_err_set(err, "%s: no X-Repo-Commit header in the answer: HF_ENDPOINT (%s) does not look like a "
                               "Hugging Face Hub", url, p->env->endpoint);
    const char *e = r->linked_etag[0] ? r->linked_etag : r->etag;
    if (strncmp(e, "W/", 2) == 0) e += 2;
    size_t n = strlen(e);
    if (n >= 2 && e[0] == '"' && e[n - 1] == '"') e++, n -= 2;
    int safe = n > 0 && n <= CS_HUB_ETAG_MAX && e[0] != '.';
    for (size_t i = 0; safe && i < n; i++) safe = is_alnum(e[i]) || e[i] == '-' || e[i] == '_' || e[i] == '.';
    if (!safe) return cs_err_set(err, "%s: missing or unusable ETag header", url);
    memcpy(m->etag, e, n);
    m->etag[n] = '\0';
    m->lfs = n == 2 * CS_SHA256_DIGEST && is_hex(m->etag, n);
    long long size = parse_size(r->linked_size);
    if (size == -1 && !redirect) size = parse_size(r->content_length);
    if (size == -2)
        return cs_err_set(err, "%s: the announced size of %s is malformed or over the %llu-byte limit", url, f->name,
                          (unsigned long long)CS_HUB_MAX_FILE_BYTES);
    if (!m->lfs && size > SMALL_FILE_MAX)
        return cs_err_set(err, "%s: %s is announced as %lld bytes, more than the %d-byte limit for a non-LFS file", url,
                          f->name, size, SMALL_FILE_MAX);
    m->size = size;
    memcpy(m->commit, r->commit, sizeof m->commit);
    const char *src = redirect ? x->redirect : final;
    memcpy(m->url, src, strlen(src) + 1);
    m->present = 1;
    return 0;
}

static int blob_ok(const char *path, long long size) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && (size < 0 || st.st_size == size);
}

/* flock on the blob's lock file, the same file huggingface_hub locks. If the holder
 * deleted and recreated the file meanwhile, our lock is on a stale inode: take it again. */
static int lock_acquire(pull *p, const char *path, const char *fname, int *fd_out, cs_err *err) {
    for (int i = 0; i < LOCK_REOPEN_MAX; i++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0664);
        if (fd < 0) return cs_err_set(err, "cannot open lock file %s: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK) {
                close(fd);
                return cs_err_set(err, "cannot lock %s: %s", path, strerror(errno));
            }
            if (p->env->progress) fprintf(stderr, "%s: waiting for another download of it to finish\n", fname);
            while (flock(fd, LOCK_EX) != 0) {
                if (errno != EINTR) {
                    int e = errno;
                    close(fd);
                    return cs_err_set(err, "cannot lock %s: %s", path, strerror(e));
                }
            }
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            *fd_out = fd;
            return 0;
        }
        close(fd);
    }
    return cs_err_set(err, "cannot lock %s: it keeps being replaced", path);
}

/* SHA-256 of the first n bytes of a partial download, to continue hashing after a resume. */
static int hash_prefix(int fd, unsigned long long n, cs_sha256 *s, const char *path, cs_err *err) {
    char *buf = malloc(HASH_CHUNK);
    if (!buf) return cs_err_set(err, "out of memory");
    unsigned long long off = 0;
    while (off < n) {
        size_t want = n - off < HASH_CHUNK ? (size_t)(n - off) : HASH_CHUNK;
        ssize_t r = pread(fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            return cs_err_set(err, "cannot read %s: %s", path, r < 0 ? strerror(errno) : "file shrank");
        }
        cs_sha256_update(s, buf, (size_t)r);
        off += (unsigned long long)r;
    }
    free(buf);
    return 0;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static int dl_restart(dl *d) {
    if (ftruncate(d->fd, 0) != 0) return -1;
    d->have = d->have0 = 0;
    cs_sha256_init(&d->sha);
    return 0;
}

/* Makes blobs/ETAG exist with the right content. */
static int ensure_blob(pull *p, const hub_file *f, const meta *m, cs_err *err) {
    char blobs[CS_HUB_PATH_MAX], blob[CS_HUB_PATH_MAX], inc[CS_HUB_PATH_MAX], lock[CS_HUB_PATH_MAX];
    if (fmt_buf(blobs, sizeof blobs, err, "%s/blobs", p->repo_dir) ||
        fmt_buf(blob, sizeof blob, err, "%s/%s", blobs, m->etag) ||
        fmt_buf(inc, sizeof inc, err, "%s.incomplete", blob) ||
        fmt_buf(lock, sizeof lock, err, "%s/%s.lock", p->lock_dir, m->etag))
        return -1;
    if (blob_ok(blob, m->size)) return 0;
    int lfd = -1, fd = -1, rc = -1;
    if (lock_acquire(p, lock, f->name, &lfd, err)) return -1;
    if (blob_ok(blob, m->size)) { /* another process finished it while we waited */
        rc = 0;
        goto done;
    }
    fd = open(inc, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        cs_err_set(err, "cannot open %s: %s", inc, strerror(errno));
        goto done;
    }
    dl d = {.fd = fd, .have = (unsigned long long)st.st_size, .expected = m->size, .verify = m->lfs,
            .name = f->name, .bar = p->bar};
    d.limit = m->size >= 0 ? (unsigned long long)m->size : m->lfs ? CS_HUB_MAX_FILE_BYTES : SMALL_FILE_MAX;
    cs_sha256_init(&d.sha);
    if (d.have > d.limit) {
        if (dl_restart(&d)) {
            cs_err_set(err, "cannot truncate %s: %s", inc, strerror(errno));
            goto done;
        }
    }
    if (d.have && d.verify && hash_prefix(fd, d.have, &d.sha, inc, err)) goto done;
    struct statvfs vfs;
    if (m->size >= 0 && fstatvfs(fd, &vfs) == 0) {
        unsigned long long need = (unsigned long long)m->size - d.have;
        unsigned long long avail = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
        if (avail < need) {
            cs_err_set(err, "not enough disk space for %s in %s: %.1f MB needed, %.1f MB free", f->name, blobs,
                       (double)need / 1e6, (double)avail / 1e6);
            goto done;
        }
    }
    d.t0 = now_s();
    d.have0 = d.have;
    xfer *x = &p->x;
    x->sink = &d;
    CURLcode crc = CURLE_OK;
    int complete = m->size >= 0 && d.have == (unsigned long long)m->size, ok = 0;
    for (int attempt = 0; !complete; attempt++) {
        char final[CS_HUB_URL_MAX];
        crc = request(x, m->url, 0, d.have, final);
        ok = crc == CURLE_OK && (x->r.status == 200 || x->r.status == 206);
        if (ok && (m->size < 0 || d.have == (unsigned long long)m->size)) {
            complete = 1;
            break;
        }
        if (crc == CURLE_OK && x->r.status == 416 && d.have > 0) { /* our partial file is not a valid prefix */
            if (dl_restart(&d)) break;
        } else if (!ok && !transient(x, crc)) {
            break;
        }
        if (attempt == CS_HUB_MAX_RETRIES) break;
        backoff(attempt);
    }
    x->sink = NULL;
    if (d.bar && d.have > d.have0) progress_draw(&d, 1);
    if (!complete) {
        char total[32] = "?";
        if (m->size >= 0) snprintf(total, sizeof total, "%lld", m->size);
        if (x->fail == FAIL_WRITE) {
            cs_err_set(err, "cannot write %s: %s", inc, strerror(d.write_errno));
        } else if (x->fail == FAIL_RANGE || x->fail == FAIL_TOO_MUCH) {
            unlink(inc);
            cs_err_set(err, "download of %s: %s; the partial file was removed, run the same command again", f->name,
                       x->fail == FAIL_RANGE ? "the server answered the resume request with another range"
                                             : "the server sent more bytes than announced or allowed");
        } else if (crc != CURLE_OK || ok) {
            cs_err_set(err, "download of %s interrupted after %llu of %s bytes (%s); run the same command again to resume",
                       f->name, d.have, total, ok ? "connection closed early" : curl_detail(x, crc));
        } else if (x->r.status == 401 || x->r.status == 403) {
            cs_err_set(err, "model %s: download of %s refused (HTTP %ld)%s", p->name, f->name, x->r.status,
                       p->env->token[0] ? "" : ": it may require authentication: set HF_TOKEN");
        } else {
            sanitize(x->errbody);
            cs_err_set(err, "download of %s: HTTP %ld%s%.200s", f->name, x->r.status, x->errbody[0] ? ": " : "",
                       x->errbody);
        }
        goto done;
    }
    if (fsync(fd) != 0) {
        cs_err_set(err, "cannot sync %s: %s", inc, strerror(errno));
        goto done;
    }
    if (d.verify) {
        uint8_t dig[CS_SHA256_DIGEST];
        char hex[CS_SHA256_HEX];
        cs_sha256_final(&d.sha, dig);
        cs_sha256_hex(dig, hex);
        if (strcmp(hex, m->etag) != 0) {
            unlink(inc);
            cs_err_set(err, "%s: checksum mismatch: the download has sha256 %s, the Hub announced %s; the corrupt "
                            "file was removed", f->name, hex, m->etag);
            goto done;
        }
    }
    int cr = close(fd);
    fd = -1;
    if (cr != 0) {
        cs_err_set(err, "cannot write %s: %s", inc, strerror(errno));
        goto done;
    }
    if (rename(inc, blob) != 0) {
        cs_err_set(err, "cannot rename %s to %s: %s", inc, blob, strerror(errno));
        goto done;
    }
    fsync_dir(blobs);
    if (p->env->progress && !p->bar)
        fprintf(stderr, "%s: downloaded %s (%.1f MB)\n", p->name, f->name, (double)d.have / 1e6);
    rc = 0;
done:
    if (fd >= 0) close(fd);
    if (lfd >= 0) close(lfd); /* releases the flock */
    return rc;
}

/* snapshots/COMMIT/NAME -> ../../blobs/ETAG, replaced atomically if it points elsewhere. */
static int link_file(const char *snap, const char *name, const char *etag, cs_err *err) {
    char path[CS_HUB_PATH_MAX], target[CS_HUB_PATH_MAX], cur[CS_HUB_PATH_MAX], tmp[CS_HUB_PATH_MAX];
    if (fmt_buf(path, sizeof path, err, "%s/%s", snap, name) ||
        fmt_buf(target, sizeof target, err, "../../blobs/%s", etag))
        return -1;
    ssize_t n = readlink(path, cur, sizeof cur - 1);
    if (n >= 0) {
        cur[n] = '\0';
        if (strcmp(cur, target) == 0) return 0;
    }
    if (strlen(path) + 40 >= sizeof tmp) return cs_err_set(err, "path too long: %.200s", path);
    tmp_name(tmp, sizeof tmp, path);
    if (symlink(target, tmp) != 0) return cs_err_set(err, "cannot create symlink %s: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return cs_err_set(err, "cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
    return 0;
}

/* refs/REVISION = commit (no newline, as huggingface_hub writes it), via tmp + rename. */
static int write_ref(const char *repo_dir, const char *revision, const char *commit, cs_err *err) {
    if (strcmp(revision, commit) == 0) return 0;
    char path[CS_HUB_PATH_MAX], tmp[CS_HUB_PATH_MAX], cur[REF_FILE_MAX + 1];
    if (fmt_buf(path, sizeof path, err, "%s/refs/%s", repo_dir, revision) || mkdir_parent(path, err)) return -1;
    cs_err scratch;
    if (read_small(path, cur, sizeof cur, &scratch) == 0 && strcmp(cur, commit) == 0) return 0;
    if (strlen(path) + 40 >= sizeof tmp) return cs_err_set(err, "path too long: %.200s", path);
    tmp_name(tmp, sizeof tmp, path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return cs_err_set(err, "cannot create %s: %s", tmp, strerror(errno));
    int bad = write_all(fd, commit, strlen(commit), 0) != 0 || fsync(fd) != 0;
    int e = errno;
    if (close(fd) != 0 && !bad) bad = 1, e = errno;
    if (bad || rename(tmp, path) != 0) {
        if (!bad) e = errno;
        unlink(tmp);
        return cs_err_set(err, "cannot write %s: %s", path, strerror(e));
    }
    return 0;
}

/* .no_exist/COMMIT/NAME: transformers then knows the optional file is absent. Best effort. */
static void mark_absent(const char *repo_dir, const char *commit, const char *name) {
    char path[CS_HUB_PATH_MAX];
    cs_err scratch;
    if (fmt_buf(path, sizeof path, &scratch, "%s/.no_exist/%s/%s", repo_dir, commit, name) ||
        mkdir_parent(path, &scratch))
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd >= 0) close(fd);
}

static int offline_error(const cs_hub_env *env, const cs_hub_ref *ref, const cs_err *detail, cs_err *err) {
    char name[CS_HUB_REPO_MAX + CS_HUB_REV_MAX + 2], why[CS_ERR_MAX];
    display_name(ref, name, sizeof name);
    snprintf(why, sizeof why, "%s", detail->msg);
    return cs_err_set(err, "model %s is not in the cache at %s and HF_HUB_OFFLINE is set: run `cserve pull %s` on a "
                           "machine with network access or copy the cache (%s)", name, env->cache, name, why);
}

int cs_hub_pull_env(const cs_hub_env *env, const cs_hub_ref *ref, char *dir_out, size_t cap, cs_err *err) {
    if (env->offline) {
        cs_err detail = {{0}};
        int r = cs_hub_find_cached(env, ref, dir_out, cap, &detail);
        if (r == 1) return offline_error(env, ref, &detail, err);
        if (r < 0) return cs_err_set(err, "%s", detail.msg);
        return 0;
    }
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return cs_err_set(err, "cannot initialise libcurl: %s", curl_easy_strerror(curl_init_rc));
    int rc = -1;
    pull *p = calloc(1, sizeof *p);
    if (!p) return cs_err_set(err, "out of memory");
    p->env = env;
    p->ref = ref;
    p->x.env = env;
    p->bar = env->progress && isatty(STDERR_FILENO);
    display_name(ref, p->name, sizeof p->name);
    if (!(p->x.curl = curl_easy_init())) {
        cs_err_set(err, "cannot initialise libcurl");
        goto fail;
    }
    if (cs_hub_repo_dir(env, ref->repo, p->repo_dir, sizeof p->repo_dir, err) ||
        fmt_buf(p->lock_dir, sizeof p->lock_dir, err, "%s/.locks/%s", env->cache, strrchr(p->repo_dir, '/') + 1))
        goto fail;

    /* 1. metadata; every file after the first at the commit the first one resolved to */
    for (size_t i = 0; i < N_FILES; i++) {
        const char *rev = i == 0 ? ref->revision : p->commit;
        if (fetch_meta(p, &FILES[i], rev, i == 0, &p->m[i], err)) goto fail;
        if (i == 0) {
            memcpy(p->commit, p->m[0].commit, sizeof p->commit);
        } else if (p->m[i].present && strcmp(p->m[i].commit, p->commit) != 0) {
            cs_err_set(err, "model %s: the Hub answered commit %s for %s but %s for %s", p->name, p->m[i].commit,
                       FILES[i].name, p->commit, FILES[0].name);
            goto fail;
        }
    }

    /* 2. blobs */
    char dir[CS_HUB_PATH_MAX];
    if (fmt_buf(dir, sizeof dir, err, "%s/blobs", p->repo_dir) || mkdir_p(dir, err) || mkdir_p(p->lock_dir, err))
        goto fail;
    for (size_t i = 0; i < N_FILES; i++)
        if (p->m[i].present && ensure_blob(p, &FILES[i], &p->m[i], err)) goto fail;

    /* 3. snapshot links, .no_exist, refs */
    if (fmt_buf(dir, sizeof dir, err, "%s/snapshots/%s", p->repo_dir, p->commit) || mkdir_p(dir, err)) goto fail;
    for (size_t i = 0; i < N_FILES; i++) {
        if (p->m[i].present) {
            if (link_file(dir, FILES[i].name, p->m[i].etag, err)) goto fail;
        } else {
            mark_absent(p->repo_dir, p->commit, FILES[i].name);
        }
    }
    if (write_ref(p->repo_dir, ref->revision, p->commit, err)) goto fail;
    if (copy_str(dir_out, cap, dir, err)) goto fail;
    rc = 0;
fail:
    if (rc && p->unreachable) { /* like huggingface_hub: no network, but the model is cached */
        cs_err scratch;
        if (cs_hub_find_cached(env, ref, dir_out, cap, &scratch) == 0) {
            if (env->progress) fprintf(stderr, "warning: %s; using the cached copy of %s\n", err ? err->msg : "", p->name);
            rc = 0;
        } else if (err) { /* say what works without the Hub; HF_HUB_OFFLINE alone would not */
            char why[CS_ERR_MAX];
            snprintf(why, sizeof why, "%s", err->msg);
            cs_err_set(err, "%s; model %s is not in the cache at %s: run `cserve pull %s` on a machine that can reach "
                            "the Hub and copy that cache here (HF_HUB_OFFLINE=1 then skips the Hub), or use a local "
                            "model directory", why, p->name, env->cache, p->name);
        }
    }
    if (p->x.curl) curl_easy_cleanup(p->x.curl);
    free(p);
    return rc;
}

/* A path rather than a Hub name: don't send it to the Hub. */
static int looks_like_path(const char *model) {
    const char *at = strchr(model, '@');
    size_t n = at ? (size_t)(at - model) : strlen(model), slashes = 0;
    if (model[0] == '/' || model[0] == '.' || model[0] == '~' || (n && model[n - 1] == '/')) return 1;
    for (size_t i = 0; i < n; i++) slashes += model[i] == '/';
    return slashes > 1;
}

int cs_hub_resolve_env(const cs_hub_env *env, const char *model, char *dir_out, size_t cap, int allow_download,
                       cs_err *err) {
    if (!model || !*model) return cs_err_set(err, "empty model name");
    struct stat st;
    if (stat(model, &st) == 0 && S_ISDIR(st.st_mode)) return copy_str(dir_out, cap, model, err);
    if (looks_like_path(model)) return cs_err_set(err, "%.300s: not a model directory (no such directory)", model);
    cs_hub_ref ref;
    if (cs_hub_parse_ref(model, &ref, err)) return cs_err_prefix(err, "%.200s: not a model directory", model);
    cs_err detail = {{0}};
    int r = cs_hub_find_cached(env, &ref, dir_out, cap, &detail);
    if (r < 0) return cs_err_set(err, "%s", detail.msg);
    if (r == 0) return 0;
    if (env->offline) return offline_error(env, &ref, &detail, err);
    if (!allow_download) {
        char name[CS_HUB_REPO_MAX + CS_HUB_REV_MAX + 2];
        display_name(&ref, name, sizeof name);
        return cs_err_set(err, "model %s is not in the cache at %s: run `cserve pull %s`", name, env->cache, name);
    }
    return cs_hub_pull_env(env, &ref, dir_out, cap, err);
}

int cs_hub_resolve(const char *model, char *dir_out, size_t cap, int allow_download, cs_err *err) {
    cs_hub_env *env = malloc(sizeof *env);
    if (!env) return cs_err_set(err, "out of memory");
    int rc = -1;
    if (model && *model) { /* a directory needs no environment */
        struct stat st;
        if (stat(model, &st) == 0 && S_ISDIR(st.st_mode)) {
            rc = copy_str(dir_out, cap, model, err);
            goto out;
        }
    }
    if (cs_hub_env_init(env, err) == 0) rc = cs_hub_resolve_env(env, model, dir_out, cap, allow_download, err);
out:
    free(env);
    return rc;
}

int cs_hub_pull(const char *model, char *dir_out, size_t cap, cs_err *err) {
    cs_hub_ref ref;
    if (cs_hub_parse_ref(model, &ref, err)) return -1;
    cs_hub_env *env = malloc(sizeof *env);
    if (!env) return cs_err_set(err, "out of memory");
    int rc = cs_hub_env_init(env, err) == 0 ? cs_hub_pull_env(env, &ref, dir_out, cap, err) : -1;
    free(env);
    return rc;
}
