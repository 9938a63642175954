/* cp_remote: replicas on other hosts. See remote.h. */
#include "serve/remote.h"

#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "serve/cp_internal.h"

typedef char cp_addr[CS_SCFG_MAX_HOSTPORT]; /* "HOST:PORT" */

/* What the resolver thread and the loop share. refs: 2 while both hold it. */
typedef struct resolver {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs, stop;
    char host[CS_SCFG_MAX_HOSTPORT], port[8];
    double refresh_s;
    /* the latest answer (guarded by mu) */
    cp_addr *addrs;
    size_t n;
    unsigned gen;
    int failed;          /* the latest lookup failed: addrs is the last good answer */
    char error[160];
} resolver;

struct cp_remote {
    json_t *spec;        /* the deployment's args.remote entry (a reference) */
    resolver *res;       /* NULL: a static list */
    unsigned seen_gen;
    int have_answer;     /* a DNS answer arrived (until then: no members yet) */
    cp_addr *want;       /* current membership */
    size_t n_want;
    char error[160];     /* the last lookup's failure ("" none) */
    int logged_empty;
};

/* ------------------------------------------------------------ resolver */

static void resolver_release(resolver *rs) {
    pthread_mutex_lock(&rs->mu);
    const int last = --rs->refs == 0;
    pthread_mutex_unlock(&rs->mu);
    if (!last) return;
    pthread_mutex_destroy(&rs->mu);
    pthread_cond_destroy(&rs->cv);
    free(rs->addrs);
    free(rs);
}

static int addr_cmp(const void *a, const void *b) { return strcmp(a, b); }

/* One lookup: the sorted, distinct addresses of rs->host (*n = 0 when the name
 * has none). Returns 0, or -1 with err (the answer is then not to be used). */
static int lookup(const resolver *rs, cp_addr **out, size_t *n, char *err, size_t cap) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    *out = NULL;
    *n = 0;
    const int rc = getaddrinfo(rs->host, rs->port, &hints, &ai);
    if (rc == EAI_NONAME || rc == EAI_NODATA) return 0; /* the name exists no more, or has no replica */
    if (rc != 0) {
        snprintf(err, cap, "%s", gai_strerror(rc));
        return -1;
    }
    size_t cnt = 0;
    for (struct addrinfo *p = ai; p; p = p->ai_next) cnt++;
    if (cnt > CP_REMOTE_MAX_MEMBERS) cnt = CP_REMOTE_MAX_MEMBERS;
    cp_addr *v = cnt ? calloc(cnt, sizeof *v) : NULL;
    if (cnt && !v) {
        freeaddrinfo(ai);
        snprintf(err, cap, "out of memory");
        return -1;
    }
    size_t k = 0;
    for (struct addrinfo *p = ai; p && k < cnt; p = p->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        if (p->ai_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)p->ai_addr)->sin_addr, ip, sizeof ip);
            snprintf(v[k++], sizeof *v, "%s:%s", ip, rs->port);
        } else if (p->ai_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)p->ai_addr)->sin6_addr, ip, sizeof ip);
            snprintf(v[k++], sizeof *v, "[%s]:%s", ip, rs->port);
        }
    }
    freeaddrinfo(ai);
    qsort(v, k, sizeof *v, addr_cmp);
    size_t w = 0;
    for (size_t i = 0; i < k; i++)
        if (!w || strcmp(v[i], v[w - 1])) memmove(v[w++], v[i], sizeof *v);
    *out = v;
    *n = w;
    return 0;
}

static void *resolver_main(void *arg) {
    resolver *rs = arg;
    for (;;) {
        cp_addr *v = NULL;
        size_t n = 0;
        char err[sizeof rs->error] = "";
        const int rc = lookup(rs, &v, &n, err, sizeof err);
        pthread_mutex_lock(&rs->mu);
        if (rs->stop) {
            pthread_mutex_unlock(&rs->mu);
            free(v);
            break;
        }
        if (rc == 0) {
            free(rs->addrs);
            rs->addrs = v;
            rs->n = n;
            rs->failed = 0;
        } else {
            rs->failed = 1;
            snprintf(rs->error, sizeof rs->error, "%s", err);
        }
        rs->gen++;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        const double t = (double)until.tv_sec + 1e-9 * (double)until.tv_nsec + rs->refresh_s;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
        while (!rs->stop && pthread_cond_timedwait(&rs->cv, &rs->mu, &until) == 0) {
        }
        const int stop = rs->stop;
        pthread_mutex_unlock(&rs->mu);
        if (stop) break;
    }
    resolver_release(rs);
    return NULL;
}

static resolver *resolver_start(const char *hostport, double refresh_s) {
    resolver *rs = calloc(1, sizeof *rs);
    if (!rs) return NULL;
    int port = 0;
    const char *why = NULL;
    if (cs_scfg_hostport(hostport, rs->host, sizeof rs->host, &port, &why)) { /* validated by config.c */
        free(rs);
        return NULL;
    }
    snprintf(rs->port, sizeof rs->port, "%d", port);
    rs->refresh_s = refresh_s;
    rs->refs = 2;
    pthread_mutex_init(&rs->mu, NULL);
    pthread_cond_init(&rs->cv, NULL);
    pthread_attr_t at;
    pthread_t th;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    const int rc = pthread_create(&th, &at, resolver_main, rs);
    pthread_attr_destroy(&at);
    if (rc != 0) {
        pthread_mutex_destroy(&rs->mu);
        pthread_cond_destroy(&rs->cv);
        free(rs);
        return NULL;
    }
    return rs;
}

static void resolver_stop(resolver *rs) {
    if (!rs) return;
    pthread_mutex_lock(&rs->mu);
    rs->stop = 1;
    pthread_cond_signal(&rs->cv);
    pthread_mutex_unlock(&rs->mu);
    resolver_release(rs);
}

/* The resolver's latest answer, if new, becomes the membership. */
static void take_answer(cp_remote *rm, const char *dep) {
    resolver *rs = rm->res;
    pthread_mutex_lock(&rs->mu);
    if (rs->gen == rm->seen_gen) {
        pthread_mutex_unlock(&rs->mu);
        return;
    }
    rm->seen_gen = rs->gen;
    if (rs->failed) {
        if (strcmp(rm->error, rs->error) != 0)
            cp_log("warn", "deployment %s: looking up %s failed: %s (keeping the last answer)", dep, rs->host, rs->error);
        snprintf(rm->error, sizeof rm->error, "%s", rs->error);
    } else {
        cp_addr *v = rs->n ? malloc(rs->n * sizeof *v) : NULL;
        if (v || !rs->n) {
            if (rs->n) memcpy(v, rs->addrs, rs->n * sizeof *v);
            free(rm->want);
            rm->want = v;
            rm->n_want = rs->n;
            rm->have_answer = 1;
            rm->error[0] = 0;
        }
    }
    pthread_mutex_unlock(&rs->mu);
}

/* ------------------------------------------------------------ configuration */

void cp_remote_free(cp_remote *rm) {
    if (!rm) return;
    resolver_stop(rm->res);
    json_decref(rm->spec);
    free(rm->want);
    free(rm);
}

int cp_remote_configure(cp_dep *d) {
    const json_t *spec = d->cfg.remote;
    if (d->remote && spec && json_equal(d->remote->spec, spec)) return 0;
    cp_remote_free(d->remote);
    d->remote = NULL;
    if (!spec) return 0;
    cp_remote *rm = calloc(1, sizeof *rm);
    if (!rm) return -1;
    rm->spec = json_incref((json_t *)spec);
    const json_t *reps = json_object_get(spec, "replicas");
    if (reps) {
        const size_t n = json_array_size(reps);
        rm->want = calloc(n ? n : 1, sizeof *rm->want);
        if (!rm->want) goto fail;
        for (size_t i = 0; i < n; i++)
            snprintf(rm->want[i], sizeof *rm->want, "%s", json_string_value(json_array_get(reps, i)));
        rm->n_want = n;
        rm->have_answer = 1;
    } else {
        const double refresh = json_number_value(json_object_get(spec, "refresh_s"));
        rm->res = resolver_start(json_string_value(json_object_get(spec, "dns")),
                                 refresh > 0 ? refresh : CS_SCFG_REMOTE_REFRESH_S);
        if (!rm->res) goto fail;
    }
    d->remote = rm;
    return 0;
fail:
    cp_remote_free(rm);
    return -1;
}

/* ------------------------------------------------------------ members */

static int wanted(const cp_remote *rm, const char *addr) {
    for (size_t i = 0; rm && i < rm->n_want; i++)
        if (!strcmp(rm->want[i], addr)) return 1;
    return 0;
}

static cp_replica *member_new(cs_ctl *c, cp_dep *d, const char *addr, double now) {
    if (d->n_reps == d->cap_reps) {
        size_t nc = d->cap_reps ? 2 * d->cap_reps : 4;
        cp_replica **nr = realloc(d->reps, nc * sizeof *nr);
        if (!nr) return NULL;
        d->reps = nr;
        d->cap_reps = nc;
    }
    cp_replica *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->dep = d;
    r->err_fd = -1;
    r->num = (int)(++c->rep_ctr & 0x3fffffff);
    snprintf(r->id, sizeof r->id, "%s", addr);
    snprintf(r->addr, sizeof r->addr, "%s", addr);
    r->version = d->version;
    r->state = RS_STARTING;
    r->t_spawn = now;
    r->start_wall = cp_wall();
    r->next_check = now;
    r->uc_pending = d->cfg.user_config != NULL; /* its own --user-config may differ */
    d->reps[d->n_reps++] = r;
    d->starts++;
    cp_log("info", "replica %s#%s#%s joins (remote)", d->app->name, d->name, addr);
    return r;
}

static void set_status(cp_dep *d, const char *st, const char *trig, const char *msg) {
    snprintf(d->status, sizeof d->status, "%s", st);
    snprintf(d->trigger, sizeof d->trigger, "%s", trig);
    snprintf(d->message, sizeof d->message, "%.*s", (int)sizeof d->message - 1, msg);
}

static void remote_status(cp_dep *d, int running, int unhealthy, int starting, int draining) {
    const cp_remote *rm = d->remote;
    const json_t *dns = json_object_get(rm->spec, "dns");
    char src[CS_SCFG_MAX_HOSTPORT + 64], m[CS_ERR_MAX * 2]; /* cut to CS_ERR_MAX by set_status */
    if (dns) snprintf(src, sizeof src, "DNS name %s, looked up every %g s", json_string_value(dns),
                      json_number_value(json_object_get(rm->spec, "refresh_s")));
    else snprintf(src, sizeof src, "a static list of %zu", rm->n_want);
    const int members = running + starting;
    snprintf(m, sizeof m,
             "Remote replicas (%s): %d running (%d of them unhealthy: no requests until a health check passes), %d "
             "starting, %d draining.%s%s%s Autoscaling does not apply: the platform that runs the replicas scales "
             "them (e.g. a Kubernetes HPA).",
             src, running, unhealthy, starting, draining, rm->error[0] ? " The last lookup failed (" : "", rm->error,
             rm->error[0] ? "); the last answer is kept." : "");
    if (d->deleting) set_status(d, "UPDATING", "DELETING", "Deleting");
    else if (!members && dns && !rm->have_answer) set_status(d, "UPDATING", "CONFIG_UPDATE_STARTED", m);
    else if (!members) set_status(d, "UNHEALTHY", "HEALTH_CHECK_FAILED", m);
    else if (unhealthy) set_status(d, "UNHEALTHY", "HEALTH_CHECK_FAILED", m);
    else if (!running) set_status(d, "UPDATING", "CONFIG_UPDATE_STARTED", m);
    else set_status(d, "HEALTHY", "CONFIG_UPDATE_COMPLETED", m);
}

int cp_remote_reconcile(cs_ctl *c, cp_dep *d, double now) {
    const int is_remote = d->cfg.remote && !d->deleting;
    if (is_remote && !d->remote && cp_remote_configure(d) == 0 && d->remote)
        cp_log("info", "deployment %s: remote replicas configured", d->name); /* after an earlier failure */
    cp_remote *rm = d->deleting ? NULL : d->remote;
    if (rm && rm->res) take_answer(rm, d->name);
    int running = 0, unhealthy = 0, starting = 0, draining = 0;
    for (size_t i = 0; i < d->n_reps; i++) {
        cp_replica *r = d->reps[i];
        if (!r->addr[0] || r->exited) continue;
        r->version = d->version; /* a member runs whatever its host runs */
        const int want = wanted(rm, r->addr);
        if (r->state != RS_STOPPING && !want) {
            r->state = RS_STOPPING;
            r->t_stop_asked = now;
            cp_log("info", "replica %s#%s#%s leaves: draining %d request(s)", d->app->name, d->name, r->id, r->ongoing);
        } else if (r->state == RS_STOPPING && want) {
            r->state = RS_STARTING; /* back before it was forgotten: health-checked again first */
            r->next_check = now;
            r->health_fails = 0;
            r->unhealthy = 0;
        }
        if (r->state == RS_STOPPING) {
            if (r->ongoing == 0 && !r->check) r->exited = 1; /* the controller forgets it */
            else draining++;
        } else if (r->state == RS_RUNNING && r->unhealthy && r->uc_pending && !r->health_fails) {
            starting++; /* answers, and gets the user_config before its first request */
        } else if (r->state == RS_RUNNING) {
            running++;
            unhealthy += r->unhealthy;
        } else {
            starting++;
        }
    }
    if (!rm) {
        if (is_remote) { /* never a local process for it, even when its membership cannot be followed */
            d->target = 0;
            set_status(d, "UNHEALTHY", "HEALTH_CHECK_FAILED",
                       "Remote replicas: cannot follow the membership (out of memory, or no resolver thread).");
        }
        return is_remote;
    }
    for (size_t i = 0; i < rm->n_want; i++) {
        int have = 0;
        for (size_t k = 0; k < d->n_reps && !have; k++)
            have = !d->reps[k]->exited && !strcmp(d->reps[k]->addr, rm->want[i]);
        if (!have && member_new(c, d, rm->want[i], now)) starting++;
    }
    if (!rm->n_want && rm->have_answer && !rm->logged_empty)
        cp_log("warn", "deployment %s/%s: no remote replica (%s)", d->app->name, d->name,
               rm->res ? "the DNS name has no address" : "empty list");
    rm->logged_empty = !rm->n_want && rm->have_answer;
    d->target = running + starting;
    d->scaling = 0;
    remote_status(d, running, unhealthy, starting, draining);
    return 1;
}

/* ------------------------------------------------------------ transport */

void cp_replica_target(CURL *e, const cp_replica *r, const char *path) {
    char url[4400];
    if (r->addr[0]) {
        snprintf(url, sizeof url, "http://%s%s", r->addr, path);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CP_REMOTE_CONNECT_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, CP_REMOTE_KEEPALIVE_S);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, CP_REMOTE_KEEPALIVE_S);
        curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    } else {
        snprintf(url, sizeof url, "http://replica%s", path);
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, r->sock);
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
}

double cp_check_period(const cp_replica *r) {
    const double p = r->dep->cfg.health_check_period_s;
    return r->addr[0] && p > CP_REMOTE_HEALTH_PERIOD_S ? CP_REMOTE_HEALTH_PERIOD_S : p;
}

double cp_check_timeout(const cp_replica *r) {
    const double t = r->dep->cfg.health_check_timeout_s;
    return r->addr[0] && t > CP_REMOTE_CHECK_TIMEOUT_S ? CP_REMOTE_CHECK_TIMEOUT_S : t;
}

double cp_startup_poll(const cp_replica *r) { return r->addr[0] ? CP_REMOTE_STARTUP_POLL_S : CP_STARTUP_POLL_S; }
