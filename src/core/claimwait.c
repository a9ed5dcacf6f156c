/* ClaimWait: what acquire() returns, and __aexit__ of a token source.
 *
 * Awaiting it takes the tokens of each source of its claim, queueing in
 * FIFO order where one is busy; the current task holds them from then on
 * (op_note_holder), until it calls release(). If it fails on the way
 * (cancelled, a deadlock, a bad loop) it gives back whatever it took.
 * Nothing is taken before it is first awaited.
 */
#include "core/core.h"

typedef struct {
    PyObject_HEAD
    ModuleState *state;
    Claim claim;
    PyObject *loop;
    PyObject *task;     /* the task awaiting it, once looked up, or NULL */
    char started;
    char finished;
} ClaimWaitObject;

PyObject *
claim_wait_new(ModuleState *state, PyObject *limiters, Py_ssize_t n)
{
    ClaimWaitObject *self = (ClaimWaitObject *)freelist_new(
        &state->claim_wait_freelist, state->claim_wait_type);
    if (self == NULL) {
        return NULL;
    }
    self->state = state;
    claim_init(&self->claim, limiters);
    assert(n == 1 || !PyTuple_CheckExact(limiters));
    self->claim.cost = n;
    self->loop = NULL;
    self->task = NULL;
    self->started = 0;
    self->finished = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

#define ClaimWait_CAST(op) ((ClaimWaitObject *)(op))

/* Gives everything back after an error; keeps the error set. */
static void
claim_wait_fail(ClaimWaitObject *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    self->finished = 1;
    if (claim_abandon(&self->claim) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_SetRaisedException(exc);
}

static int
claim_wait_begin(ClaimWaitObject *self)
{
    self->loop = running_loop(self->state);
    if (self->loop == NULL) {
        return -1;
    }
    return claim_try_take(&self->claim, self->loop);
}

static PySendResult
claim_wait_step(PyObject *op, PyObject *value, PyObject *exc,
                PyObject **result)
{
    ClaimWaitObject *self = ClaimWait_CAST(op);
    if (self->finished) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited acquisition");
        return PYGEN_ERROR;
    }
    if (exc != NULL) {
        self->started = 1;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        claim_wait_fail(self);
        return PYGEN_ERROR;
    }
    int status;
    if (!self->started) {
        self->started = 1;
        status = claim_wait_begin(self);
    }
    else {
        status = claim_resume(&self->claim, self->loop);
    }
    if (status == 0 && self->task == NULL) {
        /* Looked up once, for the deadlock check of each wait and for the
         * holders at the end. */
        self->task = current_task_of(self->state, self->loop);
        if (self->task == NULL) {
            status = -1;
        }
    }
    PyObject *waiter;
    status = claim_wait_for_next(self->state, &self->claim, self->loop,
                                 self->task, status, &waiter);
    if (status < 0) {
        claim_wait_fail(self);
        return PYGEN_ERROR;
    }
    if (status == 0) {
        *result = Py_NewRef(waiter);
        return PYGEN_NEXT;
    }
    self->finished = 1;
    PyObject *task = self->task != NULL
        ? Py_NewRef(self->task) : current_task_of(self->state, self->loop);
    for (Py_ssize_t i = 0; i < self->claim.held; i++) {
        op_note_holder(LIMITER_AT(&self->claim, i), task,
                       claim_cost_at(&self->claim, i));
    }
    Py_XDECREF(task);
    Py_CLEAR(self->task);
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

STEP_PROTOCOL(claim_wait_am_send, claim_wait_send, claim_wait_throw,
              claim_wait_iternext, claim_wait_step)

static PyObject *
claim_wait_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ClaimWaitObject *self = ClaimWait_CAST(op);
    if (!self->finished) {
        self->started = 1;
        PyErr_SetNone(PyExc_GeneratorExit);
        claim_wait_fail(self);
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static void
claim_wait_finalize(PyObject *op)
{
    ClaimWaitObject *self = ClaimWait_CAST(op);
    if (self->finished || self->claim.limiters == NULL) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *res = claim_wait_close(op, NULL);
    Py_XDECREF(res);
    PyErr_SetRaisedException(exc);
}

static int
claim_wait_traverse(PyObject *op, visitproc visit, void *arg)
{
    ClaimWaitObject *self = ClaimWait_CAST(op);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->task);
    return claim_traverse(&self->claim, visit, arg);
}

static int
claim_wait_clear(PyObject *op)
{
    ClaimWaitObject *self = ClaimWait_CAST(op);
    claim_clear(&self->claim);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->task);
    return 0;
}

static void
claim_wait_dealloc(PyObject *op)
{
    ClaimWaitObject *self = ClaimWait_CAST(op);
    PyTypeObject *tp = Py_TYPE(self);
    ModuleState *state = self->state;
    /* A finished wait has nothing to finalize. */
    if (!self->finished && PyObject_CallFinalizerFromDealloc(op) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    (void)claim_wait_clear(op);
    if (!freelist_keep(&state->claim_wait_freelist, state->claim_wait_type,
                       op)) {
        PyObject_GC_Del(self);
    }
    Py_DECREF(tp);
}

static PyMethodDef claim_wait_methods[] = {
    {"send", (PyCFunction)claim_wait_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))claim_wait_throw, METH_FASTCALL,
     NULL},
    {"close", (PyCFunction)claim_wait_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot claim_wait_slots[] = {
    {Py_tp_doc, "An acquire() of tokens in progress."},
    {Py_tp_dealloc, claim_wait_dealloc},
    {Py_tp_finalize, claim_wait_finalize},
    {Py_tp_traverse, claim_wait_traverse},
    {Py_tp_clear, claim_wait_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, claim_wait_iternext},
    {Py_tp_methods, claim_wait_methods},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, claim_wait_am_send},
    {0, NULL},
};

PyType_Spec claim_wait_spec = {
    .name = "taskbound._taskbound.ClaimWait",
    .basicsize = sizeof(ClaimWaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = claim_wait_slots,
};
