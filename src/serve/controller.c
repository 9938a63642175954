/* cs_ctl: the controller part of the control plane: the loop thread, replica
 * processes (spawn, readiness, health checks, reaping, stopping), the
 * reconciliation of desired and running replicas (rolling updates), applying
 * a config, deployment and application statuses. See controller.h. */
#include "serve/controller.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/threadpool.h"
#include "engine/utf8.h"
#include "serve/api.h"
#include "serve/log.h"
#include "serve/cp_internal.h"

#define CP_MAX_WAITFDS 256

double cp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double cp_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cp_log(const char *level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cs_log(level, "%s", msg);
}

static void set_str(char *dst, size_t cap, const char *s) { snprintf(dst, cap, "%s", s ? s : ""); }

/* ------------------------------------------------------------ lookups */

cp_app *cp_find_app(cs_ctl *c, const char *name) {
    for (size_t i = 0; i < c->n_apps; i++)
        if (!c->apps[i]->deleting && !strcmp(c->apps[i]->name, name)) return c->apps[i];
    return NULL;
}

cp_dep *cp_find_dep(cp_app *a, const char *name) {
    for (size_t i = 0; i < a->n_deps; i++)
        if (!a->deps[i]->deleting && !strcmp(a->deps[i]->name, name)) return a->deps[i];
    return NULL;
}

/* a live local process (remote members are remote.c's) */
static int alive(const cp_replica *r) { return !r->exited && r->state != RS_STOPPING && !r->addr[0]; }

int cp_running(const cp_dep *d) {
    int n = 0;
    for (size_t i = 0; i < d->n_reps; i++)
        if (d->reps[i]->state == RS_RUNNING && !d->reps[i]->exited) n++;
    return n;
}

/* ------------------------------------------------------------ replicas */

static void random_id(char *out, size_t n) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char b[32];
    if (n > sizeof b) n = sizeof b;
    if (getrandom(b, n, 0) != (ssize_t)n)
        for (size_t i = 0; i < n; i++) b[i] = (unsigned char)rand();
    for (size_t i = 0; i < n; i++) out[i] = al[b[i] % (sizeof al - 1)];
    out[n] = 0;
}

static int dep_threads(const cp_dep *d) {
    if (d->cfg.num_cpus > 0) return (int)ceil(d->cfg.num_cpus);
    int n = cs_cpu_count(), t = d->target > 0 ? d->target : 1;
    return n / t > 1 ? n / t : 1;
}

static int spawn(cs_ctl *c, cp_dep *d) {
    cp_app *a = d->app;
    if (d->n_reps == d->cap_reps) {
        size_t nc = d->cap_reps ? 2 * d->cap_reps : 4;
        cp_replica **nr = realloc(d->reps, nc * sizeof *nr);
        if (!nr) return -1;
        d->reps = nr;
        d->cap_reps = nc;
    }
    cp_replica *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->dep = d;
    r->err_fd = -1;
    r->num = (int)(++c->rep_ctr & 0x3fffffff);
    random_id(r->id, 8);
    snprintf(r->sock, sizeof r->sock, "%s/%.16s.sock", c->sock_dir, r->id); /* a local id: 8 characters */
    char threads[16], ongoing[16], grace[32], rid[CS_SCFG_MAX_NAME * 2 + 32], kvmb[16];
    d->threads = dep_threads(d);
    snprintf(threads, sizeof threads, "%d", d->threads);
    snprintf(ongoing, sizeof ongoing, "%d", d->cfg.max_ongoing_requests);
    snprintf(grace, sizeof grace, "%g", d->cfg.graceful_shutdown_timeout_s);
    snprintf(rid, sizeof rid, "%s#%s#%.16s", a->name, d->name, r->id);
    char *uc = d->cfg.user_config ? json_dumps(d->cfg.user_config, JSON_COMPACT) : NULL;
    char *co = d->cfg.clean_opts ? json_dumps(d->cfg.clean_opts, JSON_COMPACT) : NULL;
    const char *argv[40];
    int n = 0;
    argv[n++] = c->exe;
    argv[n++] = "replica";
    argv[n++] = "--socket", argv[n++] = r->sock;
    if (d->cfg.role == CS_DEP_PREPROCESSOR) {
        argv[n++] = "--app", argv[n++] = "clean_text";
        if (co) argv[n++] = "--clean-opts", argv[n++] = co;
        if (uc) argv[n++] = "--user-config", argv[n++] = uc;
    } else {
        argv[n++] = "--model", argv[n++] = d->cfg.model[0] ? d->cfg.model : a->tg.model;
        argv[n++] = "--model-name", argv[n++] = a->next_model_id;
        argv[n++] = "--dtype", argv[n++] = d->cfg.dtype[0] ? d->cfg.dtype : "fp32";
        if (d->cfg.kv_cache_mb > 0) {
            snprintf(kvmb, sizeof kvmb, "%d", d->cfg.kv_cache_mb);
            argv[n++] = "--kv-cache-mb", argv[n++] = kvmb;
        }
        if (d->cfg.kv_dtype[0]) argv[n++] = "--kv-cache-dtype", argv[n++] = d->cfg.kv_dtype;
        if (uc) argv[n++] = "--user-config", argv[n++] = uc;
    }
    argv[n++] = "--app-name", argv[n++] = a->name;
    argv[n++] = "--threads", argv[n++] = threads;
    argv[n++] = "--max-ongoing-requests", argv[n++] = ongoing;
    argv[n++] = "--graceful-shutdown-timeout-s", argv[n++] = grace;
    argv[n++] = "--replica-id", argv[n++] = rid;
    argv[n] = NULL;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        free(uc);
        free(co);
        free(r);
        return -1;
    }
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* child: only async-signal-safe calls until exec */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) {
            dup2(dn, 0);
            dup2(dn, 1);
        }
        dup2(p[1], 2);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        syscall(436 /* close_range */, 3U, ~0U, 0U);
        execv(c->exe, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    free(uc);
    free(co);
    if (pid < 0) {
        close(p[0]);
        free(r);
        cp_log("error", "deployment %s/%s: fork: %s", a->name, d->name, strerror(errno));
        return -1;
    }
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    r->err_fd = p[0];
    r->pid = pid;
    r->version = d->version;
    r->state = RS_STARTING;
    r->t_spawn = cp_now();
    r->start_wall = cp_wall();
    r->next_check = r->t_spawn + CP_STARTUP_POLL_S;
    d->reps[d->n_reps++] = r;
    d->starts++;
    cp_log("info", "replica %s#%s#%s starting (pid %d)", a->name, d->name, r->id, (int)pid);
    return 0;
}

static void stop_replica(cs_ctl *c, cp_replica *r) {
    (void)c;
    if (r->state == RS_STOPPING) return;
    r->state = RS_STOPPING;
    r->t_stop_asked = cp_now();
}

/* Lines the replica writes on stderr go to ours; the last error is kept for
 * the deployment's message. */
static void read_stderr(cp_replica *r) {
    char buf[4096];
    for (;;) {
        ssize_t n = read(r->err_fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            close(r->err_fd);
            r->err_fd = -1;
            return;
        }
        if (n < 0) return;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n' && r->line_len + 1 < sizeof r->line) {
                r->line[r->line_len++] = buf[i];
                continue;
            }
            if (buf[i] != '\n') continue; /* overlong: truncated */
            r->line[r->line_len] = 0;
            fprintf(stderr, "%s\n", r->line);
            if (strstr(r->line, "\"level\":\"error\"") || strstr(r->line, "\"level\": \"error\"")) {
                json_t *j = json_loads(r->line, 0, NULL);
                const char *m = j ? json_string_value(json_object_get(j, "msg")) : NULL;
                set_str(r->last_error, sizeof r->last_error, m ? m : r->line);
                json_decref(j);
            }
            r->line_len = 0;
        }
    }
}

static size_t check_write(char *p, size_t sz, size_t n, void *ud) {
    cp_replica *r = ud;
    size_t len = sz * n;
    size_t room = sizeof r->check_buf - 1 - r->check_len;
    size_t k = len < room ? len : room;
    memcpy(r->check_buf + r->check_len, p, k);
    r->check_len += k;
    return len;
}

/* stats_only: a dashboard poll between health checks (short timeout, no health verdict). */
static void start_check(cs_ctl *c, cp_replica *r, int stats_only) {
    cp_dep *d = r->dep;
    CURL *e = curl_easy_init();
    if (!e) return;
    r->check_len = 0;
    r->stats_only = stats_only;
    const int push = !stats_only && r->state == RS_RUNNING && r->uc_pending;
    cp_replica_target(e, r, push ? "/-/replica/user_config" : "/-/replica/stats");
    double t = r->state == RS_STARTING || stats_only ? 1.0 : cp_check_timeout(r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(t * 1000));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, check_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)((uintptr_t)r | 1));
    char *body = NULL;
    if (push) {
        body = d->cfg.user_config ? json_dumps(d->cfg.user_config, JSON_COMPACT) : strdup("null");
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "null");
        r->uc_pending = 2; /* in flight */
    }
    free(body);
    r->check = e;
    curl_multi_add_handle(c->multi, e);
}

void cp_check_done(cs_ctl *c, cp_replica *r, CURLcode res, long status) {
    cp_dep *d = r->dep;
    curl_multi_remove_handle(c->multi, r->check);
    curl_easy_cleanup(r->check);
    r->check = NULL;
    r->check_buf[r->check_len] = 0;
    const double now = cp_now();
    if (r->uc_pending == 2) {
        r->uc_pending = res == CURLE_OK && status == 200 ? 0 : 1;
        if (res == CURLE_OK && status != 200)
            cp_log("warn", "replica %s refused user_config: %s", r->id, r->check_buf), r->uc_pending = 0;
        r->next_check = now + (r->uc_pending && r->addr[0] ? cp_check_period(r) : 0.01);
        return;
    }
    json_t *j = res == CURLE_OK && status == 200 ? json_loads(r->check_buf, 0, NULL) : NULL;
    const int ok = j != NULL, ready = ok && json_is_true(json_object_get(j, "ready"));
    if (ok) {
        r->st_running = (int)json_integer_value(json_object_get(j, "running"));
        r->st_queued = (int)json_integer_value(json_object_get(j, "queued"));
        r->st_tokens = (double)json_integer_value(json_object_get(j, "tokens_generated"));
        r->st_batch = json_number_value(json_object_get(j, "batch_size"));
        r->st_kv_tokens = (double)json_integer_value(json_object_get(j, "kv_tokens"));
        r->st_kv_capacity = (double)json_integer_value(json_object_get(j, "kv_capacity"));
        if (r->tok_prev_t > 0 && now > r->tok_prev_t && r->st_tokens >= r->tok_prev)
            r->tok_rate = (r->st_tokens - r->tok_prev) / (now - r->tok_prev_t);
        r->tok_prev = r->st_tokens;
        r->tok_prev_t = now;
    }
    json_decref(j);
    r->next_stats = now + CP_STATS_PERIOD_S;
    if (r->stats_only) {
        r->stats_only = 0;
        return;
    }
    if (r->state == RS_STARTING) {
        if (ready) {
            r->state = RS_RUNNING;
            r->health_fails = 0;
            d->start_fails = 0;
            r->next_check = now + cp_check_period(r);
            if (r->addr[0] && r->uc_pending) r->unhealthy = 1, r->next_check = now; /* no request before it has it */
            cp_log("info", "replica %s#%s#%s running (%.2f s after start)", d->app->name, d->name, r->id,
                   now - r->t_spawn);
            cp_dispatch(c, d);
        } else {
            r->next_check = now + cp_startup_poll(r);
        }
        return;
    }
    if (r->state != RS_RUNNING) return;
    r->next_check = now + cp_check_period(r);
    if (ready) {
        if (r->health_fails >= CP_HEALTH_FAILS) cp_log("info", "replica %s#%s#%s is healthy again", d->app->name, d->name, r->id);
        /* a remote replica back from failed checks may have restarted without the user_config */
        const int repush = r->addr[0] && r->health_fails && d->cfg.user_config;
        r->health_fails = 0;
        if (repush) r->uc_pending = 1, r->next_check = now; /* requests again after the push and a check */
        else r->unhealthy = 0;
        return;
    }
    r->health_fails++;
    r->unhealthy = 1; /* no new requests until a check succeeds */
    if (r->health_fails <= CP_HEALTH_FAILS) /* a remote member that stays down is checked on, quietly */
        cp_log("warn", "replica %s#%s#%s: health check failed (%d of %d): %s", d->app->name, d->name, r->id,
               r->health_fails, CP_HEALTH_FAILS, res != CURLE_OK ? curl_easy_strerror(res) : "not ready");
    if (r->health_fails == CP_HEALTH_FAILS && r->addr[0])
        cp_log("warn", "replica %s#%s#%s is unhealthy: routing around it until it answers (a remote replica is not "
               "restarted from here)", d->app->name, d->name, r->id);
    if (r->health_fails >= CP_HEALTH_FAILS && r->pid > 0) {
        r->unhealthy = 1;
        cp_log("warn", "replica %s#%s#%s is unhealthy: replacing it", d->app->name, d->name, r->id);
        d->restarts++;
        kill(r->pid, SIGKILL);
        r->kill_sent = 1;
        stop_replica(c, r);
    }
}

/* A replica process ended. */
static void on_exit_status(cs_ctl *c, cp_replica *r, int wst) {
    (void)c;
    cp_dep *d = r->dep;
    r->exited = 1;
    r->pid = 0;
    r->exit_status = wst;
    char how[64];
    if (WIFSIGNALED(wst)) snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(wst));
    else snprintf(how, sizeof how, "exit status %d", WEXITSTATUS(wst));
    if (r->err_fd >= 0) read_stderr(r);
    if (r->state == RS_STARTING) {
        d->start_fails++;
        d->next_start = cp_now() + fmin(0.5 * pow(2, d->start_fails - 1), 10);
        cp_log("warn", "replica %s#%s#%s failed to start (%s)%s%s", d->app->name, d->name, r->id, how,
               r->last_error[0] ? ": " : "", r->last_error);
        if (d->start_fails >= CP_MAX_START_FAILS && r->version == d->version) {
            d->failed_version = d->version;
            snprintf(d->message, sizeof d->message,
                     "The deployment failed to start %d times in a row. This may be due to a problem with its "
                     "constructor or initial health check failing. See the replica logs for details. Last error: %.300s",
                     d->start_fails, r->last_error[0] ? r->last_error : how);
        }
    } else if (r->state == RS_RUNNING) {
        d->restarts++;
        cp_log("warn", "replica %s#%s#%s died (%s); replacing it", d->app->name, d->name, r->id, how);
    }
    r->state = RS_STOPPING;
    unlink(r->sock);
}

/* Returns the number of replica processes that ended. */
static int reap(cs_ctl *c) {
    for (int n = 0;; n++) {
        int wst;
        pid_t pid = waitpid(-1, &wst, WNOHANG);
        if (pid <= 0) return n;
        for (size_t i = 0; i < c->n_apps; i++)
            for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
                cp_dep *d = c->apps[i]->deps[j];
                for (size_t k = 0; k < d->n_reps; k++)
                    if (d->reps[k]->pid == pid) on_exit_status(c, d->reps[k], wst);
            }
    }
}

static void replica_free(cp_replica *r) {
    if (r->dep) r->dep->tokens_done += r->st_tokens;
    if (r->err_fd >= 0) close(r->err_fd);
    free(r);
}

void cp_replica_done_request(cs_ctl *c, cp_replica *r) {
    if (r->ongoing > 0) r->ongoing--;
    cp_dispatch(c, r->dep);
}

/* ------------------------------------------------------------ reconcile */

static void set_status(cp_dep *d, const char *st, const char *trig, const char *msg) {
    set_str(d->status, sizeof d->status, st);
    set_str(d->trigger, sizeof d->trigger, trig);
    if (msg) set_str(d->message, sizeof d->message, msg);
}

static void reconcile_dep(cs_ctl *c, cp_dep *d, double now) {
    const int remote = cp_remote_reconcile(c, d, now); /* remote members: remote.h */
    const int target = d->deleting || remote ? 0 : d->target;
    int new_live = 0, new_run = 0, old_live = 0;
    for (size_t i = 0; i < d->n_reps; i++) {
        cp_replica *r = d->reps[i];
        if (!alive(r)) continue;
        if (r->version == d->version) {
            new_live++;
            new_run += r->state == RS_RUNNING;
        } else {
            old_live++;
        }
    }
    const int failed = d->failed_version == d->version;
    if (!d->deleting && !failed && now >= d->next_start && !atomic_load(&c->draining)) {
        int batch = old_live ? (int)(target * 0.2) : target;
        if (batch < 1) batch = 1;
        int starting = new_live - new_run;
        while (new_live < target && starting < batch && spawn(c, d) == 0) new_live++, starting++;
    }
    /* surplus replicas of this version: starting ones first, then the least busy */
    while (new_live > target) {
        cp_replica *pick = NULL;
        for (size_t i = 0; i < d->n_reps; i++) {
            cp_replica *r = d->reps[i];
            if (!alive(r) || r->version != d->version) continue;
            if (!pick || (r->state == RS_STARTING && pick->state != RS_STARTING) ||
                (r->state == pick->state && r->ongoing < pick->ongoing))
                pick = r;
        }
        if (!pick) break;
        stop_replica(c, pick);
        new_live--;
        new_run -= pick->state == RS_RUNNING;
    }
    /* old replicas serve until enough new ones run (all of them while the new version fails) */
    int keep_old = failed ? (old_live < target ? old_live : target) : (target - new_run > 0 ? target - new_run : 0);
    for (size_t i = 0; i < d->n_reps && old_live > keep_old; i++) {
        cp_replica *r = d->reps[i];
        if (!alive(r) || r->version == d->version) continue;
        stop_replica(c, r);
        old_live--;
    }
    /* stopping replicas: SIGTERM once idle (or after the graceful time), SIGKILL later */
    for (size_t i = 0; i < d->n_reps; i++) {
        cp_replica *r = d->reps[i];
        if (r->state != RS_STOPPING || r->exited || r->pid <= 0) continue;
        if (!r->term_sent && (r->ongoing == 0 || now - r->t_stop_asked > d->cfg.graceful_shutdown_timeout_s)) {
            kill(r->pid, SIGTERM);
            r->term_sent = 1;
            r->t_term = now;
        } else if (r->term_sent && !r->kill_sent && now - r->t_term > d->cfg.graceful_shutdown_timeout_s + 5) {
            kill(r->pid, SIGKILL);
            r->kill_sent = 1;
        }
    }
    /* startup timeout, readiness polls and health checks */
    for (size_t i = 0; i < d->n_reps; i++) {
        cp_replica *r = d->reps[i];
        if (r->exited || (r->pid <= 0 && !r->addr[0])) continue;
        if (r->pid > 0 && r->state == RS_STARTING && now - r->t_spawn > CP_STARTUP_TIMEOUT_S && !r->kill_sent) {
            set_str(r->last_error, sizeof r->last_error, "not ready within the start-up time");
            kill(r->pid, SIGKILL);
            r->kill_sent = 1;
        }
        if (!r->check && r->state != RS_STOPPING && now >= r->next_check) start_check(c, r, 0);
        else if (!r->check && r->state == RS_RUNNING && !r->uc_pending && now >= r->next_stats) start_check(c, r, 1);
    }
    /* forget replicas that are gone and no longer referenced */
    size_t w = 0;
    for (size_t i = 0; i < d->n_reps; i++) {
        cp_replica *r = d->reps[i];
        if (r->exited && r->ongoing == 0 && !r->check) replica_free(r);
        else d->reps[w++] = r;
    }
    d->n_reps = w;
    if (remote) return; /* remote.c set the status */

    /* status */
    if (d->deleting) {
        set_status(d, "UPDATING", "DELETING", "Deleting");
    } else if (failed) {
        set_status(d, "DEPLOY_FAILED", "REPLICA_STARTUP_FAILED", NULL);
    } else if (old_live > 0 || new_run != target) {
        if (d->scaling) {
            char m[128];
            snprintf(m, sizeof m, "%s from %d to %d replicas.", d->scaling > 0 ? "Upscaling" : "Downscaling",
                     d->scale_from, target);
            set_status(d, d->scaling > 0 ? "UPSCALING" : "DOWNSCALING", "AUTOSCALING", m);
        } else if (!strcmp(d->trigger, "CONFIG_UPDATE_STARTED") || !strcmp(d->status, "UPDATING")) {
            set_status(d, "UPDATING", "CONFIG_UPDATE_STARTED", "");
        } else {
            set_status(d, "UNHEALTHY", "HEALTH_CHECK_FAILED",
                       "A replica's health check failed. This deployment will be UNHEALTHY until the replica "
                       "recovers or a new deploy happens.");
        }
    } else {
        if (d->scaling) set_status(d, "HEALTHY", d->scaling > 0 ? "UPSCALE_COMPLETED" : "DOWNSCALE_COMPLETED", "");
        else if (strcmp(d->status, "HEALTHY") != 0) set_status(d, "HEALTHY", "CONFIG_UPDATE_COMPLETED", "");
        d->scaling = 0;
        if (d->cpu_limited) {
            char m[200];
            snprintf(m, sizeof m, "Limited to %d replicas: %g CPUs per replica, %d CPUs available to the server.",
                     target, d->cfg.num_cpus > 0 ? d->cfg.num_cpus : 1.0, cs_cpu_count());
            set_str(d->message, sizeof d->message, m);
        } else if (!strncmp(d->message, "Limited to", 10)) {
            d->message[0] = 0;
        }
    }
}

/* The application's model id follows its new version once no old generator replica is left. */
static void app_model_switch(cp_app *a) {
    if (!strcmp(a->model_id, a->next_model_id)) return;
    for (size_t i = 0; i < a->n_deps; i++) {
        const cp_dep *d = a->deps[i];
        if (d->cfg.role != CS_DEP_GENERATOR || d->deleting) continue;
        if (d->failed_version == d->version) return;
        for (size_t k = 0; k < d->n_reps; k++)
            if (!d->reps[k]->exited && d->reps[k]->version != d->version) return;
    }
    memcpy(a->model_id, a->next_model_id, sizeof a->model_id);
}

static void app_status(cp_app *a) {
    const char *st = "RUNNING";
    if (a->deleting) st = "DELETING";
    else if (a->error[0]) st = "DEPLOY_FAILED";
    else {
        int updating = 0, unhealthy = 0, failed = 0;
        for (size_t i = 0; i < a->n_deps; i++) {
            const char *s = a->deps[i]->status;
            failed |= !strcmp(s, "DEPLOY_FAILED");
            updating |= !strcmp(s, "UPDATING");
            unhealthy |= !strcmp(s, "UNHEALTHY");
        }
        st = failed ? "DEPLOY_FAILED" : updating ? "DEPLOYING" : unhealthy ? "UNHEALTHY" : "RUNNING";
    }
    set_str(a->status, sizeof a->status, st);
}

static void dep_free(cs_ctl *c, cp_dep *d) {
    cp_fail_queue(c, d, 503, "the deployment was deleted");
    cp_remote_free(d->remote);
    json_decref(d->cfg.remote);
    for (size_t i = 0; i < d->n_reps; i++) replica_free(d->reps[i]);
    free(d->reps);
    json_decref(d->cfg.user_config);
    json_decref(d->cfg.given);
    json_decref(d->cfg.clean_opts);
    json_decref(d->dconf);
    cs_as_load_free(d->as_load);
    free(d);
}

/* Replica CPUs of the other deployments (their targets), for the autoscaler's cap. */
static double cpus_of(const cp_dep *d) { return d->cfg.num_cpus > 0 ? d->cfg.num_cpus : 1.0; }

static double cpus_of_others(cs_ctl *c, const cp_dep *self) {
    double t = 0;
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            const cp_dep *d = c->apps[i]->deps[j];
            if (d != self && !d->deleting) t += d->target * cpus_of(d);
        }
    return t;
}

/* One 0.1 s period of Ray's autoscaler for d (see autoscale.h for the order of steps). */
static void autoscale_dep(cs_ctl *c, cp_dep *d, double now) {
    if (!d->cfg.autoscaling || d->deleting || !d->as_load || d->cfg.remote) return; /* remote: its platform scales it */
    cs_as_replica_load reps[CS_AS_MAX_SERIES];
    int running_ids[CS_AS_MAX_SERIES];
    size_t n = 0, nr = 0;
    for (size_t i = 0; i < d->n_reps; i++) {
        const cp_replica *r = d->reps[i];
        if (r->exited) continue;
        const int run = r->state == RS_RUNNING;
        if (run && nr < CS_AS_MAX_SERIES) running_ids[nr++] = r->num;
        if ((run || r->ongoing > 0) && (r->n_requests > 0 || r->ongoing > 0) && n < CS_AS_MAX_SERIES)
            reps[n++] = (cs_as_replica_load){.id = r->num, .ongoing = r->ongoing};
    }
    const double si = cs_as_sample_interval(&d->cfg.as);
    cs_err err = {{0}};
    if (d->as_cold && nr == 0) {
        /* cold start: the waiting request is sampled before the push, so that the total is
         * not an average of the idle samples before it (which would wait for the next sample) */
        if (cs_as_load_sample(d->as_load, now, d->n_queued, reps, n, &err)) cp_log("warn", "autoscaling: %s", err.msg);
        cs_as_load_push(d->as_load, now, d->n_queued, reps, n, &d->as_rep);
    }
    d->as_cold = 0;
    if (now >= d->as_next_sample) {
        if (cs_as_load_sample(d->as_load, now, d->n_queued, reps, n, &err)) cp_log("warn", "autoscaling: %s", err.msg);
        d->as_next_sample += si;
        if (d->as_next_sample < now) d->as_next_sample = now + si;
    }
    if (now >= d->as_next_push) {
        cs_as_load_push(d->as_load, now, d->n_queued, reps, n, &d->as_rep);
        d->as_next_push += d->cfg.as.metrics_interval_s;
        if (d->as_next_push < now) d->as_next_push = now + d->cfg.as.metrics_interval_s;
    }
    cs_as_ctx ctx = {.cfg = &d->cfg.as, .capacity = c->target_capacity, .direction = c->cap_dir,
                     .current_target = d->target, .running = (int)nr,
                     .total_requests = cs_as_report_total(&d->as_rep, running_ids, nr)};
    int t = cs_as_decide(&d->as_st, &ctx);
    int limited = 0;
    t = cs_as_cap_cpus(t, cpus_of(d), (double)cs_cpu_count(), cpus_of_others(c, d), &limited);
    d->cpu_limited = limited;
    if (t != d->target) {
        cp_log("info", "deployment %s/%s: %s from %d to %d replicas", d->app->name, d->name,
               t > d->target ? "upscaling" : "downscaling", d->target, t);
        d->scaling = t > d->target ? 1 : -1;
        d->scale_from = (int)nr;
        d->target = t;
    }
}

/* The autoscaler's periods: every CS_AS_CONTROL_LOOP_S exactly, as Ray counts its delays
 * in periods. cold_only: an extra call for deployments with a request waiting and no
 * replica (Ray decides those at once and leaves its counter alone). */
static void autoscale_all(cs_ctl *c, int cold_only) {
    const double now = cp_now();
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            if (!cold_only || (d->as_cold && cp_running(d) == 0)) autoscale_dep(c, d, now);
        }
}

static void reconcile(cs_ctl *c) {
    const double now = cp_now();
    for (size_t i = 0; i < c->n_apps; i++) {
        cp_app *a = c->apps[i];
        size_t w = 0;
        for (size_t j = 0; j < a->n_deps; j++) {
            cp_dep *d = a->deps[j];
            reconcile_dep(c, d, now);
            if (d->deleting && d->n_reps == 0) dep_free(c, d);
            else a->deps[w++] = d;
        }
        a->n_deps = w;
        app_model_switch(a);
        app_status(a);
    }
    size_t w = 0;
    for (size_t i = 0; i < c->n_apps; i++) {
        cp_app *a = c->apps[i];
        if (a->deleting && a->n_deps == 0) {
            json_decref(a->given);
            free(a->deps);
            free(a);
        } else {
            c->apps[w++] = a;
        }
    }
    c->n_apps = w;
}

/* ------------------------------------------------------------ config */

/* The target at deploy time: num_replicas, or Ray's AutoscalingState.register. */
static int initial_target(cs_ctl *c, cp_dep *d, const cs_scfg_deployment *sd, double capacity, int use_initial,
                          int curr) {
    if (!sd->autoscaling) return cs_scfg_apply_capacity(sd->num_replicas, capacity);
    cs_err err = {{0}};
    const double si = cs_as_sample_interval(&sd->as);
    if (!d->as_load) {
        if (cs_as_load_new(&d->as_load, sd->as.look_back_period_s, si, &err)) cp_log("error", "autoscaling: %s", err.msg);
        d->as_next_sample = d->as_next_push = cp_now();
    } else if (cs_as_load_configure(d->as_load, sd->as.look_back_period_s, si, &err)) {
        cp_log("error", "autoscaling: %s", err.msg);
    }
    return cs_as_register(&d->as_st, &sd->as, capacity, c->cap_dir, use_initial, curr);
}

static void dep_set_cfg(cp_dep *d, const cs_scfg_deployment *sd) {
    json_t *uc = sd->user_config ? json_incref(sd->user_config) : NULL;
    json_t *given = sd->given ? json_incref(sd->given) : NULL;
    json_t *co = sd->clean_opts ? json_incref(sd->clean_opts) : NULL;
    json_t *rm = sd->remote ? json_incref(sd->remote) : NULL;
    json_decref(d->cfg.user_config);
    json_decref(d->cfg.given);
    json_decref(d->cfg.clean_opts);
    json_decref(d->cfg.remote);
    d->cfg = *sd;
    d->cfg.user_config = uc;
    d->cfg.given = given;
    d->cfg.clean_opts = co;
    d->cfg.remote = rm;
    if (cp_remote_configure(d)) cp_log("error", "deployment %s: remote replicas: out of memory or threads", d->name);
    json_decref(d->dconf);
    d->dconf = cs_scfg_deployment_config_json(sd);
}

static cp_dep *dep_new(cs_ctl *c, cp_app *a, const cs_scfg_deployment *sd, double capacity) {
    cp_dep *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->app = a;
    set_str(d->name, sizeof d->name, sd->name);
    dep_set_cfg(d, sd);
    d->target = initial_target(c, d, sd, capacity, 1, -1);
    d->failed_version = -1;
    set_status(d, "UPDATING", "CONFIG_UPDATE_STARTED", "");
    return d;
}

static int app_add_dep(cp_app *a, cp_dep *d) {
    cp_dep **nd = realloc(a->deps, (a->n_deps + 1) * sizeof *nd);
    if (!nd) return -1;
    a->deps = nd;
    a->deps[a->n_deps++] = d;
    return 0;
}

static void app_model_id(cp_app *a) {
    const char *m = a->tg.model;
    struct stat st;
    if (stat(m, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(m);
        while (n > 1 && m[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && m[b - 1] != '/') b--;
        snprintf(a->next_model_id, sizeof a->next_model_id, "%.*s", (int)(n - b), m + b);
    } else {
        set_str(a->next_model_id, sizeof a->next_model_id, m);
    }
    if (!a->model_id[0] || !a->n_deps) memcpy(a->model_id, a->next_model_id, sizeof a->model_id);
}

/* Whether a deployment must restart its replicas for the new config. */
static int code_changed(const cp_app *a, const cs_scfg_app *na, const cp_dep *d, const cs_scfg_deployment *nd) {
    (void)a;
    return strcmp(d->cfg.model, nd->model) != 0 || strcmp(d->cfg.dtype, nd->dtype) != 0 ||
           d->cfg.kv_cache_mb != nd->kv_cache_mb || strcmp(d->cfg.kv_dtype, nd->kv_dtype) != 0 ||
           d->cfg.role != nd->role || d->cfg.num_cpus != nd->num_cpus || strcmp(a->import_path, na->import_path) != 0 ||
           !json_equal(d->cfg.clean_opts ? d->cfg.clean_opts : json_null(), nd->clean_opts ? nd->clean_opts : json_null());
}

static void dep_update(cs_ctl *c, cp_dep *d, const cs_scfg_deployment *nd, int code, double capacity) {
    const int uc_changed = !json_equal(d->cfg.user_config, nd->user_config) &&
                           !(d->cfg.user_config == NULL && nd->user_config == NULL);
    const int as_changed = nd->autoscaling != d->cfg.autoscaling || memcmp(&nd->as, &d->cfg.as, sizeof nd->as) != 0;
    const int was_auto = d->cfg.autoscaling;
    dep_set_cfg(d, nd);
    d->target = initial_target(c, d, nd, capacity, as_changed || !was_auto, was_auto ? d->target : -1);
    d->scaling = 0;
    if (code) {
        d->version++;
        d->start_fails = 0;
        d->failed_version = -1;
        d->next_start = 0;
    }
    if (uc_changed)
        for (size_t i = 0; i < d->n_reps; i++) d->reps[i]->uc_pending = 1;
    set_status(d, "UPDATING", "CONFIG_UPDATE_STARTED", "");
}

int cp_apply(cs_ctl *c, cs_scfg *cfg, cs_err *err) {
    (void)err;
    const double capacity = cfg->target_capacity;
    int same_apps = c->n_apps > 0;
    for (size_t i = 0; i < cfg->n_apps && same_apps; i++) same_apps = cp_find_app(c, cfg->apps[i].name) != NULL;
    size_t live = 0;
    for (size_t i = 0; i < c->n_apps; i++) live += !c->apps[i]->deleting;
    same_apps = same_apps && live == cfg->n_apps;
    c->cap_dir = cs_as_next_direction(c->had_config, c->target_capacity, capacity, c->cap_dir, same_apps);
    c->had_config = 1;
    /* applications left out are deleted */
    for (size_t i = 0; i < c->n_apps; i++) {
        cp_app *a = c->apps[i];
        int keep = 0;
        for (size_t j = 0; j < cfg->n_apps; j++) keep |= !strcmp(cfg->apps[j].name, a->name);
        if (!keep && !a->deleting) {
            a->deleting = 1;
            for (size_t j = 0; j < a->n_deps; j++) a->deps[j]->deleting = 1;
            cp_log("info", "application %s: deleting", a->name);
        }
    }
    for (size_t i = 0; i < cfg->n_apps; i++) {
        const cs_scfg_app *na = &cfg->apps[i];
        cp_app *a = cp_find_app(c, na->name);
        if (!a) {
            cp_app **nv = realloc(c->apps, (c->n_apps + 1) * sizeof *nv);
            if (!nv || !(a = calloc(1, sizeof *a))) return cs_err_set(err, "out of memory");
            c->apps = nv;
            c->apps[c->n_apps++] = a;
            set_str(a->name, sizeof a->name, na->name);
        }
        a->last_deployed = cp_wall();
        json_decref(a->given);
        a->given = na->given ? json_incref(na->given) : json_object();
        if (na->error[0]) {
            /* the old version (if any) keeps serving */
            set_str(a->error, sizeof a->error, na->error);
            cp_log("warn", "application %s: cannot deploy: %s", a->name, na->error);
            if (!a->n_deps) a->prefix[0] = 0; /* no route until it deploys (Ray shows null) */
            continue;
        }
        a->error[0] = 0;
        set_str(a->prefix, sizeof a->prefix, na->route_prefix);
        for (size_t j = 0; j < a->n_deps; j++) {
            cp_dep *d = a->deps[j];
            const cs_scfg_deployment *nd = cs_scfg_find_deployment(na, d->name);
            if (!nd) d->deleting = 1;
            else dep_update(c, d, nd, code_changed(a, na, d, nd), capacity);
        }
        set_str(a->import_path, sizeof a->import_path, na->import_path);
        a->tg = na->textgen;
        app_model_id(a);
        for (size_t j = 0; j < na->n_deps; j++) {
            if (cp_find_dep(a, na->deps[j].name)) continue;
            cp_dep *d = dep_new(c, a, &na->deps[j], capacity);
            if (!d || app_add_dep(a, d)) return cs_err_set(err, "out of memory");
        }
        cp_log("info", "application %s: deploying at route prefix %s", a->name, a->prefix[0] ? a->prefix : "(none)");
    }
    /* the session headers the HTTP threads capture for pinning clients */
    pthread_mutex_lock(&c->mu);
    c->n_sess = 0;
    for (size_t i = 0; i < c->n_apps; i++) {
        const char *h = c->apps[i]->tg.session_header;
        int seen = !h[0];
        for (int k = 0; k < c->n_sess && !seen; k++) seen = !strcasecmp(c->sess_names[k], h);
        if (!seen && c->n_sess < CP_MAX_SESSION_HEADERS) set_str(c->sess_names[c->n_sess++], 64, h);
    }
    pthread_mutex_unlock(&c->mu);
    c->target_capacity = capacity;
    json_decref(c->doc);
    c->doc = json_incref(cfg->doc);
    cs_scfg_free(c->cfg);
    c->cfg = cfg;
    reconcile(c);
    return 0;
}

void cp_delete_all(cs_ctl *c) {
    for (size_t i = 0; i < c->n_apps; i++) {
        c->apps[i]->deleting = 1;
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) c->apps[i]->deps[j]->deleting = 1;
    }
    json_decref(c->doc);
    c->doc = NULL;
    cs_scfg_free(c->cfg);
    c->cfg = NULL;
    reconcile(c); /* the status says DELETING at once */
}

void cp_scale(cs_ctl *c, cp_dep *d, int n) {
    const int cur = cp_running(d);
    d->target = n;
    d->scale_from = cur;
    d->scaling = n > cur ? 1 : n < cur ? -1 : 0;
    if (!d->scaling) set_status(d, "UPDATING", "CONFIG_UPDATE_STARTED", "");
    reconcile(c);
}

/* ------------------------------------------------------------ loop */

static void post(cs_ctl *c, int kind, cs_http_req *r, int why, cp_admin_q *q) {
    cp_msg *m = calloc(1, sizeof *m);
    if (!m) {
        free(q);
        cs_http_respond(r, 503, "text/plain", "out of memory", 13, NULL, 0);
        return;
    }
    m->q = q;
    cs_http_req_ref(r);
    m->kind = kind;
    m->r = r;
    m->why = why;
    pthread_mutex_lock(&c->mu);
    if (c->in_tail) c->in_tail->next = m;
    else c->in_head = m;
    c->in_tail = m;
    pthread_mutex_unlock(&c->mu);
    curl_multi_wakeup(c->multi);
}

static void on_proxy_request(void *ud, cs_http_req *r) {
    cp_fwd_new(ud, r); /* NULL (out of memory): the loop answers 503 */
    post(ud, CP_M_PROXY, r, 0, NULL);
}
static void on_proxy_abort(void *ud, cs_http_req *r, cs_http_abort why) { post(ud, CP_M_ABORT, r, (int)why, NULL); }

static void set_query(cs_http_req *r, const char *name, char *dst, size_t cap) {
    const char *v = cs_http_req_query(r, name);
    snprintf(dst, cap, "%s", v ? v : "");
}

/* A non-negative decimal query argument up to max, else dflt. */
static uint64_t query_num(cs_http_req *r, const char *name, uint64_t max, uint64_t dflt) {
    const char *v = cs_http_req_query(r, name);
    char *end = NULL;
    const unsigned long long x = v && *v >= '0' && *v <= '9' ? strtoull(v, &end, 10) : 0;
    return v && end && end != v && !*end && x <= max ? (uint64_t)x : dflt;
}

static void on_admin_request(void *ud, cs_http_req *r) {
    cs_ctl *c = ud;
    const char *path = cs_http_req_path(r);
    /* probes and the dashboard's static files need no key: the page asks for one for its data */
    if (strcmp(path, "/-/healthz") != 0 && !cp_dash_is_asset(path) &&
        !cs_keys_check(c->keys, cs_http_req_header(r, "Authorization"), NULL)) {
        cp_respond_error(r, 401, "invalid_api_key", "missing or invalid API key (send 'Authorization: Bearer KEY')");
        return;
    }
    const size_t pl = strlen(CP_DASH_PROXY);
    if (!strncmp(path, CP_DASH_PROXY, pl) && path[pl] == '/' && !strcmp(cs_http_req_method(r), "POST")) {
        /* the playground: the request goes through the router as if it came to the proxy */
        cp_fwd *f = cp_fwd_new(c, r);
        if (f) f->path_skip = pl;
        post(ud, CP_M_PROXY, r, 0, NULL);
        return;
    }
    /* ?api_type= of GET /api/serve/applications/ (query arguments are readable only here) */
    int why = CP_API_ANY;
    const char *t = cs_http_req_query(r, "api_type");
    if (t) {
        if (!strcasecmp(t, "declarative")) why = CP_API_DECLARATIVE;
        else if (!strcasecmp(t, "imperative")) why = CP_API_IMPERATIVE;
        else {
            char m[300];
            snprintf(m, sizeof m, "Invalid 'api_type' value: '%.200s'. Must be one of: imperative, declarative", t);
            cs_http_respond(r, 400, "text/plain; charset=utf-8", m, strlen(m), NULL, 0);
            return;
        }
    }
    cp_admin_q *q = calloc(1, sizeof *q);
    if (!q) {
        cp_respond_error(r, 503, "unavailable", "out of memory");
        return;
    }
    q->api_type = why;
    const char *ct = cs_http_req_header(r, "Content-Type");
    q->yaml = ct && (strcasestr(ct, "yaml") != NULL);
    set_query(r, "app", q->app, sizeof q->app);
    set_query(r, "status", q->status, sizeof q->status);
    set_query(r, "path", q->path, sizeof q->path);
    q->limit = (int)query_num(r, "limit", CS_LOGRING_MAX, 200);
    q->seconds = (int)query_num(r, "seconds", 86400, 300);
    q->after = query_num(r, "after", UINT64_MAX, 0);
    post(ud, CP_M_ADMIN, r, why, q);
}

static void on_proxy_done(void *ud, cs_http_req *r, int status, double latency_s, int ok) {
    cs_ctl *c = ud;
    if (!status && !ok) status = 499;
    const cp_fwd *f = cs_http_req_app(r);
    const char *route = f && f->route_label[0] ? f->route_label : "unmatched";
    cs_metrics_request(c->metrics, route, cs_http_req_method(r), status, latency_s);
    const char *path = cs_http_req_path(r) + (f ? f->path_skip : 0), *m = cs_http_req_method(r);
    cs_logrec rec = {.ts = cp_wall(), .status = status, .latency_ms = round(latency_s * 1e6) / 1e3};
    snprintf(rec.method, sizeof rec.method, "%s", m);
    snprintf(rec.path, sizeof rec.path, "%s", path);
    if (f) {
        snprintf(rec.app, sizeof rec.app, "%s", f->app_label);
        snprintf(rec.replica, sizeof rec.replica, "%.*s", (int)sizeof rec.replica - 1, f->rep_label);
        snprintf(rec.request_id, sizeof rec.request_id, "%s", f->request_id);
    }
    cs_logring_add(c->alog, &rec);
    if (!c->o.access_log) return;
    char ts[32];
    cs_log_ts(ts, sizeof ts);
    size_t pl, ml;
    char *cpath = cs_utf8_repair(path, strlen(path), &pl), *cm = cs_utf8_repair(m, strlen(m), &ml);
    cs_log_json(json_pack("{s:s, s:s, s:s%, s:s%, s:i, s:f, s:s, s:s, s:s}", "ts", ts, "level", "info", "method",
                          cm ? cm : "", cm ? ml : 0, "path", cpath ? cpath : "", cpath ? pl : 0, "status", status,
                          "latency_ms", round(latency_s * 1e6) / 1e3, "application", f ? f->app_label : "",
                          "replica", f ? f->rep_label : "", "request_id", f ? f->request_id : ""));
    free(cpath);
    free(cm);
}

static void on_admin_abort(void *ud, cs_http_req *r, cs_http_abort why) {
    if (cs_http_req_app(r)) post(ud, CP_M_ABORT, r, (int)why, NULL);
}

static void on_admin_done(void *ud, cs_http_req *r, int status, double latency_s, int ok) {
    if (cs_http_req_app(r)) on_proxy_done(ud, r, status, latency_s, ok);
}

static void on_log(void *ud, const char *msg) {
    (void)ud;
    cp_log("warn", "http: %s", msg);
}

static void handle_inbox(cs_ctl *c) {
    pthread_mutex_lock(&c->mu);
    cp_msg *m = c->in_head;
    c->in_head = c->in_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    while (m) {
        cp_msg *next = m->next;
        if (m->kind == CP_M_PROXY) cp_proxy_request(c, m->r);
        else if (m->kind == CP_M_ABORT) cp_proxy_abort(c, m->r, m->why);
        else if (m->kind == CP_M_ADMIN) cp_admin_request(c, m->r, m->q);
        cs_http_req_unref(m->r);
        free(m->q);
        free(m);
        m = next;
    }
}

static void handle_curl(cs_ctl *c) {
    int running = 0, left = 0;
    curl_multi_perform(c->multi, &running);
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(c->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *e = msg->easy_handle;
        CURLcode res = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        if ((uintptr_t)priv & 1) {
            long st = 0;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
            cp_check_done(c, (cp_replica *)((uintptr_t)priv & ~(uintptr_t)1), res, st);
        } else {
            cp_fwd_finished(c, e, res);
        }
    }
}

static size_t collect_fds(cs_ctl *c, struct curl_waitfd *w, cp_replica **who, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < c->n_apps; i++)
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) {
            cp_dep *d = c->apps[i]->deps[j];
            for (size_t k = 0; k < d->n_reps && n < cap; k++)
                if (d->reps[k]->err_fd >= 0) {
                    w[n] = (struct curl_waitfd){.fd = d->reps[k]->err_fd, .events = CURL_WAIT_POLLIN};
                    who[n++] = d->reps[k];
                }
        }
    return n;
}

static void *loop_main(void *arg) {
    cs_ctl *c = arg;
    struct curl_waitfd w[CP_MAX_WAITFDS];
    cp_replica *who[CP_MAX_WAITFDS];
    double next_tick = 0, next_as = cp_now();
    int shutting = 0;
    while (!c->stopped) {
        size_t n = collect_fds(c, w, who, CP_MAX_WAITFDS);
        curl_multi_poll(c->multi, w, (unsigned)n, 20, NULL);
        for (size_t i = 0; i < n; i++)
            if (w[i].revents && who[i]->err_fd >= 0) read_stderr(who[i]);
        handle_inbox(c);
        handle_curl(c);
        const int ended = reap(c);
        const double now = cp_now();
        if (c->tick_now) autoscale_all(c, 1);
        if (ended || c->tick_now) next_tick = 0; /* replace them, or cold-start, now */
        c->tick_now = 0;
        if (now >= next_as) {
            next_as += CS_AS_CONTROL_LOOP_S;
            if (next_as < now) next_as = now + CS_AS_CONTROL_LOOP_S;
            autoscale_all(c, 0);
        }
        if (atomic_load(&c->stop)) {
            if (!shutting) {
                shutting = 1;
                atomic_store(&c->draining, 1);
            }
            if (shutting == 1 && (c->n_fwd == 0 || now > c->drain_deadline)) {
                shutting = 2;
                cp_delete_all(c);
            }
            if (shutting == 2 && c->n_apps == 0) c->stopped = 1;
        }
        if (now >= next_tick) {
            next_tick = now + CP_TICK_S;
            reconcile(c);
            for (size_t i = 0; i < c->n_apps; i++)
                for (size_t j = 0; j < c->apps[i]->n_deps; j++) cp_dispatch(c, c->apps[i]->deps[j]);
        }
        if (now >= c->next_hist) {
            c->next_hist = c->next_hist > 0 && now - c->next_hist < CS_HIST_PERIOD_S ? c->next_hist + CS_HIST_PERIOD_S
                                                                                       : now + CS_HIST_PERIOD_S;
            cp_dash_sample(c, cp_wall());
        }
    }
    handle_inbox(c);
    return NULL;
}

/* ------------------------------------------------------------ life cycle */

int cs_ctl_start(cs_ctl **out, const cs_ctl_opts *o, cs_scfg *cfg, cs_err *err) {
    *out = NULL;
    cs_ctl *c = calloc(1, sizeof *c);
    if (!c) {
        cs_scfg_free(cfg);
        return cs_err_set(err, "out of memory");
    }
    c->o = *o;
    pthread_mutex_init(&c->mu, NULL);
    c->target_capacity = -1;
    c->o.api_keys = NULL; /* copied into c->keys, with the limits */
    c->o.api_key_max_ongoing = NULL;
    if (cs_keys_create(&c->keys, o->api_keys, o->api_key_max_ongoing, o->n_api_keys, err)) {
        cs_scfg_free(cfg);
        cs_ctl_stop(c, 0);
        return -1;
    }
    getrandom(&c->rid_base, sizeof c->rid_base, 0);
    getrandom(&c->rng, sizeof c->rng, 0);
    if (o->self_exe) set_str(c->exe, sizeof c->exe, o->self_exe);
    else {
        ssize_t n = readlink("/proc/self/exe", c->exe, sizeof c->exe - 1);
        if (n > 0) c->exe[n] = 0;
    }
    snprintf(c->sock_dir, sizeof c->sock_dir, "/tmp/cserve-%d-XXXXXX", (int)getpid());
    if (!mkdtemp(c->sock_dir)) {
        cs_scfg_free(cfg);
        cs_err_set(err, "cannot create a directory for the replica sockets: %s", strerror(errno));
        c->sock_dir[0] = 0;
        cs_ctl_stop(c, 0);
        return -1;
    }
    c->start_wall = cp_wall();
    if (cs_logring_create(&c->alog, 0) || cs_hist_init(&c->hist, 0, cp_lat_bounds, CP_LAT_BUCKETS, err)) {
        cs_scfg_free(cfg);
        cs_ctl_stop(c, 0);
        return cs_err_set(err, "out of memory");
    }
    c->multi = curl_multi_init();
    if (!c->multi || cs_metrics_create(&c->metrics, err)) {
        cs_scfg_free(cfg);
        cs_ctl_stop(c, 0);
        return c->multi ? -1 : cs_err_set(err, "curl_multi_init failed");
    }
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    set_str(c->host, sizeof c->host, o->host ? o->host : cfg ? cfg->host : "0.0.0.0");
    c->port = o->port >= 0 ? o->port : cfg ? cfg->port : 8000;
    c->request_timeout_s = cfg && cfg->request_timeout_s > 0 ? cfg->request_timeout_s : 86400.0 * 365;
    double ka = cfg && cfg->keep_alive_timeout_s > 0 ? cfg->keep_alive_timeout_s : 90;
    cs_http_handlers ph = {.request = on_proxy_request, .abort = on_proxy_abort, .done = on_proxy_done,
                           .log = on_log, .ud = c};
    /* abort/done matter only for the playground's requests (they carry a cp_fwd) */
    cs_http_handlers ah = {.request = on_admin_request, .abort = on_admin_abort, .done = on_admin_done,
                           .log = on_log, .ud = c};
    cs_http_opts po = {.host = c->host, .port = c->port, .request_timeout_s = c->request_timeout_s,
                       .keep_alive_timeout_s = ka, .cors_origins = o->cors_origins,
                       .header_timeout_s = o->header_timeout_s, .min_body_rate = o->min_body_rate,
                       .max_connections = o->max_connections, .max_connections_per_ip = o->max_connections_per_ip};
    cs_http_opts ao = {.host = o->admin_host ? o->admin_host : "127.0.0.1", .port = o->admin_port,
                       .request_timeout_s = 60, .keep_alive_timeout_s = 90};
    if (cs_http_start(&c->proxy, &po, &ph, err) || cs_http_start(&c->admin, &ao, &ah, err)) {
        cs_scfg_free(cfg);
        cs_ctl_stop(c, 0);
        return -1;
    }
    c->port = cs_http_port(c->proxy);
    c->admin_port = cs_http_port(c->admin);
    cp_log("info", "proxy listening on %s:%d", c->host, c->port);
    cp_log("info", "admin API listening on %s:%d", ao.host, c->admin_port);
    if (cfg && cp_apply(c, cfg, err)) {
        cs_ctl_stop(c, 0);
        return -1;
    }
    if (pthread_create(&c->loop, NULL, loop_main, c) != 0) {
        cs_ctl_stop(c, 0);
        return cs_err_set(err, "cannot start the control loop");
    }
    c->loop_started = 1;
    *out = c;
    return 0;
}

int cs_ctl_port(const cs_ctl *c) { return c->port; }
int cs_ctl_admin_port(const cs_ctl *c) { return c->admin_port; }

void cs_ctl_stop(cs_ctl *c, double timeout_s) {
    if (!c) return;
    if (c->loop_started) {
        c->drain_deadline = cp_now() + timeout_s;
        atomic_store(&c->stop, 1);
        curl_multi_wakeup(c->multi);
        pthread_join(c->loop, NULL);
    }
    cs_http_stop(c->admin);
    cs_http_stop(c->proxy);
    /* anything left (a failed start): no replica was spawned by then */
    for (size_t i = 0; i < c->n_apps; i++) {
        for (size_t j = 0; j < c->apps[i]->n_deps; j++) dep_free(c, c->apps[i]->deps[j]);
        free(c->apps[i]->deps);
        json_decref(c->apps[i]->given);
        free(c->apps[i]);
    }
    free(c->apps);
    for (cp_msg *m = c->in_head, *n; m; m = n) {
        n = m->next;
        cs_http_req_unref(m->r);
        free(m->q);
        free(m);
    }
    if (c->multi) curl_multi_cleanup(c->multi);
    cs_metrics_free(c->metrics);
    cs_hist_free(c->hist);
    cs_logring_free(c->alog);
    json_decref(c->doc);
    cs_scfg_free(c->cfg);
    cs_keys_free(c->keys);
    if (c->sock_dir[0]) rmdir(c->sock_dir);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
