/* The hooks into taskbound._deadlock, the detector written in Python.
 *
 * The C core calls it only where a wait could complete a deadlock (a claim
 * or an acquire() about to wait on a full finite Limiter, a group's exit
 * about to wait for its children); the detector may fail the waiter's
 * future with DeadlockError. What the detector itself raises is reported
 * as unraisable: a wait never fails because the detector did.
 */
#include "core/core.h"

/* detector(subject, future), keeping any error already set. */
static void
call_detector(PyObject *detector, PyObject *subject, PyObject *future)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *res = PyObject_CallFunctionObjArgs(detector, subject, future,
                                                 NULL);
    if (res == NULL) {
        PyErr_WriteUnraisable(detector);
    }
    Py_XDECREF(res);
    PyErr_SetRaisedException(exc);
}

void
deadlock_on_block(ModuleState *st, TokenSource *source, PyObject *future)
{
    ASSERT_NO_ERROR();
    call_detector(st->on_block, (PyObject *)source, future);
}

void
deadlock_on_exit_wait(ModuleState *st, PyObject *group, PyObject *future)
{
    ASSERT_NO_ERROR();
    call_detector(st->on_exit_wait, group, future);
}
