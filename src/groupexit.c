/* GroupExit: the awaitable of BoundedTaskGroup.__aenter__ and __aexit__.
 *
 * The exit follows the running interpreter's asyncio.TaskGroup.__aexit__
 * line by line (3.11 and 3.12 differ from 3.13 in where uncancel() happens
 * and in how errors meet an outside cancellation); the compile-time version
 * picks the variant, as the Python reference does at run time.
 */
#include "taskbound.h"

#define PY313 (PY_VERSION_HEX >= 0x030D0000)

enum { START, CHECKPOINT, WAITING, DONE };

typedef struct {
    PyObject_HEAD
    GroupObject *group;
    PyObject *et, *exc, *tb;
    PyObject *propagate;     /* the CancelledError to re-raise, or NULL */
    char entering;
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
    self->tb = Py_XNewRef(tb);
    self->propagate = NULL;
    self->entering = (char)entering;
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

static PyObject *
enter(GroupObject *group)
{
    ModuleState *st = group->state;
    if (group->entered) {
        PyObject *error = group_error(group, "has already been entered");
        if (error != NULL) {
            PyErr_SetObject(PyExc_RuntimeError, error);
            Py_DECREF(error);
        }
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
        PyObject *error = group_error(group,
                                      "cannot determine the parent task");
        if (error != NULL) {
            PyErr_SetObject(PyExc_RuntimeError, error);
            Py_DECREF(error);
        }
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

static int
uncancel_parent(GroupObject *group, Py_ssize_t *remaining)
{
    PyObject *res = call_method0(group->parent_task, group->state->str_uncancel);
    if (res == NULL) {
        return -1;
    }
    *remaining = PyLong_AsSsize_t(res);
    Py_DECREF(res);
    return (*remaining == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* The group cancelled its parent: it must uncancel it, and the body's
 * CancelledError is not propagated if no other cancellation is pending. */
static int
settle_parent_cancel(GroupExitObject *self)
{
    GroupObject *group = self->group;
    if (!group->parent_cancel_requested) {
        return 0;
    }
    Py_ssize_t remaining;
    if (uncancel_parent(group, &remaining) < 0) {
        return -1;
    }
    if (remaining == 0) {
        Py_CLEAR(self->propagate);
    }
    return 0;
}

/* Everything __aexit__ does before it waits for the children. */
static int
exit_begin(GroupExitObject *self)
{
    GroupObject *group = self->group;
    ModuleState *st = group->state;
    group->exiting = 1;
    if (self->exc != NULL && group->base_error == NULL
            && (PyErr_GivenExceptionMatches(self->exc, PyExc_KeyboardInterrupt)
                || PyErr_GivenExceptionMatches(self->exc, PyExc_SystemExit))) {
        group->base_error = Py_NewRef(self->exc);
    }
#if PY313
    if (is_cancelled_class(st, self->et)) {
        self->propagate = Py_XNewRef(self->exc);
    }
#else
    if (self->et == st->cancelled_error) {
        self->propagate = Py_XNewRef(self->exc);
    }
    if (settle_parent_cancel(self) < 0) {
        return -1;
    }
#endif
    if (self->et != NULL && !group->aborting && group_abort(group) < 0) {
        return -1;
    }
    return 0;
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
#if PY313
    if (settle_parent_cancel(self) < 0) {
        return -1;
    }
#endif
    int no_errors = group->errors == NULL || PyList_GET_SIZE(group->errors) == 0;
    if (self->propagate != NULL && no_errors) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->propagate), self->propagate);
        return -1;
    }
    if (self->et != NULL && !is_cancelled_class(st, self->et)) {
        if (group->errors == NULL
                && (group->errors = PyList_New(0)) == NULL) {
            return -1;
        }
        if (PyList_Append(group->errors, self->exc ? self->exc : Py_None) < 0) {
            return -1;
        }
        no_errors = 0;
    }
    if (no_errors) {
        /* The body's CancelledError came from cancel(): swallow it. */
        *result = PyBool_FromLong(is_cancelled_class(st, self->et)
                                  && self->propagate == NULL);
        if (*result == Py_False) {
            Py_SETREF(*result, Py_NewRef(Py_None));
        }
        return 0;
    }
#if PY313
    int cancelling = call_method_bool(group->parent_task,
                                      st->str_cancelling);
    if (cancelling < 0) {
        return -1;
    }
    if (cancelling) {
        Py_ssize_t remaining;
        if (uncancel_parent(group, &remaining) < 0) {
            return -1;
        }
        PyObject *res = call_method0(group->parent_task, st->str_cancel);
        if (res == NULL) {
            return -1;
        }
        Py_DECREF(res);
    }
#endif
    PyObject *errors = group->errors;
    group->errors = NULL;
    PyObject *eg = PyObject_CallFunction(
        PyExc_BaseExceptionGroup, "sO", "unhandled errors in a TaskGroup",
        errors);
    Py_DECREF(errors);
    if (eg == NULL) {
        return -1;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(eg), eg);
    /* raise ... from None */
    PyObject *raised = PyErr_GetRaisedException();
    PyException_SetCause(raised, NULL);
    PyErr_SetRaisedException(raised);
    Py_DECREF(eg);
    return -1;
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
            self->phase = DONE;
            *result = enter(group);
            return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
        }
        if (exit_begin(self) < 0) {
            goto error;
        }
        if (self->et == NULL && group->parent_cancel_requested
                && !(group->children > 0
                     || PyDict_GET_SIZE(group->pending) > 0)) {
            /* cancel() was called from the body, which then ended
             * without awaiting: its cancellation is still pending. A bare
             * yield lets it arrive here, where it is swallowed. */
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
            if (!group->aborting) {
                Py_XSETREF(self->propagate, Py_NewRef(exc));
                if (group_abort(group) < 0) {
                    goto error;
                }
            }
        }
        break;
    }
    /* The parent may be cancelled again while it waits, so loop. */
    if (group->children > 0 || PyDict_GET_SIZE(group->pending) > 0) {
        if (group->on_completed_fut == NULL) {
            group->on_completed_fut = call_method0(group->loop,
                                                   st->str_create_future);
            if (group->on_completed_fut == NULL) {
                goto error;
            }
            deadlock_on_exit_wait(st, (PyObject *)group,
                                  group->on_completed_fut);
        }
        if (mark_blocking(st, group->on_completed_fut) < 0) {
            goto error;
        }
        self->phase = WAITING;
        *result = Py_NewRef(group->on_completed_fut);
        return PYGEN_NEXT;
    }
    self->phase = DONE;
    if (exit_end(self, result) < 0) {
        return PYGEN_ERROR;
    }
    return PYGEN_RETURN;

raise_thrown:
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
error:
    self->phase = DONE;
    return PYGEN_ERROR;
}

STEP_PROTOCOL(group_exit, group_exit_step)

static PyObject *
group_exit_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ((GroupExitObject *)self)->phase = DONE;
    Py_RETURN_NONE;
}

static int
group_exit_traverse(GroupExitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->group);
    Py_VISIT(self->et);
    Py_VISIT(self->exc);
    Py_VISIT(self->tb);
    Py_VISIT(self->propagate);
    return 0;
}

static int
group_exit_clear(GroupExitObject *self)
{
    Py_CLEAR(self->group);
    Py_CLEAR(self->et);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->tb);
    Py_CLEAR(self->propagate);
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
