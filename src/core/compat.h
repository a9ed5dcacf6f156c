/* The Python API the core is written against, on every interpreter it
 * builds for: the newer calls defined for the older releases. */
#ifndef TASKBOUND_CORE_COMPAT_H
#define TASKBOUND_CORE_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030C0000
/* The 3.12 API for the current exception, on 3.11. */
static inline PyObject *
PyErr_GetRaisedException(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_DECREF(type);
    Py_XDECREF(tb);
    return value;
}

static inline void
PyErr_SetRaisedException(PyObject *exc)
{
    if (exc == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
}
#endif

#if PY_VERSION_HEX < 0x030D0000
/* The 3.13 API for the monotonic clock (time.monotonic()'s), on 3.11 and
 * 3.12, where it is the same clock under its older name. */
typedef _PyTime_t PyTime_t;

static inline int
PyTime_Monotonic(PyTime_t *result)
{
    *result = _PyTime_GetMonotonicClock();
    return 0;
}

static inline double
PyTime_AsSecondsDouble(PyTime_t t)
{
    return _PyTime_AsSecondsDouble(t);
}

static inline int
PyObject_GetOptionalAttr(PyObject *obj, PyObject *name, PyObject **result)
{
    *result = PyObject_GetAttr(obj, name);
    if (*result != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}
#endif

/* Whether only the caller holds op, so that it may be reused in place:
 * from 3.14 the interpreter's own test, which free-threaded builds need. */
static inline int
uniquely_referenced(PyObject *op)
{
#if PY_VERSION_HEX >= 0x030E0000
    return PyUnstable_Object_IsUniquelyReferenced(op);
#else
    return Py_REFCNT(op) == 1;
#endif
}

#endif
