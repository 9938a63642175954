/* cp_remote: deployments whose replicas run on other hosts (`cserve replica
 * --listen HOST:PORT`, e.g. Kubernetes pods behind a headless Service)
 * instead of as child processes of the controller. Part of the control plane
 * (cp_internal.h).
 *
 * Membership comes from args.remote (config.h): a static list, or every
 * address a DNS name resolves to, looked up again every refresh_s on a
 * resolver thread (getaddrinfo blocks; the control loop never waits for it). A
 * name that resolves to nothing (EAI_NONAME, EAI_NODATA) means no members; a
 * failed lookup (EAI_AGAIN, ...) keeps the last answer and says so in the
 * deployment's message.
 *
 * Members that appear start STARTING and take requests once
 * /-/replica/stats answers; members that disappear are drained (no new
 * requests, those in flight finish) and then forgotten. A member that fails a
 * health check is not ours to restart: the router sends it no new request
 * and keeps checking (every CP_REMOTE_HEALTH_PERIOD_S at most); it rejoins
 * when a check succeeds. No process is spawned and autoscaling does not apply
 * (the platform that runs the replicas scales them, e.g. a Kubernetes HPA):
 * target_num_replicas is the number of members.
 *
 * Requests and checks reach a member over TCP (http://HOST:PORT/...) on the
 * loop's curl multi handle, so connections are reused; a connect timeout of
 * CP_REMOTE_CONNECT_TIMEOUT_MS detects a dead host fast, TCP keepalive one
 * that vanishes during a request.
 *
 * Threads: all functions run on the control-loop thread. The resolver thread
 * shares only its own mutex-guarded result slot with it; it is detached and
 * frees its half when it sees the deployment is gone (cp_remote_free never
 * waits for a lookup in progress). */
#ifndef CS_SERVE_REMOTE_H
#define CS_SERVE_REMOTE_H

#include <curl/curl.h>

#define CP_REMOTE_CONNECT_TIMEOUT_MS 1000L /* a dead host is detected this fast */
#define CP_REMOTE_HEALTH_PERIOD_S 1.0      /* at most this long between a member's health checks */
#define CP_REMOTE_CHECK_TIMEOUT_S 2.0      /* at most this long for one check */
#define CP_REMOTE_STARTUP_POLL_S 0.25      /* readiness polls of a member that does not answer yet */
#define CP_REMOTE_KEEPALIVE_S 2L           /* TCP keepalive idle time and interval (s) */
#define CP_REMOTE_MAX_MEMBERS 256          /* addresses taken from one DNS answer */

typedef struct cp_remote cp_remote;
struct cp_dep;
struct cp_replica;
struct cs_ctl;

/* Applies d->cfg.remote to d->remote: creates it (starting the resolver for a
 * DNS name), replaces it when the list or name changed, frees it when the
 * deployment is local again. Members follow at the next reconcile. Returns 0,
 * or -1 (out of memory, no thread): d->remote is then NULL. */
int cp_remote_configure(struct cp_dep *d);
void cp_remote_free(cp_remote *rm); /* NULL: no-op; never waits */

/* One reconcile period of d's remote members: membership (the list, or the
 * resolver's latest answer), draining members that left (exited = 1 once idle,
 * for the controller to forget), the member count as d->target, and d's status
 * and message. A deployment that is no longer remote (or is deleted) has its
 * members drained. Returns 1 when d is remote (the controller then starts no
 * process and leaves d's status alone), else 0. */
int cp_remote_reconcile(struct cs_ctl *c, struct cp_dep *d, double now);

/* Points e at replica r and path ("/..."): its Unix socket for a local
 * process; http://HOST:PORT with the connect timeout and TCP keepalive for a
 * remote member. */
void cp_replica_target(CURL *e, const struct cp_replica *r, const char *path);

/* Health-check timing of r: the deployment's settings, capped for remote
 * members (CP_REMOTE_*) so that a failure is noticed within seconds. */
double cp_check_period(const struct cp_replica *r);
double cp_check_timeout(const struct cp_replica *r);
double cp_startup_poll(const struct cp_replica *r);

#endif
