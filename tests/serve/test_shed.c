/* cs_shed: held refusals are all answered (by the thread, or at once by a
 * flush), the hold grows with the number held, and the bound is kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <unistd.h>

#include "serve/shed.h"

static _Atomic int fired;

static void bump(void *arg) {
    (void)arg;
    atomic_fetch_add(&fired, 1);
}

static void test_hold_flush_bound(void **state) {
    (void)state;
    cs_shed *sh;
    cs_err err;
    assert_int_equal(cs_shed_create(&sh, &err), 0);
    atomic_store(&fired, 0);
    const double alone = cs_shed_hold_s(sh);
    assert_true(alone >= CS_SHED_MIN_HOLD_S && alone <= CS_SHED_MAX_HOLD_S);
    /* a crowd: with 600 held, the next one waits about 3 s, far longer than the first */
    for (int i = 0; i < 600; i++) assert_int_equal(cs_shed_hold(sh, bump, NULL), 0);
    const double crowd = cs_shed_hold_s(sh);
    assert_true(crowd > alone && crowd <= CS_SHED_MAX_HOLD_S);
    cs_shed_flush(sh);
    assert_int_equal(atomic_load(&fired), 600);
    /* the bound: beyond it the caller answers itself */
    atomic_store(&fired, 0);
    int held = 0, refused = 0; /* (the thread may answer the first ones while we fill) */
    for (int i = 0; i < 4 * CS_SHED_MAX_HELD && !refused; i++) {
        if (cs_shed_hold(sh, bump, NULL) == 0) held++;
        else refused = 1;
    }
    assert_true(refused && held >= CS_SHED_MAX_HELD);
    assert_true(cs_shed_hold_s(sh) == CS_SHED_MAX_HOLD_S);
    cs_shed_flush(sh);
    assert_int_equal(atomic_load(&fired), held);
    /* a lone refusal is answered by the thread after its hold */
    atomic_store(&fired, 0);
    assert_int_equal(cs_shed_hold(sh, bump, NULL), 0);
    for (int i = 0; i < 10000 && atomic_load(&fired) == 0; i++) usleep(1000);
    assert_int_equal(atomic_load(&fired), 1);
    /* free answers what is still held */
    for (int i = 0; i < 5; i++) assert_int_equal(cs_shed_hold(sh, bump, NULL), 0);
    cs_shed_free(sh);
    assert_int_equal(atomic_load(&fired), 6);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_hold_flush_bound)};
    return cmocka_run_group_tests_name("shed", tests, NULL, NULL);
}
