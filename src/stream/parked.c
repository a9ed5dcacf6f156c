/* ParkedItem: with per-item limiters or costs, an item pulled whose tokens
 * were not all free. No worker waits for it: it is the done callback of
 * its claim's waiter, carries the claim on as each limiter hands its
 * tokens, and once all is held waits in the stream's runnable line for the
 * next free worker (which takes its item and claim over). So one busy key
 * holds no worker, and the others' items go past it.
 */
#include "stream/stream.h"

#define ParkedItem_CAST(op) ((ParkedItemObject *)(op))

static int
wait_for_next_token(ParkedItemObject *self)
{
    ModuleState *st = self->stream->state;
    PyObject *res = call_method1(self->claim.waiter, st->str_add_done_callback,
                                 (PyObject *)self);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

int
stream_park(StreamObject *s, Py_ssize_t index, PyObject *item, Claim *claim)
{
    assert(claim->waiter != NULL);
    ParkedItemObject *self = PyObject_GC_New(ParkedItemObject,
                                             s->state->parked_item_type);
    if (self == NULL) {
        if (claim_abandon(claim) < 0) {
            PyErr_WriteUnraisable(NULL);
        }
        return -1;
    }
    self->stream = (StreamObject *)Py_NewRef((PyObject *)s);
    self->item = Py_NewRef(item);
    self->index = index;
    self->claim = *claim;              /* moved: the caller's is re-made */
    claim_init(claim, s->limiters);
    self->in_line = 0;
    PyObject_GC_Track(self);
    int failed = wait_for_next_token(self) < 0
                 || queue_push(&s->parked, (PyObject *)self) < 0;
    if (failed) {
        PyObject *error = PyErr_GetRaisedException();
        if (claim_abandon(&self->claim) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        Py_CLEAR(self->item);
        PyErr_SetRaisedException(error);
    }
    else {
        self->in_line = 1;
    }
    Py_DECREF(self);
    return failed ? -1 : 0;
}

static void
close_parked_item(ParkedItemObject *self)
{
    PyObject *item = self->item;
    self->item = NULL;
    if (item != NULL) {
        if (PyCoro_CheckExact(item)
                && close_awaitable(self->stream->state, item) < 0) {
            PyErr_WriteUnraisable(item);
        }
        Py_DECREF(item);
    }
}

void
stream_drop_parked(StreamObject *s)
{
    ASSERT_NO_ERROR();
    /* Both lines emptied before any code runs: an item's close may look
     * at the stream. */
    WaiterQueue lines[2] = {s->parked, s->runnable};
    memset(&s->parked, 0, sizeof(s->parked));
    memset(&s->runnable, 0, sizeof(s->runnable));
    for (size_t q = 0; q < 2; q++) {
        for (Py_ssize_t i = 0; i < lines[q].len; i++) {
            ParkedItemObject *self = ParkedItem_CAST(queue_at(&lines[q], i));
            self->in_line = 0;
            if (claim_abandon(&self->claim) < 0) {
                PyErr_WriteUnraisable((PyObject *)self);
            }
            close_parked_item(self);
        }
        queue_clear(&lines[q]);
    }
}

/* A waiter of the claim is done: take what it handed and go on. */
static PyObject *
parked_item_call(PyObject *op, PyObject *args, PyObject *kwds)
{
    ParkedItemObject *self = ParkedItem_CAST(op);
    StreamObject *s = self->stream;
    if (!self->in_line) {
        Py_RETURN_NONE;          /* dropped: the stream stopped */
    }
    int held = claim_resume(&self->claim, s->loop);
    if (held == 0 && wait_for_next_token(self) == 0) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self);             /* the line's reference goes */
    self->in_line = 0;
    (void)queue_remove(&s->parked, op);
    if (held == 1) {
        if (queue_push(&s->runnable, op) == 0) {
            self->in_line = 1;
            Py_DECREF(self);
            stream_wake_worker(s);
            Py_RETURN_NONE;
        }
    }
    /* A limiter's failure, as a worker's: the stream's. */
    PyObject *error = PyErr_GetRaisedException();
    if (claim_abandon(&self->claim) < 0) {
        PyErr_WriteUnraisable(op);
    }
    close_parked_item(self);
    stream_fail(s, error, NULL);
    Py_DECREF(error);
    Py_DECREF(self);
    Py_RETURN_NONE;
}

/* Collected while still holding tokens or a place in line (its stream
 * was never closed): they go back. */
static void
parked_item_finalize(PyObject *op)
{
    ParkedItemObject *self = ParkedItem_CAST(op);
    if (self->claim.limiters == NULL
            || (self->claim.held == 0 && self->claim.waiter == NULL)) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (claim_abandon(&self->claim) < 0) {
        PyErr_WriteUnraisable(op);
    }
    PyErr_SetRaisedException(exc);
}

static int
parked_item_traverse(PyObject *op, visitproc visit, void *arg)
{
    ParkedItemObject *self = ParkedItem_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->stream);
    Py_VISIT(self->item);
    return claim_traverse(&self->claim, visit, arg);
}

static int
parked_item_clear(PyObject *op)
{
    ParkedItemObject *self = ParkedItem_CAST(op);
    claim_clear(&self->claim);
    Py_CLEAR(self->item);
    Py_CLEAR(self->stream);
    return 0;
}

static void
parked_item_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0) {
        return;
    }
    PyObject_GC_UnTrack(op);
    (void)parked_item_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyType_Slot parked_item_slots[] = {
    {Py_tp_doc, "An item of a stream waiting for its own tokens."},
    {Py_tp_call, parked_item_call},
    {Py_tp_dealloc, parked_item_dealloc},
    {Py_tp_finalize, parked_item_finalize},
    {Py_tp_traverse, parked_item_traverse},
    {Py_tp_clear, parked_item_clear},
    {0, NULL},
};

PyType_Spec parked_item_spec = {
    .name = "taskbound._taskbound.ParkedItem",
    .basicsize = sizeof(ParkedItemObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = parked_item_slots,
};
