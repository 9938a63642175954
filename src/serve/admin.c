/* The admin REST API of the control plane (default 127.0.0.1:8265), in Ray
 * Serve's shapes so that the real `serve` CLI and KubeRay work against it:
 *   GET    /api/ray/version
 *   GET    /api/serve/applications/      ServeInstanceDetails
 *   PUT    /api/serve/applications/      the Serve config (JSON; YAML with a YAML Content-Type); full replace
 *   DELETE /api/serve/applications/      delete every application
 *   POST   /api/v1/applications/{app}/deployments/{dep}/scale  {"target_num_replicas": N}
 * and the dashboard (/, /dashboard/..., /api/cserve/...: dashboard.c).
 * Runs on the control-loop thread (see controller.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "serve/cp_internal.h"

#define CP_RAY_VERSION "2.50.1" /* the Ray release whose API this follows */
#define CP_SCALE_MAX_BODY 4096

static const char *node_id(void) {
    static char id[57];
    if (!id[0]) {
        unsigned char b[28];
        if (getrandom(b, sizeof b, 0) != sizeof b)
            for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)rand();
        for (size_t i = 0; i < sizeof b; i++) snprintf(id + 2 * i, 3, "%02x", b[i]);
    }
    return id;
}

static const char *node_ip(const cs_ctl *c) {
    return strcmp(c->host, "0.0.0.0") && strcmp(c->host, "::") ? c->host : "127.0.0.1";
}

static json_t *actor(const cs_ctl *c, const char *name) {
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "node_id", node_id(), "node_ip", node_ip(c),
                     "node_instance_id", "", "actor_id", "", "actor_name", name, "worker_id", "", "log_file_path",
                     "");
}

static const char *rstate(const cp_replica *r) {
    return r->state == RS_STARTING ? "STARTING" : r->state == RS_RUNNING ? "RUNNING" : "STOPPING";
}

static json_t *dep_json(const cs_ctl *c, const cp_dep *d) {
    json_t *reps = json_array();
    for (size_t i = 0; i < d->n_reps; i++) {
        const cp_replica *r = d->reps[i];
        if (r->exited) continue;
        char an[CS_SCFG_MAX_NAME * 2 + CP_REPLICA_ID + 32];
        snprintf(an, sizeof an, "SERVE_REPLICA::%s#%s#%s", d->app->name, d->name, r->id);
        json_t *o = actor(c, an);
        json_object_set_new(o, "replica_id", json_string(r->id));
        json_object_set_new(o, "state", json_string(rstate(r)));
        json_object_set_new(o, "pid", json_integer(r->pid));
        json_object_set_new(o, "start_time_s", json_real(r->start_wall));
        /* cserve's: whether it gets requests; a remote replica's address (serve/remote.h) */
        json_object_set_new(o, "healthy", json_boolean(r->state == RS_RUNNING && !r->unhealthy));
        if (r->addr[0]) json_object_set_new(o, "address", json_string(r->addr));
        json_array_append_new(reps, o);
    }
    const double cpus = d->cfg.num_cpus > 0 ? d->cfg.num_cpus : (double)d->threads;
    return json_pack("{s:s, s:s, s:s, s:s, s:O, s:i, s:{s:f}, s:o}", "name", d->name, "status", d->status,
                     "status_trigger", d->trigger, "message", d->message, "deployment_config",
                     d->dconf ? d->dconf : json_null(), "target_num_replicas", d->deleting ? 0 : d->target,
                     "required_resources", "CPU", cpus > 0 ? cpus : 1.0, "replicas", reps);
}

static json_t *app_json(const cs_ctl *c, const cp_app *a) {
    json_t *deps = json_object();
    for (size_t i = 0; i < a->n_deps; i++)
        if (!a->deps[i]->deleting) json_object_set_new(deps, a->deps[i]->name, dep_json(c, a->deps[i]));
    char msg[CS_ERR_MAX * 3] = "";
    if (a->error[0]) {
        snprintf(msg, sizeof msg, "Deploying application %s failed: %s", a->name, a->error);
    } else {
        for (size_t i = 0; i < a->n_deps; i++)
            if (!strcmp(a->deps[i]->status, "DEPLOY_FAILED"))
                snprintf(msg, sizeof msg, "Deploying application %s failed: deployment %s: %s", a->name,
                         a->deps[i]->name, a->deps[i]->message);
    }
    json_t *o = json_pack("{s:s, s:o, s:n, s:s, s:s, s:f, s:O, s:s, s:o}", "name", a->name, "route_prefix",
                          a->prefix[0] ? json_string(a->prefix) : json_null(), "docs_path", "status", a->status,
                          "message", msg, "last_deployed_time_s", a->last_deployed, "deployed_app_config",
                          a->given ? a->given : json_null(), "source", "declarative", "deployments", deps);
    return o;
}

json_t *cp_status_json(cs_ctl *c, int api_type) {
    json_t *apps = json_object();
    for (size_t i = 0; i < c->n_apps && api_type != CP_API_IMPERATIVE; i++)
        json_object_set_new(apps, c->apps[i]->name, app_json(c, c->apps[i]));
    char pname[128];
    snprintf(pname, sizeof pname, "SERVE_PROXY_ACTOR-%s", node_id());
    json_t *proxy = actor(c, pname);
    json_object_set_new(proxy, "status", json_string(atomic_load(&c->draining) ? "DRAINING" : "HEALTHY"));
    json_t *proxies = json_object();
    json_object_set_new(proxies, node_id(), proxy);
    json_t *http = json_pack("{s:s, s:i, s:s, s:o, s:f, s:n, s:n, s:n, s:n}", "host", c->host, "port", c->port,
                             "root_path", "", "request_timeout_s",
                             c->request_timeout_s < 86400.0 * 365 ? json_real(c->request_timeout_s) : json_null(),
                             "keep_alive_timeout_s", c->cfg ? c->cfg->keep_alive_timeout_s : 90.0, "ssl_keyfile",
                             "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs");
    json_t *groups = json_array();
    for (size_t i = 0; i < c->n_apps; i++) {
        const cp_app *a = c->apps[i];
        if (a->deleting || !a->prefix[0]) continue;
        json_array_append_new(groups, json_pack("{s:[{s:s, s:i, s:s, s:s}], s:s, s:s}", "targets", "ip", node_ip(c),
                                                "port", c->port, "instance_id", "", "name", pname, "route_prefix",
                                                a->prefix, "protocol", "HTTP"));
    }
    const char *loc = c->cfg && c->cfg->proxy_location[0] ? c->cfg->proxy_location : "EveryNode";
    json_t *o = json_pack("{s:o, s:s, s:o, s:{s:i, s:[], s:n}, s:o, s:o, s:o, s:o}", "controller_info",
                          actor(c, "SERVE_CONTROLLER_ACTOR"), "proxy_location", loc, "http_options", http,
                          "grpc_options", "port", 9000, "grpc_servicer_functions", "request_timeout_s", "proxies",
                          proxies, "applications", apps, "target_capacity",
                          c->target_capacity >= 0 ? json_real(c->target_capacity) : json_null(), "target_groups",
                          groups);
    return o;
}

/* The PUT body as a config: JSON (Ray's API), or YAML when the Content-Type
 * says so (the dashboard's editor, curl --data-binary @serve.yaml). On
 * failure answers 400 and returns NULL. */
static cs_scfg *put_config(cs_http_req *r, int yaml) {
    size_t n = 0;
    const char *body = cs_http_req_body(r, &n);
    cs_err err = {{0}};
    cs_scfg *cfg = NULL;
    if (yaml) {
        if (cs_scfg_parse(&cfg, body ? body : "", n, "request body", &err) == 0) return cfg;
        cs_http_respond(r, 400, "text/plain; charset=utf-8", err.msg, strlen(err.msg), NULL, 0);
        return NULL;
    }
    json_error_t je;
    json_t *doc = json_loadb(body ? body : "", n, JSON_REJECT_DUPLICATES, &je);
    if (!doc) {
        char m[400];
        snprintf(m, sizeof m, "request body: not JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        cs_http_respond(r, 400, "text/plain; charset=utf-8", m, strlen(m), NULL, 0);
        return NULL;
    }
    const int bad = cs_scfg_from_json(&cfg, doc, &err);
    json_decref(doc);
    if (!bad) return cfg;
    cs_http_respond(r, 400, "text/plain; charset=utf-8", err.msg, strlen(err.msg), NULL, 0);
    return NULL;
}

static void h_put(cs_ctl *c, cs_http_req *r, int yaml) {
    cs_scfg *cfg = put_config(r, yaml);
    if (!cfg) return;
    cs_err err = {{0}};
    if (cp_apply(c, cfg, &err)) {
        cs_http_respond(r, 500, "text/plain; charset=utf-8", err.msg, strlen(err.msg), NULL, 0);
        return;
    }
    cs_http_respond(r, 200, "text/plain; charset=utf-8", "", 0, NULL, 0);
}

/* /api/v1/applications/{app}/deployments/{dep}/scale */
static void h_scale(cs_ctl *c, cs_http_req *r, const char *rest) {
    char app[CS_SCFG_MAX_NAME], dep[CS_SCFG_MAX_NAME];
    const char *s1 = strstr(rest, "/deployments/");
    const size_t rl = strlen(rest);
    if (!s1 || rl < 6 || strcmp(rest + rl - 6, "/scale") != 0 || (size_t)(s1 - rest) >= sizeof app) {
        cp_respond_error(r, 404, "not_found", "no such admin route");
        return;
    }
    snprintf(app, sizeof app, "%.*s", (int)(s1 - rest), rest);
    const char *d0 = s1 + 13;
    const size_t dl = (size_t)(rest + rl - 6 - d0);
    if (dl == 0 || dl >= sizeof dep) {
        cp_respond_error(r, 404, "not_found", "no such deployment");
        return;
    }
    snprintf(dep, sizeof dep, "%.*s", (int)dl, d0);
    size_t n = 0;
    const char *body = cs_http_req_body(r, &n);
    json_t *j = n <= CP_SCALE_MAX_BODY ? json_loadb(body ? body : "", n, 0, NULL) : NULL;
    json_t *t = j ? json_object_get(j, "target_num_replicas") : NULL;
    if (!t || !json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) > CS_SCFG_MAX_REPLICAS) {
        json_decref(j);
        char m[128];
        snprintf(m, sizeof m, "target_num_replicas: expected an integer in [0, %d]", CS_SCFG_MAX_REPLICAS);
        cp_respond_error(r, 400, "bad_request", m);
        return;
    }
    const int target = (int)json_integer_value(t);
    json_decref(j);
    cp_app *a = cp_find_app(c, app);
    cp_dep *d = a ? cp_find_dep(a, dep) : NULL;
    if (!d) {
        char m[400];
        snprintf(m, sizeof m, "application '%s' has no deployment '%s'", app, dep);
        cp_respond_error(r, 404, "not_found", m);
        return;
    }
    cp_scale(c, d, target);
    cp_log("info", "deployment %s/%s: scaling to %d replicas", app, dep, target);
    cp_respond_json(r, 200, json_pack("{s:s, s:s, s:i}", "application", app, "deployment", dep,
                                      "target_num_replicas", target));
}

void cp_admin_request(cs_ctl *c, cs_http_req *r, const cp_admin_q *q) {
    const int api_type = q ? q->api_type : CP_API_ANY;
    const char *path = cs_http_req_path(r), *m = cs_http_req_method(r);
    const char *emsg;
    int es = cs_http_req_error(r, &emsg);
    if (es) {
        cp_respond_error(r, es, "bad_request", emsg);
        return;
    }
    const int get = !strcmp(m, "GET") || !strcmp(m, "HEAD");
    if (!strcmp(path, "/api/ray/version")) {
        if (!get) {
            cp_respond_error(r, 405, "method_not_allowed", "use GET");
            return;
        }
        cp_respond_json(r, 200, json_pack("{s:s, s:s, s:s, s:s}", "version", "4", "ray_version", CP_RAY_VERSION,
                                          "ray_commit", "cserve", "session_name", "cserve"));
        return;
    }
    if (!strcmp(path, "/api/serve/applications/") || !strcmp(path, "/api/serve/applications")) {
        if (get) cp_respond_json(r, 200, cp_status_json(c, api_type));
        else if (!strcmp(m, "PUT")) h_put(c, r, q && q->yaml);
        else if (!strcmp(m, "DELETE")) {
            cp_log("info", "admin: deleting every application");
            cp_delete_all(c);
            cs_http_respond(r, 200, "text/plain; charset=utf-8", "", 0, NULL, 0);
        } else {
            cp_respond_error(r, 405, "method_not_allowed", "use GET, PUT or DELETE");
        }
        return;
    }
    if (!strncmp(path, "/api/v1/applications/", 21)) {
        if (strcmp(m, "POST") != 0) cp_respond_error(r, 405, "method_not_allowed", "use POST");
        else h_scale(c, r, path + 21);
        return;
    }
    if (!strcmp(path, "/-/healthz")) {
        cs_http_respond(r, 200, "text/plain; charset=utf-8", "success", 7, NULL, 0);
        return;
    }
    if (cp_dash_request(c, r, q)) return;
    cp_respond_error(r, 404, "not_found", "no such admin route");
}
