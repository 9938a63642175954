/* cs_metrics: the server's counters and histograms, rendered in the
 * Prometheus text exposition format (version 0.0.4) for GET /metrics.
 *
 *   cserve_http_requests_total{route,method,status}      counter
 *   cserve_http_request_duration_seconds{route}          histogram
 *   cserve_time_to_first_token_seconds                   histogram
 *   cserve_prompt_tokens_total, cserve_generation_tokens_total   counters
 *   cserve_requests_in_flight                            gauge (generation requests)
 *   cserve_scheduler_* / cserve_batch_size / cserve_ready  gauges passed in at render time
 *   vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc
 *                                                        the same under vLLM's names and meaning
 *                                                        (label model_name), for tools made for vLLM
 *                                                        (the Gateway API Inference Extension's
 *                                                        endpoint picker)
 *   process_cpu_seconds_total, process_resident_memory_bytes,
 *   process_virtual_memory_bytes, process_open_fds, process_max_fds,
 *   process_start_time_seconds                           the rendering process, read from
 *       /proc at render time, named as Prometheus client libraries name them (left
 *       out where /proc is not readable)
 *
 * Label values come from a small fixed set chosen by the caller (route
 * patterns, not raw paths), so the number of series is bounded: at most
 * CS_METRICS_MAX_SERIES (route, method, status) triples and
 * CS_METRICS_MAX_ROUTES routes. A method outside the standard ones (GET, POST,
 * ...: see metrics.c) never takes a slot: it is counted under route="other",
 * method="other" with its status, as are new triples once the table is full.
 *
 * Thread-safety: every function may be called from any thread. */
#ifndef CS_METRICS_H
#define CS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define CS_METRICS_MAX_SERIES 128
#define CS_METRICS_MAX_ROUTES 16
#define CS_METRICS_MAX_LABEL 48 /* bytes of a route or method label value */
#define CS_METRICS_STATUS_MAX 599 /* status codes above (or below 0) are counted as 0 */

typedef struct cs_metrics cs_metrics;

int cs_metrics_create(cs_metrics **out, cs_err *err);
void cs_metrics_free(cs_metrics *m); /* NULL is a no-op */

/* One finished HTTP request. */
void cs_metrics_request(cs_metrics *m, const char *route, const char *method, int status, double latency_s);
void cs_metrics_ttft(cs_metrics *m, double seconds);
void cs_metrics_tokens(cs_metrics *m, uint64_t prompt, uint64_t generated);
void cs_metrics_inflight_add(cs_metrics *m, int delta);
long cs_metrics_inflight(cs_metrics *m);

/* Point-in-time values owned by others (the scheduler), rendered as gauges. */
typedef struct cs_metrics_gauges {
    int ready;           /* 1 when serving */
    int queued, running; /* scheduler: waiting requests, running sequences */
    int max_running, max_queued;
    double batch_size;   /* sequences in the last engine step */
    uint64_t steps;      /* engine steps so far */
    /* The KV cache pool (rendered when kv_capacity > 0): tokens held, tokens it
     * can hold, memory it holds now, and sequences preempted so far (for
     * memory or for fairness; also as vllm:num_preemptions_total). */
    uint64_t kv_tokens, kv_capacity, kv_bytes, preemptions;
    /* Non-NULL: also vLLM's gauges, labelled model_name="...": vllm:num_requests_running
     * (= running), vllm:num_requests_waiting (waiting: sequences without a slot; vLLM V1
     * schedules each of n choices as a request of its own, as we count them) and
     * vllm:kv_cache_usage_perc (kv_usage, a fraction in 0..1; left out when < 0). */
    const char *model_name;
    int waiting;
    double kv_usage;
} cs_metrics_gauges;

/* Renders everything into a malloc'd NUL-terminated buffer (caller frees).
 * g may be NULL (no scheduler yet). Returns 0, or -1 when out of memory. */
int cs_metrics_render(cs_metrics *m, const cs_metrics_gauges *g, char **out, size_t *len);

#endif
