/* The Serve config (src/serve/config.h): Ray's ServeDeploySchema read from
 * YAML, JSON and RayService manifests; defaults, schema errors with file:line:col,
 * application errors, the YAML limits, Ray's deployment_config shape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve/config.h"

/* ------------------------------------------------------------ helpers */

static cs_scfg *ok_text(const char *text, size_t len) {
    cs_scfg *c = NULL;
    cs_err e = {{0}};
    if (cs_scfg_parse(&c, text, len, "t.yaml", &e)) fail_msg("unexpected error: %s", e.msg);
    assert_non_null(c);
    return c;
}

static cs_scfg *ok(const char *yaml) { return ok_text(yaml, strlen(yaml)); }

/* The parse fails and the message contains want (usually "FILE:LINE:COL: path: ..."). */
static void bad_text(const char *text, size_t len, const char *want) {
    cs_scfg *c = (cs_scfg *)1;
    cs_err e = {{0}};
    int rc = cs_scfg_parse(&c, text, len, "t.yaml", &e);
    if (rc == 0) {
        cs_scfg_free(c);
        fail_msg("parsed, expected an error containing '%s'", want);
    }
    assert_int_equal(rc, -1);
    assert_null(c);
    if (!strstr(e.msg, want)) fail_msg("error '%s'\n  does not contain '%s'", e.msg, want);
}

static void bad(const char *yaml, const char *want) { bad_text(yaml, strlen(yaml), want); }

/* Parses, with exactly one application whose error contains want. */
static void app_bad(const char *yaml, const char *want) {
    cs_scfg *c = ok(yaml);
    assert_int_equal(c->n_apps, 1);
    if (!strstr(c->apps[0].error, want)) fail_msg("app error '%s'\n  does not contain '%s'", c->apps[0].error, want);
    cs_scfg_free(c);
}

static cs_scfg *ok_file(const char *path) {
    cs_scfg *c = NULL;
    cs_err e = {{0}};
    if (cs_scfg_load_file(&c, path, &e)) fail_msg("%s: unexpected error: %s", path, e.msg);
    return c;
}

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s", path, je.text);
    return j;
}

#define APP_HDR "applications:\n  - name: a\n    import_path: cserve.apps:text_generation\n"
/* deployment fields go on line 6, their keys at column 9 */
#define DEP_HDR APP_HDR "    deployments:\n      - name: TextGenService\n"

static void assert_ray_defaults(const cs_scfg_deployment *d, int max_ongoing) {
    assert_int_equal(d->num_replicas, 1);
    assert_int_equal(d->autoscaling, 0);
    assert_int_equal(d->max_ongoing_requests, max_ongoing);
    assert_int_equal(d->max_queued_requests, -1);
    assert_null(d->user_config);
    assert_true(d->graceful_shutdown_wait_loop_s == 2);
    assert_true(d->graceful_shutdown_timeout_s == 20);
    assert_true(d->health_check_period_s == 10);
    assert_true(d->health_check_timeout_s == 30);
    assert_true(d->num_cpus == 0);
}

/* ------------------------------------------------------------ fixtures */

static void test_rayservice_fixture(void **state) {
    (void)state;
    cs_scfg *c = ok_file("tests/data/serve/rayservice.yaml");
    assert_int_equal(c->n_apps, 1);
    const cs_scfg_app *a = &c->apps[0];
    assert_string_equal(a->name, "transformer-app");
    assert_string_equal(a->route_prefix, "/");
    assert_string_equal(a->import_path, "serve_app:deployment_graph");
    assert_int_equal(a->kind, CS_APP_TEXT_GENERATION);
    assert_string_equal(a->textgen.model, "distilgpt2");
    assert_string_equal(a->textgen.dtype, "fp32");
    assert_string_equal(a->error, "");
    assert_true(json_is_object(a->args) && json_object_size(a->args) == 0);
    assert_int_equal(a->n_deps, 1);
    assert_string_equal(a->deps[0].name, "TextGenService");
    assert_ray_defaults(&a->deps[0], CS_SCFG_TEXTGEN_MAX_ONGOING);
    assert_null(a->deps[0].given);
    /* the document is the Serve config, not the manifest */
    assert_non_null(json_object_get(c->doc, "applications"));
    assert_null(json_object_get(c->doc, "kind"));
    assert_true(json_is_object(json_object_get(a->given, "runtime_env")));
    assert_string_equal(c->proxy_location, "EveryNode");
    assert_int_equal(c->port, 8000);
    cs_scfg_free(c);
}

static void test_rayservice_errors(void **state) {
    (void)state;
    /* errors inside serveConfigV2 are placed in that string */
    bad("apiVersion: ray.io/v1\nkind: RayService\nspec:\n  serveConfigV2: |\n    applications:\n"
        "      - name: x\n        import_path: 7\n",
        "t.yaml: spec.serveConfigV2:3:18: applications[0].import_path: expected a string, got 7");
    bad("apiVersion: ray.io/v1\nkind: RayService\nspec:\n  serveConfigV2: |\n    applications: [\n",
        "t.yaml: spec.serveConfigV2:");
    bad("apiVersion: ray.io/v1\nkind: RayService\nmetadata: {name: x}\nspec:\n  rayClusterConfig: {}\n",
        "t.yaml:1:1: a RayService without spec.serveConfigV2");
    bad("kind: RayService\nspec:\n  serveConfigV2: 5\n", "t.yaml:3:18: spec.serveConfigV2: expected a string");
    bad("apiVersion: ray.io/v1\nkind: RayCluster\nspec: {}\n", "t.yaml:2:7: kind: a manifest of kind 'RayCluster'");
    /* spec.serveConfigV2 alone marks a manifest too */
    cs_scfg *c = ok("spec:\n  serveConfigV2: \"applications: [{import_path: serve_app:deployment_graph}]\"\n");
    assert_int_equal(c->n_apps, 1);
    assert_string_equal(c->apps[0].name, "default");
    cs_scfg_free(c);
}

static void test_two_apps_fixture(void **state) {
    (void)state;
    cs_scfg *c = ok_file("tests/data/serve/two-apps.yaml");
    assert_int_equal(c->n_apps, 2);
    const cs_scfg_app *t = &c->apps[0], *s = &c->apps[1];
    assert_string_equal(t->name, "text");
    assert_string_equal(t->route_prefix, "/text");
    assert_string_equal(t->textgen.model, "build/models/distil");
    assert_string_equal(t->error, "");
    assert_int_equal(t->n_deps, 1);
    assert_ray_defaults(&t->deps[0], 32);
    assert_non_null(t->deps[0].given);
    assert_string_equal(s->name, "small");
    assert_string_equal(s->route_prefix, "/small");
    assert_string_equal(s->textgen.model, "build/models/tiny");
    assert_string_equal(s->error, "");
    const cs_scfg_deployment *d = cs_scfg_find_deployment(s, "TextGenService");
    assert_non_null(d);
    assert_ptr_equal(d, &s->deps[0]);
    assert_null(cs_scfg_find_deployment(s, "Other"));
    assert_int_equal(d->num_replicas, 2);
    assert_int_equal(d->max_ongoing_requests, 8);
    assert_true(d->health_check_period_s == 1);
    assert_true(d->health_check_timeout_s == 30);
    assert_string_equal(c->host, "0.0.0.0");
    cs_scfg_free(c);
}

static void test_bad_fixtures(void **state) {
    (void)state;
    cs_scfg *c = NULL;
    cs_err e = {{0}};
    assert_int_equal(cs_scfg_load_file(&c, "tests/data/serve/bad-type.yaml", &e), -1);
    assert_string_equal(e.msg, "tests/data/serve/bad-type.yaml:7:31: applications[0].deployments[0]."
                               "max_ongoing_requests: expected an integer > 0, got \"many\"");
    assert_int_equal(cs_scfg_load_file(&c, "tests/data/serve/bad-duplicate-prefix.yaml", &e), -1);
    assert_string_equal(e.msg, "tests/data/serve/bad-duplicate-prefix.yaml:9:19: applications[1].route_prefix: "
                               "duplicate route prefix '/a' (applications[0] has it too)");
    assert_int_equal(cs_scfg_load_file(&c, "tests/data/serve/bomb.yaml", &e), -1);
    assert_non_null(strstr(e.msg, "CS_SCFG_MAX_NODES"));
    assert_int_equal(cs_scfg_load_file(&c, "tests/data/serve/no-such-file.yaml", &e), -1);
    assert_non_null(strstr(e.msg, "no-such-file.yaml: No such file"));
    assert_int_equal(cs_scfg_load_file(&c, "tests/data/serve", &e), -1);
    c = ok_file("tests/data/serve/bad-app.yaml");
    assert_int_equal(c->n_apps, 2);
    assert_string_equal(c->apps[0].error,
                        "tests/data/serve/bad-app.yaml:6:18: import_path 'my_module:app' is not a built-in "
                        "application (built in: cserve.apps:text_generation, serve_app:deployment_graph)");
    assert_int_equal(c->apps[0].kind, CS_APP_UNKNOWN);
    assert_string_equal(c->apps[1].error,
                        "tests/data/serve/bad-app.yaml:8:19: invalid route_prefix \"text\": must start with \"/\"");
    cs_scfg_free(c);
}

/* ------------------------------------------------------------ formats */

static void test_json_input(void **state) {
    (void)state;
    const char *j = "{\"applications\": [{\"name\": \"a\", \"route_prefix\": \"/a\",\n"
                    "  \"import_path\": \"cserve.apps.text_generation\", \"args\": {\"dtype\": \"bf16\",\n"
                    "    \"kv_cache_mb\": 512, \"kv_cache_dtype\": \"bf16\", \"versions\": {\"B\": {\"model\": \"m2\"}}},\n"
                    "  \"deployments\": [{\"name\": \"TextGenService\", \"max_ongoing_requests\": 4,\n"
                    "    \"health_check_timeout_s\": 1e1, \"user_config\": {\"temperature\": 0.5}}]}],\n"
                    " \"http_options\": {\"port\": 9000, \"request_timeout_s\": 2.5}, \"target_capacity\": null}";
    cs_scfg *c = ok(j);
    assert_int_equal(c->port, 9000);
    assert_true(c->request_timeout_s == 2.5);
    assert_true(c->target_capacity == -1);
    const cs_scfg_app *a = &c->apps[0];
    assert_string_equal(a->error, "");
    assert_int_equal(a->kind, CS_APP_TEXT_GENERATION);
    assert_string_equal(a->textgen.dtype, "bf16");
    for (int i = 0; i < 2; i++) { /* the app's KV settings reach every generator, versions too */
        assert_int_equal(a->deps[i].kv_cache_mb, 512);
        assert_string_equal(a->deps[i].kv_dtype, "bf16");
    }
    assert_int_equal(a->deps[0].max_ongoing_requests, 4);
    assert_true(a->deps[0].health_check_timeout_s == 10);
    assert_true(json_real_value(json_object_get(a->deps[0].user_config, "temperature")) == 0.5);
    cs_scfg_free(c);
    /* kv_cache_dtype auto is the replicas' default: kept unset (no flag, the same config as leaving it
     * out), for the app's generator and its versions alike */
    c = ok("{\"applications\": [{\"import_path\": \"cserve.apps:text_generation\", \"args\": {\"dtype\": \"int8\",\n"
           "  \"kv_cache_dtype\": \"auto\", \"versions\": {\"B\": {\"model\": \"m2\"}}}}]}");
    for (int i = 0; i < 2; i++) assert_string_equal(c->apps[0].deps[i].kv_dtype, "");
    cs_scfg_free(c);
    /* errors in JSON text carry line:col too */
    bad("{\"applications\": [\n  {\"import_path\": \"x:y\",\n"
        "   \"deployments\": [{\"name\": \"D\", \"num_replicas\": 0}]}]}",
        "t.yaml:3:50: applications[0].deployments[0].num_replicas: expected an integer >= 1, got 0");
    bad("{\"applications\": [}", "t.yaml:1:19: invalid YAML");
    /* JSON escapes YAML lacks (surrogate pairs) still read, then without positions */
    c = ok("{\"applications\": [{\"import_path\": \"cserve.apps:text_generation\", \"name\": \"\\ud83d\\ude00\"}]}");
    assert_string_equal(c->apps[0].name, "\xf0\x9f\x98\x80");
    cs_scfg_free(c);
    bad("{\"applications\": [{\"import_path\": 5, \"name\": \"\\ud83d\\ude00\"}]}",
        "t.yaml: applications[0].import_path: expected a string, got 5");
    bad("{\"applications\": [], \"applications\": [], \"x\": \"\\ud83d\\ude00\"}", "t.yaml:1:");
}

static void test_from_json(void **state) {
    (void)state;
    json_error_t je;
    json_t *doc = json_loads("{\"applications\": [{\"name\": \"x\", \"import_path\": \"serve_app:deployment_graph\","
                             " \"route_prefix\": null}], \"target_capacity\": 50}",
                             0, &je);
    assert_non_null(doc);
    cs_scfg *c = NULL;
    cs_err e = {{0}};
    assert_int_equal(cs_scfg_from_json(&c, doc, &e), 0);
    assert_string_equal(c->apps[0].route_prefix, "");
    assert_true(c->target_capacity == 50);
    assert_ptr_not_equal(c->doc, doc); /* its own copy */
    assert_true(json_equal(c->doc, doc));
    cs_scfg_free(c);
    json_decref(doc);
    /* a json_t document: the field path alone */
    doc = json_loads("{\"applications\": [{\"import_path\": \"a:b\", \"deployments\": [{\"name\": \"D\", "
                     "\"max_queued_requests\": 0}]}]}",
                     0, &je);
    assert_int_equal(cs_scfg_from_json(&c, doc, &e), -1);
    assert_null(c);
    assert_string_equal(e.msg, "applications[0].deployments[0].max_queued_requests: expected -1 (no limit) or "
                               "an integer >= 1, got 0");
    json_decref(doc);
    /* a manifest as a JSON document: the string is parsed and placed */
    doc = json_pack("{s:s,s:{s:s}}", "kind", "RayService", "spec", "serveConfigV2",
                    "applications:\n- import_path: a.b\n  port: 1\n");
    assert_int_equal(cs_scfg_from_json(&c, doc, &e), -1);
    assert_string_equal(e.msg, "spec.serveConfigV2:3:9: applications[0].port: host and port can only be set in "
                               "http_options, not in an application");
    json_decref(doc);
    /* 200-deep document */
    json_t *deep = json_array(), *cur = deep;
    for (int i = 0; i < 200; i++) {
        json_t *n = json_array();
        json_array_append_new(cur, n);
        cur = n;
    }
    doc = json_pack("{s:[],s:o}", "applications", "x", deep);
    assert_int_equal(cs_scfg_from_json(&c, doc, &e), -1);
    assert_non_null(strstr(e.msg, "CS_SCFG_MAX_DEPTH"));
    json_decref(doc);
    assert_int_equal(cs_scfg_from_json(&c, NULL, &e), -1);
}

static void test_yaml_scalars(void **state) {
    (void)state;
    /* YAML 1.1 as PyYAML reads it: yes/on/off booleans, ~ null, 0x/octal ints; quotes make strings */
    cs_scfg *c = ok(DEP_HDR "        user_config: {do_sample: yes, max_length: 0x10, top_k: 010, top_p: 1,"
                            " max_new_tokens: 1_000}\n"
                            "        num_replicas: ~\n        autoscaling_config: null\n");
    const json_t *uc = c->apps[0].deps[0].user_config;
    assert_true(json_is_true(json_object_get(uc, "do_sample")));
    assert_int_equal(json_integer_value(json_object_get(uc, "max_length")), 16);
    assert_int_equal(json_integer_value(json_object_get(uc, "top_k")), 8);
    assert_int_equal(json_integer_value(json_object_get(uc, "max_new_tokens")), 1000);
    assert_string_equal(c->apps[0].error, "");
    assert_int_equal(c->apps[0].deps[0].autoscaling, 0);
    cs_scfg_free(c);
    bad(DEP_HDR "        max_ongoing_requests: \"5\"\n",
        "t.yaml:6:31: applications[0].deployments[0].max_ongoing_requests: expected an integer > 0, got \"5\"");
    bad(DEP_HDR "        max_ongoing_requests: !!str 5\n", "expected an integer > 0, got \"5\"");
    bad(DEP_HDR "        max_ongoing_requests: !!int x\n", "t.yaml:6:31: \"x\" cannot be read as !!int");
    bad(DEP_HDR "        max_ongoing_requests: !foo 5\n", "t.yaml:6:31: unsupported YAML tag !foo");
    /* anchors, aliases and merge keys */
    c = ok("base: &base {name: TextGenService, max_ongoing_requests: 7, num_replicas: 3}\n"
           "applications:\n  - import_path: cserve.apps:text_generation\n    deployments:\n"
           "      - <<: *base\n        num_replicas: 4\n");
    assert_int_equal(c->apps[0].deps[0].max_ongoing_requests, 7);
    assert_int_equal(c->apps[0].deps[0].num_replicas, 4);
    cs_scfg_free(c);
    bad("applications: *nope\n", "t.yaml:1:15: unknown alias *nope");
    bad("applications: []\n---\napplications: []\n", "t.yaml:2:1: more than one YAML document");
    bad("", "t.yaml: the document is empty");
    bad("# nothing\n", "t.yaml: the document is empty");
    bad("applications: []\n\tx: 1\n", "t.yaml:2:");
    bad_text("applications: []\nx: \"a\0b\"\n", 26, "t.yaml:2:");
    bad("? [a]\n: 1\napplications: []\n", "t.yaml:1:3: a mapping key must be a scalar");
}

/* ------------------------------------------------------------ defaults */

static void test_defaults(void **state) {
    (void)state;
    cs_scfg *c = ok("applications:\n  - import_path: cserve.apps:text_generation\n");
    assert_string_equal(c->proxy_location, "EveryNode");
    assert_string_equal(c->host, "0.0.0.0");
    assert_int_equal(c->port, 8000);
    assert_string_equal(c->root_path, "");
    assert_true(c->request_timeout_s <= 0);
    assert_true(c->keep_alive_timeout_s == 90);
    assert_true(c->target_capacity == -1);
    const cs_scfg_app *a = &c->apps[0];
    assert_string_equal(a->name, "default");
    assert_string_equal(a->route_prefix, "/");
    assert_string_equal(a->textgen.model, "distilgpt2");
    assert_string_equal(a->textgen.dtype, "fp32");
    assert_true(json_is_object(a->args));
    assert_non_null(a->given);
    assert_int_equal(a->n_deps, 1);
    assert_ray_defaults(&a->deps[0], 32);
    const cs_scfg_autoscaling *as = &a->deps[0].as;
    assert_int_equal(as->min_replicas, 1);
    assert_int_equal(as->initial_replicas, -1);
    assert_int_equal(as->max_replicas, 1);
    assert_true(as->target_ongoing_requests == 2);
    assert_true(as->look_back_period_s == 30);
    assert_true(as->metrics_interval_s == 10);
    assert_true(as->smoothing_factor == 1);
    assert_true(as->upscaling_factor == -1 && as->downscaling_factor == -1);
    assert_true(as->upscale_delay_s == 30);
    assert_true(as->downscale_delay_s == 600);
    assert_true(as->downscale_to_zero_delay_s == -1);
    cs_scfg_free(c);
    /* a deployment of an application that is not built in keeps Ray's max_ongoing_requests 5 */
    c = ok("applications:\n  - import_path: my.app\n    deployments:\n      - name: TextGenService\n"
           "      - name: Other\n        autoscaling_config: {max_replicas: 3}\n");
    a = &c->apps[0];
    assert_int_equal(a->n_deps, 2);
    assert_ray_defaults(&a->deps[0], 5);
    assert_int_equal(a->deps[1].autoscaling, 1);
    assert_int_equal(a->deps[1].as.min_replicas, 1);
    assert_int_equal(a->deps[1].as.max_replicas, 3);
    assert_non_null(strstr(a->error, "import_path 'my.app' is not a built-in application"));
    cs_scfg_free(c);
    /* empty application list; unknown fields ignored at every level */
    c = ok("applications: []\nsomething_new: 1\nhttp_options: {future: x}\n");
    assert_int_equal(c->n_apps, 0);
    cs_scfg_free(c);
    c = ok(DEP_HDR "        future_field: 1\n    extra: {}\n");
    assert_string_equal(c->apps[0].error, "");
    cs_scfg_free(c);
}

static void test_all_fields(void **state) {
    (void)state;
    cs_scfg *c = ok("proxy_location: HeadOnly\n"
                    "http_options: {host: 127.0.0.1, port: 18000, root_path: /r, request_timeout_s: 60,"
                    " keep_alive_timeout_s: 5, ssl_keyfile: null}\n"
                    "grpc_options: {port: 9000}\nlogging_config: {log_level: INFO}\ntarget_capacity: 40\n" DEP_HDR
                    "        max_ongoing_requests: 3\n        max_queued_requests: 10\n"
                    "        user_config: {max_new_tokens: 20, max_length: 50, do_sample: false, temperature: 1,"
                    " top_k: 0, top_p: 0.9, repetition_penalty: 1.2}\n"
                    "        graceful_shutdown_wait_loop_s: 0\n        graceful_shutdown_timeout_s: 5.5\n"
                    "        health_check_period_s: 0.5\n        health_check_timeout_s: 2\n"
                    "        ray_actor_options: {num_cpus: 0.5, num_gpus: 0, resources: {}, runtime_env: {}}\n"
                    "        max_replicas_per_node: 2\n        num_replicas: 5\n");
    assert_string_equal(c->proxy_location, "HeadOnly");
    assert_string_equal(c->host, "127.0.0.1");
    assert_int_equal(c->port, 18000);
    assert_string_equal(c->root_path, "/r");
    assert_true(c->request_timeout_s == 60);
    assert_true(c->keep_alive_timeout_s == 5);
    assert_true(c->target_capacity == 40);
    const cs_scfg_deployment *d = &c->apps[0].deps[0];
    assert_string_equal(c->apps[0].error, "");
    assert_int_equal(d->num_replicas, 5);
    assert_int_equal(d->max_ongoing_requests, 3);
    assert_int_equal(d->max_queued_requests, 10);
    assert_true(d->graceful_shutdown_wait_loop_s == 0);
    assert_true(d->graceful_shutdown_timeout_s == 5.5);
    assert_true(d->health_check_period_s == 0.5);
    assert_true(d->health_check_timeout_s == 2);
    assert_true(d->num_cpus == 0.5);
    cs_scfg_free(c);
}

static void test_autoscaling(void **state) {
    (void)state;
    cs_scfg *c = ok(DEP_HDR "        autoscaling_config:\n          min_replicas: 0\n          initial_replicas: 2\n"
                            "          max_replicas: 4\n          target_ongoing_requests: 16\n"
                            "          upscaling_factor: 2\n          downscale_smoothing_factor: 0.5\n"
                            "          downscale_to_zero_delay_s: 0\n          upscale_delay_s: 0\n");
    const cs_scfg_deployment *d = &c->apps[0].deps[0];
    assert_int_equal(d->autoscaling, 1);
    assert_int_equal(d->as.min_replicas, 0);
    assert_int_equal(d->as.initial_replicas, 2);
    assert_int_equal(d->as.max_replicas, 4);
    assert_true(d->as.target_ongoing_requests == 16);
    assert_true(d->as.upscaling_factor == 2);
    assert_true(d->as.downscaling_factor == 0.5);
    assert_true(d->as.downscale_to_zero_delay_s == 0);
    assert_true(d->as.upscale_delay_s == 0);
    cs_scfg_free(c);
    /* "auto": min 1, max 100 (capped at CS_SCFG_MAX_REPLICAS), target 2; the user's fields override */
    c = ok(DEP_HDR "        num_replicas: auto\n");
    d = &c->apps[0].deps[0];
    assert_int_equal(d->autoscaling, 1);
    assert_int_equal(d->as.min_replicas, 1);
    assert_int_equal(d->as.max_replicas, 100 < CS_SCFG_MAX_REPLICAS ? 100 : CS_SCFG_MAX_REPLICAS);
    assert_true(d->as.target_ongoing_requests == 2);
    cs_scfg_free(c);
    c = ok(DEP_HDR "        num_replicas: auto\n"
                   "        autoscaling_config: {max_replicas: 5, target_ongoing_requests: 8}\n");
    d = &c->apps[0].deps[0];
    assert_int_equal(d->as.min_replicas, 1);
    assert_int_equal(d->as.max_replicas, 5);
    assert_true(d->as.target_ongoing_requests == 8);
    cs_scfg_free(c);
    bad(DEP_HDR "        num_replicas: 2\n        autoscaling_config: {max_replicas: 5}\n",
        "t.yaml:6:23: applications[0].deployments[0].num_replicas: an integer num_replicas cannot be combined with "
        "autoscaling_config");
    bad(DEP_HDR "        autoscaling_config: {min_replicas: 3, max_replicas: 2}\n",
        "t.yaml:6:61: applications[0].deployments[0].autoscaling_config.max_replicas: max_replicas (2) must be >= "
        "min_replicas (3)");
    bad(DEP_HDR "        autoscaling_config: {min_replicas: 2, initial_replicas: 1, max_replicas: 3}\n",
        "autoscaling_config.initial_replicas: initial_replicas (1) must be >= min_replicas (2)");
    bad(DEP_HDR "        autoscaling_config: {initial_replicas: 3, max_replicas: 2}\n",
        "autoscaling_config.initial_replicas: initial_replicas (3) must be <= max_replicas (2)");
    bad(DEP_HDR "        num_replicas: auto\n        autoscaling_config: {min_replicas: 70}\n",
        "autoscaling_config.min_replicas: 70 is more than the 64 replicas");
    bad(DEP_HDR "        num_replicas: auto\n        autoscaling_config: {min_replicas: 10, max_replicas: 5}\n",
        "max_replicas (5) must be >= min_replicas (10)");
    bad(DEP_HDR "        autoscaling_config: {max_replicas: 0}\n",
        "autoscaling_config.max_replicas: expected an integer >= 1, got 0");
    bad(DEP_HDR "        autoscaling_config: {min_replicas: -1}\n",
        "autoscaling_config.min_replicas: expected an integer >= 0, got -1");
    bad(DEP_HDR "        autoscaling_config: {target_ongoing_requests: 0}\n",
        "autoscaling_config.target_ongoing_requests: expected a number > 0, got 0");
    bad(DEP_HDR "        autoscaling_config: {upscale_delay_s: -1}\n",
        "autoscaling_config.upscale_delay_s: expected a number >= 0, got -1");
    bad(DEP_HDR "        autoscaling_config: 3\n",
        "t.yaml:6:29: applications[0].deployments[0].autoscaling_config: expected a mapping or null, got 3");
    bad(DEP_HDR "        num_replicas: many\n",
        "t.yaml:6:23: applications[0].deployments[0].num_replicas: expected a positive integer or \"auto\", got "
        "\"many\"");
}

/* ------------------------------------------------------------ schema errors, one per class */

static void test_schema_errors(void **state) {
    (void)state;
    /* not YAML */
    bad("applications:\n  - name: [a\n", "t.yaml:3:1: invalid YAML");
    bad("applications: {\n", "invalid YAML");
    /* top level */
    bad("- a\n- b\n", "t.yaml:1:1: expected a mapping (a Serve config with applications), got a list");
    bad("just text\n", "expected a mapping (a Serve config with applications), got \"just text\"");
    bad("http_options: {}\n", "t.yaml:1:1: applications: required field missing");
    bad("import_path: a:b\n", "applications: required field missing (a single-application config");
    bad("applications: {a: 1}\n", "t.yaml:1:15: applications: expected a list, got a mapping");
    bad("applications: [5]\n", "t.yaml:1:16: applications[0]: expected a mapping, got 5");
    /* enum */
    bad("proxy_location: Everywhere\napplications: []\n",
        "t.yaml:1:17: proxy_location: expected one of EveryNode, HeadOnly, Disabled, got \"Everywhere\"");
    /* http_options */
    bad("http_options: {port: 70000}\napplications: []\n",
        "t.yaml:1:22: http_options.port: expected an integer >= 0 and <= 65535, got 70000");
    bad("http_options: {port: \"80\"}\napplications: []\n", "http_options.port: expected an integer");
    bad("http_options: {host: 5}\napplications: []\n", "http_options.host: expected a string, got 5");
    bad("http_options: {request_timeout_s: 0}\napplications: []\n",
        "http_options.request_timeout_s: expected a number > 0 or null, got 0");
    bad("http_options: {keep_alive_timeout_s: -1}\napplications: []\n",
        "http_options.keep_alive_timeout_s: expected a number > 0");
    bad("http_options: {ssl_keyfile: 1}\napplications: []\n", "http_options.ssl_keyfile: expected a string or null");
    bad("http_options: 1\napplications: []\n", "http_options: expected a mapping or null, got 1");
    /* target_capacity */
    bad("target_capacity: 101\napplications: []\n",
        "t.yaml:1:18: target_capacity: expected a number >= 0 and <= 100 or null, got 101");
    bad("target_capacity: true\napplications: []\n", "target_capacity: expected a number");
    /* application fields */
    bad("applications:\n  - import_path: a:b\n    host: 0.0.0.0\n",
        "t.yaml:3:11: applications[0].host: host and port can only be set in http_options");
    bad("applications:\n  - name: x\n", "t.yaml:2:5: applications[0].import_path: required field missing");
    bad("applications:\n  - import_path: a:b:c\n",
        "t.yaml:2:18: applications[0].import_path: invalid import path \"a:b:c\": may have at most one colon");
    bad("applications:\n  - import_path: nodots\n", "invalid import path \"nodots\": must be MODULE:ATTRIBUTE");
    bad("applications:\n  - import_path: a:b\n    name: \"\"\n",
        "t.yaml:3:11: applications[0].name: application names must be non-empty");
    bad("applications:\n  - import_path: a:b\n    route_prefix: 5\n",
        "t.yaml:3:19: applications[0].route_prefix: expected a string, got 5");
    bad("applications:\n  - import_path: a:b\n    args: [1]\n",
        "t.yaml:3:11: applications[0].args: expected a mapping or null, got a list");
    bad("applications:\n  - import_path: a:b\n    runtime_env: x\n", "applications[0].runtime_env: expected a mapping");
    bad("applications:\n  - import_path: a:b\n    deployments: {}\n",
        "t.yaml:3:18: applications[0].deployments: expected a list, got a mapping");
    /* duplicate names */
    bad("applications:\n  - import_path: a:b\n    route_prefix: /1\n  - import_path: a:b\n    route_prefix: /2\n",
        "t.yaml:4:5: applications[1].name: duplicate application name 'default' (applications[0] has it too)");
    bad("applications:\n  - {name: x, import_path: a:b, route_prefix: /1}\n"
        "  - {name: x, import_path: a:b, route_prefix: /2}\n",
        "t.yaml:3:12: applications[1].name: duplicate application name 'x'");
    bad("applications:\n  - {name: x, import_path: a:b}\n  - {name: y, import_path: a:b}\n",
        "t.yaml:3:5: applications[1].route_prefix: duplicate route prefix '/' (applications[0] has it too)");
    cs_scfg *c = ok("applications:\n  - {name: x, import_path: a:b, route_prefix: null}\n"
                    "  - {name: y, import_path: a:b, route_prefix: null}\n");
    assert_string_equal(c->apps[0].route_prefix, "");
    cs_scfg_free(c);
    bad(APP_HDR "    deployments:\n      - name: TextGenService\n      - name: TextGenService\n",
        "t.yaml:6:15: applications[0].deployments[1].name: duplicate deployment name 'TextGenService'");
    /* deployment fields */
    bad(APP_HDR "    deployments:\n      - num_replicas: 1\n",
        "t.yaml:5:9: applications[0].deployments[0].name: required field missing");
    bad(APP_HDR "    deployments:\n      - name: \"\"\n", "deployments[0].name: deployment names must be non-empty");
    bad(DEP_HDR "        max_ongoing_requests: 0\n",
        "t.yaml:6:31: applications[0].deployments[0].max_ongoing_requests: expected an integer > 0, got 0");
    bad(DEP_HDR "        max_ongoing_requests: 2.5\n", "max_ongoing_requests: expected an integer > 0, got 2.5");
    bad(DEP_HDR "        max_ongoing_requests: true\n", "max_ongoing_requests: expected an integer > 0, got true");
    bad(DEP_HDR "        max_ongoing_requests: null\n", "max_ongoing_requests: expected an integer > 0, got null");
    bad(DEP_HDR "        max_queued_requests: 0\n",
        "t.yaml:6:30: applications[0].deployments[0].max_queued_requests: expected -1 (no limit) or an integer >= 1");
    bad(DEP_HDR "        num_replicas: 0\n", "num_replicas: expected an integer >= 1, got 0");
    bad(DEP_HDR "        num_replicas: 65\n",
        "t.yaml:6:23: applications[0].deployments[0].num_replicas: 65 is more than the 64 replicas a deployment may "
        "have (CS_SCFG_MAX_REPLICAS)");
    bad(DEP_HDR "        num_replicas: 1.5\n", "num_replicas: expected an integer >= 1, got 1.5");
    bad(DEP_HDR "        user_config: [1]\n",
        "t.yaml:6:22: applications[0].deployments[0].user_config: expected a mapping or null, got a list");
    bad(DEP_HDR "        health_check_period_s: 0\n",
        "t.yaml:6:32: applications[0].deployments[0].health_check_period_s: expected a number > 0, got 0");
    bad(DEP_HDR "        health_check_timeout_s: x\n", "health_check_timeout_s: expected a number > 0, got \"x\"");
    bad(DEP_HDR "        graceful_shutdown_timeout_s: -1\n",
        "graceful_shutdown_timeout_s: expected a number >= 0, got -1");
    bad(DEP_HDR "        graceful_shutdown_wait_loop_s: 1e20\n",
        "graceful_shutdown_wait_loop_s: expected a number >= 0, got 1e20 (more than 1000000000)");
    bad(DEP_HDR "        ray_actor_options: {num_cpus: -1}\n",
        "t.yaml:6:39: applications[0].deployments[0].ray_actor_options.num_cpus: expected a number >= 0 or null, "
        "got -1");
    bad(DEP_HDR "        ray_actor_options: {num_cpus: yes}\n", "ray_actor_options.num_cpus: expected a number");
    bad(DEP_HDR "        ray_actor_options: 1\n", "ray_actor_options: expected a mapping or null, got 1");
    bad(DEP_HDR "        max_replicas_per_node: 101\n", "max_replicas_per_node: expected an integer >= 1 and <= 100");
    bad(DEP_HDR "        placement_group_bundles: 1\n", "placement_group_bundles: expected a list or null");
    /* duplicate keys */
    bad("applications: []\nhttp_options:\n  port: 1\n  port: 2\n", "t.yaml:4:3: duplicate key 'port'");
    bad("applications: []\napplications: []\n", "t.yaml:2:1: duplicate key 'applications'");
    /* limits */
    char many[64 * 40 + 64];
    size_t n = (size_t)sprintf(many, "applications:\n");
    for (int i = 0; i <= CS_SCFG_MAX_APPS; i++) n += (size_t)sprintf(many + n, "- {name: a%d, import_path: a:b}\n", i);
    bad(many, "t.yaml:2:1: applications: 65 applications, at most 64 (CS_SCFG_MAX_APPS)");
    char longname[400];
    char nm[201];
    memset(nm, 'n', 200);
    nm[200] = 0;
    snprintf(longname, sizeof longname, "applications:\n- {import_path: a:b, name: %s}\n", nm);
    bad(longname, "t.yaml:2:28: applications[0].name: longer than 127 bytes");
}

/* ------------------------------------------------------------ limits */

static void test_yaml_bomb(void **state) {
    (void)state;
    /* billion laughs: 9^9 strings when expanded; fails on the node count, never builds them */
    bad("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
        "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
        "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
        "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\napplications: []\n",
        "more than 100000 YAML nodes (aliases expanded; CS_SCFG_MAX_NODES): an alias bomb?");
    /* the same through mappings and merge keys */
    bad("a: &a {x: 1, y: 2, z: 3, w: 4}\nb: &b {p: *a, q: *a, r: *a, s: *a, t: *a, u: *a, v: *a, w: *a}\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\napplications: []\n",
        "CS_SCFG_MAX_NODES");
    /* aliases that stay small are fine */
    cs_scfg *c = ok("a: &a [1, 2, 3]\nb: [*a, *a, *a]\napplications: []\n");
    assert_int_equal(json_array_size(json_object_get(c->doc, "b")), 3);
    cs_scfg_free(c);
    /* deep through aliases: each level is shallow, the expansion is not */
    char buf[4096];
    size_t n = (size_t)sprintf(buf, "a0: &a0 [[[[[[[[[[1]]]]]]]]]]\n");
    for (int i = 1; i < 6; i++) n += (size_t)sprintf(buf + n, "a%d: &a%d [[[[[[[[[[*a%d]]]]]]]]]]\n", i, i, i - 1);
    sprintf(buf + n, "applications: []\n");
    bad(buf, "nesting deeper than 32 levels (CS_SCFG_MAX_DEPTH) through alias *a2");
    /* an anchor used inside itself is not defined yet */
    bad("a: &a [1, *a]\napplications: []\n", "t.yaml:1:11: unknown alias *a");
}

static void test_big_and_deep(void **state) {
    (void)state;
    /* 200-deep nesting, block and flow */
    char deep[1024];
    size_t n = (size_t)sprintf(deep, "applications: []\nx: ");
    for (int i = 0; i < 200; i++) deep[n++] = '[';
    for (int i = 0; i < 200; i++) deep[n++] = ']';
    deep[n++] = '\n';
    deep[n] = 0;
    bad(deep, "t.yaml:2:35: nesting deeper than 32 levels (CS_SCFG_MAX_DEPTH)");
    char *block = malloc(200 * 210 + 64);
    n = (size_t)sprintf(block, "applications: []\n");
    for (int i = 0; i < 200; i++) {
        memset(block + n, ' ', (size_t)i);
        n += (size_t)i;
        n += (size_t)sprintf(block + n, "k:\n");
    }
    block[n] = 0;
    bad(block, "nesting deeper than 32 levels (CS_SCFG_MAX_DEPTH)");
    free(block);
    /* exactly at the limit: fine */
    n = (size_t)sprintf(deep, "applications: []\nx: ");
    for (int i = 0; i < CS_SCFG_MAX_DEPTH - 1; i++) deep[n++] = '[';
    for (int i = 0; i < CS_SCFG_MAX_DEPTH - 1; i++) deep[n++] = ']';
    deep[n] = 0;
    cs_scfg_free(ok(deep));

    /* 10 MB: text and file */
    size_t big = (size_t)10 << 20;
    char *text = malloc(big);
    memset(text, '#', big);
    text[0] = 'a', text[1] = ':';
    bad_text(text, big, "t.yaml: the config is larger than 1 MiB (10485760 bytes; CS_SCFG_MAX_BYTES)");
    char path[] = "/tmp/cs-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, big), (ssize_t)big);
    close(fd);
    cs_scfg *c = (cs_scfg *)1;
    cs_err e = {{0}};
    assert_int_equal(cs_scfg_load_file(&c, path, &e), -1);
    assert_null(c);
    assert_non_null(strstr(e.msg, "the config is larger than 1 MiB (10485760 bytes"));
    unlink(path);
    free(text);
    /* just under the limit, and a long comment: parses */
    size_t just = CS_SCFG_MAX_BYTES;
    text = malloc(just);
    const char *head = "applications: []\n#";
    memcpy(text, head, strlen(head));
    memset(text + strlen(head), 'x', just - strlen(head) - 1);
    text[just - 1] = '\n';
    cs_scfg_free(ok_text(text, just));
    free(text);
}

/* ------------------------------------------------------------ application errors */

static void test_app_errors(void **state) {
    (void)state;
    app_bad("applications:\n  - import_path: foo:bar\n",
            "t.yaml:2:18: import_path 'foo:bar' is not a built-in application (built in: "
            "cserve.apps:text_generation, serve_app:deployment_graph)");
    app_bad(APP_HDR "    route_prefix: abc\n", "t.yaml:4:19: invalid route_prefix \"abc\": must start with \"/\"");
    app_bad(APP_HDR "    route_prefix: /abc/\n", "invalid route_prefix \"/abc/\": cannot end with \"/\"");
    app_bad(APP_HDR "    route_prefix: /a/{id}\n", "invalid route_prefix \"/a/{id}\": may not contain wildcards");
    app_bad(APP_HDR "    route_prefix: \"\"\n", "invalid route_prefix \"\": must start with \"/\"");
    app_bad(APP_HDR "    deployments:\n      - name: Model\n",
            "t.yaml:5:9: deployment 'Model' not found in application 'a' (it has: TextGenService)");
    app_bad(APP_HDR "    args: {model: m, foo: 1}\n",
            "t.yaml:4:27: args.foo: unknown argument of cserve.apps:text_generation (it takes: model, dtype, kv_cache_mb, kv_cache_dtype, versions, traffic, session_header, mirror, fallback, preprocess, remote)");
    app_bad(APP_HDR "    args: {dtype: fp16}\n", "args.dtype: expected one of fp32, bf16, int8, got \"fp16\"");
    app_bad(APP_HDR "    args: {kv_cache_dtype: fp16}\n", "args.kv_cache_dtype: expected one of auto, fp32, bf16, int8, got \"fp16\"");
    app_bad(APP_HDR "    args: {kv_cache_mb: -1}\n", "args.kv_cache_mb: expected an integer >= 0");
    app_bad(APP_HDR "    args: {kv_cache_mb: 1.5}\n", "args.kv_cache_mb: expected an integer >= 0");
    app_bad(APP_HDR "    args: {model: 5}\n", "args.model: expected a string, got 5");
    app_bad(APP_HDR "    args: {model: \"\"}\n", "args.model: the model must be non-empty");
    app_bad(DEP_HDR "        user_config: {beams: 4}\n",
            "t.yaml:6:30: deployments[0].user_config.beams: unknown generation parameter (known: max_new_tokens");
    app_bad(DEP_HDR "        user_config: {temperature: 0}\n",
            "deployments[0].user_config.temperature: expected a number > 0 and <= 100, got 0");
    app_bad(DEP_HDR "        user_config: {top_p: 1.5}\n",
            "deployments[0].user_config.top_p: expected a number > 0 and <= 1, got 1.5");
    app_bad(DEP_HDR "        user_config: {do_sample: 1}\n",
            "deployments[0].user_config.do_sample: expected true or false, got 1");
    app_bad(DEP_HDR "        user_config: {max_new_tokens: 0}\n",
            "deployments[0].user_config.max_new_tokens: expected an integer >= 1");
    app_bad(DEP_HDR "        user_config: {top_k: -1}\n", "deployments[0].user_config.top_k: expected an integer >= 0");
    /* the first problem is the one reported */
    app_bad("applications:\n  - import_path: foo.bar\n    route_prefix: x\n", "import_path 'foo.bar'");
    app_bad(APP_HDR "    route_prefix: x\n    deployments: [{name: Model}]\n", "invalid route_prefix \"x\"");
    app_bad(APP_HDR "    args: {dtype: x}\n    deployments: [{name: Model}]\n", "args.dtype");
    /* a json_t document: no position */
    json_t *doc = json_pack("{s:[{s:s,s:s}]}", "applications", "import_path", "cserve.apps:text_generation",
                            "route_prefix", "abc");
    cs_scfg *c = NULL;
    cs_err e = {{0}};
    assert_int_equal(cs_scfg_from_json(&c, doc, &e), 0);
    assert_string_equal(c->apps[0].error, "invalid route_prefix \"abc\": must start with \"/\"");
    cs_scfg_free(c);
    json_decref(doc);
    /* an unknown application still lists its configured deployments */
    c = ok("applications:\n  - import_path: a.b\n    deployments: [{name: X, num_replicas: 2}]\n");
    assert_int_equal(c->apps[0].n_deps, 1);
    assert_string_equal(c->apps[0].deps[0].name, "X");
    assert_int_equal(c->apps[0].deps[0].num_replicas, 2);
    cs_scfg_free(c);
    /* both built-in names and their dotted forms */
    static const char *ips[] = {"cserve.apps:text_generation", "cserve.apps.text_generation",
                                "serve_app:deployment_graph", "serve_app.deployment_graph"};
    for (size_t i = 0; i < 4; i++) {
        char y[256];
        snprintf(y, sizeof y, "applications:\n  - import_path: %s\n    args: {model: m, dtype: int8}\n", ips[i]);
        c = ok(y);
        assert_int_equal(c->apps[0].kind, CS_APP_TEXT_GENERATION);
        assert_string_equal(c->apps[0].textgen.model, "m");
        assert_string_equal(c->apps[0].textgen.dtype, "int8");
        assert_string_equal(c->apps[0].error, "");
        cs_scfg_free(c);
    }
}

/* ------------------------------------------------------------ remote replicas */

static void hostport_ok(const char *s, const char *host, int port) {
    char h[CS_SCFG_MAX_HOSTPORT];
    int p = 0;
    const char *why = NULL;
    if (cs_scfg_hostport(s, h, sizeof h, &p, &why)) fail_msg("'%s': %s", s, why);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
}

static void hostport_bad(const char *s, const char *want) {
    char h[16];
    int p = 0;
    const char *why = NULL;
    assert_int_equal(cs_scfg_hostport(s, h, sizeof h, &p, &why), -1);
    assert_non_null(why);
    if (!strstr(why, want)) fail_msg("'%s': '%s' does not contain '%s'", s, why, want);
}

#define REMOTE_HDR APP_HDR "    args:\n      remote:\n"

static void test_remote(void **state) {
    (void)state;
    hostport_ok("10.99.0.2:9000", "10.99.0.2", 9000);
    hostport_ok("cserve-replicas.default.svc:1", "cserve-replicas.default.svc", 1);
    hostport_ok("[::1]:65535", "::1", 65535);
    hostport_ok("replica_0:8000", "replica_0", 8000);
    hostport_bad("10.99.0.2", "no HOST: before the port");
    hostport_bad(":9000", "no HOST: before the port");
    hostport_bad("h:0", "1..65535");
    hostport_bad("h:65536", "1..65535");
    hostport_bad("h:90a", "1..65535");
    hostport_bad("h:", "1..65535");
    hostport_bad("::1:9000", "brackets");
    hostport_bad("[::1:9000", "brackets");
    hostport_bad("[]:9000", "empty address");
    hostport_bad("[fe80::1%eth0]:80", "not an IPv6 address");
    hostport_bad("a/b:1", "letters, digits");
    hostport_bad("-a:1", "starts with");
    hostport_bad("a-very-long-host-name:1", "too long"); /* 16-byte buffer */

    /* a static list and a DNS name (refresh_s defaults to 5), on TextGenService and a version */
    cs_scfg *c = ok(APP_HDR "    args:\n      versions: {v2: {model: m2}}\n      remote:\n"
                    "        TextGenService: {replicas: [\"10.99.0.2:9000\", \"[::1]:9001\"]}\n"
                    "        v2: {dns: \"cserve-replicas.default.svc.cluster.local:9000\"}\n");
    assert_string_equal(c->apps[0].error, "");
    const cs_scfg_deployment *d = cs_scfg_find_deployment(&c->apps[0], "TextGenService");
    assert_non_null(d->remote);
    json_t *want = json_pack("{s:[s,s]}", "replicas", "10.99.0.2:9000", "[::1]:9001");
    assert_true(json_equal(d->remote, want));
    json_decref(want);
    d = cs_scfg_find_deployment(&c->apps[0], "v2");
    want = json_pack("{s:s, s:f}", "dns", "cserve-replicas.default.svc.cluster.local:9000", "refresh_s", 5.0);
    assert_true(json_equal(d->remote, want));
    json_decref(want);
    cs_scfg_free(c);
    c = ok(REMOTE_HDR "        TextGenService: {dns: \"r:9000\", refresh_s: 0.5}\n");
    assert_true(json_number_value(json_object_get(c->apps[0].deps[0].remote, "refresh_s")) == 0.5);
    cs_scfg_free(c);
    c = ok(APP_HDR); /* no args.remote: local replicas */
    assert_null(c->apps[0].deps[0].remote);
    cs_scfg_free(c);

    /* errors name the field */
    app_bad(REMOTE_HDR "        Model: {replicas: [\"h:1\"]}\n",
            "t.yaml:6:16: args.remote.Model: 'Model' is not a deployment of this application");
    app_bad(REMOTE_HDR "        TextGenService: [\"h:1\"]\n", "args.remote.TextGenService: expected a mapping, got a list");
    app_bad(APP_HDR "    args: {remote: [1]}\n", "args.remote: expected a mapping, got a list");
    app_bad(REMOTE_HDR "        TextGenService: {}\n",
            "args.remote.TextGenService: give either replicas (a list of \"HOST:PORT\") or dns");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [\"h:1\"], dns: \"h:1\"}\n", "give either replicas");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [\"h:1\"], port: 1}\n",
            "args.remote.TextGenService: unknown field 'port' of remote (it takes: replicas, or dns and refresh_s)");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: []}\n",
            "t.yaml:6:36: args.remote.TextGenService.replicas: expected a list of 1..64 \"HOST:PORT\" strings "
            "(CS_SCFG_MAX_REMOTE), got an empty list");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: \"h:1\"}\n",
            "args.remote.TextGenService.replicas: expected a list of 1..64 \"HOST:PORT\" strings (CS_SCFG_MAX_REMOTE), "
            "got \"h:1\"");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [\"h:1\", \"h\"]}\n",
            "t.yaml:6:44: args.remote.TextGenService.replicas[1]: expected \"HOST:PORT\", got \"h\": no HOST: before "
            "the port");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [\"h:99999\"]}\n",
            "replicas[0]: expected \"HOST:PORT\", got \"h:99999\": the port must be a number in 1..65535");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [9000]}\n",
            "replicas[0]: expected a \"HOST:PORT\" string of at most 127 bytes, got 9000");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [\"h:1\", \"g:2\", \"h:1\"]}\n",
            "replicas[2]: duplicate address h:1 (replicas[0] has it too)");
    app_bad(REMOTE_HDR "        TextGenService: {replicas: [\"h:1\"], refresh_s: 5}\n",
            "args.remote.TextGenService: refresh_s goes with dns, not with a list of replicas");
    app_bad(REMOTE_HDR "        TextGenService: {dns: \"name\"}\n",
            "args.remote.TextGenService.dns: expected \"HOST:PORT\", got \"name\"");
    app_bad(REMOTE_HDR "        TextGenService: {dns: \"n:1\", refresh_s: 0}\n",
            "args.remote.TextGenService.refresh_s: expected a number >= 0.1 and <= 3600, got 0");
    app_bad(REMOTE_HDR "        TextGenService: {dns: \"n:1\", refresh_s: x}\n",
            "args.remote.TextGenService.refresh_s: expected a number >= 0.1 and <= 3600, got \"x\"");
    /* 65 addresses: over CS_SCFG_MAX_REMOTE */
    char y[4096];
    int n = snprintf(y, sizeof y, "%s", REMOTE_HDR "        TextGenService: {replicas: [");
    for (int i = 0; i <= CS_SCFG_MAX_REMOTE; i++) n += snprintf(y + n, sizeof y - (size_t)n, "%s\"h:%d\"", i ? ", " : "", i + 1);
    snprintf(y + n, sizeof y - (size_t)n, "]}\n");
    app_bad(y, "got 65 addresses");
}

/* ------------------------------------------------------------ capacity */

static void test_capacity(void **state) {
    (void)state;
    assert_int_equal(cs_scfg_apply_capacity(4, -1), 4);
    assert_int_equal(cs_scfg_apply_capacity(4, 100), 4);
    assert_int_equal(cs_scfg_apply_capacity(4, 0), 0);
    assert_int_equal(cs_scfg_apply_capacity(0, 50), 0);
    assert_int_equal(cs_scfg_apply_capacity(5, 50), 3);  /* 2.5 -> 3: half up */
    assert_int_equal(cs_scfg_apply_capacity(3, 50), 2);  /* 1.5 -> 2 */
    assert_int_equal(cs_scfg_apply_capacity(1, 50), 1);  /* 0.5 -> 1 */
    assert_int_equal(cs_scfg_apply_capacity(1, 10), 1);  /* 0.1 -> 0 -> at least 1 */
    assert_int_equal(cs_scfg_apply_capacity(10, 14), 1); /* 1.4 */
    assert_int_equal(cs_scfg_apply_capacity(10, 15), 2); /* 1.5 */
    assert_int_equal(cs_scfg_apply_capacity(10, 25), 3); /* 2.5 */
    assert_int_equal(cs_scfg_apply_capacity(10, 24.9), 2);
    assert_int_equal(cs_scfg_apply_capacity(64, 33.3), 21); /* 21.312 */
    assert_int_equal(cs_scfg_apply_capacity(7, 50), 4);     /* 3.5 */
    assert_int_equal(cs_scfg_apply_capacity(64, 1), 1);
    assert_int_equal(cs_scfg_apply_capacity(2, 75), 2); /* 1.5 */
    for (int n = 1; n <= 64; n++)
        for (int cap = 1; cap <= 100; cap++) {
            int want = (n * cap + 50) / 100; /* exact in integers */
            if (want < 1) want = 1;
            assert_int_equal(cs_scfg_apply_capacity(n, cap), want);
        }
    cs_scfg *c = ok("target_capacity: 0\napplications: []\n");
    assert_true(c->target_capacity == 0);
    cs_scfg_free(c);
    c = ok("target_capacity: 12.5\napplications: []\n");
    assert_true(c->target_capacity == 12.5);
    cs_scfg_free(c);
    bad("target_capacity: -1\napplications: []\n", "target_capacity: expected a number >= 0 and <= 100 or null");
}

/* ------------------------------------------------------------ Ray's deployment_config */

static void test_deployment_config_json(void **state) {
    (void)state;
    /* status-running.json: a real Ray 2.50.1 answer; its deployed_app_config re-read gives its deployment_config */
    json_t *st = load_json("tests/data/serve/ray-status-running.json");
    json_t *app = json_object_get(json_object_get(st, "applications"), "app1");
    json_t *doc = json_pack("{s:[O]}", "applications", json_object_get(app, "deployed_app_config"));
    cs_scfg *c = NULL;
    cs_err e = {{0}};
    assert_int_equal(cs_scfg_from_json(&c, doc, &e), 0);
    assert_int_equal(c->apps[0].n_deps, 2);
    static const char *names[] = {"Model", "Router"};
    for (int i = 0; i < 2; i++) {
        const cs_scfg_deployment *d = cs_scfg_find_deployment(&c->apps[0], names[i]);
        assert_non_null(d);
        json_t *got = cs_scfg_deployment_config_json(d);
        json_t *want =
            json_object_get(json_object_get(json_object_get(app, "deployments"), names[i]), "deployment_config");
        char *gs = json_dumps(got, JSON_SORT_KEYS), *ws = json_dumps(want, JSON_SORT_KEYS);
        if (!json_equal(got, want)) fail_msg("%s:\n got  %s\n want %s", names[i], gs, ws);
        /* and in Ray's key order */
        char *go = json_dumps(got, 0), *wo = json_dumps(want, 0);
        assert_string_equal(go, wo);
        free(gs), free(ws), free(go), free(wo);
        json_decref(got);
    }
    cs_scfg_free(c);
    json_decref(doc);
    json_decref(st);
    /* the defaults of a built-in app's TextGenService; num_cpus 0 given is shown */
    c = ok(DEP_HDR "        ray_actor_options: {num_cpus: 0}\n        user_config: {top_k: 5}\n"
                   "        autoscaling_config: {initial_replicas: 1, upscaling_factor: 2,"
                   " downscale_to_zero_delay_s: 5}\n");
    json_t *got = cs_scfg_deployment_config_json(&c->apps[0].deps[0]);
    json_t *want = json_loads(
        "{\"name\": \"TextGenService\", \"max_ongoing_requests\": 32, \"max_queued_requests\": -1,"
        " \"user_config\": {\"top_k\": 5}, \"autoscaling_config\": {\"min_replicas\": 1, \"initial_replicas\": 1,"
        " \"max_replicas\": 1, \"target_ongoing_requests\": 2.0, \"metrics_interval_s\": 10.0,"
        " \"look_back_period_s\": 30.0, \"smoothing_factor\": 1.0, \"upscale_smoothing_factor\": null,"
        " \"downscale_smoothing_factor\": null, \"upscaling_factor\": 2.0, \"downscaling_factor\": null,"
        " \"downscale_delay_s\": 600.0, \"downscale_to_zero_delay_s\": 5.0, \"upscale_delay_s\": 30.0,"
        " \"policy\": {\"name\": \"ray.serve.autoscaling_policy:default_autoscaling_policy\"}},"
        " \"graceful_shutdown_wait_loop_s\": 2.0, \"graceful_shutdown_timeout_s\": 20.0,"
        " \"health_check_period_s\": 10.0, \"health_check_timeout_s\": 30.0,"
        " \"ray_actor_options\": {\"runtime_env\": {\"env_vars\": {}}, \"num_cpus\": 0.0},"
        " \"request_router_config\": {\"request_router_class\":"
        " \"ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter\", \"request_router_kwargs\": {},"
        " \"request_routing_stats_period_s\": 10.0, \"request_routing_stats_timeout_s\": 30.0}}",
        0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *gs = json_dumps(got, JSON_SORT_KEYS);
        fail_msg("got %s", gs);
    }
    json_decref(got);
    json_decref(want);
    cs_scfg_free(c);
    /* no autoscaling: num_replicas, no autoscaling_config, no num_cpus */
    c = ok(DEP_HDR "        num_replicas: 3\n");
    got = cs_scfg_deployment_config_json(&c->apps[0].deps[0]);
    assert_int_equal(json_integer_value(json_object_get(got, "num_replicas")), 3);
    assert_null(json_object_get(got, "autoscaling_config"));
    assert_true(json_is_null(json_object_get(got, "user_config")));
    assert_null(json_object_get(json_object_get(got, "ray_actor_options"), "num_cpus"));
    json_decref(got);
    assert_null(cs_scfg_deployment_config_json(NULL));
    cs_scfg_free(c);
    cs_scfg_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rayservice_fixture), cmocka_unit_test(test_rayservice_errors),
        cmocka_unit_test(test_two_apps_fixture),   cmocka_unit_test(test_bad_fixtures),
        cmocka_unit_test(test_json_input),         cmocka_unit_test(test_from_json),
        cmocka_unit_test(test_yaml_scalars),       cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_fields),         cmocka_unit_test(test_autoscaling),
        cmocka_unit_test(test_schema_errors),      cmocka_unit_test(test_yaml_bomb),
        cmocka_unit_test(test_big_and_deep),       cmocka_unit_test(test_app_errors),
        cmocka_unit_test(test_capacity),           cmocka_unit_test(test_deployment_config_json),
        cmocka_unit_test(test_remote),
    };
    return cmocka_run_group_tests_name("serve_config", tests, NULL, NULL);
}
