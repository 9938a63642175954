/* libFuzzer target: model names (cs_hub_parse_ref and cs_hub_repo_dir in
 * src/hub/hub.h). A name comes from the command line, the serve config or an
 * API client's "model" field; its repo and revision become cache paths
 * (CACHE/models--ORG--NAME/refs/REVISION), so an accepted name must never
 * reach outside that directory.
 *
 * Input: the name (up to the first NUL byte). On success, checked against
 * the rules independently of hub.c: repo = one or two non-empty parts of
 * [A-Za-z0-9._-] without "--" or "..", no part starting or ending with '-'
 * or '.'; revision = non-empty, at most CS_HUB_REV_MAX bytes of
 * [A-Za-z0-9._+/-], relative, and no path component that is empty, "." or
 * ".."; repo + "@" + revision == the input (or revision "main" without '@');
 * and cs_hub_repo_dir gives CACHE/models--ORG--NAME, one path component. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hub/hub.h"
#include "fuzz_common.h"

static int safe_char(char c, const char *extra) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c);
}

static void check_repo(const char *r) {
    size_t n = strlen(r), slashes = 0;
    if (n == 0 || n > CS_HUB_REPO_MAX) fz_fail("repo of %zu bytes", n);
    if (strstr(r, "--") || strstr(r, "..")) fz_fail("repo '%s' contains -- or ..", r);
    for (size_t i = 0; i < n; i++) {
        if (r[i] == '/') {
            slashes++;
            continue;
        }
        if (!r[i] || !safe_char(r[i], "-_.")) fz_fail("repo '%s': byte 0x%02x", r, (unsigned char)r[i]);
        int start = i == 0 || r[i - 1] == '/', end = i + 1 == n || r[i + 1] == '/';
        if ((start || end) && (r[i] == '-' || r[i] == '.')) fz_fail("repo '%s': part starts/ends with - or .", r);
    }
    if (slashes > 1 || r[0] == '/' || r[n - 1] == '/' || strstr(r, "//")) fz_fail("repo '%s': bad parts", r);
}

static void check_revision(const char *v) {
    size_t n = strlen(v);
    if (n == 0 || n > CS_HUB_REV_MAX) fz_fail("revision of %zu bytes", n);
    if (v[0] == '/') fz_fail("absolute revision '%s'", v);
    for (size_t i = 0; i < n; i++)
        if (!safe_char(v[i], "-_.+/")) fz_fail("revision '%s': byte 0x%02x", v, (unsigned char)v[i]);
    for (const char *p = v;;) { /* every component: non-empty, not "." or ".." */
        const char *e = strchr(p, '/');
        size_t cl = e ? (size_t)(e - p) : strlen(p);
        if (cl == 0 || (cl == 1 && p[0] == '.') || (cl == 2 && p[0] == '.' && p[1] == '.'))
            fz_fail("revision '%s' has an empty, '.' or '..' component", v);
        if (!e) break;
        p = e + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *name = malloc(size + 1);
    if (!name) abort();
    memcpy(name, data, size);
    name[size] = 0;
    cs_hub_ref ref;
    cs_err err = {{0}};
    if (cs_hub_parse_ref(name, &ref, &err)) {
        fz_check_err(&err, "cs_hub_parse_ref");
        free(name);
        return 0;
    }
    check_repo(ref.repo);
    check_revision(ref.revision);
    const char *at = strchr(name, '@');
    size_t rl = strlen(ref.repo);
    if (strncmp(name, ref.repo, rl) || (at ? name + rl != at || strcmp(at + 1, ref.revision) : name[rl] != 0 ||
                                                                                            strcmp(ref.revision, "main")))
        fz_fail("'%s' parsed as repo '%s' revision '%s'", name, ref.repo, ref.revision);

    static cs_hub_env env; /* only cache is used */
    strcpy(env.cache, "/cache");
    char dir[CS_HUB_PATH_MAX];
    if (cs_hub_repo_dir(&env, ref.repo, dir, sizeof dir, &err)) fz_fail("cs_hub_repo_dir failed: %s", err.msg);
    char want[CS_HUB_PATH_MAX] = "/cache/models--";
    for (const char *s = ref.repo; *s; s++) strncat(want, *s == '/' ? "--" : (char[2]){*s, 0}, 2);
    if (strcmp(dir, want)) fz_fail("cs_hub_repo_dir gave '%s', expected '%s'", dir, want);
    free(name);
    return 0;
}
