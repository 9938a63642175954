/* libFuzzer target: the Serve config (cs_scfg_parse, cs_scfg_from_json in
 * src/serve/config.h): YAML, JSON and RayService manifests from users and
 * from PUT /api/serve/applications/.
 *
 * The first input byte picks what the rest becomes:
 *   0: YAML/JSON text for cs_scfg_parse
 *   1: JSON text read by jansson, then cs_scfg_from_json
 *   2: the spec.serveConfigV2 string of a RayService document (cs_scfg_from_json)
 * On failure the error message must be set. On success every value lies in the
 * ranges the header promises (names, replicas, timings, unique names and
 * prefixes, a text-generation app has exactly its TextGenService), Ray's
 * deployment_config renders, and the config document parses again through
 * cs_scfg_from_json to the same applications. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "serve/config.h"

static void check_str(const char *s, size_t cap, int nonempty, const char *what) {
    size_t n = strnlen(s, cap);
    if (n == cap) fz_fail("%s is not NUL-terminated", what);
    if (nonempty && n == 0) fz_fail("%s is empty", what);
}

static void check_seconds(double d, int positive, int nullable, const char *what) {
    if (nullable && d == -1) return;
    if (!isfinite(d) || d < 0 || (positive && d == 0)) fz_fail("%s = %g", what, d);
}

static void check_deployment(const cs_scfg_deployment *d, double capacity) {
    check_str(d->name, sizeof d->name, 1, "deployment name");
    if (d->num_replicas < 1 || d->num_replicas > CS_SCFG_MAX_REPLICAS) fz_fail("num_replicas %d", d->num_replicas);
    if ((unsigned)d->autoscaling > 1) fz_fail("autoscaling %d", d->autoscaling);
    const cs_scfg_autoscaling *a = &d->as;
    if (a->min_replicas < 0 || a->min_replicas > a->max_replicas || a->max_replicas > CS_SCFG_MAX_REPLICAS ||
        a->max_replicas < 1)
        fz_fail("min_replicas %d max_replicas %d", a->min_replicas, a->max_replicas);
    if (a->initial_replicas != -1 && (a->initial_replicas < a->min_replicas || a->initial_replicas > a->max_replicas))
        fz_fail("initial_replicas %d", a->initial_replicas);
    if (!(a->target_ongoing_requests > 0) || !isfinite(a->target_ongoing_requests))
        fz_fail("target_ongoing_requests %g", a->target_ongoing_requests);
    check_seconds(a->look_back_period_s, 1, 0, "look_back_period_s");
    check_seconds(a->metrics_interval_s, 1, 0, "metrics_interval_s");
    check_seconds(a->smoothing_factor, 1, 0, "smoothing_factor");
    check_seconds(a->upscaling_factor, 1, 1, "upscaling_factor");
    check_seconds(a->downscaling_factor, 1, 1, "downscaling_factor");
    check_seconds(a->upscale_delay_s, 0, 0, "upscale_delay_s");
    check_seconds(a->downscale_delay_s, 0, 0, "downscale_delay_s");
    check_seconds(a->downscale_to_zero_delay_s, 0, 1, "downscale_to_zero_delay_s");
    if (d->max_ongoing_requests < 1) fz_fail("max_ongoing_requests %d", d->max_ongoing_requests);
    if (d->max_queued_requests != -1 && d->max_queued_requests < 1)
        fz_fail("max_queued_requests %d", d->max_queued_requests);
    if (d->user_config && !json_is_object(d->user_config)) fz_fail("user_config is not an object");
    check_seconds(d->graceful_shutdown_wait_loop_s, 0, 0, "graceful_shutdown_wait_loop_s");
    check_seconds(d->graceful_shutdown_timeout_s, 0, 0, "graceful_shutdown_timeout_s");
    check_seconds(d->health_check_period_s, 1, 0, "health_check_period_s");
    check_seconds(d->health_check_timeout_s, 1, 0, "health_check_timeout_s");
    check_seconds(d->num_cpus, 0, 0, "num_cpus");
    json_t *j = cs_scfg_deployment_config_json(d);
    if (!j) fz_fail("cs_scfg_deployment_config_json gave NULL");
    if (strcmp(json_string_value(json_object_get(j, "name")), d->name)) fz_fail("deployment_config name");
    if (!json_object_get(j, "num_replicas") != !!d->autoscaling) fz_fail("num_replicas xor autoscaling_config");
    char *s = json_dumps(j, 0);
    if (!s) fz_fail("deployment_config does not render");
    free(s);
    json_decref(j);
    int targets[2] = {d->num_replicas, d->as.max_replicas};
    for (int i = 0; i < 2; i++) {
        int n = cs_scfg_apply_capacity(targets[i], capacity);
        if (n < 0 || n > targets[i] || (capacity > 0 && n == 0))
            fz_fail("capacity %g of %d: %d", capacity, targets[i], n);
    }
}

static void check_config(const cs_scfg *c) {
    if (!c || !json_is_object(c->doc)) fz_fail("no config document");
    if (strcmp(c->proxy_location, "EveryNode") && strcmp(c->proxy_location, "HeadOnly") &&
        strcmp(c->proxy_location, "Disabled"))
        fz_fail("proxy_location %s", c->proxy_location);
    check_str(c->host, sizeof c->host, 1, "host");
    check_str(c->root_path, sizeof c->root_path, 0, "root_path");
    if (c->port < 0 || c->port > 65535) fz_fail("port %d", c->port);
    if (!(c->target_capacity == -1 || (c->target_capacity >= 0 && c->target_capacity <= 100)))
        fz_fail("target_capacity %g", c->target_capacity);
    if (c->n_apps > CS_SCFG_MAX_APPS) fz_fail("%zu apps", c->n_apps);
    for (size_t i = 0; i < c->n_apps; i++) {
        const cs_scfg_app *a = &c->apps[i];
        check_str(a->name, sizeof a->name, 1, "application name");
        check_str(a->route_prefix, sizeof a->route_prefix, 0, "route_prefix");
        check_str(a->error, sizeof a->error, 0, "application error");
        for (size_t j = 0; j < i; j++) {
            if (!strcmp(a->name, c->apps[j].name)) fz_fail("duplicate application name %s", a->name);
            if (a->route_prefix[0] && !strcmp(a->route_prefix, c->apps[j].route_prefix))
                fz_fail("duplicate route prefix %s", a->route_prefix);
        }
        if (!a->error[0]) {
            if (a->kind != CS_APP_TEXT_GENERATION) fz_fail("an unknown application without an error");
            if (a->route_prefix[0] &&
                (a->route_prefix[0] != '/' || strpbrk(a->route_prefix, "{}") ||
                 (a->route_prefix[1] && a->route_prefix[strlen(a->route_prefix) - 1] == '/')))
                fz_fail("route_prefix '%s' accepted", a->route_prefix);
        }
        if (!json_is_object(a->args) || !json_is_object(a->given)) fz_fail("args/given");
        if (a->kind == CS_APP_TEXT_GENERATION) {
            if (a->n_deps != 1 || strcmp(a->deps[0].name, "TextGenService")) fz_fail("text_generation deployments");
            check_str(a->textgen.model, sizeof a->textgen.model, 1, "model");
            const char *dt = a->textgen.dtype;
            if (strcmp(dt, "fp32") && strcmp(dt, "bf16") && strcmp(dt, "int8"))
                fz_fail("dtype %s", dt);
        } else if (a->n_deps > CS_SCFG_MAX_DEPLOYMENTS) {
            fz_fail("%zu deployments", a->n_deps);
        }
        for (size_t j = 0; j < a->n_deps; j++) {
            check_deployment(&a->deps[j], c->target_capacity);
            if (cs_scfg_find_deployment(a, a->deps[j].name) != &a->deps[j]) fz_fail("find_deployment");
        }
    }
}

/* The accepted document, given back as a json_t, is accepted again with the same applications. */
static void check_round_trip(const cs_scfg *c) {
    if (json_object_get(c->doc, "kind") || json_object_get(c->doc, "spec")) return; /* would read as a manifest */
    cs_scfg *c2 = NULL;
    cs_err err = {{0}};
    if (cs_scfg_from_json(&c2, c->doc, &err)) fz_fail("the accepted document fails as json_t: %s", err.msg);
    if (c2->n_apps != c->n_apps) fz_fail("round trip: %zu apps, then %zu", c->n_apps, c2->n_apps);
    for (size_t i = 0; i < c->n_apps; i++) {
        const cs_scfg_app *a = &c->apps[i], *b = &c2->apps[i];
        if (strcmp(a->name, b->name) || strcmp(a->route_prefix, b->route_prefix) || a->kind != b->kind ||
            !a->error[0] != !b->error[0] || a->n_deps != b->n_deps)
            fz_fail("round trip: application %zu differs", i);
        for (size_t j = 0; j < a->n_deps; j++)
            if (a->deps[j].num_replicas != b->deps[j].num_replicas ||
                a->deps[j].max_ongoing_requests != b->deps[j].max_ongoing_requests ||
                a->deps[j].as.max_replicas != b->deps[j].as.max_replicas)
                fz_fail("round trip: deployment %zu of application %zu differs", j, i);
    }
    cs_scfg_free(c2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t mode = data[0] % 3;
    const char *body = (const char *)data + 1;
    const size_t n = size - 1;
    cs_scfg *c = NULL;
    cs_err err = {{0}};
    int rc;
    if (mode == 0) {
        rc = cs_scfg_parse(&c, body, n, "fuzz.yaml", &err);
    } else {
        json_t *doc;
        if (mode == 1) {
            doc = json_loadb(body, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        } else {
            json_t *s = json_stringn(body, n);
            doc = s ? json_pack("{s:s,s:{s:o}}", "kind", "RayService", "spec", "serveConfigV2", s) : NULL;
        }
        if (!doc) return 0;
        rc = cs_scfg_from_json(&c, doc, &err);
        json_decref(doc);
    }
    if (rc) {
        if (c) fz_fail("a failed parse left a config");
        fz_check_err(&err, "cs_scfg_parse");
        return 0;
    }
    check_config(c);
    check_round_trip(c);
    cs_scfg_free(c);
    return 0;
}
