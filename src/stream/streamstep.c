/* StreamStep: the awaitable of Stream.next() and Stream.aclose().
 *
 * next() returns the next value, or closes the stream and then raises its
 * first error or StopAsyncIteration. Closing cancels the workers, waits
 * until every one has finished, closes the source (close() of a generator,
 * aclose() of an async generator, or the coroutines left in a list or
 * tuple) and drops what was never consumed.
 */
#include "stream/stream.h"

enum { S_START, S_WAITING, S_CLOSE_WORKERS, S_CLOSE_SOURCE, S_DONE };
enum { THEN_RETURN, THEN_RAISE_ERROR, THEN_STOP, THEN_RAISE_PENDING,
       THEN_RETURN_COLLECTED };

typedef struct {
    PyObject_HEAD
    StreamObject *stream;
    PyObject *waiting_on;
    PyObject *source_iter;   /* S_CLOSE_SOURCE: the source's aclose() */
    PyObject *pending;       /* THEN_RAISE_PENDING: what cancelled the wait */
    PyObject *ready;         /* returned at once, when set (__aenter__) */
    PyObject *collected;     /* STEP_COLLECT: every value, in order */
    char closing_only;
    char close_on_cancel;    /* __anext__: a cancelled wait closes first */
    char then;
    int phase;
} StreamStepObject;

/* Sets a new or emptied step up for `mode`; 0, or -1 with an error. */
static int
stream_step_init(StreamStepObject *self, int mode)
{
    self->closing_only = (char)(mode == STEP_CLOSE);
    self->close_on_cancel = (char)(mode == STEP_ANEXT || mode == STEP_COLLECT);
    if (mode == STEP_COLLECT && (self->collected = PyList_New(0)) == NULL) {
        return -1;
    }
    self->then = THEN_RETURN;
    self->phase = S_START;
    return 0;
}

PyObject *
stream_step_new(StreamObject *stream, int mode)
{
    ModuleState *state = stream->state;
    StreamStepObject *self = (StreamStepObject *)freelist_new(
        &state->stream_step_freelist, state->stream_step_type);
    if (self == NULL) {
        return NULL;
    }
    self->stream = (StreamObject *)Py_NewRef((PyObject *)stream);
    self->waiting_on = NULL;
    self->source_iter = NULL;
    self->pending = NULL;
    self->ready = NULL;
    self->collected = NULL;
    PyObject_GC_Track(self);
    if (stream_step_init(self, mode) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int stream_step_clear(StreamStepObject *self);
static void drop_spare_value(ModuleState *st);

PyObject *
stream_step_anew(PyObject *spare, StreamObject *stream)
{
    StreamStepObject *self = (StreamStepObject *)spare;
    if (self == NULL || !uniquely_referenced(spare)) {
        return stream_step_new(stream, STEP_ANEXT);
    }
    /* Only the iterator holds it: the last __anext__() is over. */
    drop_spare_value(stream->state);
    (void)stream_step_clear(self);
    self->stream = (StreamObject *)Py_NewRef((PyObject *)stream);
    (void)stream_step_init(self, STEP_ANEXT);
    return Py_NewRef(spare);
}

/* ---- the step, one function per place in it ----
 *
 * Each returns where the step goes next: another place, or GO_YIELD
 * (*result is the future to yield; self->phase is where it resumes),
 * GO_RETURN (*result is the value), GO_FINISH (the stream is closed:
 * finish() says what the step returns) or GO_FAIL (an error is set). */

enum {
    GO_NEXT_VALUE,    /* next(): a value, or the end */
    GO_CLOSE,         /* cancel the workers and wait until they end */
    GO_CLOSE_SOURCE,  /* then close the source */
    GO_YIELD,
    GO_RETURN,
    GO_FINISH,
    GO_FAIL,
};

/* What the step returns once the stream is closed. */
static PySendResult
finish(StreamStepObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    self->phase = S_DONE;
    queue_clear(&s->ready);
    ring_clear(&s->done);
    if (self->then == THEN_RAISE_ERROR) {
        PyErr_SetObject((PyObject *)Py_TYPE(s->error), s->error);
        return PYGEN_ERROR;
    }
    if (self->then == THEN_STOP) {
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return PYGEN_ERROR;
    }
    if (self->then == THEN_RETURN_COLLECTED) {
        *result = self->collected;
        self->collected = NULL;
        return PYGEN_RETURN;
    }
    if (self->then == THEN_RAISE_PENDING) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->pending), self->pending);
        Py_CLEAR(self->pending);
        return PYGEN_ERROR;
    }
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

/* One step of the source's aclose(). */
static int
drive_source_close(StreamStepObject *self, PyObject *value, PyObject *exc,
                   PyObject **result)
{
    PySendResult status = drive_iterator(self->stream->state,
                                         self->source_iter, value, exc,
                                         result);
    if (status == PYGEN_NEXT) {
        return GO_YIELD;
    }
    Py_CLEAR(self->source_iter);
    if (status == PYGEN_ERROR) {
        return GO_FAIL;
    }
    Py_CLEAR(*result);
    return GO_FINISH;
}

/* Closes the source's iterator (a reference taken): aclose() of an async
 * generator, close() of a generator, or the coroutines a list or tuple
 * still holds (never started). */
static int
close_iterator(StreamStepObject *self, PyObject *iterator, int sequence,
               PyObject **result)
{
    ModuleState *st = self->stream->state;
    PyObject *method;
    if (PyObject_GetOptionalAttr(iterator, st->str_aclose, &method) < 0) {
        Py_DECREF(iterator);
        return GO_FAIL;
    }
    if (method != NULL) {
        Py_DECREF(iterator);
        PyObject *awaitable = PyObject_CallNoArgs(method);
        Py_DECREF(method);
        if (awaitable == NULL) {
            return GO_FAIL;
        }
        self->source_iter = iterator_of(st, awaitable);
        Py_DECREF(awaitable);
        if (self->source_iter == NULL) {
            return GO_FAIL;
        }
        self->phase = S_CLOSE_SOURCE;
        return drive_source_close(self, Py_None, NULL, result);
    }
    if (PyObject_GetOptionalAttr(iterator, st->str_close, &method) < 0) {
        Py_DECREF(iterator);
        return GO_FAIL;
    }
    if (method != NULL) {
        PyObject *res = PyObject_CallNoArgs(method);
        Py_DECREF(method);
        Py_DECREF(iterator);
        Py_XDECREF(res);
        return res == NULL ? GO_FAIL : GO_FINISH;
    }
    if (sequence) {
        stream_close_coroutines_in(self->stream, iterator);
    }
    Py_DECREF(iterator);
    return GO_FINISH;
}

static int
go_close_source(StreamStepObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    PyObject *iterator = s->iterator;
    s->iterator = NULL;
    int sequence = PyList_Check(s->source) || PyTuple_Check(s->source);
    if (iterator != NULL) {
        return close_iterator(self, iterator, sequence, result);
    }
    if (sequence && !s->started) {
        /* Never started: every coroutine it holds is closed. */
        iterator = PyObject_GetIter(s->source);
        if (iterator == NULL) {
            return GO_FAIL;
        }
        stream_close_coroutines_in(s, iterator);
        Py_DECREF(iterator);
    }
    return GO_FINISH;
}

/* The future the closer waits on until the last worker has ended. */
static PyObject *
workers_done_future(StreamObject *s)
{
    ModuleState *st = s->state;
    if (s->workers_done != NULL) {
        int done = call_method_bool(s->workers_done, st->str_done);
        if (done == 0) {
            return s->workers_done;
        }
        if (done < 0) {
            /* Not a future that can be awaited: a new one replaces it. */
            PyErr_WriteUnraisable(s->workers_done);
        }
    }
    Py_XSETREF(s->workers_done, call_method0(s->loop, st->str_create_future));
    return s->workers_done;
}

static int
go_close(StreamStepObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    s->closed = 1;
    stream_cancel_workers(s, NULL);
    if (s->live == 0) {
        return GO_CLOSE_SOURCE;
    }
    PyObject *future = workers_done_future(s);
    if (future == NULL || mark_blocking(s->state, future) < 0) {
        return GO_FAIL;
    }
    Py_XSETREF(self->waiting_on, Py_NewRef(future));
    self->phase = S_CLOSE_WORKERS;
    *result = Py_NewRef(future);
    return GO_YIELD;
}

static int
go_next_value(StreamStepObject *self, PyObject **result)
{
    StreamObject *s = self->stream;
    if (s->error != NULL && !s->raised) {
        s->raised = 1;
        self->then = THEN_RAISE_ERROR;
        return GO_CLOSE;
    }
    PyObject *taken;
    while ((taken = stream_take(s)) != NULL) {
        if (self->collected == NULL) {
            *result = taken;
            return GO_RETURN;
        }
        int appended = PyList_Append(self->collected, taken);
        Py_DECREF(taken);
        if (appended < 0) {
            return GO_FAIL;
        }
    }
    if (PyErr_Occurred()) {
        return GO_FAIL;
    }
    if (s->closed || (s->exhausted && s->live == 0)) {
        self->then = self->collected != NULL ? THEN_RETURN_COLLECTED
                                             : THEN_STOP;
        return GO_CLOSE;
    }
    PyObject *future = call_method0(s->loop, s->state->str_create_future);
    if (future == NULL || mark_blocking(s->state, future) < 0) {
        Py_XDECREF(future);
        return GO_FAIL;
    }
    Py_XSETREF(s->wakeup, Py_NewRef(future));
    self->waiting_on = future;
    self->phase = S_WAITING;
    *result = Py_NewRef(future);
    return GO_YIELD;
}

static int
raise_thrown(PyObject *exc)
{
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    return GO_FAIL;
}

/* Where the step starts, or resumes with the value sent or the exception
 * thrown into it. */
static int
resume(StreamStepObject *self, PyObject *value, PyObject *exc,
       PyObject **result)
{
    StreamObject *s = self->stream;
    switch (self->phase) {
    case S_START:
        if (exc != NULL) {
            return raise_thrown(exc);
        }
        if (self->ready != NULL) {
            *result = Py_NewRef(self->ready);
            return GO_RETURN;
        }
        if (self->closing_only) {
            return GO_CLOSE;
        }
        if (!s->started && stream_start(s) < 0) {
            /* As any failure of the stream: the workers started already
             * are cancelled and awaited, the source closed, then it is
             * raised. */
            PyObject *error = PyErr_GetRaisedException();
            stream_fail(s, error, NULL);
            Py_DECREF(error);
        }
        return GO_NEXT_VALUE;
    case S_WAITING:
        if (s->wakeup == self->waiting_on) {
            Py_CLEAR(s->wakeup);
        }
        Py_CLEAR(self->waiting_on);
        if (exc != NULL && self->close_on_cancel
                && is_cancelled_error(s->state, exc)) {
            /* The consumer was cancelled: close, then let it know. */
            self->pending = Py_NewRef(exc);
            self->then = THEN_RAISE_PENDING;
            return GO_CLOSE;
        }
        return exc != NULL ? raise_thrown(exc) : GO_NEXT_VALUE;
    case S_CLOSE_WORKERS:
        Py_CLEAR(self->waiting_on);
        if (exc != NULL) {
            /* Cancelled while the workers end (asyncio.run() cancels
             * what is left): the source is closed all the same, then the
             * error raised. */
            Py_XSETREF(self->pending, Py_NewRef(exc));
            self->then = THEN_RAISE_PENDING;
            return GO_CLOSE_SOURCE;
        }
        return GO_CLOSE;    /* once more: a worker may have started since */
    default:
        assert(self->phase == S_CLOSE_SOURCE);
        return drive_source_close(self, value, exc, result);
    }
}

static PySendResult
stream_step(PyObject *op, PyObject *value, PyObject *exc, PyObject **result)
{
    StreamStepObject *self = (StreamStepObject *)op;
    if (self->phase == S_DONE) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    int go = resume(self, value, exc, result);
    for (;;) {
        switch (go) {
        case GO_NEXT_VALUE:
            go = go_next_value(self, result);
            break;
        case GO_CLOSE:
            go = go_close(self, result);
            break;
        case GO_CLOSE_SOURCE:
            go = go_close_source(self, result);
            break;
        case GO_YIELD:
            return PYGEN_NEXT;
        case GO_FINISH:
            return finish(self, result);
        case GO_RETURN:
            self->phase = S_DONE;
            return PYGEN_RETURN;
        default:
            assert(go == GO_FAIL && PyErr_Occurred());
            self->phase = S_DONE;
            return PYGEN_ERROR;
        }
    }
}

STEP_PROTOCOL_BUT_ITERNEXT(stream_step_am_send, stream_step_send,
                          stream_step_throw, stream_step)

/* Raises StopIteration(value). Since 3.12 an async for receives each value
 * from a C awaitable that way (through __next__, not am_send), and making
 * the exception was the largest cost per value; the one the consumer let
 * go last time is reused when nothing else holds it. */
static void
raise_stop_iteration(ModuleState *st, PyObject *value)
{
    PyObject *stop = st->spare_stop_iteration;
    if (stop != NULL && uniquely_referenced(stop)) {
        PyStopIterationObject *e = (PyStopIterationObject *)stop;
        PyObject *args = PyTuple_Pack(1, value);
        if (args == NULL) {
            return;
        }
        Py_SETREF(e->args, args);
        Py_XSETREF(e->value, Py_NewRef(value));
        Py_CLEAR(e->dict);
        Py_CLEAR(e->notes);
        Py_CLEAR(e->traceback);
        Py_CLEAR(e->context);
        Py_CLEAR(e->cause);
        e->suppress_context = 0;
        PyErr_SetRaisedException(Py_NewRef(stop));
        return;
    }
    /* Made first, so that a tuple is not taken for arguments. */
    stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (stop == NULL) {
        return;
    }
    if (Py_IS_TYPE(stop, (PyTypeObject *)PyExc_StopIteration)) {
        Py_XSETREF(st->spare_stop_iteration, Py_NewRef(stop));
    }
    PyErr_SetRaisedException(stop);
}

/* Lets go of the last value the spare StopIteration carried, once the
 * consumer has taken it: it must not outlive its use there. */
static void
drop_spare_value(ModuleState *st)
{
    PyObject *stop = st->spare_stop_iteration;
    if (stop != NULL && uniquely_referenced(stop)) {
        PyStopIterationObject *e = (PyStopIterationObject *)stop;
        if (e->value != Py_None) {
            Py_SETREF(e->value, Py_NewRef(Py_None));
            Py_CLEAR(e->args);
            e->args = PyTuple_New(0);  /* the empty tuple: cannot fail */
        }
    }
}

static PyObject *
stream_step_iternext(PyObject *op)
{
    StreamStepObject *self = (StreamStepObject *)op;
    PyObject *result = NULL;
    PySendResult status = stream_step(op, Py_None, NULL, &result);
    if (status != PYGEN_RETURN) {
        return status == PYGEN_NEXT ? result : NULL;
    }
    if (result != Py_None) {
        raise_stop_iteration(self->stream->state, result);
    }
    Py_DECREF(result);
    return NULL;
}

static PyObject *
stream_step_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ((StreamStepObject *)self)->phase = S_DONE;
    Py_RETURN_NONE;
}

static int
stream_step_traverse(StreamStepObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->stream);
    Py_VISIT(self->waiting_on);
    Py_VISIT(self->source_iter);
    Py_VISIT(self->pending);
    Py_VISIT(self->ready);
    Py_VISIT(self->collected);
    return 0;
}

static int
stream_step_clear(StreamStepObject *self)
{
    Py_CLEAR(self->stream);
    Py_CLEAR(self->waiting_on);
    Py_CLEAR(self->source_iter);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->collected);
    return 0;
}

static void
stream_step_dealloc(StreamStepObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    ModuleState *state = self->stream != NULL ? self->stream->state
                                              : state_of_type(tp);
    drop_spare_value(state);
    PyObject_GC_UnTrack(self);
    (void)stream_step_clear(self);
    if (!freelist_keep(&state->stream_step_freelist, state->stream_step_type,
                       (PyObject *)self)) {
        PyObject_GC_Del(self);
    }
    Py_DECREF(tp);
}

static PyMethodDef stream_step_methods[] = {
    {"send", (PyCFunction)stream_step_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))stream_step_throw, METH_FASTCALL,
     NULL},
    {"close", (PyCFunction)stream_step_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot stream_step_slots[] = {
    {Py_tp_doc, "The awaitable of Stream.next() and Stream.aclose()."},
    {Py_tp_dealloc, stream_step_dealloc},
    {Py_tp_traverse, stream_step_traverse},
    {Py_tp_clear, stream_step_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, stream_step_iternext},
    {Py_tp_methods, stream_step_methods},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, stream_step_am_send},
    {0, NULL},
};

PyType_Spec stream_step_spec = {
    .name = "taskbound._taskbound.StreamStep",
    .basicsize = sizeof(StreamStepObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = stream_step_slots,
};

PyObject *
stream_step_ready(StreamObject *stream, PyObject *value)
{
    StreamStepObject *self = (StreamStepObject *)stream_step_new(stream,
                                                                 STEP_NEXT);
    if (self != NULL) {
        self->ready = Py_NewRef(value);
    }
    return (PyObject *)self;
}
