/* cs_scfg: see config.h. This file: RayService extraction and the validation
 * of Ray Serve's ServeDeploySchema into cs_scfg; YAML text becomes json_t
 * with source positions in yamldoc.c. */
#include "serve/config.h"

#include "engine/generate.h"
#include "serve/clean.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve/chat_tpl.h"
#include "serve/yamldoc.h"

#define SCFG_INT_MAX 1000000000    /* request counts, generation lengths */
#define SCFG_SECONDS_MAX 1e9       /* any duration (about 31 years) */
#define SCFG_CPUS_MAX 1e6          /* ray_actor_options.num_cpus / num_gpus */
#define SCFG_AUTO_MAX_REPLICAS 100 /* Ray's max_replicas for num_replicas "auto" */
#define SCFG_MAX_PATH 256

static const char k_textgen_dep[] = "TextGenService";
static const char k_default_model[] = "distilgpt2";
static const char k_builtin_list[] = "cserve.apps:text_generation, serve_app:deployment_graph";

/* snprintf that may cut (messages and paths are bounded on purpose). */
__attribute__((format(printf, 3, 4))) static void fmtcut(char *buf, size_t cap, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, cap, f, ap);
    va_end(ap);
}

/* Copies at most max bytes of s into buf for a message (cut with "..."). */
static const char *clip(char *buf, size_t cap, const char *s, size_t max) {
    size_t n = strlen(s);
    if (max + 4 > cap) max = cap - 4;
    if (n <= max) {
        memcpy(buf, s, n + 1);
    } else {
        while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--; /* whole UTF-8 characters */
        memcpy(buf, s, max);
        memcpy(buf + max, "...", 4);
    }
    return buf;
}

static const cs_yd_limits k_limits = {CS_SCFG_MAX_DEPTH, CS_SCFG_MAX_NODES, "CS_SCFG_MAX_DEPTH", "CS_SCFG_MAX_NODES"};

/* ============================================================ validation */

typedef struct vctx {
    const char *origin; /* NULL: a json_t document (no positions) */
    const cs_yd_pos *pos;
    cs_err *err;
} vctx;

typedef struct loc {
    char path[SCFG_MAX_PATH];
    int line, col; /* 0: unknown */
} loc;

static void loc_root(loc *l, const vctx *v, const json_t *root) {
    memset(l, 0, sizeof *l);
    if (cs_yd_find(v->pos, root, NULL, SIZE_MAX, &l->line, &l->col)) l->line = l->col = 0;
}

static void loc_key(loc *out, const vctx *v, const loc *parent, const json_t *obj, const char *key) {
    char cb[80];
    clip(cb, sizeof cb, key, 64);
    if (parent->path[0]) fmtcut(out->path, sizeof out->path, "%s.%s", parent->path, cb);
    else snprintf(out->path, sizeof out->path, "%s", cb);
    if (cs_yd_find(v->pos, obj, key, 0, &out->line, &out->col)) out->line = parent->line, out->col = parent->col;
}

static void loc_idx(loc *out, const vctx *v, const loc *parent, const json_t *arr, size_t i) {
    fmtcut(out->path, sizeof out->path, "%s[%zu]", parent->path, i);
    if (cs_yd_find(v->pos, arr, NULL, i, &out->line, &out->col)) out->line = parent->line, out->col = parent->col;
}

static void where(char *buf, size_t cap, const vctx *v, const loc *l) {
    size_t n = 0;
    buf[0] = 0;
    if (v->origin && l->line > 0) n = (size_t)snprintf(buf, cap, "%s:%d:%d: ", v->origin, l->line, l->col);
    else if (v->origin) n = (size_t)snprintf(buf, cap, "%s: ", v->origin);
    if (n < cap && l->path[0]) snprintf(buf + n, cap - n, "%s: ", l->path);
}

__attribute__((format(printf, 3, 4))) static int v_fail(const vctx *v, const loc *l, const char *fmt, ...) {
    char msg[CS_ERR_MAX], w[CS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    where(w, sizeof w, v, l);
    return cs_err_set(v->err, "%s%s", w, msg);
}

/* A short rendering of a value for messages. */
static const char *describe(char *buf, size_t cap, const json_t *x) {
    if (!x) return "nothing";
    if (json_is_object(x)) return "a mapping";
    if (json_is_array(x)) return "a list";
    char *s = json_dumps(x, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
    if (!s) return "a value";
    clip(buf, cap, s, 60);
    free(s);
    return buf;
}

static int is_num(const json_t *x) { return json_is_integer(x) || json_is_real(x); }

/* The ranges of a number field: lo/hi with open (>/<) or closed (>=/<=) ends;
 * hi is left out of messages when it is only a sanity cap (hi_quiet). */
typedef struct nspec {
    double lo, hi;
    char lo_open, hi_quiet, is_int, nullable;
} nspec;

static void nspec_text(char *buf, size_t cap, const nspec *s) {
    int n = snprintf(buf, cap, "%s %s %.15g", s->is_int ? "an integer" : "a number", s->lo_open ? ">" : ">=", s->lo);
    if (!s->hi_quiet && n > 0 && (size_t)n < cap) n += snprintf(buf + n, cap - (size_t)n, " and <= %.15g", s->hi);
    if (s->nullable && n > 0 && (size_t)n < cap) snprintf(buf + n, cap - (size_t)n, " or null");
}

/* x -> *out under spec; null (when allowed) leaves *out unchanged and returns 1. */
static int get_num(const vctx *v, const loc *l, const json_t *x, const nspec *s, double *out) {
    if (s->nullable && json_is_null(x)) return 1;
    double d = is_num(x) ? json_number_value(x) : NAN;
    int ok = isfinite(d) && (s->lo_open ? d > s->lo : d >= s->lo) && d <= s->hi;
    if (ok && s->is_int && d != floor(d)) ok = 0;
    if (!ok) {
        char want[96], got[96];
        nspec_text(want, sizeof want, s);
        if (s->hi_quiet && isfinite(d) && d > s->hi)
            return v_fail(v, l, "expected %s, got %s (more than %.15g)", want, describe(got, sizeof got, x), s->hi);
        return v_fail(v, l, "expected %s, got %s", want, describe(got, sizeof got, x));
    }
    *out = d;
    return 0;
}

static int get_int(const vctx *v, const loc *l, const json_t *x, const nspec *s, int *out) {
    double d = 0;
    int rc = get_num(v, l, x, s, &d);
    if (rc == 0) *out = (int)d;
    return rc;
}

/* A string without NUL bytes, shorter than cap. */
static int get_str(const vctx *v, const loc *l, const json_t *x, char *out, size_t cap) {
    char got[96];
    if (!json_is_string(x)) return v_fail(v, l, "expected a string, got %s", describe(got, sizeof got, x));
    size_t n = json_string_length(x);
    if (strlen(json_string_value(x)) != n) return v_fail(v, l, "the string holds a NUL character");
    if (n >= cap) return v_fail(v, l, "longer than %zu bytes", cap - 1);
    memcpy(out, json_string_value(x), n + 1);
    return 0;
}

/* An object (or null when nullable); returns 1 for null. */
static int want_object(const vctx *v, const loc *l, const json_t *x, int nullable) {
    char got[96];
    if (json_is_object(x)) return 0;
    if (nullable && json_is_null(x)) return 1;
    return v_fail(v, l, "expected a mapping%s, got %s", nullable ? " or null" : "", describe(got, sizeof got, x));
}

#define NUM(lo_, open_) ((nspec){(lo_), SCFG_SECONDS_MAX, (open_), 1, 0, 0})
#define NUM_OR_NULL(lo_, open_) ((nspec){(lo_), SCFG_SECONDS_MAX, (open_), 1, 0, 1})

static void as_defaults(cs_scfg_autoscaling *a) {
    *a = (cs_scfg_autoscaling){
        .min_replicas = 1,
        .initial_replicas = -1,
        .max_replicas = 1,
        .target_ongoing_requests = 2,
        .look_back_period_s = 30,
        .metrics_interval_s = 10,
        .smoothing_factor = 1,
        .upscaling_factor = -1,
        .downscaling_factor = -1,
        .upscale_delay_s = 30,
        .downscale_delay_s = 600,
        .downscale_to_zero_delay_s = -1,
    };
}

static void dep_defaults(cs_scfg_deployment *d, const char *name, int max_ongoing) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->num_replicas = 1;
    as_defaults(&d->as);
    d->max_ongoing_requests = max_ongoing;
    d->max_queued_requests = -1;
    d->graceful_shutdown_wait_loop_s = 2;
    d->graceful_shutdown_timeout_s = 20;
    d->health_check_period_s = 10;
    d->health_check_timeout_s = 30;
}

static void dep_release(cs_scfg_deployment *d) {
    json_decref(d->user_config);
    json_decref(d->given);
    json_decref(d->clean_opts);
    json_decref(d->remote);
    d->user_config = d->given = d->clean_opts = d->remote = NULL;
}

static int replicas_field(const vctx *v, const loc *l, const json_t *x, int lo, int nullable, int *out) {
    nspec s = {lo, CS_SCFG_MAX_REPLICAS, 0, 1, 1, (char)nullable};
    if (is_num(x) && isfinite(json_number_value(x)) && json_number_value(x) > CS_SCFG_MAX_REPLICAS &&
        json_number_value(x) == floor(json_number_value(x)))
        return v_fail(v, l, "%.15g is more than the %d replicas a deployment may have (CS_SCFG_MAX_REPLICAS)",
                      json_number_value(x), CS_SCFG_MAX_REPLICAS);
    return get_int(v, l, x, &s, out) < 0 ? -1 : 0;
}

static int parse_autoscaling(const vctx *v, const loc *l, const json_t *o, cs_scfg_autoscaling *a) {
    loc fl;
    const json_t *x;
    const nspec pos = NUM(0, 1), nonneg = NUM(0, 0), pos_null = NUM_OR_NULL(0, 1), nonneg_null = NUM_OR_NULL(0, 0);
    struct {
        const char *key;
        const nspec *spec;
        double *dst;
    } nums[] = {
        {"target_ongoing_requests", &pos, &a->target_ongoing_requests},
        {"look_back_period_s", &pos, &a->look_back_period_s},
        {"metrics_interval_s", &pos, &a->metrics_interval_s},
        {"smoothing_factor", &pos, &a->smoothing_factor},
        {"upscaling_factor", &pos_null, &a->upscaling_factor},
        {"downscaling_factor", &pos_null, &a->downscaling_factor},
        {"upscale_delay_s", &nonneg, &a->upscale_delay_s},
        {"downscale_delay_s", &nonneg, &a->downscale_delay_s},
        {"downscale_to_zero_delay_s", &nonneg_null, &a->downscale_to_zero_delay_s},
    };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        if (!(x = json_object_get(o, nums[i].key))) continue;
        loc_key(&fl, v, l, o, nums[i].key);
        double d;
        int rc = get_num(v, &fl, x, nums[i].spec, &d);
        if (rc < 0) return -1;
        *nums[i].dst = rc == 1 ? -1 : d;
    }
    /* deprecated names of the two factors (used when the new names are absent) */
    static const char *old[2] = {"upscale_smoothing_factor", "downscale_smoothing_factor"};
    double *olddst[2] = {&a->upscaling_factor, &a->downscaling_factor};
    for (int i = 0; i < 2; i++) {
        if (!(x = json_object_get(o, old[i]))) continue;
        loc_key(&fl, v, l, o, old[i]);
        double d;
        int rc = get_num(v, &fl, x, &pos_null, &d);
        if (rc < 0) return -1;
        if (rc == 0 && *olddst[i] < 0) *olddst[i] = d;
    }
    loc lmin = *l, lmax = *l, linit = *l;
    if ((x = json_object_get(o, "min_replicas"))) {
        loc_key(&lmin, v, l, o, "min_replicas");
        if (replicas_field(v, &lmin, x, 0, 0, &a->min_replicas)) return -1;
    }
    if ((x = json_object_get(o, "max_replicas"))) {
        loc_key(&lmax, v, l, o, "max_replicas");
        if (replicas_field(v, &lmax, x, 1, 0, &a->max_replicas)) return -1;
    }
    if ((x = json_object_get(o, "initial_replicas"))) {
        loc_key(&linit, v, l, o, "initial_replicas");
        if (json_is_null(x)) a->initial_replicas = -1;
        else if (replicas_field(v, &linit, x, 0, 0, &a->initial_replicas)) return -1;
    }
    if (a->min_replicas > a->max_replicas)
        return v_fail(v, &lmax, "max_replicas (%d) must be >= min_replicas (%d)", a->max_replicas, a->min_replicas);
    if (a->initial_replicas >= 0 && a->initial_replicas < a->min_replicas)
        return v_fail(v, &linit, "initial_replicas (%d) must be >= min_replicas (%d)", a->initial_replicas,
                      a->min_replicas);
    if (a->initial_replicas > a->max_replicas)
        return v_fail(v, &linit, "initial_replicas (%d) must be <= max_replicas (%d)", a->initial_replicas,
                      a->max_replicas);
    return 0;
}

static int parse_actor_options(const vctx *v, const loc *l, const json_t *o, cs_scfg_deployment *d) {
    loc fl;
    const json_t *x;
    const nspec cpus = {0, SCFG_CPUS_MAX, 0, 1, 0, 1};
    const nspec mem = {0, 1e18, 0, 1, 0, 1};
    if ((x = json_object_get(o, "num_cpus"))) {
        loc_key(&fl, v, l, o, "num_cpus");
        if (get_num(v, &fl, x, &cpus, &d->num_cpus) < 0) return -1;
    }
    double tmp;
    if ((x = json_object_get(o, "num_gpus"))) {
        loc_key(&fl, v, l, o, "num_gpus");
        if (get_num(v, &fl, x, &cpus, &tmp) < 0) return -1;
    }
    if ((x = json_object_get(o, "memory"))) {
        loc_key(&fl, v, l, o, "memory");
        if (get_num(v, &fl, x, &mem, &tmp) < 0) return -1;
    }
    static const char *objs[] = {"resources", "runtime_env"};
    for (size_t i = 0; i < 2; i++) {
        if (!(x = json_object_get(o, objs[i]))) continue;
        loc_key(&fl, v, l, o, objs[i]);
        if (want_object(v, &fl, x, 1) < 0) return -1;
    }
    return 0;
}

/* One entry of an application's deployments list (schema checks only). */
static int parse_deployment(const vctx *v, const loc *l, const json_t *o, cs_scfg_deployment *d, int max_ongoing) {
    loc fl, lnum = *l;
    const json_t *x;
    char got[96], name[CS_SCFG_MAX_NAME];
    if (want_object(v, l, o, 0)) return -1;
    loc_key(&fl, v, l, o, "name");
    if (!(x = json_object_get(o, "name"))) return v_fail(v, &fl, "required field missing");
    if (get_str(v, &fl, x, name, sizeof name)) return -1;
    if (!name[0]) return v_fail(v, &fl, "deployment names must be non-empty");
    dep_defaults(d, name, max_ongoing);
    d->given = json_incref((json_t *)o);

    int fixed = 0, autos = 0;
    if ((x = json_object_get(o, "num_replicas")) && !json_is_null(x)) {
        loc_key(&lnum, v, l, o, "num_replicas");
        if (json_is_string(x)) {
            if (strcmp(json_string_value(x), "auto"))
                return v_fail(v, &lnum, "expected a positive integer or \"auto\", got %s",
                              describe(got, sizeof got, x));
            autos = 1;
        } else if (is_num(x)) {
            if (replicas_field(v, &lnum, x, 1, 0, &d->num_replicas)) return -1;
            fixed = 1;
        } else {
            return v_fail(v, &lnum, "expected a positive integer or \"auto\", got %s", describe(got, sizeof got, x));
        }
    }
    if (autos) { /* Ray's defaults for "auto", capped at what cserve can run */
        d->autoscaling = 1;
        d->as.min_replicas = 1;
        d->as.max_replicas =
            SCFG_AUTO_MAX_REPLICAS < CS_SCFG_MAX_REPLICAS ? SCFG_AUTO_MAX_REPLICAS : CS_SCFG_MAX_REPLICAS;
        d->as.target_ongoing_requests = 2;
    }
    if ((x = json_object_get(o, "autoscaling_config"))) {
        loc_key(&fl, v, l, o, "autoscaling_config");
        int rc = want_object(v, &fl, x, 1);
        if (rc < 0) return -1;
        if (rc == 0) {
            if (fixed)
                return v_fail(v, &lnum, "an integer num_replicas cannot be combined with autoscaling_config "
                                        "(leave num_replicas out or set it to \"auto\")");
            /* with "auto", the user's fields override auto's defaults already in d->as */
            if (parse_autoscaling(v, &fl, x, &d->as)) return -1;
            d->autoscaling = 1;
        }
    }
    if ((x = json_object_get(o, "max_ongoing_requests"))) {
        loc_key(&fl, v, l, o, "max_ongoing_requests");
        nspec s = {0, SCFG_INT_MAX, 1, 1, 1, 0};
        if (get_int(v, &fl, x, &s, &d->max_ongoing_requests)) return -1;
    }
    if ((x = json_object_get(o, "max_queued_requests"))) {
        loc_key(&fl, v, l, o, "max_queued_requests");
        if (!(is_num(x) && json_number_value(x) == -1)) {
            double dv = is_num(x) ? json_number_value(x) : NAN;
            if (!(isfinite(dv) && dv >= 1 && dv <= SCFG_INT_MAX && dv == floor(dv)))
                return v_fail(v, &fl, "expected -1 (no limit) or an integer >= 1, got %s",
                              describe(got, sizeof got, x));
            d->max_queued_requests = (int)dv;
        }
    }
    if ((x = json_object_get(o, "user_config"))) {
        loc_key(&fl, v, l, o, "user_config");
        int rc = want_object(v, &fl, x, 1);
        if (rc < 0) return -1;
        if (rc == 0) d->user_config = json_incref((json_t *)x);
    }
    const nspec nonneg = NUM(0, 0), pos = NUM(0, 1);
    struct {
        const char *key;
        const nspec *spec;
        double *dst;
    } nums[] = {
        {"graceful_shutdown_wait_loop_s", &nonneg, &d->graceful_shutdown_wait_loop_s},
        {"graceful_shutdown_timeout_s", &nonneg, &d->graceful_shutdown_timeout_s},
        {"health_check_period_s", &pos, &d->health_check_period_s},
        {"health_check_timeout_s", &pos, &d->health_check_timeout_s},
    };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        if (!(x = json_object_get(o, nums[i].key))) continue;
        loc_key(&fl, v, l, o, nums[i].key);
        if (get_num(v, &fl, x, nums[i].spec, nums[i].dst)) return -1;
    }
    if ((x = json_object_get(o, "ray_actor_options"))) {
        loc_key(&fl, v, l, o, "ray_actor_options");
        int rc = want_object(v, &fl, x, 1);
        if (rc < 0 || (rc == 0 && parse_actor_options(v, &fl, x, d))) return -1;
    }
    if ((x = json_object_get(o, "max_replicas_per_node"))) {
        loc_key(&fl, v, l, o, "max_replicas_per_node");
        nspec s = {1, 100, 0, 0, 1, 1};
        double dv;
        if (get_num(v, &fl, x, &s, &dv) < 0) return -1;
    }
    static const char *objs[] = {"request_router_config", "logging_config"};
    for (size_t i = 0; i < 2; i++) {
        if (!(x = json_object_get(o, objs[i]))) continue;
        loc_key(&fl, v, l, o, objs[i]);
        if (want_object(v, &fl, x, 1) < 0) return -1;
    }
    if ((x = json_object_get(o, "placement_group_bundles")) && !json_is_null(x) && !json_is_array(x)) {
        loc_key(&fl, v, l, o, "placement_group_bundles");
        return v_fail(v, &fl, "expected a list or null, got %s", describe(got, sizeof got, x));
    }
    if ((x = json_object_get(o, "placement_group_strategy")) && !json_is_null(x) && !json_is_string(x)) {
        loc_key(&fl, v, l, o, "placement_group_strategy");
        return v_fail(v, &fl, "expected a string or null, got %s", describe(got, sizeof got, x));
    }
    return 0;
}

/* ----------------------------------------------- application errors */

__attribute__((format(printf, 4, 5))) static void app_fail(cs_scfg_app *a, const vctx *v, const loc *l,
                                                          const char *fmt, ...) {
    if (a->error[0]) return; /* the first reason is the one to fix first */
    char msg[CS_ERR_MAX], w[CS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    loc nl = *l;
    nl.path[0] = 0; /* app errors are read per application: the field is named in msg */
    where(w, sizeof w, v, &nl);
    fmtcut(a->error, sizeof a->error, "%s%s", w, msg);
}

/* Runs a schema-style check into the application's error instead of the parse error. */
typedef struct appv {
    vctx v;
    cs_err err;
    cs_scfg_app *a;
} appv;

static void appv_init(appv *av, const vctx *v, cs_scfg_app *a) {
    av->v = *v;
    av->v.origin = v->origin;
    av->v.err = &av->err;
    av->err.msg[0] = 0;
    av->a = a;
}

static void appv_take(appv *av) {
    if (!av->a->error[0]) snprintf(av->a->error, sizeof av->a->error, "%s", av->err.msg);
}

static const char *short_path(const char *full) {
    const char *p = strstr(full, "].");
    return p ? p + 2 : full; /* "applications[0].args.x" -> "args.x" */
}

#define SCFG_MAX_VERSIONS 8
static const char k_pre_dep[] = "Preprocessor";

/* What a text_generation application's args add besides model/dtype (cserve's
 * extensions); checked again once the deployments exist. */
typedef struct tg_ext {
    size_t n_versions;
    char vname[SCFG_MAX_VERSIONS][CS_SCFG_MAX_NAME];
    char vmodel[SCFG_MAX_VERSIONS][1024];
    char vdtype[SCFG_MAX_VERSIONS][8];
    const json_t *traffic, *fallback, *preprocess, *remote;
    loc ltraffic, lfallback, lmirror, lremote;
} tg_ext;

static int dtype_arg(appv *av, const loc *fl, const json_t *x, char *out, size_t cap) {
    char dt[16] = "";
    if (get_str(&av->v, fl, x, dt, sizeof dt) != 0) return -1;
    if (strcmp(dt, "fp32") && strcmp(dt, "bf16") && strcmp(dt, "int8")) {
        char got[96];
        return v_fail(&av->v, fl, "expected one of fp32, bf16, int8, got %s", describe(got, sizeof got, x));
    }
    fmtcut(out, cap, "%s", dt);
    return 0;
}

static int header_name_ok(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || strchr("-_.!#$%&'*+^`|~", *s)))
            return 0;
    return 1;
}

static void check_versions(appv *av, const loc *l, const json_t *vs, tg_ext *ext) {
    if (want_object(&av->v, l, vs, 0)) return;
    if (json_object_size(vs) > SCFG_MAX_VERSIONS) {
        v_fail(&av->v, l, "%zu versions, at most %d", json_object_size(vs), SCFG_MAX_VERSIONS);
        return;
    }
    const char *name;
    json_t *x;
    json_object_foreach((json_t *)vs, name, x) {
        loc fl;
        loc_key(&fl, &av->v, l, vs, name);
        snprintf(fl.path, sizeof fl.path, "%s", short_path(fl.path));
        size_t k = ext->n_versions;
        if (!*name || strlen(name) >= CS_SCFG_MAX_NAME || !strcmp(name, k_textgen_dep) || !strcmp(name, k_pre_dep)) {
            v_fail(&av->v, &fl, "a version needs a name of 1..%d bytes other than %s and %s", CS_SCFG_MAX_NAME - 1,
                   k_textgen_dep, k_pre_dep);
            return;
        }
        if (want_object(&av->v, &fl, x, 0)) return;
        snprintf(ext->vname[k], sizeof ext->vname[k], "%s", name);
        snprintf(ext->vdtype[k], sizeof ext->vdtype[k], "fp32");
        const char *key;
        json_t *y;
        int has_model = 0;
        json_object_foreach(x, key, y) {
            loc kl;
            loc_key(&kl, &av->v, &fl, x, key);
            snprintf(kl.path, sizeof kl.path, "%s", short_path(kl.path));
            if (!strcmp(key, "model")) {
                if (get_str(&av->v, &kl, y, ext->vmodel[k], sizeof ext->vmodel[k]) == 0 && !ext->vmodel[k][0])
                    v_fail(&av->v, &kl, "the model must be non-empty");
                has_model = 1;
            } else if (!strcmp(key, "dtype")) {
                dtype_arg(av, &kl, y, ext->vdtype[k], sizeof ext->vdtype[k]);
            } else {
                v_fail(&av->v, &kl, "unknown field of a version (it takes: model, dtype)");
            }
            if (av->err.msg[0]) return;
        }
        if (!has_model) {
            v_fail(&av->v, &fl, "a version needs a model");
            return;
        }
        ext->n_versions++;
    }
}

static void check_textgen_args(const vctx *v, const loc *l, const json_t *args, cs_scfg_app *a, tg_ext *ext) {
    appv av;
    appv_init(&av, v, a);
    const char *key;
    json_t *x;
    json_object_foreach((json_t *)args, key, x) {
        loc fl;
        loc_key(&fl, v, l, args, key);
        loc full = fl;
        snprintf(fl.path, sizeof fl.path, "%s", short_path(fl.path));
        if (!strcmp(key, "model")) {
            if (get_str(&av.v, &fl, x, a->textgen.model, sizeof a->textgen.model) == 0 && !a->textgen.model[0])
                v_fail(&av.v, &fl, "the model must be non-empty");
        } else if (!strcmp(key, "dtype")) {
            dtype_arg(&av, &fl, x, a->textgen.dtype, sizeof a->textgen.dtype);
        } else if (!strcmp(key, "kv_cache_mb")) {
            nspec ks = {0, 1 << 30, 0, 0, 1, 0};
            get_int(&av.v, &fl, x, &ks, &a->textgen.kv_cache_mb);
        } else if (!strcmp(key, "kv_cache_dtype")) {
            char kd[16] = "";
            if (get_str(&av.v, &fl, x, kd, sizeof kd) == 0) {
                if (strcmp(kd, "auto") && strcmp(kd, "fp32") && strcmp(kd, "bf16") && strcmp(kd, "int8")) {
                    char got[96];
                    v_fail(&av.v, &fl, "expected one of auto, fp32, bf16, int8, got %s", describe(got, sizeof got, x));
                } else { /* auto is the replicas' default: kept as unset, so either spelling is the same config */
                    snprintf(a->textgen.kv_dtype, sizeof a->textgen.kv_dtype, "%s",
                             !strcmp(kd, "int8") ? "int8" : !strcmp(kd, "bf16") ? "bf16" : !strcmp(kd, "fp32") ? "fp32" : "");
                }
            }
        } else if (!strcmp(key, "versions")) {
            check_versions(&av, &full, x, ext);
        } else if (!strcmp(key, "traffic")) {
            if (!want_object(&av.v, &fl, x, 0)) ext->traffic = x, ext->ltraffic = full;
        } else if (!strcmp(key, "fallback")) {
            if (!want_object(&av.v, &fl, x, 0)) ext->fallback = x, ext->lfallback = full;
        } else if (!strcmp(key, "remote")) {
            if (!want_object(&av.v, &fl, x, 0)) ext->remote = x, ext->lremote = full;
        } else if (!strcmp(key, "preprocess")) {
            if (!want_object(&av.v, &fl, x, 0)) {
                cs_clean_opts co;
                cs_err ce = {{0}};
                if (cs_clean_opts_from_json(&co, x, &ce)) {
                    v_fail(&av.v, &fl, "%s", ce.msg);
                } else {
                    ext->preprocess = x;
                    a->textgen.preprocess = 1;
                }
            }
        } else if (!strcmp(key, "session_header")) {
            char h[64];
            if (get_str(&av.v, &fl, x, h, sizeof h) == 0) {
                if (!header_name_ok(h)) v_fail(&av.v, &fl, "not an HTTP header name: \"%s\"", h);
                else snprintf(a->textgen.session_header, sizeof a->textgen.session_header, "%s", h);
            }
        } else if (!strcmp(key, "mirror")) {
            ext->lmirror = full;
            if (!want_object(&av.v, &fl, x, 0)) {
                const json_t *d = json_object_get(x, "deployment"), *pc = json_object_get(x, "percent");
                loc dl, pl;
                loc_key(&dl, v, &fl, x, "deployment");
                loc_key(&pl, v, &fl, x, "percent");
                nspec ps = {0, 100, 0, 0, 0, 0};
                if (!d) v_fail(&av.v, &fl, "mirror needs a deployment");
                else if (get_str(&av.v, &dl, d, a->textgen.mirror, sizeof a->textgen.mirror) == 0 && pc)
                    get_num(&av.v, &pl, pc, &ps, &a->textgen.mirror_percent);
                if (!pc && !av.err.msg[0]) a->textgen.mirror_percent = 100;
                const char *mk;
                json_t *mv;
                json_object_foreach(x, mk, mv) if (strcmp(mk, "deployment") && strcmp(mk, "percent") && !av.err.msg[0])
                    v_fail(&av.v, &fl, "unknown field '%s' of mirror (it takes: deployment, percent)", mk);
            }
        } else {
            v_fail(&av.v, &fl,
                   "unknown argument of %s (it takes: model, dtype, kv_cache_mb, kv_cache_dtype, versions, traffic, "
                   "session_header, mirror, fallback, preprocess, remote)",
                   a->import_path);
        }
        if (av.err.msg[0]) break;
    }
    if (av.err.msg[0]) appv_take(&av);
}

static cs_scfg_deployment *find_dep(cs_scfg_app *a, const char *name) {
    for (size_t i = 0; i < a->n_deps; i++)
        if (!strcmp(a->deps[i].name, name)) return &a->deps[i];
    return NULL;
}

int cs_scfg_hostport(const char *s, char *host, size_t cap, int *port, const char **why) {
    const char *colon = strrchr(s, ':'), *h = s, *he = colon;
    if (!colon || colon == s) return *why = "no HOST: before the port", -1;
    if (s[0] == '[') { /* [v6]:port */
        if (colon[-1] != ']') return *why = "an IPv6 address needs brackets: [ADDR]:PORT", -1;
        h = s + 1, he = colon - 1;
        if (he == h) return *why = "empty address in brackets", -1;
        for (const char *p = h; p < he; p++)
            if (!strchr("0123456789abcdefABCDEF:.", *p)) return *why = "not an IPv6 address in the brackets", -1;
    } else {
        for (const char *p = h; p < he; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr(".-_", *p)))
                return *why = "the host may hold letters, digits, '.', '-' and '_' (an IPv6 address goes in brackets)", -1;
        if (*h == '.' || *h == '-') return *why = "the host starts with '.' or '-'", -1;
    }
    if ((size_t)(he - h) >= cap) return *why = "the host is too long", -1;
    long p = 0;
    const char *d = colon + 1;
    if (!*d || strlen(d) > 5) return *why = "the port must be a number in 1..65535", -1;
    for (; *d; d++) {
        if (*d < '0' || *d > '9') return *why = "the port must be a number in 1..65535", -1;
        p = p * 10 + (*d - '0');
    }
    if (p < 1 || p > 65535) return *why = "the port must be a number in 1..65535", -1;
    memcpy(host, h, (size_t)(he - h));
    host[he - h] = 0;
    *port = (int)p;
    return 0;
}

/* One "HOST:PORT" of args.remote. */
static int remote_addr(appv *av, const loc *l, const json_t *x) {
    char got[96], host[CS_SCFG_MAX_HOSTPORT];
    const char *why = NULL;
    int port = 0;
    if (!json_is_string(x) || json_string_length(x) >= CS_SCFG_MAX_HOSTPORT ||
        strlen(json_string_value(x)) != json_string_length(x))
        return v_fail(&av->v, l, "expected a \"HOST:PORT\" string of at most %d bytes, got %s", CS_SCFG_MAX_HOSTPORT - 1,
                      describe(got, sizeof got, x));
    if (cs_scfg_hostport(json_string_value(x), host, sizeof host, &port, &why))
        return v_fail(&av->v, l, "expected \"HOST:PORT\", got %s: %s", describe(got, sizeof got, x), why);
    return 0;
}

/* args.remote: the deployments whose replicas run on other hosts (a static list, or a
 * DNS name's addresses); each gets a normalized copy in its remote field. */
static void check_remote(appv *av, const vctx *v, cs_scfg_app *a, const tg_ext *ext) {
    const char *name;
    json_t *x;
    json_object_foreach((json_t *)ext->remote, name, x) {
        loc fl;
        loc_key(&fl, v, &ext->lremote, ext->remote, name);
        snprintf(fl.path, sizeof fl.path, "%s", short_path(fl.path));
        cs_scfg_deployment *d = find_dep(a, name);
        if (!d) {
            v_fail(&av->v, &fl, "'%s' is not a deployment of this application", name);
            return;
        }
        if (want_object(&av->v, &fl, x, 0)) return;
        const json_t *reps = json_object_get(x, "replicas"), *dns = json_object_get(x, "dns");
        const json_t *rs = json_object_get(x, "refresh_s");
        const char *k;
        json_t *y;
        json_object_foreach(x, k, y) if (strcmp(k, "replicas") && strcmp(k, "dns") && strcmp(k, "refresh_s")) {
            v_fail(&av->v, &fl, "unknown field '%s' of remote (it takes: replicas, or dns and refresh_s)", k);
            return;
        }
        if (!reps == !dns) {
            v_fail(&av->v, &fl, "give either replicas (a list of \"HOST:PORT\") or dns (\"NAME:PORT\")");
            return;
        }
        loc kl;
        json_t *out = NULL;
        if (reps) {
            char got[96];
            loc_key(&kl, v, &fl, x, "replicas");
            const size_t n = json_array_size(reps);
            if (rs) {
                v_fail(&av->v, &fl, "refresh_s goes with dns, not with a list of replicas");
                return;
            }
            if (!json_is_array(reps) || n < 1 || n > CS_SCFG_MAX_REMOTE) {
                char cnt[32];
                snprintf(cnt, sizeof cnt, "%zu addresses", n);
                v_fail(&av->v, &kl, "expected a list of 1..%d \"HOST:PORT\" strings (CS_SCFG_MAX_REMOTE), got %s",
                       CS_SCFG_MAX_REMOTE,
                       !json_is_array(reps) ? describe(got, sizeof got, reps) : n ? cnt : "an empty list");
                return;
            }
            for (size_t i = 0; i < n; i++) {
                loc il;
                loc_idx(&il, v, &kl, reps, i);
                if (remote_addr(av, &il, json_array_get(reps, i))) return;
                for (size_t j = 0; j < i; j++)
                    if (json_equal(json_array_get(reps, i), json_array_get(reps, j))) {
                        v_fail(&av->v, &il, "duplicate address %s (replicas[%zu] has it too)",
                               json_string_value(json_array_get(reps, i)), j);
                        return;
                    }
            }
            out = json_pack("{s:O}", "replicas", reps);
        } else {
            double refresh = CS_SCFG_REMOTE_REFRESH_S;
            loc_key(&kl, v, &fl, x, "dns");
            if (remote_addr(av, &kl, dns)) return;
            nspec ns = {0.1, 3600, 0, 0, 0, 0};
            loc rl;
            loc_key(&rl, v, &fl, x, "refresh_s");
            if (rs && get_num(&av->v, &rl, rs, &ns, &refresh)) return;
            out = json_pack("{s:O, s:f}", "dns", dns, "refresh_s", refresh);
        }
        if (!out) {
            v_fail(&av->v, &fl, "out of memory");
            return;
        }
        json_decref(d->remote);
        d->remote = out;
    }
}

/* Weights, fallbacks and the mirror name, now that the deployments exist. */
static void check_textgen_routing(const vctx *v, cs_scfg_app *a, tg_ext *ext) {
    appv av;
    appv_init(&av, v, a);
    if (ext->traffic) {
        a->deps[0].weight = 0;
        double total = 0;
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)ext->traffic, key, x) {
            loc fl;
            loc_key(&fl, v, &ext->ltraffic, ext->traffic, key);
            snprintf(fl.path, sizeof fl.path, "%s", short_path(fl.path));
            cs_scfg_deployment *d = find_dep(a, key);
            nspec ws = {0, 1e9, 0, 0, 0, 0};
            if (!d || d->role != CS_DEP_GENERATOR) {
                v_fail(&av.v, &fl, "'%s' is not a generator deployment of this application (TextGenService or a "
                                   "name under versions)", key);
            } else if (get_num(&av.v, &fl, x, &ws, &d->weight) == 0) {
                total += d->weight;
            }
            if (av.err.msg[0]) break;
        }
        if (!av.err.msg[0] && !(total > 0)) v_fail(&av.v, &ext->ltraffic, "traffic: the weights add up to 0");
    }
    if (!av.err.msg[0] && ext->fallback) {
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)ext->fallback, key, x) {
            loc fl;
            loc_key(&fl, v, &ext->lfallback, ext->fallback, key);
            snprintf(fl.path, sizeof fl.path, "%s", short_path(fl.path));
            cs_scfg_deployment *from = find_dep(a, key), *to = json_is_string(x) ? find_dep(a, json_string_value(x)) : NULL;
            if (!from || from->role != CS_DEP_GENERATOR || !to || to->role != CS_DEP_GENERATOR || from == to)
                v_fail(&av.v, &fl, "fallback: expected GENERATOR: OTHER_GENERATOR (TextGenService or names under "
                                   "versions)");
            else snprintf(from->fallback, sizeof from->fallback, "%s", to->name);
            if (av.err.msg[0]) break;
        }
    }
    if (!av.err.msg[0] && a->textgen.mirror[0]) {
        cs_scfg_deployment *m = find_dep(a, a->textgen.mirror);
        if (!m || m->role != CS_DEP_GENERATOR)
            v_fail(&av.v, &ext->lmirror, "mirror: '%s' is not a generator deployment of this application",
                   a->textgen.mirror);
    }
    if (!av.err.msg[0] && ext->remote) check_remote(&av, v, a, ext);
    if (av.err.msg[0]) appv_take(&av);
}

/* TextGenService's user_config: generation defaults of the replica. */
static void check_textgen_user_config(const vctx *v, const loc *l, const json_t *uc, cs_scfg_app *a) {
    appv av;
    appv_init(&av, v, a);
    static const struct {
        const char *key;
        nspec spec; /* is_int == 2: a boolean */
    } k[] = {
        /* the ranges of the request fields, which a replica enforces (src/serve/api_simple.c) */
        {"max_new_tokens", {1, 1 << 20, 0, 0, 1, 0}}, {"max_length", {1, 1 << 20, 0, 0, 1, 0}},
        {"do_sample", {0, 0, 0, 0, 2, 0}},            {"temperature", {0, 100, 1, 0, 0, 0}},
        {"top_k", {0, 1 << 30, 0, 0, 1, 0}},          {"top_p", {0, 1, 1, 0, 0, 0}},
        {"repetition_penalty", {0, 100, 1, 0, 0, 0}},
    };
    const char *key;
    json_t *x;
    json_object_foreach((json_t *)uc, key, x) {
        loc fl;
        loc_key(&fl, v, l, uc, key);
        snprintf(fl.path, sizeof fl.path, "%s", short_path(fl.path));
        size_t i = 0;
        while (i < sizeof k / sizeof *k && strcmp(k[i].key, key)) i++;
        cs_pipeline_defaults pd;
        cs_err ce = {{0}};
        if (!strcmp(key, "chat_template")) { /* the template of /v1/chat/completions (api_chat.c) */
            json_t *t = NULL;
            if (cs_chat_tpl_norm(x, "chat_template", &t, &ce)) v_fail(&av.v, &fl, "%s", ce.msg);
            json_decref(t);
        } else if (!strcmp(key, "pipeline_defaults")) { /* which transformers' pipeline defaults (api_simple.c) */
            char got[96];
            if (!json_is_string(x) || cs_pipeline_defaults_parse(json_string_value(x), &pd))
                v_fail(&av.v, &fl, "expected \"4.57\" (transformers >= 4.52, the default) or \"4.51\" "
                                   "(transformers <= 4.51), got %s", describe(got, sizeof got, x));
        } else if (i == sizeof k / sizeof *k) {
            v_fail(&av.v, &fl, "unknown generation parameter (known: max_new_tokens, max_length, do_sample, "
                               "temperature, top_k, top_p, repetition_penalty, pipeline_defaults, chat_template)");
        } else if (k[i].spec.is_int == 2) {
            char got[96];
            if (!json_is_boolean(x)) v_fail(&av.v, &fl, "expected true or false, got %s", describe(got, sizeof got, x));
        } else {
            double d;
            get_num(&av.v, &fl, x, &k[i].spec, &d);
        }
        if (av.err.msg[0]) break;
    }
    if (av.err.msg[0]) appv_take(&av);
}

/* ----------------------------------------------------- applications */

/* mod:attr with one colon, or mod.attr; the names Ray's import_attr accepts. */
static const char *import_path_problem(const char *s) {
    const char *colon = strchr(s, ':');
    size_t n = strlen(s);
    if (!n) return "must be non-empty";
    if (colon) {
        if (strchr(colon + 1, ':')) return "may have at most one colon";
        if (colon == s || colon == s + n - 1) return "may not start or end with a colon";
    } else {
        if (!strchr(s, '.'))
            return "must be MODULE:ATTRIBUTE or MODULE.ATTRIBUTE (a dot or colon separates the module from the "
                   "application)";
    }
    if (s[0] == '.' || s[n - 1] == '.') return "may not start or end with a dot";
    return NULL;
}

static cs_scfg_app_kind builtin_kind(const char *ip) {
    static const char *names[] = {"cserve.apps:text_generation", "cserve.apps.text_generation",
                                  "serve_app:deployment_graph", "serve_app.deployment_graph"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(ip, names[i])) return CS_APP_TEXT_GENERATION;
    return CS_APP_UNKNOWN;
}

static int parse_app_deployments(const vctx *v, const loc *l, const json_t *o, cs_scfg_app *a, tg_ext *ext);

static int parse_app(const vctx *v, const loc *l, const json_t *o, cs_scfg_app *a) {
    loc fl;
    const json_t *x;
    char got[96];
    if (want_object(v, l, o, 0)) return -1;
    a->given = json_incref((json_t *)o);
    static const char *banned[] = {"host", "port"};
    for (int i = 0; i < 2; i++)
        if (json_object_get(o, banned[i])) {
            loc_key(&fl, v, l, o, banned[i]);
            return v_fail(v, &fl, "host and port can only be set in http_options, not in an application");
        }
    snprintf(a->name, sizeof a->name, "default");
    if ((x = json_object_get(o, "name"))) {
        loc_key(&fl, v, l, o, "name");
        if (get_str(v, &fl, x, a->name, sizeof a->name)) return -1;
        if (!a->name[0]) return v_fail(v, &fl, "application names must be non-empty");
    }
    snprintf(a->route_prefix, sizeof a->route_prefix, "/");
    loc lprefix = *l;
    if ((x = json_object_get(o, "route_prefix"))) {
        loc_key(&lprefix, v, l, o, "route_prefix");
        if (json_is_null(x)) a->route_prefix[0] = 0;
        else if (get_str(v, &lprefix, x, a->route_prefix, sizeof a->route_prefix)) return -1;
    }
    loc limport;
    loc_key(&limport, v, l, o, "import_path");
    if (!(x = json_object_get(o, "import_path")))
        return v_fail(v, &limport, "required field missing (e.g. cserve.apps:text_generation)");
    if (get_str(v, &limport, x, a->import_path, sizeof a->import_path)) return -1;
    const char *prob = import_path_problem(a->import_path);
    if (prob) return v_fail(v, &limport, "invalid import path %s: %s", describe(got, sizeof got, x), prob);
    a->kind = builtin_kind(a->import_path);
    int textgen = a->kind == CS_APP_TEXT_GENERATION;
    loc largs = *l;
    if ((x = json_object_get(o, "args"))) {
        loc_key(&largs, v, l, o, "args");
        if (want_object(v, &largs, x, 1) < 0) return -1;
    }
    a->args = json_is_object(x) ? json_incref((json_t *)x) : json_object();
    if (!a->args) return v_fail(v, l, "out of memory");
    static const char *objs[] = {"runtime_env", "logging_config"};
    for (size_t i = 0; i < 2; i++) {
        if (!(x = json_object_get(o, objs[i]))) continue;
        loc_key(&fl, v, l, o, objs[i]);
        if (want_object(v, &fl, x, 1) < 0) return -1;
    }

    /* application errors (the first one found is kept): import path, route prefix, args,
     * then the deployments below */
    if (a->kind == CS_APP_UNKNOWN)
        app_fail(a, v, &limport, "import_path '%s' is not a built-in application (built in: %s)", a->import_path,
                 k_builtin_list);
    if (a->route_prefix[0] || json_is_string(json_object_get(o, "route_prefix"))) {
        if (a->route_prefix[0] != '/')
            app_fail(a, v, &lprefix, "invalid route_prefix \"%s\": must start with \"/\"", a->route_prefix);
        else if (strlen(a->route_prefix) > 1 && a->route_prefix[strlen(a->route_prefix) - 1] == '/')
            app_fail(a, v, &lprefix, "invalid route_prefix \"%s\": cannot end with \"/\" unless it is \"/\"",
                     a->route_prefix);
        else if (strpbrk(a->route_prefix, "{}"))
            app_fail(a, v, &lprefix, "invalid route_prefix \"%s\": may not contain wildcards ('{' or '}')",
                     a->route_prefix);
    }
    tg_ext *ext = textgen ? calloc(1, sizeof *ext) : NULL;
    if (textgen && !ext) return v_fail(v, l, "out of memory");
    if (textgen) {
        snprintf(a->textgen.model, sizeof a->textgen.model, "%s", k_default_model);
        snprintf(a->textgen.dtype, sizeof a->textgen.dtype, "fp32");
        check_textgen_args(v, &largs, a->args, a, ext);
    }
    int rc = parse_app_deployments(v, l, o, a, ext);
    free(ext);
    return rc;
}

static int parse_app_deployments(const vctx *v, const loc *l, const json_t *o, cs_scfg_app *a, tg_ext *ext) {
    const int textgen = a->kind == CS_APP_TEXT_GENERATION;
    char got[96];

    /* deployments: every entry validated; a text_generation app has exactly TextGenService */
    const json_t *deps = json_object_get(o, "deployments");
    loc ldeps = *l;
    size_t nd = 0;
    if (deps) {
        loc_key(&ldeps, v, l, o, "deployments");
        if (!json_is_null(deps) && !json_is_array(deps))
            return v_fail(v, &ldeps, "expected a list, got %s", describe(got, sizeof got, deps));
        nd = json_array_size(deps);
        if (nd > CS_SCFG_MAX_DEPLOYMENTS)
            return v_fail(v, &ldeps, "%zu deployments, at most %d per application (CS_SCFG_MAX_DEPLOYMENTS)", nd,
                          CS_SCFG_MAX_DEPLOYMENTS);
    }
    size_t cap = nd + (ext ? ext->n_versions + 2 : 1);
    if (!(a->deps = calloc(cap, sizeof *a->deps))) return v_fail(v, l, "out of memory");
    if (textgen) {
        /* the application's deployments: TextGenService, the versions, the Preprocessor */
        dep_defaults(&a->deps[0], k_textgen_dep, CS_SCFG_TEXTGEN_MAX_ONGOING);
        snprintf(a->deps[0].model, sizeof a->deps[0].model, "%s", a->textgen.model);
        snprintf(a->deps[0].dtype, sizeof a->deps[0].dtype, "%s", a->textgen.dtype);
        a->deps[0].kv_cache_mb = a->textgen.kv_cache_mb;
        snprintf(a->deps[0].kv_dtype, sizeof a->deps[0].kv_dtype, "%s", a->textgen.kv_dtype);
        a->deps[0].weight = 1;
        a->n_deps = 1;
        for (size_t k = 0; k < ext->n_versions; k++) {
            cs_scfg_deployment *d = &a->deps[a->n_deps++];
            dep_defaults(d, ext->vname[k], CS_SCFG_TEXTGEN_MAX_ONGOING);
            snprintf(d->model, sizeof d->model, "%s", ext->vmodel[k]);
            snprintf(d->dtype, sizeof d->dtype, "%s", ext->vdtype[k]);
            d->kv_cache_mb = a->textgen.kv_cache_mb;
            snprintf(d->kv_dtype, sizeof d->kv_dtype, "%s", a->textgen.kv_dtype);
        }
        if (ext->preprocess) {
            cs_scfg_deployment *d = &a->deps[a->n_deps++];
            dep_defaults(d, k_pre_dep, CS_SCFG_PRE_MAX_ONGOING);
            d->role = CS_DEP_PREPROCESSOR;
            d->clean_opts = json_incref((json_t *)ext->preprocess);
        }
    }
    for (size_t i = 0; i < nd; i++) {
        loc dl;
        loc_idx(&dl, v, &ldeps, deps, i);
        cs_scfg_deployment d;
        const json_t *dn = json_object_get(json_array_get(deps, i), "name");
        cs_scfg_deployment *known = textgen && json_is_string(dn) ? find_dep(a, json_string_value(dn)) : NULL;
        memset(&d, 0, sizeof d);
        if (parse_deployment(v, &dl, json_array_get(deps, i), &d,
                             known ? known->max_ongoing_requests : 5)) {
            dep_release(&d);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            const json_t *pn = json_object_get(json_array_get(deps, j), "name");
            if (!strcmp(json_string_value(pn), d.name)) {
                loc nl;
                loc_key(&nl, v, &dl, json_array_get(deps, i), "name");
                dep_release(&d);
                return v_fail(v, &nl, "duplicate deployment name '%s' (deployments[%zu] has it too)", d.name, j);
            }
        }
        if (known) {
            /* the config's settings on top of what the application defines */
            d.role = known->role;
            d.weight = known->weight;
            memcpy(d.model, known->model, sizeof d.model);
            memcpy(d.dtype, known->dtype, sizeof d.dtype);
            d.kv_cache_mb = known->kv_cache_mb;
            memcpy(d.kv_dtype, known->kv_dtype, sizeof d.kv_dtype);
            d.clean_opts = known->clean_opts;
            known->clean_opts = NULL;
            dep_release(known);
            *known = d;
        } else if (textgen) {
            char names[CS_ERR_MAX] = "";
            for (size_t k = 0; k < a->n_deps; k++)
                fmtcut(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "", a->deps[k].name);
            app_fail(a, v, &dl, "deployment '%s' not found in application '%s' (it has: %s)", d.name, a->name, names);
            dep_release(&d);
        } else {
            d.role = CS_DEP_OTHER;
            a->deps[a->n_deps++] = d;
        }
    }

    if (textgen && a->deps[0].user_config) {
        loc dl, ul;
        const json_t *g = a->deps[0].given;
        size_t gi = 0;
        while (gi < nd && json_array_get(deps, gi) != g) gi++;
        loc_idx(&dl, v, &ldeps, deps, gi);
        loc_key(&ul, v, &dl, g, "user_config");
        check_textgen_user_config(v, &ul, a->deps[0].user_config, a);
    }
    if (textgen) check_textgen_routing(v, a, ext);
    return 0;
}

static int parse_http_options(const vctx *v, const loc *l, const json_t *o, cs_scfg *c) {
    loc fl;
    const json_t *x;
    char got[96];
    if ((x = json_object_get(o, "host"))) {
        loc_key(&fl, v, l, o, "host");
        if (get_str(v, &fl, x, c->host, sizeof c->host)) return -1;
        if (!c->host[0]) return v_fail(v, &fl, "the host must be non-empty");
    }
    if ((x = json_object_get(o, "port"))) {
        loc_key(&fl, v, l, o, "port");
        nspec s = {0, 65535, 0, 0, 1, 0};
        if (get_int(v, &fl, x, &s, &c->port)) return -1;
    }
    if ((x = json_object_get(o, "root_path"))) {
        loc_key(&fl, v, l, o, "root_path");
        if (get_str(v, &fl, x, c->root_path, sizeof c->root_path)) return -1;
    }
    if ((x = json_object_get(o, "request_timeout_s"))) {
        loc_key(&fl, v, l, o, "request_timeout_s");
        nspec s = NUM_OR_NULL(0, 1);
        if (get_num(v, &fl, x, &s, &c->request_timeout_s) < 0) return -1;
    }
    if ((x = json_object_get(o, "keep_alive_timeout_s"))) {
        loc_key(&fl, v, l, o, "keep_alive_timeout_s");
        nspec s = NUM(0, 1);
        if (get_num(v, &fl, x, &s, &c->keep_alive_timeout_s)) return -1;
    }
    static const char *ssl[] = {"ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs"};
    for (size_t i = 0; i < sizeof ssl / sizeof *ssl; i++)
        if ((x = json_object_get(o, ssl[i])) && !json_is_null(x) && !json_is_string(x)) {
            loc_key(&fl, v, l, o, ssl[i]);
            return v_fail(v, &fl, "expected a string or null, got %s", describe(got, sizeof got, x));
        }
    return 0;
}

static int validate(const vctx *v, const json_t *root, cs_scfg *c) {
    loc l, fl;
    const json_t *x;
    char got[96];
    loc_root(&l, v, root);
    snprintf(c->proxy_location, sizeof c->proxy_location, "EveryNode");
    snprintf(c->host, sizeof c->host, "0.0.0.0");
    c->port = 8000;
    c->keep_alive_timeout_s = 90;
    c->target_capacity = -1;
    if (!json_is_object(root))
        return v_fail(v, &l, "expected a mapping (a Serve config with applications), got %s",
                      describe(got, sizeof got, root));
    if ((x = json_object_get(root, "proxy_location"))) {
        loc_key(&fl, v, &l, root, "proxy_location");
        const char *s = json_string_value(x);
        if (!s || (strcmp(s, "EveryNode") && strcmp(s, "HeadOnly") && strcmp(s, "Disabled")))
            return v_fail(v, &fl, "expected one of EveryNode, HeadOnly, Disabled, got %s",
                          describe(got, sizeof got, x));
        snprintf(c->proxy_location, sizeof c->proxy_location, "%s", s);
    }
    if ((x = json_object_get(root, "http_options"))) {
        loc_key(&fl, v, &l, root, "http_options");
        int rc = want_object(v, &fl, x, 1);
        if (rc < 0 || (rc == 0 && parse_http_options(v, &fl, x, c))) return -1;
    }
    static const char *objs[] = {"grpc_options", "logging_config"};
    for (size_t i = 0; i < 2; i++) {
        if (!(x = json_object_get(root, objs[i]))) continue;
        loc_key(&fl, v, &l, root, objs[i]);
        if (want_object(v, &fl, x, 1) < 0) return -1;
    }
    if ((x = json_object_get(root, "target_capacity"))) {
        loc_key(&fl, v, &l, root, "target_capacity");
        nspec s = {0, 100, 0, 0, 0, 1};
        if (get_num(v, &fl, x, &s, &c->target_capacity) < 0) return -1;
    }
    const json_t *apps = json_object_get(root, "applications");
    loc lapps;
    loc_key(&lapps, v, &l, root, "applications");
    if (!apps) {
        if (json_object_get(root, "import_path"))
            return v_fail(v, &lapps, "required field missing (a single-application config with a top-level "
                                     "import_path is not supported: list it under applications)");
        return v_fail(v, &lapps, "required field missing");
    }
    if (!json_is_array(apps)) return v_fail(v, &lapps, "expected a list, got %s", describe(got, sizeof got, apps));
    size_t na = json_array_size(apps);
    if (na > CS_SCFG_MAX_APPS)
        return v_fail(v, &lapps, "%zu applications, at most %d (CS_SCFG_MAX_APPS)", na, CS_SCFG_MAX_APPS);
    if (na && !(c->apps = calloc(na, sizeof *c->apps))) return v_fail(v, &lapps, "out of memory");
    for (size_t i = 0; i < na; i++) {
        loc al;
        loc_idx(&al, v, &lapps, apps, i);
        c->n_apps = i + 1;
        if (parse_app(v, &al, json_array_get(apps, i), &c->apps[i])) return -1;
        const json_t *ao = json_array_get(apps, i);
        for (size_t j = 0; j < i; j++) {
            if (!strcmp(c->apps[j].name, c->apps[i].name)) {
                loc_key(&fl, v, &al, ao, "name");
                return v_fail(v, &fl, "duplicate application name '%s' (applications[%zu] has it too)",
                              c->apps[i].name, j);
            }
            if (c->apps[i].route_prefix[0] && !strcmp(c->apps[j].route_prefix, c->apps[i].route_prefix)) {
                loc_key(&fl, v, &al, ao, "route_prefix");
                return v_fail(v, &fl, "duplicate route prefix '%s' (applications[%zu] has it too)",
                              c->apps[i].route_prefix, j);
            }
        }
    }
    return 0;
}

/* ============================================================ entry points */

void cs_scfg_free(cs_scfg *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_apps; i++) {
        cs_scfg_app *a = &c->apps[i];
        for (size_t j = 0; j < a->n_deps; j++) dep_release(&a->deps[j]);
        free(a->deps);
        json_decref(a->args);
        json_decref(a->given);
    }
    free(c->apps);
    json_decref(c->doc);
    free(c);
}

/* A RayService manifest holds the config as a string in spec.serveConfigV2.
 * Returns 0 with *inner (new reference, or NULL when root is a plain config). */
static int rayservice_config(const vctx *v, const json_t *root, json_t **inner, cs_yd_pos **ipos, const char *origin,
                             char *iorigin, size_t iocap) {
    *inner = NULL;
    if (!json_is_object(root)) return 0;
    const json_t *kind = json_object_get(root, "kind");
    const json_t *spec = json_object_get(root, "spec");
    const json_t *sc = json_is_object(spec) ? json_object_get(spec, "serveConfigV2") : NULL;
    int is_rs = json_is_string(kind) && !strcmp(json_string_value(kind), "RayService");
    loc l;
    loc_root(&l, v, root);
    if (!is_rs && !sc) {
        if (json_is_string(kind) && !json_object_get(root, "applications")) {
            char cb[64];
            loc kl;
            loc_key(&kl, v, &l, root, "kind");
            return v_fail(v, &kl, "a manifest of kind '%s' holds no Serve config (expected kind: RayService with "
                                  "spec.serveConfigV2, or a Serve config with applications)",
                          clip(cb, sizeof cb, json_string_value(kind), 40));
        }
        return 0;
    }
    if (!sc) return v_fail(v, &l, "a RayService without spec.serveConfigV2 (the Serve config) has nothing to serve");
    loc sl, scl;
    loc_key(&sl, v, &l, root, "spec");
    loc_key(&scl, v, &sl, spec, "serveConfigV2");
    if (json_is_object(sc)) {
        *inner = json_incref((json_t *)sc);
        return 0;
    }
    if (!json_is_string(sc)) {
        char got[96];
        return v_fail(v, &scl, "expected a string holding the Serve config (YAML), got %s",
                      describe(got, sizeof got, sc));
    }
    snprintf(iorigin, iocap, "%s%sspec.serveConfigV2", origin ? origin : "", origin ? ": " : "");
    return cs_yd_parse(json_string_value(sc), json_string_length(sc), iorigin, &k_limits, inner, ipos, v->err);
}

/* root: the parsed document (reference kept by the result); pos: its positions. */
static int build(cs_scfg **out, json_t *root, const cs_yd_pos *pos, const char *origin, cs_err *err) {
    vctx v = {origin, pos, err};
    json_t *inner = NULL;
    cs_yd_pos *ipos = NULL;
    char iorigin[SCFG_MAX_PATH + 32];
    if (rayservice_config(&v, root, &inner, &ipos, origin, iorigin, sizeof iorigin)) return -1;
    vctx vi = v;
    if (inner && ipos) {
        vi.origin = iorigin;
        vi.pos = ipos;
    }
    json_t *doc = inner ? inner : json_incref(root);
    cs_scfg *c = calloc(1, sizeof *c);
    int rc = -1;
    if (!c) {
        cs_err_set(err, "%s: out of memory", origin ? origin : "config");
    } else {
        c->doc = doc;
        doc = NULL;
        rc = validate(&vi, c->doc, c);
    }
    json_decref(doc);
    cs_yd_pos_free(ipos);
    if (rc) {
        cs_scfg_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

/* Depth of a json_t tree, stopping at limit (a document from outside may be deep). */
static int json_depth_over(const json_t *x, int depth, int limit) {
    if (!json_is_object(x) && !json_is_array(x)) return 0;
    if (depth >= limit) return 1;
    if (json_is_array(x)) {
        for (size_t i = 0; i < json_array_size(x); i++)
            if (json_depth_over(json_array_get(x, i), depth + 1, limit)) return 1;
        return 0;
    }
    const char *k;
    json_t *val;
    json_object_foreach((json_t *)x, k, val) if (json_depth_over(val, depth + 1, limit)) return 1;
    return 0;
}

int cs_scfg_parse(cs_scfg **out, const char *text, size_t len, const char *origin, cs_err *err) {
    *out = NULL;
    if (!origin || !*origin) origin = "config";
    if (len > CS_SCFG_MAX_BYTES)
        return cs_err_set(err, "%s: the config is larger than 1 MiB (%zu bytes; CS_SCFG_MAX_BYTES)", origin, len);
    if (!text && len) return cs_err_set(err, "%s: no text", origin);
    cs_yd_pos *pos = NULL;
    json_t *root = NULL;
    int rc = cs_yd_parse(text ? text : "", len, origin, &k_limits, &root, &pos, err);
    if (rc && text && len) {
        /* JSON that YAML cannot read (surrogate-pair escapes): jansson, without positions */
        size_t i = 0;
        while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) i++;
        if (i < len && text[i] == '{' && (root = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL)) &&
            !json_depth_over(root, 0, CS_SCFG_MAX_DEPTH))
            rc = 0;
    }
    if (!rc) rc = build(out, root, pos, origin, err);
    json_decref(root);
    cs_yd_pos_free(pos);
    return rc;
}

int cs_scfg_load_file(cs_scfg **out, const char *path, cs_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return cs_err_set(err, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        close(fd);
        return cs_err_set(err, "%s: is a directory", path);
    }
    size_t cap = CS_SCFG_MAX_BYTES + 1, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return cs_err_set(err, "%s: out of memory", path);
    }
    while (n < cap) { /* never trust st_size: pipes and /proc files have none */
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return cs_err_set(err, "%s: %s", path, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    int rc;
    if (n > CS_SCFG_MAX_BYTES) {
        size_t total = sb.st_size > 0 && (size_t)sb.st_size > n ? (size_t)sb.st_size : n;
        rc = cs_err_set(err, "%s: the config is larger than 1 MiB (%s%zu bytes; CS_SCFG_MAX_BYTES)", path,
                        total > n ? "" : "over ", total);
    } else {
        rc = cs_scfg_parse(out, buf, n, path, err);
    }
    free(buf);
    return rc;
}

int cs_scfg_from_json(cs_scfg **out, const json_t *doc, cs_err *err) {
    *out = NULL;
    if (!doc) return cs_err_set(err, "no config document");
    if (json_depth_over(doc, 0, CS_SCFG_MAX_DEPTH))
        return cs_err_set(err, "nesting deeper than %d levels (CS_SCFG_MAX_DEPTH)", CS_SCFG_MAX_DEPTH);
    json_t *copy = json_deep_copy(doc);
    if (!copy) return cs_err_set(err, "out of memory");
    int rc = build(out, copy, NULL, NULL, err);
    json_decref(copy);
    return rc;
}

const cs_scfg_deployment *cs_scfg_find_deployment(const cs_scfg_app *a, const char *name) {
    if (!a || !name) return NULL;
    for (size_t i = 0; i < a->n_deps; i++)
        if (!strcmp(a->deps[i].name, name)) return &a->deps[i];
    return NULL;
}

static json_t *real_or_null(double d) { return d < 0 ? json_null() : json_real(d); }

json_t *cs_scfg_deployment_config_json(const cs_scfg_deployment *d) {
    if (!d) return NULL;
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    bad |= json_object_set_new(o, "name", json_string(d->name));
    if (!d->autoscaling) bad |= json_object_set_new(o, "num_replicas", json_integer(d->num_replicas));
    bad |= json_object_set_new(o, "max_ongoing_requests", json_integer(d->max_ongoing_requests));
    bad |= json_object_set_new(o, "max_queued_requests", json_integer(d->max_queued_requests));
    bad |= json_object_set_new(o, "user_config", d->user_config ? json_deep_copy(d->user_config) : json_null());
    if (d->autoscaling) {
        const cs_scfg_autoscaling *a = &d->as;
        json_t *as = json_object();
        bad |= json_object_set_new(o, "autoscaling_config", as);
        if (as) {
            bad |= json_object_set_new(as, "min_replicas", json_integer(a->min_replicas));
            bad |= json_object_set_new(as, "initial_replicas",
                                       a->initial_replicas < 0 ? json_null() : json_integer(a->initial_replicas));
            bad |= json_object_set_new(as, "max_replicas", json_integer(a->max_replicas));
            bad |= json_object_set_new(as, "target_ongoing_requests", json_real(a->target_ongoing_requests));
            bad |= json_object_set_new(as, "metrics_interval_s", json_real(a->metrics_interval_s));
            bad |= json_object_set_new(as, "look_back_period_s", json_real(a->look_back_period_s));
            bad |= json_object_set_new(as, "smoothing_factor", json_real(a->smoothing_factor));
            bad |= json_object_set_new(as, "upscale_smoothing_factor", json_null());
            bad |= json_object_set_new(as, "downscale_smoothing_factor", json_null());
            bad |= json_object_set_new(as, "upscaling_factor", real_or_null(a->upscaling_factor));
            bad |= json_object_set_new(as, "downscaling_factor", real_or_null(a->downscaling_factor));
            bad |= json_object_set_new(as, "downscale_delay_s", json_real(a->downscale_delay_s));
            bad |= json_object_set_new(as, "downscale_to_zero_delay_s", real_or_null(a->downscale_to_zero_delay_s));
            bad |= json_object_set_new(as, "upscale_delay_s", json_real(a->upscale_delay_s));
            bad |= json_object_set_new(
                as, "policy", json_pack("{s:s}", "name", "ray.serve.autoscaling_policy:default_autoscaling_policy"));
        }
    }
    bad |= json_object_set_new(o, "graceful_shutdown_wait_loop_s", json_real(d->graceful_shutdown_wait_loop_s));
    bad |= json_object_set_new(o, "graceful_shutdown_timeout_s", json_real(d->graceful_shutdown_timeout_s));
    bad |= json_object_set_new(o, "health_check_period_s", json_real(d->health_check_period_s));
    bad |= json_object_set_new(o, "health_check_timeout_s", json_real(d->health_check_timeout_s));
    json_t *rao = json_pack("{s:{s:{}}}", "runtime_env", "env_vars");
    const json_t *given_rao = d->given ? json_object_get(d->given, "ray_actor_options") : NULL;
    const json_t *given_cpus = json_is_object(given_rao) ? json_object_get(given_rao, "num_cpus") : NULL;
    if (rao && (is_num(given_cpus) || d->num_cpus > 0))
        bad |= json_object_set_new(rao, "num_cpus", json_real(d->num_cpus));
    bad |= json_object_set_new(o, "ray_actor_options", rao);
    bad |= json_object_set_new(
        o, "request_router_config",
        json_pack("{s:s,s:{},s:f,s:f}", "request_router_class",
                  "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter", "request_router_kwargs",
                  "request_routing_stats_period_s", 10.0, "request_routing_stats_timeout_s", 30.0));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int cs_scfg_apply_capacity(int n, double capacity) {
    if (capacity < 0 || capacity == 100 || isnan(capacity)) return n;
    if (capacity == 0 || n == 0) return 0;
    /* round half up of p/100 decided exactly: r = p - 100*k is exact (Sterbenz) for k >= 1 */
    double p = (double)n * capacity;
    if (!isfinite(p) || p > 1e15) return n;
    double k = floor(p / 100);
    double r = p - 100 * k;
    while (r < 0) k -= 1, r = p - 100 * k;
    while (r >= 100) k += 1, r = p - 100 * k;
    if (r >= 50) k += 1;
    return k < 1 ? 1 : k > INT_MAX ? INT_MAX : (int)k;
}
