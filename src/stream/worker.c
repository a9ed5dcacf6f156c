/* Worker: the coroutine of one of a stream's worker tasks.
 *
 * It loops: wait while the consumer has `limit` values waiting, take one
 * token of each shared limiter, pull one item, run it inline (each step in
 * the item's own copy of the caller's context, as a Task would), give the
 * tokens back and deliver the value. Every wait is a future yielded to the
 * worker's Task; every state below is where the Task resumes it.
 *
 * With claims per item (item_limiter=, item_cost=) the loop differs: run an
 * item whose parked claim has come to be held, if any; else pull while the
 * stream has room, make the item's claim and run it if held at once, or
 * park it (parked.c) and go round; else wait for room.
 */
#include "stream/stream.h"

enum {
    W_START,      /* not run yet */
    W_ROOM,       /* waiting for the consumer to take a value */
    W_TOKENS,     /* waiting for a token (claim.waiter) */
    W_PULL_LINE,  /* waiting for another worker's pull of an async source */
    W_PULLING,    /* driving the async source's __anext__() */
    W_GIVEN,      /* as_completed: waiting for a given Task or Future */
    W_RUN,        /* driving an item */
    W_DONE,
};

typedef struct {
    PyObject_HEAD
    StreamObject *stream;
    PyObject *task;
    int state;
    Claim claim;
    PyObject *waiting_on;   /* the future yielded for ROOM / PULL_LINE / GIVEN */
    PyObject *pull_iter;    /* PULLING: the __anext__() awaitable's iterator */
    PyObject *item;         /* pulled and not started */
    Py_ssize_t index;
    PyObject *given;        /* GIVEN: the caller's future */
    PyObject *run_iter;     /* RUN: the item's iterator */
    PyObject *context;      /* RUN: the item's context */
    char counts_pull;       /* counted in the stream's pulls under way */
} WorkerObject;

PyObject *
worker_new(StreamObject *stream)
{
    WorkerObject *self = PyObject_GC_New(WorkerObject,
                                         stream->state->worker_type);
    if (self == NULL) {
        return NULL;
    }
    self->stream = (StreamObject *)Py_NewRef((PyObject *)stream);
    self->task = NULL;
    self->state = W_START;
    claim_init(&self->claim, stream->limiters);
    self->waiting_on = self->pull_iter = self->item = NULL;
    self->given = self->run_iter = self->context = NULL;
    self->index = 0;
    self->counts_pull = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

int
worker_set_task(PyObject *op, PyObject *task)
{
    WorkerObject *self = (WorkerObject *)op;
    if (self->state == W_DONE) {
        return 0;
    }
    Py_XSETREF(self->task, Py_NewRef(task));
    return 1;
}

static ModuleState *
wstate(WorkerObject *self)
{
    return self->stream->state;
}

static PySendResult
yield_future(WorkerObject *self, PyObject *future, int state,
             PyObject **result)
{
    Py_XSETREF(self->waiting_on, future);   /* takes the reference */
    self->state = state;
    *result = Py_NewRef(future);
    return PYGEN_NEXT;
}

static void
close_item(WorkerObject *self)
{
    PyObject *item = self->item;
    self->item = NULL;
    if (item != NULL) {
        if (PyCoro_CheckExact(item)
                && close_awaitable(wstate(self), item) < 0) {
            PyErr_WriteUnraisable(item);
        }
        Py_DECREF(item);
    }
}

static void
release_tokens(WorkerObject *self)
{
    if (claim_abandon(&self->claim) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
}

static void
pull_ended(WorkerObject *self)
{
    if (self->counts_pull) {
        self->counts_pull = 0;
        self->stream->pulls--;
    }
}

/* The worker is done, whatever the reason: gives everything back. Keeps
 * the current exception, if any. */
static void
worker_end(WorkerObject *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    StreamObject *s = self->stream;
    pull_ended(self);
    if (self->state == W_PULLING) {
        s->pulling = 0;
        stream_wake_first(s, &s->pull_line);
    }
    self->state = W_DONE;
    release_tokens(self);
    close_item(self);
    if (self->given != NULL && self->waiting_on != NULL) {
        PyObject *setter = PyObject_GetAttr(self->waiting_on,
                                            wstate(self)->str_set_result);
        PyObject *res = setter == NULL ? NULL : PyObject_CallMethod(
            self->given, "remove_done_callback", "O", setter);
        Py_XDECREF(setter);
        if (res == NULL) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_XDECREF(res);
    }
    Py_CLEAR(self->waiting_on);
    Py_CLEAR(self->pull_iter);
    Py_CLEAR(self->given);
    Py_CLEAR(self->run_iter);
    Py_CLEAR(self->context);
    PyObject *task = self->task;
    self->task = NULL;
    stream_worker_finished(s, task);
    Py_XDECREF(task);
    PyErr_SetRaisedException(exc);
}

/* A KeyboardInterrupt or SystemExit ends the worker's task as well as the
 * stream: the consumer raises it, and the task's copy is retrieved in the
 * loop's next turn (as asyncio.gather's done callback would), so that it
 * is not logged as never retrieved. */
static void
retrieve_later(WorkerObject *self)
{
    ModuleState *st = wstate(self);
    PyObject *retrieve = PyObject_GetAttr(self->task, st->str_exception);
    PyObject *res = retrieve == NULL ? NULL
        : call_method1(self->stream->loop, st->str_call_soon, retrieve);
    if (res == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(res);
    Py_XDECREF(retrieve);
}

static int
is_ours(WorkerObject *self, PyObject *error)
{
    /* A CancelledError is the stream's (or the worker task's) own when the
     * stream is closing or the task is being cancelled; otherwise the item
     * cancelled itself, which is its outcome. */
    if (!is_cancelled_error(wstate(self), error)) {
        return 0;
    }
    if (self->stream->closed || self->task == NULL) {
        return 1;
    }
    int cancelling = call_method_bool(self->task, wstate(self)->str_cancelling);
    if (cancelling < 0) {
        PyErr_Clear();
        return 1;
    }
    return cancelling;
}

/* One step of the item, in its own context (entered already for the
 * first step, which follows the item's creation in that context). */
static PySendResult
run_in_context(WorkerObject *self, PyObject *value, PyObject *exc,
               int entered, PyObject **result)
{
    if (!entered && PyContext_Enter(self->context) < 0) {
        return PYGEN_ERROR;
    }
    PySendResult status = drive_iterator(wstate(self), self->run_iter, value,
                                         exc, result);
    PyObject *error = status == PYGEN_ERROR ? PyErr_GetRaisedException()
                                            : NULL;
    if (PyContext_Exit(self->context) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    if (error != NULL) {
        PyErr_SetRaisedException(error);
    }
    return status;
}

/* The item's value or error goes to the consumer, tokens first. */
static int
finish_item(WorkerObject *self, PyObject *value, PyObject *error, int given)
{
    Py_CLEAR(self->run_iter);
    Py_CLEAR(self->context);
    Py_CLEAR(self->given);
    if (claim_release_after(&self->claim, self->task, error) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    self->state = W_START;
    return stream_deliver(self->stream, self->index, value, error, given);
}

/* ---- the loop, one function per place in it ----
 *
 * Each returns where the worker goes next: another place in the loop, or
 * GO_YIELD (*result is the future to yield; self->state is where the Task
 * resumes the worker), GO_END (the stream stopped: the task returns) or
 * GO_FAIL (an error is set). */

enum {
    GO_NEXT_ITEM,   /* the top of the loop: room, then tokens */
    GO_PULL,        /* tokens held: pull an item */
    GO_CLAIM_ITEM,  /* claims per item: an item pulled, take its tokens */
    GO_START_ITEM,  /* an item pulled, its tokens held: start it */
    GO_YIELD,
    GO_END,
    GO_FAIL,
};

static int
wait_for_tokens(WorkerObject *self, PyObject **result)
{
    if (mark_blocking(wstate(self), self->claim.waiter) < 0) {
        return GO_FAIL;
    }
    self->state = W_TOKENS;
    *result = Py_NewRef(self->claim.waiter);
    return GO_YIELD;
}

static int
wait_for_room(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    PyObject *future = stream_wait_in(s, &s->room);
    if (future == NULL) {
        return GO_FAIL;
    }
    yield_future(self, future, W_ROOM, result);
    return GO_YIELD;
}

/* Takes over the item and the claim of the first runnable parked item. */
static void
take_runnable(WorkerObject *self)
{
    StreamObject *s = self->stream;
    ParkedItemObject *parked = (ParkedItemObject *)queue_pop(&s->runnable);
    parked->in_line = 0;
    claim_clear(&self->claim);
    self->claim = parked->claim;
    claim_init(&parked->claim, s->limiters);
    self->item = parked->item;
    parked->item = NULL;
    self->index = parked->index;
    Py_DECREF(parked);
}

static int
go_to_next_item_claimed_each(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    if (s->closed || s->error != NULL) {
        return GO_END;
    }
    if (s->runnable.len > 0) {
        /* Held already and counted as pulled: it runs whatever the values
         * waiting (an ordered consumer may be waiting for it). */
        take_runnable(self);
        stream_wake_worker(s);       /* one fewer parked: room to pull */
        return GO_START_ITEM;
    }
    if (stream_may_pull(s)) {
        s->pulls++;
        self->counts_pull = 1;
        return GO_PULL;
    }
    if (s->exhausted && s->parked.len == 0) {
        stream_wake_worker(s);       /* the others end too */
        return GO_END;
    }
    return wait_for_room(self, result);
}

static int
go_to_next_item(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    pull_ended(self);
    if (s->claims_per_item) {
        return go_to_next_item_claimed_each(self, result);
    }
    if (stream_stopped(s)) {
        return GO_END;
    }
    if (s->limit > 0 && stream_buffered(s) >= s->limit) {
        return wait_for_room(self, result);
    }
    int got = claim_take_tokens(&self->claim, s->loop);
    if (got < 0) {
        /* A limiter that cannot be taken fails the stream, which stops. */
        PyObject *error = PyErr_GetRaisedException();
        stream_fail(s, error, self->task);
        Py_DECREF(error);
        return GO_NEXT_ITEM;
    }
    return got ? GO_PULL : wait_for_tokens(self, result);
}

/* The end of an async pull (status from its last step). */
static int
pull_done(WorkerObject *self, PySendResult status, PyObject *value)
{
    StreamObject *s = self->stream;
    /* Taken before anything is released: a dealloc may run code. */
    PyObject *error = status == PYGEN_ERROR ? PyErr_GetRaisedException()
                                            : NULL;
    Py_CLEAR(self->pull_iter);
    s->pulling = 0;
    stream_wake_first(s, &s->pull_line);
    self->state = W_START;
    if (status == PYGEN_RETURN) {
        self->item = value;
        self->index = s->pulled++;
        return s->claims_per_item ? GO_CLAIM_ITEM : GO_START_ITEM;
    }
    if (error == NULL) {
        PyErr_SetString(PyExc_SystemError, "async source failed silently");
        return GO_FAIL;
    }
    if (is_cancelled_error(wstate(self), error)) {
        PyErr_SetRaisedException(error);
        return GO_FAIL;
    }
    if (PyErr_GivenExceptionMatches(error, PyExc_StopAsyncIteration)) {
        s->exhausted = 1;
        stream_wake_consumer(s);
    }
    else {
        stream_fail(s, error, self->task);   /* the source itself failed */
    }
    Py_DECREF(error);
    release_tokens(self);
    return GO_NEXT_ITEM;
}

static int
drive_pull(WorkerObject *self, PyObject *value, PyObject *exc,
           PyObject **result)
{
    PySendResult status = drive_iterator(wstate(self), self->pull_iter,
                                         value, exc, result);
    if (status == PYGEN_NEXT) {
        return GO_YIELD;
    }
    return pull_done(self, status, status == PYGEN_RETURN ? *result : NULL);
}

/* Pulls one item from a sync source at once, or from an async one by
 * driving its __anext__() (one worker at a time: the others wait in the
 * pull line, holding their tokens). */
static int
go_pull(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    if (stream_stopped(s) || s->iterator == NULL) {
        /* Others may wait in line to pull: let the next one see it too. */
        stream_wake_first(s, &s->pull_line);
        release_tokens(self);
        return GO_NEXT_ITEM;
    }
    if (!s->is_async) {
        self->item = PyIter_Next(s->iterator);
        if (self->item != NULL) {
            self->index = s->pulled++;
            return s->claims_per_item ? GO_CLAIM_ITEM : GO_START_ITEM;
        }
        if (PyErr_Occurred()) {
            PyObject *error = PyErr_GetRaisedException();
            stream_fail(s, error, self->task);
            Py_DECREF(error);
        }
        else {
            s->exhausted = 1;
            stream_wake_consumer(s);
        }
        release_tokens(self);
        return GO_NEXT_ITEM;
    }
    if (s->pulling) {
        PyObject *future = stream_wait_in(s, &s->pull_line);
        if (future == NULL) {
            return GO_FAIL;
        }
        yield_future(self, future, W_PULL_LINE, result);
        return GO_YIELD;
    }
    PyTypeObject *tp = Py_TYPE(s->iterator);
    if (tp->tp_as_async == NULL || tp->tp_as_async->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "%R is not an async iterator",
                     s->iterator);
        return GO_FAIL;
    }
    PyObject *awaitable = tp->tp_as_async->am_anext(s->iterator);
    if (awaitable == NULL) {
        return GO_FAIL;
    }
    self->pull_iter = iterator_of(wstate(self), awaitable);
    Py_DECREF(awaitable);
    if (self->pull_iter == NULL) {
        return GO_FAIL;
    }
    s->pulling = 1;
    self->state = W_PULLING;
    return drive_pull(self, Py_None, NULL, result);
}

/* One step of the running item; its value or error once it ends. */
static int
step_item(WorkerObject *self, PyObject *value, PyObject *exc, int entered,
          PyObject **result)
{
    PySendResult status = run_in_context(self, value, exc, entered, result);
    if (status == PYGEN_NEXT) {
        return GO_YIELD;
    }
    int failed;
    if (status == PYGEN_RETURN) {
        PyObject *item_value = *result;
        failed = finish_item(self, item_value, NULL, 0) < 0;
        Py_DECREF(item_value);
        return failed ? GO_FAIL : GO_NEXT_ITEM;
    }
    PyObject *error = PyErr_GetRaisedException();
    if (is_ours(self, error)) {
        PyErr_SetRaisedException(error);
        return GO_FAIL;
    }
    if (is_interrupt(error)) {
        stream_fail(self->stream, error, self->task);
        PyErr_SetRaisedException(error);
        return GO_FAIL;
    }
    failed = finish_item(self, NULL, error, 0) < 0;
    Py_DECREF(error);
    return failed ? GO_FAIL : GO_NEXT_ITEM;
}

/* The item could not be made into an awaitable (`error`): for gather and
 * as_completed that fails the stream; for amap it is the item's error. */
static int
item_not_started(WorkerObject *self, PyObject *error)
{
    StreamObject *s = self->stream;
    int failed = 0;
    if (s->strict_input) {
        close_item(self);
        stream_fail(s, error, self->task);
        Py_CLEAR(self->context);
        release_tokens(self);
        self->state = W_START;
    }
    else {
        Py_CLEAR(self->item);
        failed = finish_item(self, NULL, error, 0) < 0;
    }
    Py_DECREF(error);
    return failed ? GO_FAIL : GO_NEXT_ITEM;
}

static int
is_future(ModuleState *st, PyObject *obj)
{
    PyObject *res = PyObject_CallOneArg(st->isfuture, obj);
    if (res == NULL) {
        return -1;
    }
    int yes = PyObject_IsTrue(res);
    Py_DECREF(res);
    return yes;
}

/* as_completed given a Task or Future: waits for it without ever
 * cancelling it, then hands it on as it is. Takes the reference. */
static int
wait_for_given(WorkerObject *self, PyObject *given, PyObject **result)
{
    StreamObject *s = self->stream;
    ModuleState *st = wstate(self);
    int done = call_method_bool(given, st->str_done);
    if (done != 0) {
        int failed = done < 0 || finish_item(self, given, NULL, 1) < 0;
        Py_DECREF(given);
        return failed ? GO_FAIL : GO_NEXT_ITEM;
    }
    PyObject *waiter = call_method0(s->loop, st->str_create_future);
    PyObject *setter = waiter == NULL ? NULL
        : PyObject_GetAttr(waiter, st->str_set_result);
    PyObject *res = setter == NULL ? NULL
        : call_method1(given, st->str_add_done_callback, setter);
    Py_XDECREF(setter);
    if (res == NULL || mark_blocking(st, waiter) < 0) {
        Py_XDECREF(res);
        Py_XDECREF(waiter);
        Py_DECREF(given);
        return GO_FAIL;
    }
    Py_DECREF(res);
    self->given = given;
    yield_future(self, waiter, W_GIVEN, result);
    return GO_YIELD;
}

static PyObject *
call_on_item(PyObject *fn, PyObject *item)
{
    return fn == Py_None ? Py_NewRef(Py_None) : PyObject_CallOneArg(fn, item);
}

/* The item's claim: the stream's limiters and the item's, with its costs
 * (by the rule of a group's task). Held at once: start the item; else it
 * is parked, and the worker goes round. A bad limiter or cost is the
 * item's error; a limiter's failure, the stream's. */
static int
go_claim_item(WorkerObject *self)
{
    StreamObject *s = self->stream;
    pull_ended(self);
    if (s->limit == 0 && !stream_stopped(s) && stream_add_worker(s) < 0) {
        return GO_FAIL;
    }
    PyObject *limiter = call_on_item(s->item_limiter, self->item);
    PyObject *cost = limiter == NULL ? NULL
                                     : call_on_item(s->item_cost, self->item);
    Claim claim;
    int made = cost == NULL ? -1
        : claim_init_for_task(wstate(self), &claim, s->limiters, limiter,
                              cost);
    Py_XDECREF(limiter);
    Py_XDECREF(cost);
    if (made < 0) {
        PyObject *error = PyErr_GetRaisedException();
        close_item(self);
        if (is_interrupt(error)) {
            stream_fail(s, error, self->task);
            PyErr_SetRaisedException(error);
            return GO_FAIL;
        }
        int failed = stream_deliver(s, self->index, NULL, error, 0) < 0;
        Py_DECREF(error);
        return failed ? GO_FAIL : GO_NEXT_ITEM;
    }
    claim_clear(&self->claim);
    self->claim = claim;
    int got = claim_take_tokens(&self->claim, s->loop);
    if (got == 1) {
        return GO_START_ITEM;
    }
    if (got == 0 && stream_park(s, self->index, self->item,
                                &self->claim) == 0) {
        Py_CLEAR(self->item);
        return GO_NEXT_ITEM;
    }
    PyObject *error = PyErr_GetRaisedException();
    close_item(self);
    stream_fail(s, error, self->task);
    Py_DECREF(error);
    return GO_NEXT_ITEM;
}

/* Makes the pulled item into an awaitable, in a copy of the caller's
 * context entered for it, and runs its first step there. */
static int
go_start_item(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    ModuleState *st = wstate(self);
    if (s->limit == 0 && !s->claims_per_item && !stream_stopped(s)
            && stream_add_worker(s) < 0) {
        return GO_FAIL;
    }
    claim_note_start(&self->claim, s->loop);
    self->context = PyContext_Copy(s->context);
    if (self->context == NULL || PyContext_Enter(self->context) < 0) {
        return GO_FAIL;
    }
    PyObject *awaitable = s->make == Py_None
        ? Py_NewRef(self->item) : PyObject_CallOneArg(s->make, self->item);
    PyObject *iterator = awaitable == NULL ? NULL
                                           : iterator_of(st, awaitable);
    /* (A coroutine is never a future: spares a Python call per item.) */
    int may_be_future = s->as_futures && iterator != NULL
                        && !PyCoro_CheckExact(awaitable);
    if (iterator == NULL || may_be_future) {
        assert((iterator == NULL) == (PyErr_Occurred() != NULL));
        PyObject *error = PyErr_GetRaisedException();
        if (PyContext_Exit(self->context) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        if (error != NULL) {
            Py_XDECREF(awaitable);
            return item_not_started(self, error);
        }
    }
    Py_CLEAR(self->item);    /* started: the item's own cleanup runs now */
    if (may_be_future) {
        int given = is_future(st, awaitable);
        if (given != 0) {
            Py_DECREF(iterator);
            if (given < 0) {
                Py_DECREF(awaitable);
                return GO_FAIL;
            }
            return wait_for_given(self, awaitable, result);
        }
        if (PyContext_Enter(self->context) < 0) {
            Py_DECREF(awaitable);
            Py_DECREF(iterator);
            return GO_FAIL;
        }
    }
    Py_DECREF(awaitable);
    self->run_iter = iterator;
    self->state = W_RUN;
    return step_item(self, Py_None, NULL, 1, result);
}

/* Where the Task resumes the worker, with the value sent or the exception
 * thrown into it. */
static int
resume(WorkerObject *self, PyObject *value, PyObject *exc, PyObject **result)
{
    switch (self->state) {
    case W_PULLING:
        return drive_pull(self, value, exc, result);
    case W_RUN:
        return step_item(self, value, exc, 0, result);
    }
    if (exc != NULL) {
        /* Thrown into a wait (worker_end undoes the wait). */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        return GO_FAIL;
    }
    int waited = self->state;
    Py_CLEAR(self->waiting_on);
    self->state = W_START;
    switch (waited) {
    case W_TOKENS: {
        int got = claim_resume(&self->claim, self->stream->loop);
        if (got < 0) {
            return GO_FAIL;
        }
        return got ? GO_PULL : wait_for_tokens(self, result);
    }
    case W_PULL_LINE:
        return GO_PULL;
    case W_GIVEN: {
        PyObject *given = Py_NewRef(self->given);
        int failed = finish_item(self, given, NULL, 1) < 0;
        Py_DECREF(given);
        return failed ? GO_FAIL : GO_NEXT_ITEM;
    }
    default:    /* W_START, W_ROOM */
        return GO_NEXT_ITEM;
    }
}

/* The worker's error: a failure of its own (a limiter's, the loop's) is the
 * stream's, which the consumer raises, and the task returns. Only the
 * stream's own cancellation and KeyboardInterrupt or SystemExit end the
 * task with an error. */
static PySendResult
worker_failed(WorkerObject *self, PyObject **result)
{
    PyObject *error = PyErr_GetRaisedException();
    if (!is_cancelled_error(wstate(self), error) && !is_interrupt(error)) {
        stream_fail(self->stream, error, self->task);
        Py_DECREF(error);
        worker_end(self);
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    if (is_interrupt(error) && self->task != NULL) {
        retrieve_later(self);
    }
    PyErr_SetRaisedException(error);
    worker_end(self);
    return PYGEN_ERROR;
}

static PySendResult
worker_step(PyObject *op, PyObject *value, PyObject *exc, PyObject **result)
{
    WorkerObject *self = (WorkerObject *)op;
    if (self->state == W_DONE) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    int go = resume(self, value, exc, result);
    for (;;) {
        switch (go) {
        case GO_NEXT_ITEM:
            go = go_to_next_item(self, result);
            break;
        case GO_PULL:
            go = go_pull(self, result);
            break;
        case GO_CLAIM_ITEM:
            go = go_claim_item(self);
            break;
        case GO_START_ITEM:
            go = go_start_item(self, result);
            break;
        case GO_YIELD:
            return PYGEN_NEXT;
        case GO_END:
            worker_end(self);
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        default:
            assert(go == GO_FAIL && PyErr_Occurred());
            return worker_failed(self, result);
        }
    }
}

STEP_PROTOCOL(worker_am_send, worker_send, worker_throw,
              worker_iternext, worker_step)

static PyObject *
worker_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    WorkerObject *self = (WorkerObject *)op;
    if (self->state == W_DONE) {
        Py_RETURN_NONE;
    }
    if (self->state == W_RUN && self->run_iter != NULL) {
        if (close_awaitable(wstate(self), self->run_iter) < 0) {
            PyErr_WriteUnraisable(op);
        }
    }
    worker_end(self);
    Py_RETURN_NONE;
}

static void
worker_finalize(PyObject *op)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *res = worker_close(op, NULL);
    Py_XDECREF(res);
    PyErr_SetRaisedException(exc);
}

static int
worker_traverse(WorkerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->stream);
    Py_VISIT(self->task);
    Py_VISIT(self->waiting_on);
    Py_VISIT(self->pull_iter);
    Py_VISIT(self->item);
    Py_VISIT(self->given);
    Py_VISIT(self->run_iter);
    Py_VISIT(self->context);
    return claim_traverse(&self->claim, visit, arg);
}

static int
worker_clear(WorkerObject *self)
{
    claim_clear(&self->claim);
    Py_CLEAR(self->task);
    Py_CLEAR(self->waiting_on);
    Py_CLEAR(self->pull_iter);
    Py_CLEAR(self->item);
    Py_CLEAR(self->given);
    Py_CLEAR(self->run_iter);
    Py_CLEAR(self->context);
    Py_CLEAR(self->stream);
    return 0;
}

static void
worker_dealloc(WorkerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;
    }
    PyObject_GC_UnTrack(self);
    (void)worker_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

/* Its name, for the task's repr and asyncio's task listings: the helper's
 * ("amap worker"). */
static PyObject *
worker_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    WorkerObject *self = (WorkerObject *)op;
    if (self->stream == NULL || self->stream->name == NULL) {
        return PyUnicode_FromString("worker");
    }
    return PyUnicode_FromFormat("%U worker", self->stream->name);
}

static PyGetSetDef worker_getset[] = {
    {"__name__", worker_get_name, NULL, NULL, NULL},
    {"__qualname__", worker_get_name, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef worker_methods[] = {
    {"send", (PyCFunction)worker_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))worker_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)worker_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot worker_slots[] = {
    {Py_tp_doc, "The coroutine of a stream's worker task."},
    {Py_tp_dealloc, worker_dealloc},
    {Py_tp_finalize, worker_finalize},
    {Py_tp_traverse, worker_traverse},
    {Py_tp_clear, worker_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, worker_iternext},
    {Py_tp_methods, worker_methods},
    {Py_tp_getset, worker_getset},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, worker_am_send},
    {0, NULL},
};

PyType_Spec worker_spec = {
    .name = "taskbound._taskbound.Worker",
    .basicsize = sizeof(WorkerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = worker_slots,
};
