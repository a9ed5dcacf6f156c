/* Spawn: what BoundedTaskGroup.spawn() returns.
 *
 * Awaiting it takes one token of each of the group's limiters, queueing in
 * FIFO order where one is busy (the claim, as ClaimWait takes it), then
 * starts the child task and returns it: the tokens move into the child.
 * If it fails on the way (cancelled, the group aborting, a bad loop) it
 * gives back every token and closes the user's coroutine. Nothing is taken
 * before it is first awaited. While it waits it is listed in the group's
 * `pending`, which the group's abort goes through.
 */
#include "group/group.h"

typedef struct {
    PyObject_HEAD
    ModuleState *state;
    Claim claim;
    PyObject *loop;
    GroupObject *group;
    PyObject *target;
    PyObject *iterator;
    PyObject *kwargs;       /* for the loop's create_task, or NULL */
    char started;
    char finished;
    char pending;           /* listed in group->pending */
} SpawnObject;

#define Spawn_CAST(op) ((SpawnObject *)(op))

PyObject *
spawn_new(GroupObject *group, PyObject *target, Claim *claim,
          PyObject *kwargs)
{
    ModuleState *state = group->state;
    SpawnObject *self = (SpawnObject *)freelist_new(&state->spawn_freelist,
                                                    state->spawn_type);
    if (self == NULL) {
        return NULL;
    }
    self->state = state;
    self->claim = *claim;                   /* moved in */
    memset(claim, 0, sizeof(*claim));
    self->loop = NULL;
    self->group = (GroupObject *)Py_NewRef((PyObject *)group);
    self->target = Py_NewRef(target);
    self->iterator = NULL;
    self->kwargs = Py_XNewRef(kwargs);
    self->started = 0;
    self->finished = 0;
    self->pending = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* The first step: checks, then takes what is free. 1 when all is held, 0
 * when waiting, -1 on error. */
static int
spawn_begin(SpawnObject *self)
{
    GroupObject *group = self->group;
    self->iterator = iterator_of(self->state, self->target);
    if (self->iterator == NULL
            || group_check_can_create(group, self->target, 1) < 0) {
        return -1;
    }
    self->loop = running_loop(self->state);
    if (self->loop == NULL) {
        return -1;
    }
    if (self->loop != group->loop) {
        return raise_group_error(group, "is bound to a different event loop");
    }
    int status = claim_try_take(&self->claim, self->loop);
    if (status == 0) {
        if (PyDict_SetItem(group->pending, (PyObject *)self, Py_None) < 0) {
            return -1;
        }
        self->pending = 1;
    }
    return status;
}

static void
spawn_leave_pending(SpawnObject *self)
{
    if (self->pending) {
        self->pending = 0;
        if (PyDict_DelItem(self->group->pending, (PyObject *)self) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
}

/* Gives everything back after an error, closes the coroutine that will
 * never run and lets the group's exit look again; keeps the error set. */
static void
spawn_fail(SpawnObject *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    self->finished = 1;
    if (claim_abandon(&self->claim) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    spawn_leave_pending(self);
    if (close_awaitable(self->state, self->target) < 0
            || group_wake_exit(self->group) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_SetRaisedException(exc);
}

Claim *
spawn_claim(PyObject *spawn)
{
    assert(Py_IS_TYPE(spawn, Spawn_CAST(spawn)->state->spawn_type));
    return &Spawn_CAST(spawn)->claim;
}

int
spawn_abort(PyObject *spawn, PyObject *error)
{
    assert(Py_IS_TYPE(spawn, Spawn_CAST(spawn)->state->spawn_type));
    return claim_abort(&Spawn_CAST(spawn)->claim, error);
}

static PyObject *
spawn_start_child(SpawnObject *self)
{
    self->finished = 1;
    spawn_leave_pending(self);
    /* The tokens move to the child with the claim. */
    Claim claim = self->claim;
    claim_init(&self->claim, claim.limiters);
    PyObject *task = group_start_child(self->group, self->target,
                                       self->iterator, &claim, 0,
                                       self->kwargs);
    claim_clear(&claim);
    return task;
}

static PySendResult
spawn_step(PyObject *op, PyObject *value, PyObject *exc, PyObject **result)
{
    SpawnObject *self = Spawn_CAST(op);
    if (self->finished) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited spawn()");
        return PYGEN_ERROR;
    }
    if (exc != NULL) {
        self->started = 1;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        spawn_fail(self);
        return PYGEN_ERROR;
    }
    int status;
    if (!self->started) {
        self->started = 1;
        status = spawn_begin(self);
    }
    else {
        status = claim_resume(&self->claim, self->loop);
    }
    PyObject *waiter;
    status = claim_wait_for_next(self->state, &self->claim, self->loop, NULL,
                                 status, &waiter);
    if (status < 0) {
        spawn_fail(self);
        return PYGEN_ERROR;
    }
    if (status == 0) {
        *result = Py_NewRef(waiter);
        return PYGEN_NEXT;
    }
    *result = spawn_start_child(self);
    return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

STEP_PROTOCOL(spawn_am_send, spawn_send, spawn_throw, spawn_iternext,
              spawn_step)

static PyObject *
spawn_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    SpawnObject *self = Spawn_CAST(op);
    if (!self->finished) {
        self->started = 1;
        PyErr_SetNone(PyExc_GeneratorExit);
        spawn_fail(self);
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static void
spawn_finalize(PyObject *op)
{
    SpawnObject *self = Spawn_CAST(op);
    if (self->finished || self->claim.limiters == NULL) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (!self->started) {
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                             "spawn() of %R was never awaited",
                             self->target) < 0) {
            PyErr_WriteUnraisable(op);
        }
    }
    PyObject *res = spawn_close(op, NULL);
    Py_XDECREF(res);
    PyErr_SetRaisedException(exc);
}

static int
spawn_traverse(PyObject *op, visitproc visit, void *arg)
{
    SpawnObject *self = Spawn_CAST(op);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->group);
    Py_VISIT(self->target);
    Py_VISIT(self->iterator);
    Py_VISIT(self->kwargs);
    return claim_traverse(&self->claim, visit, arg);
}

static int
spawn_clear(PyObject *op)
{
    SpawnObject *self = Spawn_CAST(op);
    claim_clear(&self->claim);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->group);
    Py_CLEAR(self->target);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->kwargs);
    return 0;
}

static void
spawn_dealloc(PyObject *op)
{
    SpawnObject *self = Spawn_CAST(op);
    PyTypeObject *tp = Py_TYPE(self);
    ModuleState *state = self->state;
    /* As for a child: a finished spawn has nothing to finalize. */
    if (!self->finished && PyObject_CallFinalizerFromDealloc(op) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    (void)spawn_clear(op);
    if (!freelist_keep(&state->spawn_freelist, state->spawn_type, op)) {
        PyObject_GC_Del(self);
    }
    Py_DECREF(tp);
}

static PyMethodDef spawn_methods[] = {
    {"send", (PyCFunction)spawn_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))spawn_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)spawn_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot spawn_slots[] = {
    {Py_tp_doc, "A spawn() in progress: the child's tokens, then its task."},
    {Py_tp_dealloc, spawn_dealloc},
    {Py_tp_finalize, spawn_finalize},
    {Py_tp_traverse, spawn_traverse},
    {Py_tp_clear, spawn_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, spawn_iternext},
    {Py_tp_methods, spawn_methods},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, spawn_am_send},
    {0, NULL},
};

PyType_Spec spawn_spec = {
    .name = "taskbound._taskbound.Spawn",
    .basicsize = sizeof(SpawnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = spawn_slots,
};
