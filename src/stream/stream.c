/* Stream: the engine of gather, as_completed and amap.
 *
 * `limit` worker tasks (worker.c) pull items from the source only when they
 * are free, run each inline in its own copy of the caller's context, and
 * deliver the values here, where the consumer (streamstep.c) takes them in
 * input or completion order. A worker does not pull while `limit` values
 * wait for the consumer, so a slow consumer holds the source back. The
 * Python reference (taskbound/_pycore/stream.py) states the same engine plainly.
 */
#include "stream/stream.h"

/* ---- the ordered buffer ---- */

static int
ring_put(SlotRing *r, Py_ssize_t offset, PyObject *value)
{
    if (offset >= r->cap) {
        Py_ssize_t cap = r->cap ? r->cap : 16;
        while (cap <= offset) {
            cap *= 2;
        }
        PyObject **slots = PyMem_New(PyObject *, cap);
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < cap; i++) {
            slots[i] = i < r->cap ? r->slots[(r->head + i) % r->cap] : NULL;
        }
        PyMem_Free(r->slots);
        r->slots = slots;
        r->head = 0;
        r->cap = cap;
    }
    PyObject **slot = &r->slots[(r->head + offset) % r->cap];
    Py_XSETREF(*slot, Py_NewRef(value));
    r->count++;
    return 0;
}

/* The value at the head (a new ref), or NULL if it is not there yet. */
static PyObject *
ring_take(SlotRing *r)
{
    if (r->count == 0 || r->slots[r->head] == NULL) {
        return NULL;
    }
    PyObject *value = r->slots[r->head];
    r->slots[r->head] = NULL;
    r->head = (r->head + 1) % r->cap;
    r->count--;
    return value;
}

void
ring_clear(SlotRing *r)
{
    PyObject **slots = r->slots;
    Py_ssize_t cap = r->cap;
    r->slots = NULL;
    r->head = r->cap = r->count = 0;
    for (Py_ssize_t i = 0; i < cap; i++) {
        Py_XDECREF(slots[i]);
    }
    PyMem_Free(slots);
}

Py_ssize_t
stream_buffered(StreamObject *s)
{
    return s->ordered ? s->done.count : s->ready.len;
}

int
stream_stopped(StreamObject *s)
{
    return s->exhausted || s->closed || s->error != NULL;
}

static void
wake(StreamObject *s, PyObject *future)
{
    if (future != NULL
            && set_result_if_pending(s->state, future, Py_None) < 0) {
        PyErr_WriteUnraisable((PyObject *)s);
    }
}

void
stream_wake_consumer(StreamObject *s)
{
    ASSERT_NO_ERROR();
    /* Woken once per wait: the consumer takes every value it finds. */
    PyObject *wakeup = s->wakeup;
    if (wakeup != NULL) {
        s->wakeup = NULL;
        wake(s, wakeup);
        Py_DECREF(wakeup);
    }
}

PyObject *
stream_wait_in(StreamObject *s, WaiterQueue *line)
{
    PyObject *future = call_method0(s->loop, s->state->str_create_future);
    if (future == NULL) {
        return NULL;
    }
    if (queue_push(line, future) < 0 || mark_blocking(s->state, future) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    return future;
}

/* Wakes the first live waiter of `line`. */
void
stream_wake_first(StreamObject *s, WaiterQueue *line)
{
    ASSERT_NO_ERROR();
    while (line->len > 0) {
        PyObject *future = queue_pop(line);
        int woken = set_result_if_pending(s->state, future, Py_None);
        Py_DECREF(future);
        if (woken < 0) {
            PyErr_WriteUnraisable((PyObject *)s);
        }
        if (woken != 0) {
            return;
        }
    }
}

void
stream_wake_worker(StreamObject *s)
{
    int finished = s->exhausted && s->parked.len == 0
                   && s->runnable.len == 0;
    if (!finished) {
        stream_wake_first(s, &s->room);
        return;
    }
    while (s->room.len > 0) {
        stream_wake_first(s, &s->room);
    }
}

int
stream_may_pull(StreamObject *s)
{
    /* Values waiting, items parked and pulls under way stay under limit:
     * with at most limit running, about 2 x limit pulled and not taken. */
    return !s->exhausted
           && (s->limit == 0
               || stream_buffered(s) + s->parked.len + s->runnable.len
                  + s->pulls < s->limit);
}

void
stream_cancel_workers(StreamObject *s, PyObject *spare)
{
    ASSERT_NO_ERROR();
    PyObject *tasks = PySequence_List(s->workers);
    if (tasks == NULL) {
        PyErr_WriteUnraisable((PyObject *)s);
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tasks); i++) {
        PyObject *task = PyList_GET_ITEM(tasks, i);
        if (task == spare) {
            continue;
        }
        /* Once only: a second cancel() would interrupt the item's own
         * cleanup from its first. */
        int cancelling = call_method_bool(task, s->state->str_cancelling);
        if (cancelling != 0) {
            if (cancelling < 0) {
                PyErr_WriteUnraisable((PyObject *)s);
            }
            continue;
        }
        PyObject *res = call_method0(task, s->state->str_cancel);
        if (res == NULL) {
            PyErr_WriteUnraisable((PyObject *)s);
        }
        Py_XDECREF(res);
    }
    Py_DECREF(tasks);
    stream_drop_parked(s);
}

void
stream_close_coroutines_in(StreamObject *s, PyObject *iterator)
{
    ASSERT_NO_ERROR();
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        if (PyCoro_CheckExact(item) && close_awaitable(s->state, item) < 0) {
            PyErr_WriteUnraisable(item);
        }
        Py_DECREF(item);
    }
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)s);
    }
}

void
stream_fail(StreamObject *s, PyObject *error, PyObject *current)
{
    ASSERT_NO_ERROR();
    if (s->error == NULL) {
        s->error = Py_NewRef(error);
    }
    stream_cancel_workers(s, current);
    stream_wake_consumer(s);
}

/* A done future holding a value or an error (for as_completed). */
static PyObject *
done_future(StreamObject *s, PyObject *value, PyObject *error)
{
    /* asyncio.Future(loop=loop) straight from C: what the loop's
     * create_future() does, without its Python frame per item, and with
     * one keyword dict for the stream rather than one per call. */
    if (s->future_kwargs == NULL) {
        s->future_kwargs = Py_BuildValue("{sO}", "loop", s->loop);
        if (s->future_kwargs == NULL) {
            return NULL;
        }
    }
    PyObject *no_args = PyTuple_New(0);
    if (no_args == NULL) {
        return NULL;
    }
    PyObject *future = PyObject_Call(s->state->future_type, no_args,
                                     s->future_kwargs);
    Py_DECREF(no_args);
    if (future == NULL) {
        return NULL;
    }
    PyObject *args[2] = {future, error != NULL ? error : value};
    PyObject *res = PyObject_Vectorcall(
        error != NULL ? s->state->future_set_exception
                      : s->state->future_set_result, args, 2, NULL);
    if (res == NULL) {
        Py_DECREF(future);
        return NULL;
    }
    Py_DECREF(res);
    return future;
}

int
stream_deliver(StreamObject *s, Py_ssize_t index, PyObject *value,
               PyObject *error, int given)
{
    if (s->closed) {
        return 0;
    }
    PyObject *item;
    if (s->as_futures) {
        /* A given Task or Future is handed on as it is; a coroutine's
         * outcome waits as (value, error) and becomes a done future when
         * the consumer takes it: a failed future made now and never taken
         * (the stream closed first) would log "exception was never
         * retrieved" for an error nobody was meant to see. */
        item = given ? Py_NewRef(value)
                     : PyTuple_Pack(2, error != NULL ? Py_None : value,
                                    error != NULL ? error : Py_None);
        if (item == NULL) {
            return -1;
        }
    }
    else if (error != NULL) {
        if (!s->return_exceptions) {
            stream_fail(s, error, NULL);
            return 0;
        }
        item = Py_NewRef(error);
    }
    else {
        item = Py_NewRef(value);
    }
    int status;
    if (s->ordered) {
        status = ring_put(&s->done, index - s->emitted, item);
    }
    else {
        status = queue_push(&s->ready, item);
    }
    Py_DECREF(item);
    if (!s->ordered || index == s->emitted) {
        stream_wake_consumer(s);   /* in order, only the next one helps */
    }
    return status;
}

PyObject *
stream_take(StreamObject *s)
{
    PyObject *value = NULL;
    if (s->ordered) {
        value = ring_take(&s->done);
        if (value == NULL) {
            return NULL;
        }
        s->emitted++;
    }
    else if (s->ready.len > 0) {
        value = queue_pop(&s->ready);
    }
    else {
        return NULL;
    }
    stream_wake_worker(s);   /* one value gone: one worker goes on */
    if (s->as_futures && PyTuple_CheckExact(value)) {
        PyObject *error = PyTuple_GET_ITEM(value, 1);
        PyObject *future = done_future(s, PyTuple_GET_ITEM(value, 0),
                                       error != Py_None ? error : NULL);
        Py_DECREF(value);
        return future;
    }
    return value;
}

int
stream_add_worker(StreamObject *s)
{
    PyObject *worker = worker_new(s);
    if (worker == NULL) {
        return -1;
    }
    /* Counted before create_task(), which may run the worker to its end
     * (an eager task factory) or fail: either way the worker's end counts
     * it out again. */
    s->live++;
    PyObject *task = NULL;
    PyObject *name = PyUnicode_FromFormat("%U worker %zd", s->name,
                                          ++s->workers_named);
    PyObject *kwnames = Py_BuildValue("(s)", "name");
    if (name != NULL && kwnames != NULL) {
        PyObject *args[3] = {s->loop, worker, name};
        task = PyObject_VectorcallMethod(
            s->state->str_create_task, args,
            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    }
    Py_XDECREF(name);
    Py_XDECREF(kwnames);
    if (task == NULL) {
        /* Never started: nothing to give back, and its close() cannot
         * fail; the loop's error is the one raised. */
        PyObject *error = PyErr_GetRaisedException();
        PyObject *res = call_method0(worker, s->state->str_close);
        if (res == NULL) {
            PyErr_WriteUnraisable(worker);
        }
        Py_XDECREF(res);
        Py_DECREF(worker);
        PyErr_SetRaisedException(error);
        return -1;
    }
    int status = worker_set_task(worker, task);
    if (status == 1) {
        status = PyDict_SetItem(s->workers, task, Py_None);
    }
    Py_DECREF(task);
    Py_DECREF(worker);
    return status < 0 ? -1 : 0;
}

static int
discard_worker(StreamObject *s, PyObject *task)
{
    int found = PyDict_Contains(s->workers, task);
    return found > 0 ? PyDict_DelItem(s->workers, task) : found;
}

void
stream_worker_finished(StreamObject *s, PyObject *task)
{
    s->live--;
    if (task != NULL && discard_worker(s, task) < 0) {
        PyErr_WriteUnraisable((PyObject *)s);
    }
    if (s->live == 0) {
        stream_wake_consumer(s);
        wake(s, s->workers_done);
    }
}

int
stream_start(StreamObject *s)
{
    s->started = 1;
    s->loop = running_loop(s->state);
    if (s->loop == NULL) {
        return -1;
    }
    PyTypeObject *tp = Py_TYPE(s->source);
    if (tp->tp_as_async != NULL && tp->tp_as_async->am_aiter != NULL) {
        s->is_async = 1;
        s->iterator = tp->tp_as_async->am_aiter(s->source);
    }
    else {
        s->iterator = PyObject_GetIter(s->source);
    }
    if (s->iterator == NULL) {
        return -1;
    }
    Py_ssize_t workers = s->limit > 0 ? s->limit : 1;
    for (Py_ssize_t i = 0; i < workers; i++) {
        if (stream_add_worker(s) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- the Python type ---- */

static PyObject *
stream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"source", "make", "limit", "limiter",
                             "ordered", "return_exceptions", "as_futures",
                             "strict_input", "name", "item_limiter",
                             "item_cost", NULL};
    PyObject *source, *make, *limit, *limiter, *name;
    PyObject *item_limiter, *item_cost;
    int ordered, return_exceptions, as_futures, strict_input;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "OO$OOppppUOO:Stream", kwlist, &source, &make,
            &limit, &limiter, &ordered, &return_exceptions,
            &as_futures, &strict_input, &name, &item_limiter, &item_cost)) {
        return NULL;
    }
    ModuleState *st = state_of_type(type);
    if (st == NULL) {
        return NULL;
    }
    Py_ssize_t bound = 0;
    if (limit != Py_None) {
        bound = PyLong_AsSsize_t(limit);
        if (bound == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    PyObject *limiters = sources_in_rank_order(st, NULL, limiter);
    if (limiters == NULL) {
        return NULL;
    }
    StreamObject *s = (StreamObject *)type->tp_alloc(type, 0);
    if (s == NULL) {
        Py_DECREF(limiters);
        return NULL;
    }
    s->state = st;
    s->source = Py_NewRef(source);
    s->make = Py_NewRef(make);
    s->limit = bound;
    s->limiters = limiters;
    s->item_limiter = Py_NewRef(item_limiter);
    s->item_cost = Py_NewRef(item_cost);
    s->claims_per_item = item_limiter != Py_None || item_cost != Py_None;
    s->ordered = (char)ordered;
    s->return_exceptions = (char)return_exceptions;
    s->as_futures = (char)as_futures;
    s->strict_input = (char)strict_input;
    s->name = Py_NewRef(name);
    s->context = PyContext_CopyCurrent();
    s->workers = PyDict_New();
    if (s->context == NULL || s->workers == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

static PyObject *
stream_next_method(StreamObject *self, PyObject *Py_UNUSED(ignored))
{
    return stream_step_new(self, STEP_NEXT);
}

static PyObject *
stream_collect_method(StreamObject *self, PyObject *Py_UNUSED(ignored))
{
    return stream_step_new(self, STEP_COLLECT);
}

static PyObject *
stream_aclose_method(StreamObject *self, PyObject *Py_UNUSED(ignored))
{
    return stream_step_new(self, STEP_CLOSE);
}

/* The iterator was dropped (a break): clean up in the background. */
static PyObject *
stream_finalize_method(StreamObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->started) {
        /* Dropped before its first step: what it was given never runs. */
        if (!self->closed && (PyList_Check(self->source)
                              || PyTuple_Check(self->source))) {
            PyObject *iterator = PyObject_GetIter(self->source);
            if (iterator == NULL) {
                return NULL;
            }
            stream_close_coroutines_in(self, iterator);
            Py_DECREF(iterator);
        }
        self->closed = 1;
        Py_RETURN_NONE;
    }
    if (self->loop == NULL || (self->closed && self->live == 0)) {
        Py_RETURN_NONE;
    }
    PyObject *closed = PyObject_CallMethod(self->loop, "is_closed", NULL);
    if (closed == NULL) {
        return NULL;
    }
    int is_closed = PyObject_IsTrue(closed);
    Py_DECREF(closed);
    if (is_closed != 0) {
        return is_closed < 0 ? NULL : Py_NewRef(Py_None);
    }
    /* The workers are cancelled now; a task awaits them and closes the
     * source. */
    self->closed = 1;
    stream_cancel_workers(self, NULL);
    PyObject *step = stream_step_new(self, STEP_CLOSE);
    if (step == NULL) {
        return NULL;
    }
    PyObject *task = call_method1(self->loop, self->state->str_create_task,
                                  step);
    Py_DECREF(step);
    Py_XDECREF(task);
    return task == NULL ? NULL : Py_NewRef(Py_None);
}

static int
stream_traverse(StreamObject *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->source);
    Py_VISIT(s->iterator);
    Py_VISIT(s->make);
    Py_VISIT(s->limiters);
    Py_VISIT(s->item_limiter);
    Py_VISIT(s->item_cost);
    Py_VISIT(s->context);
    Py_VISIT(s->loop);
    Py_VISIT(s->future_kwargs);
    Py_VISIT(s->workers);
    for (Py_ssize_t i = 0; i < s->done.cap; i++) {
        Py_VISIT(s->done.slots[i]);
    }
    Py_VISIT(s->wakeup);
    Py_VISIT(s->workers_done);
    Py_VISIT(s->error);
    Py_VISIT(s->name);
    WaiterQueue *queues[] = {&s->ready, &s->room, &s->pull_line, &s->parked,
                             &s->runnable};
    for (size_t q = 0; q < sizeof(queues) / sizeof(*queues); q++) {
        for (Py_ssize_t i = 0; i < queues[q]->len; i++) {
            Py_VISIT(queue_at(queues[q], i));
        }
    }
    return 0;
}

static int
stream_clear(StreamObject *s)
{
    Py_CLEAR(s->source);
    Py_CLEAR(s->iterator);
    Py_CLEAR(s->make);
    Py_CLEAR(s->limiters);
    Py_CLEAR(s->item_limiter);
    Py_CLEAR(s->item_cost);
    Py_CLEAR(s->context);
    Py_CLEAR(s->loop);
    Py_CLEAR(s->future_kwargs);
    Py_CLEAR(s->workers);
    ring_clear(&s->done);
    Py_CLEAR(s->wakeup);
    Py_CLEAR(s->workers_done);
    Py_CLEAR(s->error);
    Py_CLEAR(s->name);
    queue_clear(&s->ready);
    queue_clear(&s->room);
    queue_clear(&s->pull_line);
    queue_clear(&s->parked);
    queue_clear(&s->runnable);
    return 0;
}

static void
stream_dealloc(StreamObject *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    (void)stream_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

static PyMethodDef stream_methods[] = {
    {"next", (PyCFunction)stream_next_method, METH_NOARGS,
     "Await the next value; StopAsyncIteration at the end."},
    {"collect", (PyCFunction)stream_collect_method, METH_NOARGS,
     "Await every value, in order, as a list."},
    {"aclose", (PyCFunction)stream_aclose_method, METH_NOARGS,
     "Cancel and await the workers, close the source."},
    {"finalize", (PyCFunction)stream_finalize_method, METH_NOARGS,
     "Clean up in the background (the iterator was dropped)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot stream_slots[] = {
    {Py_tp_doc, "The engine of gather, as_completed and amap."},
    {Py_tp_new, stream_new},
    {Py_tp_dealloc, stream_dealloc},
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_methods, stream_methods},
    {0, NULL},
};

PyType_Spec stream_spec = {
    .name = "taskbound._taskbound.Stream",
    .basicsize = sizeof(StreamObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = stream_slots,
};
