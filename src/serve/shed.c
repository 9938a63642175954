#include "serve/shed.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

typedef struct held {
    double due; /* CLOCK_MONOTONIC seconds */
    cs_shed_fn fn;
    void *arg;
} held;

struct cs_shed {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    pthread_t thread;
    held *heap; /* (CS_SHED_MAX_HELD) min-heap on due */
    int n, stop;
};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double hold_for(int n_held) {
    double d = (double)(n_held + 1) / CS_SHED_RATE;
    return d < CS_SHED_MIN_HOLD_S ? CS_SHED_MIN_HOLD_S : d > CS_SHED_MAX_HOLD_S ? CS_SHED_MAX_HOLD_S : d;
}

static void heap_push(cs_shed *sh, held h) {
    int i = sh->n++;
    while (i > 0 && sh->heap[(i - 1) / 2].due > h.due) {
        sh->heap[i] = sh->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    sh->heap[i] = h;
}

static held heap_pop(cs_shed *sh) {
    held top = sh->heap[0], last = sh->heap[--sh->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= sh->n) break;
        if (c + 1 < sh->n && sh->heap[c + 1].due < sh->heap[c].due) c++;
        if (sh->heap[c].due >= last.due) break;
        sh->heap[i] = sh->heap[c];
        i = c;
    }
    if (sh->n) sh->heap[i] = last;
    return top;
}

static void *shed_main(void *arg) {
    cs_shed *sh = arg;
    pthread_mutex_lock(&sh->mu);
    while (!sh->stop) {
        if (sh->n == 0) {
            pthread_cond_wait(&sh->cv, &sh->mu);
            continue;
        }
        const double due = sh->heap[0].due;
        if (due > mono_s()) {
            struct timespec ts = {.tv_sec = (time_t)due, .tv_nsec = (long)((due - (double)(time_t)due) * 1e9)};
            pthread_cond_timedwait(&sh->cv, &sh->mu, &ts);
            continue;
        }
        held h = heap_pop(sh);
        pthread_mutex_unlock(&sh->mu);
        h.fn(h.arg);
        pthread_mutex_lock(&sh->mu);
    }
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

int cs_shed_create(cs_shed **out, cs_err *err) {
    *out = NULL;
    cs_shed *sh = calloc(1, sizeof *sh);
    if (!sh || !(sh->heap = malloc(CS_SHED_MAX_HELD * sizeof *sh->heap))) {
        free(sh);
        return cs_err_set(err, "out of memory");
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sh->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&sh->mu, NULL);
    if (pthread_create(&sh->thread, NULL, shed_main, sh) != 0) {
        pthread_cond_destroy(&sh->cv);
        pthread_mutex_destroy(&sh->mu);
        free(sh->heap);
        free(sh);
        return cs_err_set(err, "cannot start the refusal pacing thread");
    }
    *out = sh;
    return 0;
}

void cs_shed_flush(cs_shed *sh) {
    if (!sh) return;
    pthread_mutex_lock(&sh->mu);
    while (sh->n) {
        held h = heap_pop(sh);
        pthread_mutex_unlock(&sh->mu);
        h.fn(h.arg);
        pthread_mutex_lock(&sh->mu);
    }
    pthread_mutex_unlock(&sh->mu);
}

void cs_shed_free(cs_shed *sh) {
    if (!sh) return;
    pthread_mutex_lock(&sh->mu);
    sh->stop = 1;
    pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    pthread_join(sh->thread, NULL);
    cs_shed_flush(sh);
    pthread_cond_destroy(&sh->cv);
    pthread_mutex_destroy(&sh->mu);
    free(sh->heap);
    free(sh);
}

int cs_shed_hold(cs_shed *sh, cs_shed_fn fn, void *arg) {
    pthread_mutex_lock(&sh->mu);
    if (sh->n >= CS_SHED_MAX_HELD || sh->stop) {
        pthread_mutex_unlock(&sh->mu);
        return -1;
    }
    const double due = mono_s() + hold_for(sh->n);
    const int earliest = sh->n == 0 || due < sh->heap[0].due;
    heap_push(sh, (held){.due = due, .fn = fn, .arg = arg});
    if (earliest) pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

double cs_shed_hold_s(cs_shed *sh) {
    pthread_mutex_lock(&sh->mu);
    const double d = hold_for(sh->n);
    pthread_mutex_unlock(&sh->mu);
    return d;
}
