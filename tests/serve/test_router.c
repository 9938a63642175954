/* The proxy's replica choice (power of two choices, cp_pick). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "serve/cp_internal.h"

#define N_MAX 8

typedef struct fixture {
    cp_dep d;
    cp_replica r[N_MAX];
    cp_replica *p[N_MAX];
} fixture;

static void setup(fixture *f, const int *ongoing, int n, int max_ongoing) {
    memset(f, 0, sizeof *f);
    f->d.cfg.max_ongoing_requests = max_ongoing;
    for (int i = 0; i < n; i++) {
        f->r[i].state = RS_RUNNING;
        f->r[i].ongoing = ongoing[i];
        f->r[i].dep = &f->d;
        f->p[i] = &f->r[i];
    }
    f->d.reps = f->p;
    f->d.n_reps = (size_t)n;
}

static int index_of(fixture *f, const cp_replica *r) { return r ? (int)(r - f->r) : -1; }

static void test_full_replicas_are_never_picked(void **state) {
    (void)state;
    fixture f;
    const int on[] = {2, 2, 1, 2};
    setup(&f, on, 4, 2);
    for (int i = 0; i < 200; i++) assert_int_equal(index_of(&f, cp_pick(&f.d)), 2);
    f.r[2].ongoing = 2;
    assert_null(cp_pick(&f.d));
}

static void test_only_running_healthy_replicas(void **state) {
    (void)state;
    fixture f;
    const int on[] = {0, 0, 0, 0, 3};
    setup(&f, on, 5, 4);
    f.r[0].state = RS_STARTING;
    f.r[1].state = RS_STOPPING;
    f.r[2].unhealthy = 1;
    f.r[3].exited = 1;
    for (int i = 0; i < 200; i++) assert_int_equal(index_of(&f, cp_pick(&f.d)), 4);
}

static void test_two_choices_prefer_the_less_busy(void **state) {
    (void)state;
    fixture f;
    const int on[] = {0, 1, 2};
    setup(&f, on, 3, 8);
    int count[3] = {0};
    const int trials = 3000;
    for (int i = 0; i < trials; i++) count[index_of(&f, cp_pick(&f.d))]++;
    /* the busiest of three loses every pair it is drawn in; the idlest wins both of its pairs */
    assert_int_equal(count[2], 0);
    assert_true(count[0] > trials / 2);
    assert_true(count[1] > trials / 6);
}

static void test_spreads_over_equal_replicas(void **state) {
    (void)state;
    fixture f;
    const int on[] = {1, 1, 1, 1, 1, 1};
    setup(&f, on, 6, 8);
    int count[6] = {0};
    for (int i = 0; i < 6000; i++) count[index_of(&f, cp_pick(&f.d))]++;
    for (int i = 0; i < 6; i++) assert_true(count[i] > 500); /* each about 1,000 */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_replicas_are_never_picked),
        cmocka_unit_test(test_only_running_healthy_replicas),
        cmocka_unit_test(test_two_choices_prefer_the_less_busy),
        cmocka_unit_test(test_spreads_over_equal_replicas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
