/* Child: the coroutine a group's Task runs in place of the user's.
 *
 * It waits for the tokens if it was created without them (create_task()),
 * drives the user's coroutine or awaitable, and returns the tokens inside
 * the task's own last step, however the task ends: that saves the extra
 * trip through the event loop that a done callback per task would cost.
 * It passes the user coroutine's name, code and frame through, so that the
 * task's repr, stack and call graph read as if it ran the user's coroutine
 * itself; while it waits for its tokens, they show that wait instead.
 */
#include "group/group.h"

ChildObject *
child_new(GroupObject *group, PyObject *target, PyObject *iterator,
          Claim *claim, int waiting)
{
    ModuleState *state = group->state;
    ChildObject *self = (ChildObject *)freelist_new(&state->child_freelist,
                                                    state->child_type);
    if (self == NULL) {
        return NULL;
    }
    self->group = (GroupObject *)Py_NewRef((PyObject *)group);
    self->target = Py_NewRef(target);
    self->iterator = Py_NewRef(iterator);
    self->claim = *claim;                   /* moved in */
    memset(claim, 0, sizeof(*claim));
    self->task = NULL;
    self->stand_in = NULL;
    self->prev = self->next = NULL;
    self->waiting = (char)waiting;
    self->finished = 0;
    self->failed = 0;
    self->linked = 0;
    state->children_alive++;
    PyObject_GC_Track(self);
    return self;
}

static ModuleState *
child_state(ChildObject *self)
{
    return self->group->state;
}

/* Called with an error set: closes what never ran and tells the group,
 * keeping the error. */
static void
child_fail(ChildObject *self)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (close_awaitable(child_state(self), self->iterator) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    group_child_finished(self->group, self, exc);
    PyErr_SetRaisedException(exc);
}

/* How many tokens of `source` this child's claim holds. */
static Py_ssize_t
claim_of_child_holds(ChildObject *self, TokenSource *source)
{
    if (self->finished || self->claim.limiters == NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < self->claim.held; i++) {
        if (LIMITER_AT(&self->claim, i) == source) {
            return claim_cost_at(&self->claim, i);
        }
    }
    return 0;
}

/* The Child a task runs (borrowed from *coro, a new reference the caller
 * drops), or NULL when it runs something else or cannot say. */
static ChildObject *
child_of_task(ModuleState *st, PyObject *task, PyObject **coro)
{
    *coro = call_method0(task, st->str_get_coro);
    if (*coro == NULL) {
        PyErr_Clear();  /* a task type of its own: not one of ours */
        return NULL;
    }
    return Py_IS_TYPE(*coro, st->child_type) ? (ChildObject *)*coro : NULL;
}

/* Whether the group's parent task may hold a token of `busy` (one of its
 * acquire()s, or a token of its own group's claim): only then can this
 * child's wait complete a deadlock, and only then is the detector asked,
 * so that a create_task() flood does not ask once per task. */
static int
parent_may_hold(GroupObject *group, TokenSource *busy)
{
    if (group->parent_task == NULL) {
        return 0;
    }
    if (limiter_has_holders(busy)) {
        return 1;
    }
    PyObject *coro;
    ChildObject *child = child_of_task(group->state, group->parent_task,
                                       &coro);
    int holds = child != NULL && claim_of_child_holds(child, busy);
    Py_XDECREF(coro);
    return holds;
}

int
group_task_may_deadlock(ModuleState *st, PyObject *task, TokenSource *busy)
{
    if (st->children_alive == 0) {
        return 0;   /* the task cannot be a child: no need to ask it */
    }
    PyObject *coro;
    ChildObject *child = child_of_task(st, task, &coro);
    /* A child that holds `busy` itself, or one whose group's exit waits
     * while the group's parent may hold it: what taskbound._deadlock's
     * on_block looks for. */
    int may = child != NULL
        && (claim_of_child_holds(child, busy)
            || (child->group != NULL && child->group->exiting
                && child->group->on_completed_fut != NULL
                && parent_may_hold(child->group, busy)));
    Py_XDECREF(coro);
    return may;
}

/* One step while waiting for tokens: 1 with a future to yield in *result,
 * 0 once every token is held, -1 on error (tokens given back). */
static int
child_wait_for_tokens(ChildObject *self, PyObject *exc, PyObject **result)
{
    Claim *claim = &self->claim;
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        goto fail;
    }
    for (;;) {
        PyObject *future = claim->waiter;
        int done = future_done(child_state(self), future);
        if (done < 0) {
            goto fail;
        }
        if (!done) {
            /* Once the group's exit waits for this child, the child's wait
             * may be what completes a deadlock; it then fails at once. */
            TokenSource *busy = LIMITER_AT(claim, claim->held);
            if (self->group->exiting && self->group->on_completed_fut != NULL
                    && limiter_may_deadlock(busy)
                    && parent_may_hold(self->group, busy)) {
                deadlock_on_block(child_state(self), busy, future);
                done = future_done(child_state(self), future);
                if (done < 0) {
                    goto fail;
                }
            }
        }
        if (!done) {
            if (mark_blocking(child_state(self), future) < 0) {
                goto fail;
            }
            *result = Py_NewRef(future);
            return 1;
        }
        int held = claim_resume(claim, self->group->loop);
        if (held < 0) {
            goto fail;
        }
        if (held) {
            self->waiting = 0;
            Py_CLEAR(self->stand_in);
            self->group->running++;
            return 0;
        }
    }
fail:
    {
        PyObject *error = PyErr_GetRaisedException();
        if (claim_abandon(claim) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        PyErr_SetRaisedException(error);
    }
    return -1;
}

static PySendResult
child_step(PyObject *op, PyObject *value, PyObject *exc, PyObject **result)
{
    ChildObject *self = (ChildObject *)op;
    if (self->finished) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (self->waiting) {
        int status = child_wait_for_tokens(self, exc, result);
        if (status != 0) {
            if (status < 0) {
                child_fail(self);
                return PYGEN_ERROR;
            }
            return PYGEN_NEXT;
        }
        value = Py_None;
        exc = NULL;
    }
    PySendResult status = drive_iterator(child_state(self), self->iterator,
                                         value, exc, result);
    if (status == PYGEN_NEXT) {
        return status;
    }
    if (status == PYGEN_RETURN) {
        group_child_finished(self->group, self, NULL);
    }
    else {
        PyObject *error = PyErr_GetRaisedException();
        group_child_finished(self->group, self, error);
        PyErr_SetRaisedException(error);
    }
    return status;
}

int
child_close(ChildObject *self)
{
    if (self->finished) {
        return 0;
    }
    if (self->waiting) {
        int status = claim_abandon(&self->claim);
        PyObject *exc = PyErr_GetRaisedException();
        if (close_awaitable(child_state(self), self->iterator) < 0) {
            status = -1;
            if (exc == NULL) {
                exc = PyErr_GetRaisedException();
            }
            else {
                PyErr_WriteUnraisable((PyObject *)self);
            }
        }
        group_child_finished(self->group, self, NULL);
        PyErr_SetRaisedException(exc);
        return status;
    }
    int status = close_awaitable(child_state(self), self->iterator);
    PyObject *exc = PyErr_GetRaisedException();
    group_child_finished(self->group, self, NULL);
    PyErr_SetRaisedException(exc);
    return status;
}

STEP_PROTOCOL(child_am_send, child_send, child_throw,
              child_iternext, child_step)

static PyObject *
child_close_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (child_close((ChildObject *)self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A task destroyed before its coroutine finished (its loop closed, say):
 * the tokens still go back and the user's coroutine is closed. */
static void
child_finalize(PyObject *op)
{
    ChildObject *self = (ChildObject *)op;
    if (self->finished || self->group == NULL) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    if (child_close(self) < 0) {
        PyErr_WriteUnraisable(op);
    }
    PyErr_SetRaisedException(exc);
}

static int
child_traverse(ChildObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->group);
    Py_VISIT(self->target);
    Py_VISIT(self->iterator);
    Py_VISIT(self->task);
    Py_VISIT(self->stand_in);
    return claim_traverse(&self->claim, visit, arg);
}

static int
child_clear(ChildObject *self)
{
    claim_clear(&self->claim);
    Py_CLEAR(self->task);
    Py_CLEAR(self->stand_in);
    Py_CLEAR(self->target);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->group);
    return 0;
}

static void
child_dealloc(ChildObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* A finished child has nothing to finalize; skipping the call leaves
     * it fit for the free list. */
    if (!self->finished
            && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    ModuleState *state = self->group != NULL ? self->group->state
                                             : state_of_type(tp);
    assert(state->children_alive > 0);
    state->children_alive--;
    PyObject_GC_UnTrack(self);
    (void)child_clear(self);
    if (!freelist_keep(&state->child_freelist, state->child_type,
                       (PyObject *)self)) {
        PyObject_GC_Del(self);
    }
    Py_DECREF(tp);
}

/* What asyncio reads to describe a task's coroutine (its repr, stack and
 * call graph): the user's coroutine's name always; its code, frame and what
 * it awaits once it runs, and before that the stand-in's, which shows the
 * wait for tokens instead of a coroutine that has not started. */
static PyObject *
described(ChildObject *self)
{
    if (!self->waiting || self->finished) {
        return self->target;
    }
    if (self->stand_in == NULL) {
        Claim *claim = &self->claim;
        self->stand_in = PyObject_CallOneArg(
            child_state(self)->waiting_stand_in,
            (PyObject *)LIMITER_AT(claim, claim->held));
    }
    return self->stand_in;
}

static PyObject *
forward(PyObject *target, const char *name, const char *fallback)
{
    if (target == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(target, name);
    if (value != NULL || fallback == NULL
            || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return value;
    }
    PyErr_Clear();
    return PyObject_GetAttrString(target, fallback);
}

static PyObject *
child_get_name(ChildObject *self, void *Py_UNUSED(closure))
{
    PyObject *name = forward(self->target, "__name__", NULL);
    if (name == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return PyType_GetName(Py_TYPE(self->target));
    }
    return name;
}

static PyObject *
child_get_qualname(ChildObject *self, void *Py_UNUSED(closure))
{
    PyObject *name = forward(self->target, "__qualname__", NULL);
    if (name == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return child_get_name(self, NULL);
    }
    return name;
}

static PyObject *
or_none(PyObject *value)
{
    if (value == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return value;
}

static PyObject *
child_get_code(ChildObject *self, void *Py_UNUSED(closure))
{
    return or_none(forward(described(self), "cr_code", "gi_code"));
}

static PyObject *
child_get_frame(ChildObject *self, void *Py_UNUSED(closure))
{
    return or_none(forward(described(self), "cr_frame", "gi_frame"));
}

static PyObject *
child_get_running(ChildObject *self, void *Py_UNUSED(closure))
{
    PyObject *value = forward(described(self), "cr_running", "gi_running");
    if (value == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    return value;
}

static PyObject *
child_get_await(ChildObject *self, void *Py_UNUSED(closure))
{
    return or_none(forward(described(self), "cr_await", "gi_yieldfrom"));
}

/* For deadlock detection: how many tokens of `limiter` this child holds. */
static PyObject *
child_holds(ChildObject *self, PyObject *limiter)
{
    return PyLong_FromSsize_t(
        claim_of_child_holds(self, (TokenSource *)limiter));
}

static PyObject *
child_get_group(ChildObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->group != NULL ? (PyObject *)self->group
                                         : Py_None);
}

static PyMethodDef child_methods[] = {
    {"_holds", (PyCFunction)child_holds, METH_O, NULL},
    {"send", (PyCFunction)child_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))child_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)child_close_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef child_getset[] = {
    {"__name__", (getter)child_get_name, NULL, NULL, NULL},
    {"__qualname__", (getter)child_get_qualname, NULL, NULL, NULL},
    {"cr_code", (getter)child_get_code, NULL, NULL, NULL},
    {"cr_frame", (getter)child_get_frame, NULL, NULL, NULL},
    {"cr_running", (getter)child_get_running, NULL, NULL, NULL},
    {"cr_await", (getter)child_get_await, NULL, NULL, NULL},
    {"_group", (getter)child_get_group, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot child_slots[] = {
    {Py_tp_doc, "The coroutine a BoundedTaskGroup task runs: it holds the "
                "task's tokens and drives the user's coroutine."},
    {Py_tp_dealloc, child_dealloc},
    {Py_tp_finalize, child_finalize},
    {Py_tp_traverse, child_traverse},
    {Py_tp_clear, child_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, child_iternext},
    {Py_tp_methods, child_methods},
    {Py_tp_getset, child_getset},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, child_am_send},
    {0, NULL},
};

PyType_Spec child_spec = {
    .name = "taskbound._taskbound.Child",
    .basicsize = sizeof(ChildObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = child_slots,
};
