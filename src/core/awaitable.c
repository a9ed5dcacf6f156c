/* The coroutine protocol of the C awaitables, built on one step function
 * per type: send(), throw(), __next__ (for Python's Task and for
 * `yield from`) and am_send (the fast path the C Task takes).
 */
#include "core/core.h"

PyObject *
take_stop_iteration_value(void)
{
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        return NULL;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *value = Py_NewRef(((PyStopIterationObject *)exc)->value);
    Py_DECREF(exc);
    return value;
}

/* Turns a step's outcome into what send() and throw() return. */
static PyObject *
outcome_to_result(PySendResult status, PyObject *result)
{
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            /* Made first, so that a tuple is not taken for arguments, and
             * raised as it is: nothing is being handled here for it to
             * chain to, so PyErr_SetObject's search for a context would
             * only cost time (it runs once per value an async for gets). */
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetRaisedException(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

PyObject *
step_send_method(PyObject *self, PyObject *value, step_func step)
{
    PyObject *result = NULL;
    PySendResult status = step(self, value, NULL, &result);
    return outcome_to_result(status, result);
}

PyObject *
step_iternext(PyObject *self, step_func step)
{
    PyObject *result = NULL;
    PySendResult status = step(self, Py_None, NULL, &result);
    if (status == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL;   /* exhausted, no value */
    }
    return outcome_to_result(status, result);
}

PyObject *
step_throw_method(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                  step_func step)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError,
                     "throw expected 1 to 3 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    PyObject *exc;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        if (PyObject_TypeCheck(val, (PyTypeObject *)typ)) {
            exc = Py_NewRef(val);
        }
        else if (val == Py_None) {
            exc = PyObject_CallNoArgs(typ);
        }
        else {
            exc = PyObject_CallOneArg(typ, val);
        }
        if (exc == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from "
                     "BaseException, not %s", Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != Py_None && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    PyObject *result = NULL;
    PySendResult status = step(self, NULL, exc, &result);
    Py_DECREF(exc);
    return outcome_to_result(status, result);
}

PyObject *
running_loop(ModuleState *state)
{
    PyObject *loop = PyObject_CallNoArgs(state->get_running_loop);
    if (loop == Py_None) {
        Py_DECREF(loop);
        PyErr_SetString(PyExc_RuntimeError, "no running event loop");
        return NULL;
    }
    return loop;
}

int
set_result_if_pending(ModuleState *state, PyObject *future, PyObject *value)
{
    ASSERT_NO_ERROR();
    if (!Py_IS_TYPE(future, (PyTypeObject *)state->future_type)) {
        int done = future_done(state, future);
        if (done != 0) {
            return done < 0 ? -1 : 0;
        }
        PyObject *res = call_method1(future, state->str_set_result, value);
        Py_XDECREF(res);
        return res == NULL ? -1 : 1;
    }
    /* asyncio's own: a waiter is almost always pending, so asking first
     * would cost a call per wake to save one in the rare other case. */
    PyObject *args[2] = {future, value};
    PyObject *res = PyObject_Vectorcall(state->future_set_result, args, 2,
                                        NULL);
    if (res != NULL) {
        Py_DECREF(res);
        return 1;
    }
    if (PyErr_ExceptionMatches(state->invalid_state_error)) {
        PyErr_Clear();      /* done already (cancelled): nothing set */
        return 0;
    }
    return -1;
}

PySendResult
drive_iterator(ModuleState *state, PyObject *iterator, PyObject *value,
               PyObject *exc, PyObject **result)
{
    if (exc == NULL) {
        return PyIter_Send(iterator, value, result);
    }
    PyObject *throw;
    if (PyObject_GetOptionalAttr(iterator, state->str_throw, &throw) < 0) {
        return PYGEN_ERROR;
    }
    if (throw == NULL) {
        /* A plain iterator: the exception surfaces here, as in yield from. */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        return PYGEN_ERROR;
    }
    *result = PyObject_CallOneArg(throw, exc);
    Py_DECREF(throw);
    if (*result != NULL) {
        return PYGEN_NEXT;
    }
    *result = take_stop_iteration_value();
    return *result != NULL ? PYGEN_RETURN : PYGEN_ERROR;
}

int
mark_blocking(ModuleState *state, PyObject *future)
{
    ASSERT_NO_ERROR();
    if (Py_IS_TYPE(future, (PyTypeObject *)state->future_type)) {
        /* Its slot's setter directly: no attribute lookup per wait. */
        PyObject *slot = state->future_blocking;
        return Py_TYPE(slot)->tp_descr_set(slot, future, Py_True);
    }
    return PyObject_SetAttr(future, state->str_asyncio_future_blocking,
                            Py_True);
}

/* The waiters are asyncio's own futures but where a loop makes its own:
 * theirs are called through the type's methods, not looked up by name. */
int
future_done(ModuleState *state, PyObject *future)
{
    if (!Py_IS_TYPE(future, (PyTypeObject *)state->future_type)) {
        return call_method_bool(future, state->str_done);
    }
    PyObject *res = PyObject_Vectorcall(state->future_done, &future, 1, NULL);
    if (res == NULL) {
        return -1;
    }
    int done = res == Py_True;
    Py_DECREF(res);
    return done;
}

PyObject *
future_result(ModuleState *state, PyObject *future)
{
    if (!Py_IS_TYPE(future, (PyTypeObject *)state->future_type)) {
        return call_method0(future, state->str_result);
    }
    return PyObject_Vectorcall(state->future_result, &future, 1, NULL);
}

PyObject *
current_task_of(ModuleState *state, PyObject *loop)
{
    if (loop == NULL || loop == Py_None) {
        return Py_NewRef(Py_None);
    }
    if (state->current_tasks == NULL) {
        return PyObject_CallOneArg(state->current_task, loop);
    }
    PyObject *task = PyDict_GetItemWithError(state->current_tasks, loop);
    if (task != NULL) {
        return Py_NewRef(task);
    }
    return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
}

int
is_cancelled_error(ModuleState *state, PyObject *exc)
{
    return exc != NULL
           && PyObject_TypeCheck(exc, (PyTypeObject *)state->cancelled_error);
}

int
is_interrupt(PyObject *exc)
{
    return PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt)
           || PyErr_GivenExceptionMatches(exc, PyExc_SystemExit);
}

static int
is_generator_coroutine(PyObject *obj)
{
    if (!PyGen_CheckExact(obj)) {
        return 0;
    }
    /* (gi_code.co_flags read as attributes: the code object's struct is
     * the interpreter's own. Only generators get here: the rare
     * @types.coroutine awaitables.) */
    PyObject *code = PyObject_GetAttrString(obj, "gi_code");
    PyObject *flags = code == NULL ? NULL
                                   : PyObject_GetAttrString(code, "co_flags");
    Py_XDECREF(code);
    long value = flags == NULL ? -1 : PyLong_AsLong(flags);
    Py_XDECREF(flags);
    if (value == -1) {
        PyErr_Clear();
        return 0;
    }
    return (value & CO_ITERABLE_COROUTINE) != 0;
}

PyObject *
iterator_of(ModuleState *state, PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable) || is_generator_coroutine(awaitable)) {
        return Py_NewRef(awaitable);
    }
    int is_coro = PyObject_IsInstance(awaitable, state->coroutine_abc);
    if (is_coro < 0) {
        return NULL;
    }
    if (is_coro) {
        return Py_NewRef(awaitable);
    }
    PyAsyncMethods *am = Py_TYPE(awaitable)->tp_as_async;
    if (am != NULL && am->am_await != NULL) {
        PyObject *it = am->am_await(awaitable);
        if (it == NULL) {
            return NULL;
        }
        if (!PyIter_Check(it) || PyCoro_CheckExact(it)) {
            PyErr_Format(PyExc_TypeError,
                         "__await__() returned a non-iterator of type '%.100s'",
                         Py_TYPE(it)->tp_name);
            Py_DECREF(it);
            return NULL;
        }
        return it;
    }
    PyErr_Format(PyExc_TypeError, "an awaitable was expected, got %R",
                 awaitable);
    return NULL;
}

int
close_awaitable(ModuleState *state, PyObject *obj)
{
    PyObject *close;
    if (PyObject_GetOptionalAttr(obj, state->str_close, &close) < 0) {
        return -1;
    }
    if (close == NULL) {
        return 0;
    }
    PyObject *res = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

int
call_method_bool(PyObject *obj, PyObject *name)
{
    ASSERT_NO_ERROR();
    PyObject *res = call_method0(obj, name);
    if (res == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(res);
    Py_DECREF(res);
    return truth;
}

/* ---- Ready: an awaitable that returns None at once ---- */

/* It has no state, so one object serves every await (what __aexit__ of a
 * token source returns: the token is given back by the call itself). */
static PySendResult
ready_step(PyObject *self, PyObject *value, PyObject *exc, PyObject **result)
{
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        return PYGEN_ERROR;
    }
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

STEP_PROTOCOL(ready_am_send, ready_send, ready_throw, ready_iternext,
              ready_step)

static PyObject *
ready_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_NONE;
}

static void
ready_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef ready_methods[] = {
    {"send", (PyCFunction)ready_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))ready_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)ready_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ready_slots[] = {
    {Py_tp_doc, "An awaitable that returns None at once."},
    {Py_tp_dealloc, ready_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, ready_iternext},
    {Py_tp_methods, ready_methods},
    {Py_am_await, PyObject_SelfIter},
    {Py_am_send, ready_am_send},
    {0, NULL},
};

PyType_Spec ready_spec = {
    .name = "taskbound._taskbound.Ready",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ready_slots,
};

PyObject *
ready_new(PyTypeObject *type)
{
    return (PyObject *)PyObject_New(PyObject, type);
}
