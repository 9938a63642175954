/* cs_hub without the network: model-name parsing, cache location from the environment
 * (huggingface_hub's precedence), cache lookup in a hand-made huggingface_hub tree, and
 * the messages of cs_hub_resolve_env when the model is missing. The downloads are tested
 * end to end against a mock Hub in test_pull.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hub/hub.h"

static const char *ENV_VARS[] = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_ENDPOINT",
                                 "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE",
                                 "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT"};

static void clear_env(void) {
    for (size_t i = 0; i < sizeof ENV_VARS / sizeof *ENV_VARS; i++) unsetenv(ENV_VARS[i]);
}

static void test_parse_ref(void **state) {
    (void)state;
    cs_hub_ref r;
    cs_err err = {{0}};
    assert_int_equal(cs_hub_parse_ref("distilgpt2", &r, &err), 0);
    assert_string_equal(r.repo, "distilgpt2");
    assert_string_equal(r.revision, "main");
    assert_int_equal(cs_hub_parse_ref("openai-community/gpt2", &r, &err), 0);
    assert_string_equal(r.repo, "openai-community/gpt2");
    assert_int_equal(cs_hub_parse_ref("ORG/Na_me.v2@v1.0", &r, &err), 0);
    assert_string_equal(r.repo, "ORG/Na_me.v2");
    assert_string_equal(r.revision, "v1.0");
    assert_int_equal(cs_hub_parse_ref("a/b@refs/pr/1", &r, &err), 0);
    assert_string_equal(r.revision, "refs/pr/1");
    static const char *bad[] = {"", "a/b/c", "/abs", "a/", "/b", "a--b", "a..b", "-a", "a-", ".a", "a.", "a b",
                                "a/b@", "a/b@../x", "a/b@/x", "a/b@x/", "a/b@x//y", "a/b@x/../y", "a/b@x y",
                                "a/b@.hidden", "a/b@x/.y", "a@b@c", "name\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err.msg[0] = '\0';
        assert_int_equal(cs_hub_parse_ref(bad[i], &r, &err), -1);
        assert_true(err.msg[0] != '\0');
    }
    char longname[CS_HUB_REPO_MAX + 2];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(cs_hub_parse_ref(longname, &r, &err), -1);
    longname[CS_HUB_REPO_MAX] = '\0';
    assert_int_equal(cs_hub_parse_ref(longname, &r, &err), 0);
}

static void test_env(void **state) {
    (void)state;
    cs_hub_env env;
    cs_err err = {{0}};
    clear_env();
    setenv("HOME", "/home/u", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.cache, "/home/u/.cache/huggingface/hub");
    assert_string_equal(env.endpoint, "https://huggingface.co");
    assert_int_equal(env.offline, 0);
    assert_int_equal(env.progress, 1);
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.cache, "/xdg/huggingface/hub");
    setenv("HF_HOME", "~/hf", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.cache, "/home/u/hf/hub");
    setenv("HUGGINGFACE_HUB_CACHE", "/legacy", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.cache, "/legacy");
    setenv("HF_HUB_CACHE", "/c/hub/", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.cache, "/c/hub");

    setenv("HF_ENDPOINT", "http://127.0.0.1:8080//", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.endpoint, "http://127.0.0.1:8080");
    setenv("HF_ENDPOINT", "ftp://x", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), -1);
    assert_non_null(strstr(err.msg, "HF_ENDPOINT"));
    unsetenv("HF_ENDPOINT");

    static const struct {
        const char *v;
        int off;
    } offl[] = {{"1", 1}, {"true", 1}, {"TRUE", 1}, {"yes", 1}, {"on", 1}, {"0", 0}, {"false", 0}, {"no", 0}, {"", 0}};
    for (size_t i = 0; i < sizeof offl / sizeof *offl; i++) {
        setenv("HF_HUB_OFFLINE", offl[i].v, 1);
        assert_int_equal(cs_hub_env_init(&env, &err), 0);
        assert_int_equal(env.offline, offl[i].off);
    }
    unsetenv("HF_HUB_OFFLINE");
    setenv("TRANSFORMERS_OFFLINE", "1", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_int_equal(env.offline, 1);
    setenv("HF_HUB_OFFLINE", "0", 1); /* HF_HUB_OFFLINE wins when set */
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_int_equal(env.offline, 0);

    /* connect timeout: short by default (no retry loop against an unreachable Hub) */
    unsetenv("HF_HUB_OFFLINE");
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_true(env.connect_timeout_s == CS_HUB_CONNECT_TIMEOUT_S && CS_HUB_CONNECT_TIMEOUT_S <= 10);
    setenv("HF_HUB_ETAG_TIMEOUT", "2.5", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_true(env.connect_timeout_s == 2.5);
    static const char *bad_timeouts[] = {"0", "-1", "abc", "1e9", "5s"};
    for (size_t i = 0; i < sizeof bad_timeouts / sizeof *bad_timeouts; i++) {
        setenv("HF_HUB_ETAG_TIMEOUT", bad_timeouts[i], 1);
        assert_int_equal(cs_hub_env_init(&env, &err), -1);
        assert_non_null(strstr(err.msg, "HF_HUB_ETAG_TIMEOUT"));
    }
    unsetenv("HF_HUB_ETAG_TIMEOUT");

    setenv("HF_TOKEN", " hf_abc \n", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.token, "hf_abc");
    setenv("HF_TOKEN", "hf_a\r\nX-Evil: 1", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), -1);
    unsetenv("HF_TOKEN");
    setenv("HF_TOKEN_PATH", "/nonexistent/token", 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.token, "");

    /* The token file `huggingface-cli login` writes, under HF_HOME. */
    clear_env();
    char home[] = "/tmp/cs_hub_home.XXXXXX", tok[64];
    assert_non_null(mkdtemp(home));
    snprintf(tok, sizeof tok, "%s/token", home);
    FILE *f = fopen(tok, "w");
    assert_non_null(f);
    fputs("hf_fromfile\n", f);
    fclose(f);
    setenv("HF_HOME", home, 1);
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.token, "hf_fromfile");
    assert_string_equal(env.cache + strlen(home), "/hub");
    setenv("HF_TOKEN", "hf_env", 1); /* HF_TOKEN wins */
    assert_int_equal(cs_hub_env_init(&env, &err), 0);
    assert_string_equal(env.token, "hf_env");
    unlink(tok);
    rmdir(home);

    clear_env();
    unsetenv("HOME");
    assert_int_equal(cs_hub_env_init(&env, &err), -1);
    assert_non_null(strstr(err.msg, "HF_HUB_CACHE"));
    setenv("HOME", "/home/u", 1);
}

static void test_repo_dir(void **state) {
    (void)state;
    cs_hub_env env = {.cache = "/c"};
    char out[CS_HUB_PATH_MAX];
    cs_err err = {{0}};
    assert_int_equal(cs_hub_repo_dir(&env, "openai-community/gpt2", out, sizeof out, &err), 0);
    assert_string_equal(out, "/c/models--openai-community--gpt2");
    assert_int_equal(cs_hub_repo_dir(&env, "distilgpt2", out, sizeof out, &err), 0);
    assert_string_equal(out, "/c/models--distilgpt2");
    assert_int_equal(cs_hub_repo_dir(&env, "distilgpt2", out, 10, &err), -1);
}

/* A tree as huggingface_hub writes it. */
static char tmpdir[256];
#define COMMIT "0123456789abcdef0123456789abcdef01234567"

static void put(const char *rel, const char *content) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", tmpdir, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static void sh(const char *fmt, const char *arg) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, fmt, arg, arg, arg);
    assert_int_equal(system(cmd), 0);
}

static int setup_tree(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/cs_hub_test.XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    sh("mkdir -p %s/models--org--m/blobs %s/models--org--m/refs %s/models--org--m/snapshots/" COMMIT, tmpdir);
    static const char *files[] = {"config.json", "model.safetensors", "vocab.json", "merges.txt"};
    for (size_t i = 0; i < 4; i++) {
        char rel[256], target[256], link[1024];
        snprintf(rel, sizeof rel, "models--org--m/blobs/etag%zu", i);
        put(rel, "x");
        snprintf(target, sizeof target, "../../blobs/etag%zu", i);
        snprintf(link, sizeof link, "%s/models--org--m/snapshots/" COMMIT "/%s", tmpdir, files[i]);
        if (symlink(target, link) != 0) return -1;
    }
    put("models--org--m/refs/main", COMMIT); /* no newline, like huggingface_hub */
    put("models--org--m/refs/nl", COMMIT "\n");
    put("models--org--m/refs/bad", "not-a-commit");
    put("models--org--m/refs/other", "ffffffffffffffffffffffffffffffffffffffff");
    return 0;
}

static int teardown_tree(void **state) {
    (void)state;
    sh("rm -rf %s", tmpdir);
    return 0;
}

static void test_find_cached(void **state) {
    (void)state;
    cs_hub_env env = {0};
    snprintf(env.cache, sizeof env.cache, "%s", tmpdir);
    char dir[CS_HUB_PATH_MAX], want[CS_HUB_PATH_MAX];
    snprintf(want, sizeof want, "%s/models--org--m/snapshots/" COMMIT, tmpdir);
    cs_hub_ref ref;
    cs_err err = {{0}};
    static const char *found[] = {"org/m", "org/m@nl", ("org/m@" COMMIT)};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(cs_hub_parse_ref(found[i], &ref, &err), 0);
        assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 0);
        assert_string_equal(dir, want);
    }
    assert_int_equal(cs_hub_parse_ref("org/m@nope", &ref, &err), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 1);
    assert_non_null(strstr(err.msg, "refs/nope"));
    assert_int_equal(cs_hub_parse_ref("org/m@other", &ref, &err), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 1); /* no such snapshot */
    assert_int_equal(cs_hub_parse_ref("org/m@bad", &ref, &err), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), -1);
    assert_non_null(strstr(err.msg, "not a commit hash"));
    assert_int_equal(cs_hub_parse_ref("org/other", &ref, &err), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 1);
    assert_int_equal(cs_hub_parse_ref("org/m", &ref, &err), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, 10, &err), -1); /* buffer too small */

    /* A snapshot missing a required file is not a hit. */
    char p[1024];
    snprintf(p, sizeof p, "%s/models--org--m/snapshots/" COMMIT "/merges.txt", tmpdir);
    char target[64];
    ssize_t n = readlink(p, target, sizeof target - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_int_equal(unlink(p), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 1);
    assert_non_null(strstr(err.msg, "lacks merges.txt"));
    /* A dangling link (blob gone) is not a hit either. */
    assert_int_equal(symlink("../../blobs/missing", p), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 1);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(symlink(target, p), 0);
    assert_int_equal(cs_hub_find_cached(&env, &ref, dir, sizeof dir, &err), 0);
}

static void test_resolve(void **state) {
    (void)state;
    cs_hub_env env = {.endpoint = "http://127.0.0.1:9", .offline = 1};
    snprintf(env.cache, sizeof env.cache, "%s", tmpdir);
    char dir[CS_HUB_PATH_MAX], want[CS_HUB_PATH_MAX];
    cs_err err = {{0}};
    /* An existing directory is returned as it is, whatever the environment. */
    assert_int_equal(cs_hub_resolve_env(&env, tmpdir, dir, sizeof dir, 1, &err), 0);
    assert_string_equal(dir, tmpdir);
    assert_int_equal(cs_hub_resolve(tmpdir, dir, sizeof dir, 1, &err), 0);
    assert_string_equal(dir, tmpdir);
    /* A cached name resolves offline. */
    snprintf(want, sizeof want, "%s/models--org--m/snapshots/" COMMIT, tmpdir);
    assert_int_equal(cs_hub_resolve_env(&env, "org/m", dir, sizeof dir, 1, &err), 0);
    assert_string_equal(dir, want);
    /* Missing and offline: the message says what to do. */
    char msg[CS_ERR_MAX];
    assert_int_equal(cs_hub_resolve_env(&env, "org/absent", dir, sizeof dir, 1, &err), -1);
    snprintf(msg, sizeof msg,
             "model org/absent is not in the cache at %s and HF_HUB_OFFLINE is set: run `cserve pull org/absent` on a "
             "machine with network access or copy the cache", tmpdir);
    assert_non_null(strstr(err.msg, msg));
    /* Missing, online, but downloads not allowed. */
    env.offline = 0;
    assert_int_equal(cs_hub_resolve_env(&env, "org/absent@v1", dir, sizeof dir, 0, &err), -1);
    assert_non_null(strstr(err.msg, "run `cserve pull org/absent@v1`"));
    /* Paths that do not exist are not sent to the Hub. */
    static const char *paths[] = {"/nonexistent/model", "./model", "../model", "~/model", "a/b/c", "model/"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        assert_int_equal(cs_hub_resolve_env(&env, paths[i], dir, sizeof dir, 1, &err), -1);
        assert_non_null(strstr(err.msg, "not a model directory"));
    }
    assert_int_equal(cs_hub_resolve_env(&env, "", dir, sizeof dir, 1, &err), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ref),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_repo_dir),
        cmocka_unit_test_setup_teardown(test_find_cached, setup_tree, teardown_tree),
        cmocka_unit_test_setup_teardown(test_resolve, setup_tree, teardown_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
