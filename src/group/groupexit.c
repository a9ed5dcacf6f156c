/* GroupExit: the awaitable of BoundedTaskGroup.__aenter__ and __aexit__.
 *
 * The exit follows the running interpreter's asyncio.TaskGroup.__aexit__
 * line by line; where CPython releases differ (the parent's uncancel()
 * before or after the wait, a lone GeneratorExit raised bare), the module
 * state's copies of taskbound._compat choose, as the reference does.
 * cancel() behaves as 3.15.2's on every version (gh-155433 included).
 */
#include "group/group.h"

enum { START, CHECKPOINT, WAITING, DONE };

typedef struct {
    PyObject_HEAD
    GroupObject *group;
    PyObject *et, *exc;
    PyObject *propagate;     /* the CancelledError to re-raise, or NULL */
    PyObject *pending;       /* the last CancelledError of the wait */
    char entering;
    char uncancelled;        /* the parent's uncancel() is done */
    char phase;
} GroupExitObject;

PyObject *
group_exit_new(GroupObject *group, int entering, PyObject *et, PyObject *exc,
               PyObject *tb)
{
    GroupExitObject *self = PyObject_GC_New(GroupExitObject,
                                            group->state->group_exit_type);
    if (self == NULL) {
        return NULL;
    }
    self->group = (GroupObject *)Py_NewRef((PyObject *)group);
    self->et = (et == NULL || et == Py_None) ? NULL : Py_NewRef(et);
    self->exc = (exc == NULL || exc == Py_None) ? NULL : Py_NewRef(exc);
    self->propagate = NULL;
    self->pending = NULL;
    self->entering = (char)entering;
    self->uncancelled = 0;
    self->phase = START;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
is_cancelled_class(ModuleState *st, PyObject *et)
{
    return et != NULL && PyType_Check(et)
           && PyType_IsSubtype((PyTypeObject *)et,
                               (PyTypeObject *)st->cancelled_error);
}

/* Whether the body's error counts as a cancellation: a CancelledError
 * subclass from 3.13, only CancelledError itself before. */
static int
body_cancelled(GroupExitObject *self)
{
    ModuleState *st = self->group->state;
    return st->uncancel_after_wait ? is_cancelled_class(st, self->et)
                                   : self->et == st->cancelled_error;
}

static PyObject *
enter(GroupObject *group)
{
    ModuleState *st = group->state;
    if (group->entered) {
        (void)raise_group_error(group, "has already been entered");
        return NULL;
    }
    if (group->loop == NULL && (group->loop = running_loop(st)) == NULL) {
        return NULL;
    }
    PyObject *parent = PyObject_CallOneArg(st->current_task, group->loop);
    if (parent == NULL) {
        return NULL;
    }
    if (parent == Py_None) {
        Py_DECREF(parent);
        (void)raise_group_error(group, "cannot determine the parent task");
        return NULL;
    }
    Py_XSETREF(group->parent_task, parent);
    group->entered = 1;
    if (group->cancel_on_enter) {
        PyObject *res = PyObject_CallMethod((PyObject *)group, "cancel", NULL);
        if (res == NULL) {
            return NULL;
        }
        Py_DECREF(res);
    }
    return Py_NewRef((PyObject *)group);
}

/* parent.uncancel() (or, with `peek`, parent.cancelling()) in *remaining. */
static int
parent_count(GroupObject *group, int peek, Py_ssize_t *remaining)
{
    ModuleState *st = group->state;
    PyObject *res = call_method0(group->parent_task,
                                 peek ? st->str_cancelling : st->str_uncancel);
    if (res == NULL) {
        return -1;
    }
    *remaining = PyLong_AsSsize_t(res);
    Py_DECREF(res);
    return (*remaining == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Everything __aexit__ does before it waits for the children. */
static int
exit_begin(GroupExitObject *self)
{
    GroupObject *group = self->group;
    ModuleState *st = group->state;
    group->exiting = 1;
    if (self->exc != NULL && group->base_error == NULL
            && is_interrupt(self->exc)) {
        group->base_error = Py_NewRef(self->exc);
    }
    if (body_cancelled(self)) {
        self->propagate = Py_XNewRef(self->exc);
    }
    if (!st->uncancel_after_wait && group->parent_cancel_requested) {
        Py_ssize_t remaining;
        self->uncancelled = 1;
        if (parent_count(group, 0, &remaining) < 0) {
            return -1;
        }
        if (remaining == 0) {
            Py_CLEAR(self->propagate);
        }
    }
    if (self->et != NULL && !group->aborting && group_abort(group) < 0) {
        return -1;
    }
    return 0;
}

static int
has_errors(GroupObject *group)
{
    return group->errors != NULL && PyList_GET_SIZE(group->errors) > 0;
}

/* After the wait: the group undoes its own cancellation of the parent
 * (3.13+; before 3.13 at the start, and here only for one made since,
 * which without an error only cancel() makes); a cancellation that is not
 * the group's own and arrived while the exit waited is not dropped
 * (gh-155433). */
static int
settle_parent_cancel(GroupExitObject *self)
{
    GroupObject *group = self->group;
    if (!group->parent_cancel_requested) {
        return 0;
    }
    int undo = !self->uncancelled
               && (group->state->uncancel_after_wait || !has_errors(group));
    Py_ssize_t remaining;
    if (parent_count(group, !undo, &remaining) < 0) {
        return -1;
    }
    if (undo && remaining == 0) {
        Py_CLEAR(self->propagate);
    }
    else if (remaining > 0 && self->propagate == NULL) {
        self->propagate = Py_XNewRef(self->pending);
    }
    return 0;
}

/* Raises the group of errors, or a lone GeneratorExit from the body bare
 * (3.15). */
static void
raise_errors(GroupExitObject *self)
{
    GroupObject *group = self->group;
    PyObject *errors = group->errors;
    if (group->state->bare_generator_exit && self->exc != NULL
            && self->et != NULL && PyType_Check(self->et)
            && PyType_IsSubtype((PyTypeObject *)self->et,
                                (PyTypeObject *)PyExc_GeneratorExit)
            && PyList_GET_SIZE(errors) == 1) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->exc), self->exc);
        return;
    }
    PyObject *eg = PyObject_CallFunction(
        PyExc_BaseExceptionGroup, "sO", "unhandled errors in a TaskGroup",
        errors);
    if (eg == NULL) {
        return;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(eg), eg);
    Py_DECREF(eg);
    /* raise ... from None */
    PyObject *raised = PyErr_GetRaisedException();
    PyException_SetCause(raised, NULL);
    PyErr_SetRaisedException(raised);
}

/* Everything __aexit__ does once no child is left: sets *result (the
 * return value) or raises. */
static int
exit_end(GroupExitObject *self, PyObject **result)
{
    GroupObject *group = self->group;
    ModuleState *st = group->state;
    if (group->base_error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(group->base_error),
                        group->base_error);
        return -1;
    }
    if (settle_parent_cancel(self) < 0) {
        return -1;
    }
    if (self->propagate != NULL && !has_errors(group)) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->propagate), self->propagate);
        return -1;
    }
    if (self->et != NULL && !body_cancelled(self)) {
        if (group->errors == NULL
                && (group->errors = PyList_New(0)) == NULL) {
            return -1;
        }
        if (PyList_Append(group->errors, self->exc ? self->exc : Py_None) < 0) {
            return -1;
        }
    }
    if (!has_errors(group)) {
        /* The body's CancelledError came from cancel(): swallow it. */
        *result = Py_NewRef(is_cancelled_class(st, self->et)
                            && self->propagate == NULL ? Py_True : Py_None);
        return 0;
    }
    if (st->uncancel_after_wait) {
        /* A parent cancelled from outside is cancelled again, so that its
         * count stays where it was. */
        int cancelling = call_method_bool(group->parent_task,
                                          st->str_cancelling);
        if (cancelling < 0) {
            return -1;
        }
        if (cancelling) {
            Py_ssize_t remaining;
            if (parent_count(group, 0, &remaining) < 0) {
                return -1;
            }
            PyObject *res = call_method0(group->parent_task, st->str_cancel);
            if (res == NULL) {
                return -1;
            }
            Py_DECREF(res);
        }
    }
    raise_errors(self);
    return -1;
}

/* Once the exit is over, however it ends: the errors' tracebacks hold
 * frames that may hold the group, so it lets go of them and of its parent
 * task, and a raised group of errors keeps nothing alive until the cycle
 * collector runs. */
static void
exit_over(GroupExitObject *self)
{
    GroupObject *group = self->group;
    self->phase = DONE;
    if (!self->entering) {
        Py_CLEAR(group->parent_task);
        Py_CLEAR(group->errors);
        Py_CLEAR(group->base_error);
        group_drop_retired(group);
    }
    Py_CLEAR(self->et);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->propagate);
    Py_CLEAR(self->pending);
}

/* One step of the wait for the children: 1 with the future to yield in
 * *result, 0 once none is left, -1 on error. */
static int
wait_for_children(GroupExitObject *self, PyObject **result)
{
    GroupObject *group = self->group;
    ModuleState *st = group->state;
    /* The parent may be cancelled again while it waits, so loop. */
    if (group->children == 0 && PyDict_GET_SIZE(group->pending) == 0) {
        return 0;
    }
    if (group->on_completed_fut == NULL) {
        group->on_completed_fut = call_method0(group->loop,
                                               st->str_create_future);
        if (group->on_completed_fut == NULL) {
            return -1;
        }
        deadlock_on_exit_wait(st, (PyObject *)group, group->on_completed_fut);
    }
    if (mark_blocking(st, group->on_completed_fut) < 0) {
        return -1;
    }
    self->phase = WAITING;
    *result = Py_NewRef(group->on_completed_fut);
    return 1;
}

static PySendResult
group_exit_step(PyObject *op, PyObject *value, PyObject *exc,
                PyObject **result)
{
    GroupExitObject *self = (GroupExitObject *)op;
    GroupObject *group = self->group;
    ModuleState *st = group->state;
    switch (self->phase) {
    case DONE:
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    case START:
        if (exc != NULL) {
            goto raise_thrown;
        }
        if (self->entering) {
            exit_over(self);
            *result = enter(group);
            return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
        }
        if (exit_begin(self) < 0) {
            goto error;
        }
        if (!st->uncancel_after_wait && self->et == NULL
                && group->cancel_called && group->children == 0
                && PyDict_GET_SIZE(group->pending) == 0) {
            /* cancel() was called from the body, which then ended without
             * awaiting: its cancellation is still pending, and uncancel()
             * does not drop it before 3.13. A bare yield lets it arrive
             * here, where it is swallowed. (One the group made for a
             * child's error stays pending, as asyncio's does before 3.13.) */
            self->phase = CHECKPOINT;
            *result = Py_NewRef(Py_None);
            return PYGEN_NEXT;
        }
        break;
    case CHECKPOINT:
        if (exc != NULL && !is_cancelled_error(st, exc)) {
            goto raise_thrown;
        }
        break;
    case WAITING:
        Py_CLEAR(group->on_completed_fut);
        if (exc != NULL) {
            if (!is_cancelled_error(st, exc)) {
                goto raise_thrown;
            }
            Py_XSETREF(self->pending, Py_NewRef(exc));
            if (!group->aborting) {
                Py_XSETREF(self->propagate, Py_NewRef(exc));
                if (group_abort(group) < 0) {
                    goto error;
                }
            }
        }
        break;
    }
    int waiting = wait_for_children(self, result);
    if (waiting != 0) {
        if (waiting < 0) {
            goto error;
        }
        return PYGEN_NEXT;
    }
    int status = exit_end(self, result);
    exit_over(self);
    return status < 0 ? PYGEN_ERROR : PYGEN_RETURN;

raise_thrown:
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
error:
    exit_over(self);
    return PYGEN_ERROR;
}

STEP_PROTOCOL(group_exit_am_send, group_exit_send, group_exit_throw,
              group_exit_iternext, group_exit_step)

static PyObject *
group_exit_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    GroupExitObject *exit = (GroupExitObject *)self;
    if (exit->phase != DONE) {
        exit_over(exit);
    }
    Py_RETURN_NONE;
}

static int
group_exit_traverse(GroupExitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->group);
    Py_VISIT(self->et);
    Py_VISIT(self->exc);
    Py_VISIT(self->propagate);
    Py_VISIT(self->pending);
    return 0;
}

static int
group_exit_clear(GroupExitObject *self)
{
    Py_CLEAR(self->group);
    Py_CLEAR(self->et);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->propagate);
    Py_CLEAR(self->pending);
    return 0;
}

static void
group_exit_dealloc(GroupExitObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)group_exit_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyMethodDef group_exit_methods[] = {
    {"send", (PyCFunction)group_exit_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))group_exit_throw, METH_FASTCALL,
     NULL},
    {"close", (PyCFunction)group_exit_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot group_exit_slots[] = {
    {Py_tp_doc, "The awaitable of a BoundedTaskGroup's enter or exit."},
    {Py_tp_dealloc, group_exit_dealloc},
    {Py_tp_traverse, group_exit_traverse},
    {Py_tp_clear, group_exit_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, group_exit_iternext},
    {Py_tp_methods, group_exit_methods},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, group_exit_am_send},
    {0, NULL},
};

PyType_Spec group_exit_spec = {
    .name = "taskbound._taskbound.GroupExit",
    .basicsize = sizeof(GroupExitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = group_exit_slots,
};
