/* A claim: tokens of each of several limiters (one of each, or its
 * costs), taken in rank order.
 *
 * claim_try_take() takes what is free and, at the first busy limiter,
 * queues a waiter future at once, so the claim keeps its place in line from
 * the moment it is made. claim_resume() goes on once that future is done;
 * claim_wait_for_next() is the loop of an awaitable taking a claim between
 * the two; claim_abandon() gives everything back, whatever state the claim
 * is in.
 */
#include "core/core.h"

void
claim_init(Claim *claim, PyObject *limiters)
{
    claim->limiters = Py_NewRef(limiters);
    claim->cost = 1;
    claim->costs = NULL;
    claim->held = 0;
    claim->waiter = NULL;
    claim->abort_error = NULL;
    claim->granted_at = Py_NAN;
}

int
claim_init_for_task(ModuleState *st, Claim *claim, PyObject *limiters,
                    PyObject *limiter, PyObject *cost)
{
    if (limiter == Py_None && cost == Py_None) {
        claim_init(claim, limiters);
        return 0;
    }
    PyObject *taken = sources_in_rank_order(st, limiters, limiter);
    if (taken == NULL) {
        return -1;
    }
    PyObject *costs = PyObject_CallFunctionObjArgs(st->costs_in_rank_order,
                                                   taken, cost, NULL);
    if (costs == NULL) {
        Py_DECREF(taken);
        return -1;
    }
    claim_init(claim, taken);
    if (costs != Py_None) {
        assert(PyTuple_CheckExact(costs)
               && PyTuple_GET_SIZE(costs) == PyTuple_GET_SIZE(taken));
        claim->costs = costs;
    }
    else {
        Py_DECREF(costs);
    }
    Py_DECREF(taken);
    return 0;
}

/* Returns 1 when every token is held, 0 when a waiter was queued, -1 on
 * error (with nothing held); the hold's sample starts now. */
int
claim_try_take(Claim *claim, PyObject *loop)
{
    int got = claim_take_tokens(claim, loop);
    if (got == 1) {
        claim_note_start(claim, loop);
    }
    return got;
}

/* claim_try_take for a holder that notes its start itself, later (a
 * stream's worker, when its item starts): no read of the clock here. */
int
claim_take_tokens(Claim *claim, PyObject *loop)
{
    ASSERT_NO_ERROR();
    Py_ssize_t n = CLAIM_SIZE(claim);
    while (claim->held < n) {
        TokenSource *limiter = LIMITER_AT(claim, claim->held);
        Py_ssize_t cost = claim_cost_at(claim, claim->held);
        int taken = op_try_take(limiter, loop, cost);
        if (taken == 0) {
            claim->waiter = op_enqueue(limiter, loop, cost);
            if (claim->waiter != NULL) {
                return 0;
            }
            taken = -1;
        }
        if (taken < 0) {
            PyObject *exc = PyErr_GetRaisedException();
            if (claim_release(claim) < 0) {
                PyErr_WriteUnraisable(NULL);
            }
            PyErr_SetRaisedException(exc);
            return -1;
        }
        claim->held++;
    }
    return 1;
}

void
claim_note_start(Claim *claim, PyObject *loop)
{
    for (Py_ssize_t i = 0; i < CLAIM_SIZE(claim); i++) {
        TokenSource *limiter = LIMITER_AT(claim, i);
        if (limiter->sampler != NULL) {
            if (sample_time(limiter, loop, &claim->granted_at) < 0) {
                /* (no sample, then: the hold itself is fine) */
                PyErr_WriteUnraisable((PyObject *)limiter);
                claim->granted_at = Py_NAN;
            }
            return;
        }
    }
}

int
claim_resume(Claim *claim, PyObject *loop)
{
    ASSERT_NO_ERROR();
    PyObject *future = claim->waiter;
    claim->waiter = NULL;
    TokenSource *limiter = LIMITER_AT(claim, claim->held);
    PyObject *handed = future_result(limiter->state, future);
    if (handed == NULL) {
        /* Cancelled from outside (or failed by deadlock detection): nothing
         * was handed; leave the line, give back what is held, and raise
         * that error. */
        PyObject *error = PyErr_GetRaisedException();
        op_dequeue(limiter, future);
        Py_DECREF(future);
        if (claim_release(claim) < 0) {
            PyErr_WriteUnraisable(NULL);
        }
        PyErr_SetRaisedException(error);
        return -1;
    }
    if (handed == Py_True) {
        claim->held++;
    }
    Py_DECREF(handed);
    Py_DECREF(future);
    if (claim->abort_error != NULL) {
        PyObject *error = claim->abort_error;
        claim->abort_error = NULL;
        if (claim_release(claim) < 0) {
            PyErr_WriteUnraisable(NULL);
        }
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
        return -1;
    }
    return claim_try_take(claim, loop);
}

int
claim_wait_for_next(ModuleState *st, Claim *claim, PyObject *loop,
                    PyObject *task, int status, PyObject **waiter)
{
    while (status == 0) {
        /* A wait that would complete a deadlock fails at once, without a
         * trip through the loop (as awaiting a done future does). */
        TokenSource *busy = LIMITER_AT(claim, claim->held);
        if (limiter_wait_may_deadlock(st, busy, loop, task)) {
            deadlock_on_block(st, busy, claim->waiter);
            int done = future_done(st, claim->waiter);
            if (done != 0) {
                status = done < 0 ? -1 : claim_resume(claim, loop);
                continue;
            }
        }
        if (mark_blocking(st, claim->waiter) < 0) {
            return -1;
        }
        *waiter = claim->waiter;
        return 0;
    }
    return status;
}

int
claim_abort(Claim *claim, PyObject *error)
{
    ASSERT_NO_ERROR();
    Py_XSETREF(claim->abort_error, Py_NewRef(error));
    PyObject *future = claim->waiter;
    if (future == NULL) {
        return 0;
    }
    TokenSource *limiter = LIMITER_AT(claim, claim->held);
    op_dequeue(limiter, future);
    return set_result_if_pending(limiter->state, future, Py_False) < 0
           ? -1 : 0;
}

int
claim_abandon(Claim *claim)
{
    ASSERT_NO_ERROR();
    PyObject *error = NULL;
    PyObject *future = claim->waiter;
    if (future != NULL) {
        claim->waiter = NULL;
        if (source_withdraw(LIMITER_AT(claim, claim->held), future,
                            claim_cost_at(claim, claim->held)) < 0) {
            error = PyErr_GetRaisedException();
        }
        Py_DECREF(future);
    }
    Py_CLEAR(claim->abort_error);
    if (claim_release(claim) < 0) {
        if (error == NULL) {
            error = PyErr_GetRaisedException();
        }
        else {
            PyErr_WriteUnraisable(NULL);
        }
    }
    if (error != NULL) {
        PyErr_SetRaisedException(error);
        return -1;
    }
    return 0;
}

/* Gives back every token held, last taken first. Keeps going after an
 * error, and reports the first one. */
int
claim_release(Claim *claim)
{
    claim->granted_at = Py_NAN;
    return claim_release_after(claim, NULL, NULL);
}

/* The samples of a hold that ended, before its tokens go back. */
static void
sample_holds(Claim *claim, PyObject *task, PyObject *error)
{
    double granted = claim->granted_at;
    claim->granted_at = Py_NAN;
    if (isnan(granted)) {
        return;
    }
    PyObject *current = NULL;
    for (Py_ssize_t i = claim->held - 1; i >= 0; i--) {
        TokenSource *limiter = LIMITER_AT(claim, i);
        double now;
        if (limiter->sampler == NULL || limiter->loop == NULL) {
            continue;
        }
        if (task == NULL && current == NULL) {
            current = current_task_of(limiter->state, limiter->loop);
            if (current == NULL) {
                PyErr_WriteUnraisable((PyObject *)limiter);
                current = Py_NewRef(Py_None);
            }
        }
        if (sample_time(limiter, limiter->loop, &now) < 0) {
            PyErr_WriteUnraisable((PyObject *)limiter);
            continue;
        }
        Py_ssize_t held = limiter->ops->held(limiter);
        if (held < 0) {
            PyErr_WriteUnraisable((PyObject *)limiter);
            continue;
        }
        sampler_record(limiter, task != NULL ? task : current,
                       now - granted, error, held);
    }
    Py_XDECREF(current);
}

int
claim_release_after(Claim *claim, PyObject *task, PyObject *error)
{
    ASSERT_NO_ERROR();
    sample_holds(claim, task, error);
    Py_ssize_t held = claim->held;
    claim->held = 0;
    int status = 0;
    PyObject *first_error = NULL;
    while (held > 0) {
        held--;
        TokenSource *limiter = LIMITER_AT(claim, held);
        if (op_give_back(limiter, claim_cost_at(claim, held)) < 0) {
            status = -1;
            if (first_error == NULL) {
                first_error = PyErr_GetRaisedException();
            }
            else {
                PyErr_WriteUnraisable(NULL);
            }
        }
    }
    if (first_error != NULL) {
        PyErr_SetRaisedException(first_error);
    }
    return status;
}

int
claim_traverse(Claim *claim, visitproc visit, void *arg)
{
    Py_VISIT(claim->limiters);
    Py_VISIT(claim->costs);
    Py_VISIT(claim->waiter);
    Py_VISIT(claim->abort_error);
    return 0;
}

void
claim_clear(Claim *claim)
{
    Py_CLEAR(claim->waiter);
    Py_CLEAR(claim->abort_error);
    Py_CLEAR(claim->costs);
    Py_CLEAR(claim->limiters);
}
