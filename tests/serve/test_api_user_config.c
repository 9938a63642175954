/* cs_api's user_config (cs_api_set_user_config): generation defaults for
 * /text/simple-gen over the model's, overridden by a request's own fields,
 * validated key by key (a bad one changes nothing), cleared by NULL / {},
 * and safe to change while requests run.
 *
 * Drives the real stack in one process: the API on a cs_http server on
 * 127.0.0.1 (any free port), the continuous-batching scheduler, and the tiny
 * synthetic model (build/models/tiny: no task_specific_params, context 128,
 * so transformers >= 4.52's default of 256 new tokens does not fit: 422). A setting is checked by comparing the text it produces with
 * the text of a request that asks for the same thing in its own fields, so
 * the test does not depend on what the random weights generate. */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "http/http.h"
#include "serve/api.h"
#include "serve/metrics.h"
#include "serve/sched.h"

static cs_model *M;
static cs_metrics *MET;
static cs_api *API;
static cs_http *HTTP;
static cs_sched *S;
static char URL[64];

static int setup(void **state) {
    (void)state;
    cs_err err = {{0}};
    if (cs_model_load(&M, "build/models/tiny", &err)) fail_msg("%s", err.msg);
    cs_api_opts ao = {.model_name = "tiny", .model_arg = "build/models/tiny", .route_prefix = "/"};
    if (cs_metrics_create(&MET, &err) || cs_api_create(&API, &ao, MET, &err)) fail_msg("%s", err.msg);
    cs_http_opts ho = {.host = "127.0.0.1", .port = 0};
    cs_http_handlers hh = cs_api_handlers(API);
    if (cs_http_start(&HTTP, &ho, &hh, &err)) fail_msg("%s", err.msg);
    cs_sched_opts so = {.max_running = 8, .max_queued = 64, .threads = 1};
    if (cs_sched_create(&S, M, &so, &err)) fail_msg("%s", err.msg);
    cs_api_attach(API, M, S);
    snprintf(URL, sizeof URL, "http://127.0.0.1:%d", cs_http_port(HTTP));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    cs_api_detach(API);
    cs_sched_free(S);
    cs_http_stop(HTTP);
    cs_api_free(API);
    cs_metrics_free(MET);
    cs_model_free(M);
    curl_global_cleanup();
    return 0;
}

typedef struct buf {
    char *p;
    size_t n;
} buf;

static size_t on_body(char *d, size_t sz, size_t nm, void *ud) {
    buf *b = ud;
    char *np = realloc(b->p, b->n + sz * nm + 1);
    if (!np) return 0;
    memcpy(np + b->n, d, sz * nm);
    b->p = np;
    b->n += sz * nm;
    b->p[b->n] = 0;
    return sz * nm;
}

/* POSTs body to path; returns the response body (caller frees), *status. */
static char *post(const char *path, const char *body, long *status) {
    char url[256];
    snprintf(url, sizeof url, "%s%s", URL, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) fail_msg("POST %s: %s", path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return b.p ? b.p : strdup("");
}

/* The generated_text of a 200 /text/simple-gen answer (caller frees). */
static char *gen(const char *body) {
    long st = 0;
    char *r = post("/text/simple-gen", body, &st);
    if (st != 200) fail_msg("POST /text/simple-gen %s: status %ld: %s", body, st, r);
    json_t *j = json_loads(r, 0, NULL);
    json_t *t = json_object_get(json_array_get(j, 0), "generated_text");
    if (!json_is_string(t)) fail_msg("no generated_text in %s", r);
    char *out = strdup(json_string_value(t));
    json_decref(j);
    free(r);
    return out;
}

static long status_of(const char *body) {
    long st = 0;
    free(post("/text/simple-gen", body, &st));
    return st;
}

/* Sets user_config from JSON text ("null" clears); returns the status. */
static int set_uc(const char *text, cs_err *err) {
    json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
    if (!j) fail_msg("bad test JSON: %s", text);
    int rc = cs_api_set_user_config(API, j, err);
    json_decref(j);
    return rc;
}

static void set_ok(const char *text) {
    cs_err err = {{0}};
    if (set_uc(text, &err)) fail_msg("cs_api_set_user_config(%s): %s", text, err.msg);
}

#define PROMPT "\"input\": \"Once upon a time there\""

static void test_defaults_and_override(void **state) {
    (void)state;
    set_ok("null");
    assert_int_equal(status_of("{" PROMPT "}"), 422); /* 256 new tokens cannot fit 128 positions */
    char *three = gen("{" PROMPT ", \"max_new_tokens\": 3, \"do_sample\": false}");
    char *one = gen("{" PROMPT ", \"max_new_tokens\": 1, \"do_sample\": false}");
    char *len9 = gen("{" PROMPT ", \"max_new_tokens\": 4, \"do_sample\": false}"); /* 5 + 4 tokens */
    /* transformers <= 4.51's defaults: 20 new tokens, greedy */
    set_ok("{\"pipeline_defaults\": \"4.51\"}");
    char *dflt = gen("{" PROMPT "}");
    char *t20 = gen("{" PROMPT ", \"max_new_tokens\": 20, \"do_sample\": false}");
    assert_string_equal(dflt, t20);
    free(t20);
    assert_true(strlen(three) < strlen(dflt));
    set_ok("null");

    set_ok("{\"max_new_tokens\": 3, \"do_sample\": false}"); /* 4.57's defaults sample */
    char *t = gen("{" PROMPT "}");
    assert_string_equal(t, three);
    free(t);
    /* the request's own field wins */
    t = gen("{" PROMPT ", \"max_new_tokens\": 1}");
    assert_string_equal(t, one);
    free(t);
    /* a request's max_length is the pipeline call's: max_new_tokens still wins */
    t = gen("{" PROMPT ", \"max_length\": 9, \"do_sample\": false}");
    assert_string_equal(t, three);
    free(t);

    /* max_length alone in the user_config turns the model's max_new_tokens off */
    set_ok("{\"max_length\": 9, \"do_sample\": false}");
    t = gen("{" PROMPT "}");
    assert_string_equal(t, len9);
    free(t);
    t = gen("{" PROMPT ", \"max_new_tokens\": 3}");
    assert_string_equal(t, three);
    free(t);

    /* the sampling keys, with a fixed seed */
    set_ok("null");
    char *sampled = gen("{" PROMPT ", \"seed\": 7, \"max_new_tokens\": 8, \"do_sample\": true, \"temperature\": 1.5, "
                        "\"top_k\": 40, \"top_p\": 0.95, \"repetition_penalty\": 1.3}");
    set_ok("{\"max_new_tokens\": 8, \"do_sample\": true, \"temperature\": 1.5, \"top_k\": 40, \"top_p\": 0.95, "
           "\"repetition_penalty\": 1.3}");
    t = gen("{" PROMPT ", \"seed\": 7}");
    assert_string_equal(t, sampled);
    free(t);
    /* a request's do_sample still overrides */
    t = gen("{" PROMPT ", \"do_sample\": false, \"max_new_tokens\": 3, \"repetition_penalty\": 1.0}");
    assert_string_equal(t, three);
    free(t);

    /* {} and NULL clear */
    set_ok("{\"pipeline_defaults\": \"4.51\", \"max_new_tokens\": 3}");
    set_ok("{}");
    assert_int_equal(status_of("{" PROMPT "}"), 422);
    set_ok("{\"max_new_tokens\": 3}");
    cs_err err = {{0}};
    assert_int_equal(cs_api_set_user_config(API, NULL, &err), 0);
    assert_int_equal(status_of("{" PROMPT "}"), 422);
    json_t *cur = cs_api_user_config(API);
    assert_true(json_is_object(cur) && json_object_size(cur) == 0);
    json_decref(cur);

    free(dflt);
    free(three);
    free(one);
    free(len9);
    free(sampled);
}

static void test_openai_unaffected(void **state) {
    (void)state;
    set_ok("null");
    const char *body = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 5, \"temperature\": 0}";
    long st = 0;
    char *before = post("/v1/completions", body, &st);
    assert_int_equal(st, 200);
    set_ok("{\"max_new_tokens\": 1, \"max_length\": 2, \"repetition_penalty\": 3}");
    char *after = post("/v1/completions", body, &st);
    assert_int_equal(st, 200);
    json_t *a = json_loads(before, 0, NULL), *b = json_loads(after, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(a, "choices"), 0), "text")),
                        json_string_value(json_object_get(json_array_get(json_object_get(b, "choices"), 0), "text")));
    json_decref(a);
    json_decref(b);
    free(before);
    free(after);
    set_ok("null");
}

static void test_bad_user_config(void **state) {
    (void)state;
    static const struct {
        const char *doc, *names;
    } bad[] = {
        {"{\"top_p\": 2}", "user_config.top_p:"},
        {"{\"top_p\": 0}", "user_config.top_p:"},
        {"{\"temperature\": \"hot\"}", "user_config.temperature:"},
        {"{\"temperature\": 0}", "user_config.temperature:"},
        {"{\"repetition_penalty\": -1}", "user_config.repetition_penalty:"},
        {"{\"top_k\": 1.5}", "user_config.top_k:"},
        {"{\"top_k\": -1}", "user_config.top_k:"},
        {"{\"do_sample\": 1}", "user_config.do_sample:"},
        {"{\"max_new_tokens\": 0}", "user_config.max_new_tokens:"},
        {"{\"max_new_tokens\": 129}", "user_config.max_new_tokens:"}, /* over the context of 128 */
        {"{\"max_length\": \"50\"}", "user_config.max_length:"},
        {"{\"pipeline_defaults\": \"3.9\"}", "user_config.pipeline_defaults:"},
        {"{\"pipeline_defaults\": 4.51}", "user_config.pipeline_defaults:"},
        {"{\"seed\": 1}", "user_config.seed:"}, /* a request field, not a default */
        {"{\"max_new_tokens\": 2, \"bogus\": true}", "user_config.bogus:"},
        {"{\"max_new_tokens\": 2, \"top_p\": 2}", "user_config.top_p:"}, /* the valid key is not applied either */
        {"[]", "user_config:"},
        {"\"max_length=50\"", "user_config:"},
        {"42", "user_config:"},
    };
    set_ok("{\"max_new_tokens\": 3, \"do_sample\": false}");
    json_t *before = cs_api_user_config(API);
    char *expect = gen("{" PROMPT "}");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cs_err err = {{0}};
        assert_int_equal(set_uc(bad[i].doc, &err), -1);
        if (strncmp(err.msg, bad[i].names, strlen(bad[i].names)))
            fail_msg("%s: error '%s' does not start with '%s'", bad[i].doc, err.msg, bad[i].names);
        json_t *now = cs_api_user_config(API);
        assert_true(json_equal(now, before));
        json_decref(now);
    }
    char *t = gen("{" PROMPT "}");
    assert_string_equal(t, expect); /* nothing changed */
    free(t);
    free(expect);
    json_decref(before);

    /* null values are "not set"; the document is kept as given */
    set_ok("{\"max_new_tokens\": 3, \"top_k\": null}");
    json_t *now = cs_api_user_config(API);
    assert_int_equal(json_integer_value(json_object_get(now, "max_new_tokens")), 3);
    json_decref(now);

    /* without a model there is no context bound */
    cs_err err = {{0}};
    json_t *big = json_pack("{s:i}", "max_new_tokens", 129);
    assert_int_equal(cs_api_user_config_check(big, &err), 0);
    json_decref(big);
    json_t *unk = json_pack("{s:i}", "max_tokens", 5);
    assert_int_equal(cs_api_user_config_check(unk, &err), -1);
    assert_non_null(strstr(err.msg, "user_config.max_tokens"));
    json_decref(unk);
    set_ok("null");
}

/* Requests keep the values set when they were parsed: with a setter flipping
 * between two configs, every answer is one of the two texts. */
typedef struct flipper {
    atomic_int stop;
    int flips, failed;
} flipper;

static void *flip(void *ud) {
    flipper *f = ud;
    json_t *a = json_pack("{s:i, s:b}", "max_new_tokens", 1, "do_sample", 0);
    json_t *b = json_pack("{s:i, s:b}", "max_new_tokens", 4, "do_sample", 0);
    while (!atomic_load(&f->stop)) {
        cs_err err;
        if (cs_api_set_user_config(API, f->flips & 1 ? b : a, &err)) f->failed = 1;
        f->flips++;
    }
    json_decref(a);
    json_decref(b);
    return NULL;
}

static void test_concurrent_changes(void **state) {
    (void)state;
    set_ok("null");
    char *one = gen("{" PROMPT ", \"max_new_tokens\": 1, \"do_sample\": false}");
    char *four = gen("{" PROMPT ", \"max_new_tokens\": 4, \"do_sample\": false}");
    assert_string_not_equal(one, four);
    set_ok("{\"max_new_tokens\": 1, \"do_sample\": false}"); /* before the setter's first change */
    flipper f = {0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flip, &f), 0);
    for (int i = 0; i < 24; i++) {
        char *t = gen("{" PROMPT "}");
        if (strcmp(t, one) && strcmp(t, four)) fail_msg("request %d: '%s' is neither setting's text", i, t);
        free(t);
    }
    atomic_store(&f.stop, 1);
    pthread_join(th, NULL);
    assert_false(f.failed);
    assert_true(f.flips > 0);
    free(one);
    free(four);
    set_ok("null");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_override), cmocka_unit_test(test_openai_unaffected),
        cmocka_unit_test(test_bad_user_config), cmocka_unit_test(test_concurrent_changes)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
