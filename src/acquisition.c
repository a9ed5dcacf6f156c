/* Acquisition: what Limiter.acquire() and BoundedTaskGroup.spawn() return.
 *
 * Awaiting it takes one token of each limiter of its claim, queueing in
 * FIFO order where a limiter is busy. For spawn() it then starts the child
 * task and returns it; if it fails on the way (cancelled, group aborting,
 * bad loop) it gives back every token and closes the user's coroutine.
 * Nothing is taken before it is first awaited.
 */
#include "taskbound.h"

PyObject *
acquisition_new(ModuleState *state, PyObject *limiters, GroupObject *group,
                PyObject *target, PyObject *kwargs)
{
    AcquisitionObject *self = (AcquisitionObject *)freelist_new(
        &state->acquisition_freelist, state->acquisition_type);
    if (self == NULL) {
        return NULL;
    }
    self->state = state;
    claim_init(&self->claim, limiters);
    self->loop = NULL;
    self->group = (GroupObject *)Py_XNewRef((PyObject *)group);
    self->target = Py_XNewRef(target);
    self->iterator = NULL;
    self->kwargs = Py_XNewRef(kwargs);
    self->started = 0;
    self->finished = 0;
    self->pending = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static ModuleState *
acq_state(AcquisitionObject *self)
{
    return self->state;
}

/* The first step: checks, then takes what is free. 1 when all is held, 0
 * when waiting, -1 on error. */
static int
acquisition_begin(AcquisitionObject *self)
{
    ModuleState *st = acq_state(self);
    GroupObject *group = self->group;
    if (group != NULL) {
        self->iterator = iterator_of(st, self->target);
        if (self->iterator == NULL) {
            return -1;
        }
        if (group_check_can_create(group, self->target, 1) < 0) {
            return -1;
        }
    }
    self->loop = running_loop(st);
    if (self->loop == NULL) {
        return -1;
    }
    if (group != NULL && self->loop != group->loop) {
        PyErr_Format(PyExc_RuntimeError,
                     "TaskGroup %R is bound to a different event loop",
                     group);
        return -1;
    }
    return claim_try_take(&self->claim, self->loop);
}

static void
acquisition_leave_pending(AcquisitionObject *self)
{
    if (self->pending) {
        self->pending = 0;
        if (PyDict_DelItem(self->group->pending, (PyObject *)self) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
}

/* Gives everything back after an error; keeps the error set. */
static void
acquisition_fail(AcquisitionObject *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    self->finished = 1;
    if (claim_abandon(&self->claim) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    if (self->group != NULL) {
        acquisition_leave_pending(self);
        if (close_awaitable(acq_state(self), self->target) < 0
                || group_wake_exit(self->group) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    PyErr_SetRaisedException(exc);
}

static PySendResult
acquisition_step(PyObject *op, PyObject *value, PyObject *exc,
                 PyObject **result)
{
    AcquisitionObject *self = (AcquisitionObject *)op;
    int status;
    if (self->finished) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited acquisition");
        return PYGEN_ERROR;
    }
    if (exc != NULL) {
        self->started = 1;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        acquisition_fail(self);
        return PYGEN_ERROR;
    }
    if (!self->started) {
        self->started = 1;
        status = acquisition_begin(self);
        if (status == 0 && self->group != NULL) {
            if (PyDict_SetItem(self->group->pending, op, Py_None) < 0) {
                status = -1;
            }
            else {
                self->pending = 1;
            }
        }
    }
    else {
        status = claim_resume(&self->claim, self->loop);
    }
    while (status == 0) {
        /* A wait that would complete a deadlock fails at once, without a
         * trip through the loop (as awaiting a done future does). */
        TokenSource *busy = LIMITER_AT(&self->claim, self->claim.held);
        if (limiter_may_deadlock(busy)) {
            deadlock_on_block(acq_state(self), busy, self->claim.waiter);
            int done = call_method_bool(self->claim.waiter,
                                        acq_state(self)->str_done);
            if (done != 0) {
                status = done < 0 ? -1
                    : claim_resume(&self->claim, self->loop);
                continue;
            }
        }
        if (mark_blocking(acq_state(self), self->claim.waiter) < 0) {
            acquisition_fail(self);
            return PYGEN_ERROR;
        }
        *result = Py_NewRef(self->claim.waiter);
        return PYGEN_NEXT;
    }
    if (status < 0) {
        acquisition_fail(self);
        return PYGEN_ERROR;
    }
    self->finished = 1;
    if (self->group == NULL) {
        /* acquire(): the current task holds the tokens from now on. */
        for (Py_ssize_t i = 0; i < self->claim.held; i++) {
            op_note_holder(LIMITER_AT(&self->claim, i), self->loop);
        }
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    acquisition_leave_pending(self);
    /* The tokens move to the child with the claim. */
    Claim claim = self->claim;
    claim_init(&self->claim, claim.limiters);
    *result = group_start_child(self->group, self->target, self->iterator,
                                &claim, 0, self->kwargs);
    claim_clear(&claim);
    return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

STEP_PROTOCOL(acquisition_am_send, acquisition_send, acquisition_throw,
              acquisition_iternext, acquisition_step)

static PyObject *
acquisition_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    AcquisitionObject *self = (AcquisitionObject *)op;
    if (!self->finished) {
        self->started = 1;
        PyErr_SetNone(PyExc_GeneratorExit);
        acquisition_fail(self);
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static void
acquisition_finalize(PyObject *op)
{
    AcquisitionObject *self = (AcquisitionObject *)op;
    if (self->finished || self->claim.limiters == NULL) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (!self->started && self->group != NULL) {
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                             "spawn() of %R was never awaited",
                             self->target) < 0) {
            PyErr_WriteUnraisable(op);
        }
    }
    PyObject *res = acquisition_close(op, NULL);
    Py_XDECREF(res);
    PyErr_SetRaisedException(exc);
}

static int
acquisition_traverse(AcquisitionObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->group);
    Py_VISIT(self->target);
    Py_VISIT(self->iterator);
    Py_VISIT(self->kwargs);
    return claim_traverse(&self->claim, visit, arg);
}

static int
acquisition_clear(AcquisitionObject *self)
{
    claim_clear(&self->claim);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->group);
    Py_CLEAR(self->target);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->kwargs);
    return 0;
}

static void
acquisition_dealloc(AcquisitionObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    ModuleState *state = self->state;
    /* As for a child: a finished acquisition has nothing to finalize. */
    if (!self->finished
            && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    (void)acquisition_clear(self);
    if (!freelist_keep(&state->acquisition_freelist, state->acquisition_type,
                       (PyObject *)self)) {
        PyObject_GC_Del(self);
    }
    Py_DECREF(tp);
}

static PyMethodDef acquisition_methods[] = {
    {"send", (PyCFunction)acquisition_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))acquisition_throw, METH_FASTCALL,
     NULL},
    {"close", (PyCFunction)acquisition_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot acquisition_slots[] = {
    {Py_tp_doc, "An acquisition of tokens in progress (from acquire() or "
                "spawn())."},
    {Py_tp_dealloc, acquisition_dealloc},
    {Py_tp_finalize, acquisition_finalize},
    {Py_tp_traverse, acquisition_traverse},
    {Py_tp_clear, acquisition_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, acquisition_iternext},
    {Py_tp_methods, acquisition_methods},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, acquisition_am_send},
    {0, NULL},
};

PyType_Spec acquisition_spec = {
    .name = "taskbound._taskbound.Acquisition",
    .basicsize = sizeof(AcquisitionObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = acquisition_slots,
};
