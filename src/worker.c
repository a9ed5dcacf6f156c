/* Worker: the coroutine of one of a stream's worker tasks.
 *
 * It loops: wait while the consumer has `limit` values waiting, take one
 * token of each shared limiter, pull one item, run it inline (each step in
 * the item's own copy of the caller's context, as a Task would), give the
 * tokens back and deliver the value. Every wait is a future yielded to the
 * worker's Task; every state below is where the Task resumes it.
 */
#include "taskbound.h"

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

/* The worker is done, whatever the reason: gives everything back. Keeps
 * the current exception, if any. */
static void
worker_end(WorkerObject *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    StreamObject *s = self->stream;
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
    release_tokens(self);
    self->state = W_START;
    return stream_deliver(self->stream, self->index, value, error, given);
}

/* Turns the pulled item into an awaitable and starts it. Returns a step
 * result; PYGEN_RETURN with *result NULL means "go on looping". On
 * PYGEN_NEXT in state W_RUN the item's context is still entered, for the
 * caller's first step. */
static PySendResult
start_item(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    ModuleState *st = wstate(self);
    PyObject *awaitable = NULL, *iterator = NULL;
    self->context = PyContext_Copy(s->context);
    if (self->context == NULL) {
        return PYGEN_ERROR;
    }
    if (PyContext_Enter(self->context) < 0) {
        return PYGEN_ERROR;
    }
    awaitable = s->make == Py_None ? Py_NewRef(self->item)
                                   : PyObject_CallOneArg(s->make, self->item);
    if (awaitable != NULL) {
        iterator = iterator_of(st, awaitable);
    }
    PyObject *error = PyErr_GetRaisedException();
    int may_be_future = s->as_futures && awaitable != NULL
                        && !PyCoro_CheckExact(awaitable);
    if (error != NULL || may_be_future) {
        if (PyContext_Exit(self->context) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    if (error != NULL) {
        Py_XDECREF(awaitable);
        if (s->strict_input) {
            close_item(self);
            stream_fail(s, error, self->task);
            Py_DECREF(error);
            Py_CLEAR(self->context);
            release_tokens(self);
            self->state = W_START;
            *result = NULL;
            return PYGEN_RETURN;
        }
        Py_CLEAR(self->item);
        int status = finish_item(self, NULL, error, 0);
        Py_DECREF(error);
        *result = NULL;
        return status < 0 ? PYGEN_ERROR : PYGEN_RETURN;
    }
    Py_CLEAR(self->item);    /* started: the item's own cleanup runs now */
    if (may_be_future) {
        /* (A coroutine is never a future: spares a Python call per item.) */
        PyObject *is_future = PyObject_CallOneArg(st->isfuture, awaitable);
        if (is_future == NULL) {
            Py_DECREF(awaitable);
            Py_DECREF(iterator);
            return PYGEN_ERROR;
        }
        int given = (is_future == Py_True);
        Py_DECREF(is_future);
        if (given) {
            /* A given Task or Future: wait for it without ever cancelling
             * it, then hand it on as it is. */
            Py_DECREF(iterator);
            int done = call_method_bool(awaitable, st->str_done);
            if (done != 0) {
                int status = done < 0 ? -1
                    : finish_item(self, awaitable, NULL, 1);
                Py_DECREF(awaitable);
                *result = NULL;
                return status < 0 ? PYGEN_ERROR : PYGEN_RETURN;
            }
            PyObject *waiter = call_method0(s->loop, st->str_create_future);
            PyObject *setter = waiter == NULL ? NULL
                : PyObject_GetAttr(waiter, st->str_set_result);
            PyObject *res = setter == NULL ? NULL
                : call_method1(awaitable, st->str_add_done_callback, setter);
            Py_XDECREF(setter);
            if (res == NULL || mark_blocking(st, waiter) < 0) {
                Py_XDECREF(res);
                Py_XDECREF(waiter);
                Py_DECREF(awaitable);
                return PYGEN_ERROR;
            }
            Py_DECREF(res);
            self->given = awaitable;
            return yield_future(self, waiter, W_GIVEN, result);
        }
        if (PyContext_Enter(self->context) < 0) {
            Py_DECREF(awaitable);
            Py_DECREF(iterator);
            return PYGEN_ERROR;
        }
    }
    Py_DECREF(awaitable);
    self->run_iter = iterator;
    self->state = W_RUN;
    return PYGEN_NEXT;   /* the caller drives the first step */
}

/* Pulls one item: 1 with self->item set, 0 when there is none (exhausted,
 * stopped, or the source failed), 2 when a future was yielded, -1 error. */
static int
pull(WorkerObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    if (stream_stopped(s) || s->iterator == NULL) {
        /* Others may wait in line to pull: let the next one see it too. */
        stream_wake_first(s, &s->pull_line);
        return 0;
    }
    if (!s->is_async) {
        self->item = PyIter_Next(s->iterator);
        if (self->item != NULL) {
            self->index = s->pulled++;
            return 1;
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
        return 0;
    }
    if (s->pulling) {
        PyObject *future = stream_wait_in(s, &s->pull_line);
        if (future == NULL) {
            return -1;
        }
        yield_future(self, future, W_PULL_LINE, result);
        return 2;
    }
    PyTypeObject *tp = Py_TYPE(s->iterator);
    if (tp->tp_as_async == NULL || tp->tp_as_async->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "%R is not an async iterator",
                     s->iterator);
        return -1;
    }
    PyObject *awaitable = tp->tp_as_async->am_anext(s->iterator);
    if (awaitable == NULL) {
        return -1;
    }
    self->pull_iter = iterator_of(wstate(self), awaitable);
    Py_DECREF(awaitable);
    if (self->pull_iter == NULL) {
        return -1;
    }
    s->pulling = 1;
    self->state = W_PULLING;
    return 3;   /* the caller drives the first step */
}

/* The end of an async pull: 1 with an item, 0 none, -1 error (ours). */
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
        return 1;
    }
    if (error == NULL) {
        PyErr_SetString(PyExc_SystemError, "async source failed silently");
        return -1;
    }
    if (PyErr_GivenExceptionMatches(error, PyExc_StopAsyncIteration)) {
        Py_DECREF(error);
        s->exhausted = 1;
        stream_wake_consumer(s);
        return 0;
    }
    if (is_cancelled_error(wstate(self), error)) {
        PyErr_SetRaisedException(error);
        return -1;
    }
    stream_fail(s, error, self->task);   /* the source itself failed */
    Py_DECREF(error);
    return 0;
}

static PySendResult
worker_step(PyObject *op, PyObject *value, PyObject *exc, PyObject **result)
{
    WorkerObject *self = (WorkerObject *)op;
    StreamObject *s = self->stream;
    ModuleState *st = wstate(self);
    PySendResult status;
    int got;

    switch (self->state) {
    case W_DONE:
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    case W_START:
    case W_ROOM:
    case W_PULL_LINE:
        Py_CLEAR(self->waiting_on);
        if (exc != NULL) {
            goto raise_thrown;
        }
        if (self->state == W_PULL_LINE) {
            self->state = W_START;
            goto pull;
        }
        self->state = W_START;
        break;
    case W_TOKENS:
        if (exc != NULL) {
            goto raise_thrown;
        }
        got = claim_resume(&self->claim, s->loop);
        if (got < 0) {
            goto error;
        }
        if (got == 0) {
            goto wait_tokens;
        }
        self->state = W_START;
        goto pull;
    case W_PULLING:
        status = drive_iterator(st, self->pull_iter, value, exc, result);
        if (status == PYGEN_NEXT) {
            return status;
        }
        got = pull_done(self, status, status == PYGEN_RETURN ? *result : NULL);
        if (got < 0) {
            goto error;
        }
        if (got == 0) {
            release_tokens(self);
            break;
        }
        goto run;
    case W_GIVEN:
        Py_CLEAR(self->waiting_on);
        if (exc != NULL) {
            goto raise_thrown;
        }
        {
            PyObject *given = Py_NewRef(self->given);
            int failed = finish_item(self, given, NULL, 1) < 0;
            Py_DECREF(given);
            if (failed) {
                goto error;
            }
        }
        break;
    case W_RUN:
        goto drive;
    }

    /* The loop: one item per turn. */
    for (;;) {
        if (stream_stopped(s)) {
            worker_end(self);
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        if (s->limit > 0 && stream_buffered(s) >= s->limit) {
            PyObject *future = stream_wait_in(s, &s->room);
            if (future == NULL) {
                goto error;
            }
            return yield_future(self, future, W_ROOM, result);
        }
        got = claim_try_take(&self->claim, s->loop);
        if (got < 0) {
            PyObject *error = PyErr_GetRaisedException();
            stream_fail(s, error, self->task);
            Py_DECREF(error);
            continue;
        }
        if (got == 0) {
wait_tokens:
            if (mark_blocking(st, self->claim.waiter) < 0) {
                goto error;
            }
            self->state = W_TOKENS;
            *result = Py_NewRef(self->claim.waiter);
            return PYGEN_NEXT;
        }
pull:
        got = pull(self, result);
        if (got < 0) {
            goto error;
        }
        if (got == 2) {
            return PYGEN_NEXT;
        }
        if (got == 3) {
            value = Py_None;
            exc = NULL;
            status = drive_iterator(st, self->pull_iter, value, exc, result);
            if (status == PYGEN_NEXT) {
                return status;
            }
            got = pull_done(self, status,
                            status == PYGEN_RETURN ? *result : NULL);
            if (got < 0) {
                goto error;
            }
        }
        if (got == 0) {
            release_tokens(self);
            continue;
        }
run:
        if (s->limit == 0 && !stream_stopped(s) && stream_add_worker(s) < 0) {
            goto error;
        }
        status = start_item(self, result);
        if (status == PYGEN_ERROR) {
            goto error;
        }
        if (status == PYGEN_RETURN) {
            continue;         /* delivered or failed already */
        }
        if (self->state == W_GIVEN) {
            return PYGEN_NEXT;
        }
        status = run_in_context(self, Py_None, NULL, 1, result);
        goto stepped;
drive:
        status = run_in_context(self, value, exc, 0, result);
stepped:
        if (status == PYGEN_NEXT) {
            return status;
        }
        if (status == PYGEN_RETURN) {
            PyObject *item_value = *result;
            int failed = finish_item(self, item_value, NULL, 0) < 0;
            Py_DECREF(item_value);
            if (failed) {
                goto error;
            }
            continue;
        }
        {
            PyObject *error = PyErr_GetRaisedException();
            if (is_ours(self, error)) {
                PyErr_SetRaisedException(error);
                goto error;
            }
            if (is_interrupt(error)) {
                stream_fail(s, error, self->task);
                PyErr_SetRaisedException(error);
                goto error;
            }
            int failed = finish_item(self, NULL, error, 0) < 0;
            Py_DECREF(error);
            if (failed) {
                goto error;
            }
        }
    }

raise_thrown:
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
error:
    {
        /* A failure of the worker itself (a limiter's, the loop's) is the
         * stream's: the consumer raises it. Only the stream's own
         * cancellation and KeyboardInterrupt or SystemExit end the task
         * with an error. */
        PyObject *error = PyErr_GetRaisedException();
        if (!is_cancelled_error(st, error) && !is_interrupt(error)) {
            stream_fail(s, error, self->task);
            Py_DECREF(error);
            worker_end(self);
            *result = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        if (is_interrupt(error) && self->task != NULL) {
            retrieve_later(self);
        }
        PyErr_SetRaisedException(error);
    }
    worker_end(self);
    return PYGEN_ERROR;
}

STEP_PROTOCOL(worker, worker_step)

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
