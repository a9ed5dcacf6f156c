/* HoldSampler: the hold times of a source's tokens, a window at a time,
 * the feedback of an AdaptiveLimiter (taskbound._adaptive).
 *
 * A hold ends when its tokens come back: a group's child's or a stream's
 * item's when it ends (claim_release_after), an acquire()'s at release()
 * or at the end of an `async with` (sampler_on_release). Its time from
 * grant to give-back is a latency sample; it is a drop when its holder
 * failed with an error the sampler's is_overload accepts, or marked it
 * (_mark_overload), and no sample at all when it was cancelled. This runs
 * on every give-back, so it is arithmetic on the struct; Python is called
 * only for an error (is_overload) and once a window (on_window, which
 * returns the next window's size).
 */
#include "core/core.h"

static void
new_window(HoldSampler *s)
{
    s->samples = s->drops = s->in_flight = 0;
    s->total_time = 0.0;
    s->least_time = INFINITY;
}

HoldSampler *
sampler_new(PyObject *on_window, PyObject *is_overload, Py_ssize_t size)
{
    HoldSampler *s = PyMem_Calloc(1, sizeof(HoldSampler));
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    s->on_window = Py_NewRef(on_window);
    s->is_overload = Py_NewRef(is_overload);
    s->size = size;
    new_window(s);
    return s;
}

void
sampler_free(HoldSampler *s)
{
    if (s != NULL) {
        sampler_clear(s);
        PyMem_Free(s);
    }
}

int
sampler_traverse(HoldSampler *s, visitproc visit, void *arg)
{
    if (s != NULL) {
        Py_VISIT(s->on_window);
        Py_VISIT(s->is_overload);
        Py_VISIT(s->marked);
        Py_VISIT(s->grants);
    }
    return 0;
}

void
sampler_clear(HoldSampler *s)
{
    if (s != NULL) {
        Py_CLEAR(s->on_window);
        Py_CLEAR(s->is_overload);
        Py_CLEAR(s->marked);
        Py_CLEAR(s->grants);
    }
}

int
sampler_mark(HoldSampler *s, PyObject *task)
{
    if (s->marked == NULL && (s->marked = PySet_New(NULL)) == NULL) {
        return -1;
    }
    return PySet_Add(s->marked, task);
}

void
sampler_forget(HoldSampler *s)
{
    Py_CLEAR(s->marked);
    Py_CLEAR(s->grants);
}

/* Whether `task` marked its hold (the mark is used up): 1, 0, -1. */
static int
take_mark(HoldSampler *s, PyObject *task)
{
    if (s->marked == NULL || PySet_GET_SIZE(s->marked) == 0) {
        return 0;
    }
    return PySet_Discard(s->marked, task);
}

/* 1 a drop, 0 not, -1 no sample (cancelled). Never fails: an error of
 * is_overload is unraisable, and the hold is not a drop. */
static int
classify(ModuleState *st, HoldSampler *s, PyObject *task, PyObject *error)
{
    int marked = task == NULL ? 0 : take_mark(s, task);
    if (marked != 0) {
        if (marked < 0) {
            PyErr_WriteUnraisable(s->on_window);
        }
        return 1;
    }
    if (error == NULL) {
        return 0;
    }
    int cancelled = PyObject_IsInstance(error, st->cancelled_error);
    if (cancelled != 0) {
        if (cancelled < 0) {
            PyErr_WriteUnraisable(s->on_window);
        }
        return -1;
    }
    PyObject *res = s->is_overload == NULL
        ? Py_NewRef(Py_False) : PyObject_CallOneArg(s->is_overload, error);
    int drop = res == NULL ? -1 : PyObject_IsTrue(res);
    Py_XDECREF(res);
    if (drop < 0) {
        PyErr_WriteUnraisable(s->is_overload);
        return 0;
    }
    return drop;
}

static void
end_window(HoldSampler *s)
{
    Py_ssize_t kept = s->samples - s->drops;
    PyObject *args[5] = {
        PyLong_FromSsize_t(s->samples),
        PyLong_FromSsize_t(s->drops),
        PyFloat_FromDouble(kept ? s->total_time / (double)kept : 0.0),
        PyFloat_FromDouble(kept ? s->least_time : 0.0),
        PyLong_FromSsize_t(s->in_flight),
    };
    new_window(s);
    PyObject *res = NULL;
    if (s->on_window == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the sampler was cleared");
    }
    else if (args[0] && args[1] && args[2] && args[3] && args[4]) {
        /* (on_window may drop the last other reference to the sampler's
         * source: the callable is held for the call) */
        PyObject *on_window = Py_NewRef(s->on_window);
        res = PyObject_Vectorcall(on_window, args, 5, NULL);
        Py_DECREF(on_window);
    }
    for (int i = 0; i < 5; i++) {
        Py_XDECREF(args[i]);
    }
    if (res == NULL) {
        PyErr_WriteUnraisable(NULL);
        return;
    }
    if (PyLong_CheckExact(res)) {
        Py_ssize_t size = PyLong_AsSsize_t(res);
        if (size >= 1) {
            s->size = size;
        }
        else {
            PyErr_Clear();
        }
    }
    Py_DECREF(res);
}

void
sampler_record(TokenSource *source, PyObject *task, double held_for,
               PyObject *error, Py_ssize_t in_flight)
{
    ASSERT_NO_ERROR();
    HoldSampler *s = source->sampler;
    assert(s != NULL);
    int drop = classify(source->state, s, task, error);
    if (drop < 0) {
        return;
    }
    s->samples++;
    if (drop) {
        s->drops++;
    }
    else {
        s->total_time += held_for;
        if (held_for < s->least_time) {
            s->least_time = held_for;
        }
    }
    if (in_flight > s->in_flight) {
        s->in_flight = in_flight;
    }
    if (s->samples >= s->size) {
        end_window(s);
    }
}

/* ---- the holds of acquire(): grant times by task ---- */

int
sampler_note_grant(HoldSampler *s, PyObject *task, double now)
{
    if (s->grants == NULL && (s->grants = PyDict_New()) == NULL) {
        return -1;
    }
    PyObject *times = PyDict_GetItemWithError(s->grants, task);
    if (times == NULL) {
        if (PyErr_Occurred() || (times = PyList_New(0)) == NULL) {
            return -1;
        }
        int set = PyDict_SetItem(s->grants, task, times);
        Py_DECREF(times);
        if (set < 0) {
            return -1;
        }
    }
    PyObject *t = PyFloat_FromDouble(now);
    if (t == NULL) {
        return -1;
    }
    int added = PyList_Append(times, t);
    Py_DECREF(t);
    return added;
}

/* When the latest acquire() of `task` not yet released was granted (taken
 * out): 1 with *granted, 0 when there is none, -1 on error. */
static int
grant_of(HoldSampler *s, PyObject *task, double *granted)
{
    if (s->grants == NULL) {
        return 0;
    }
    PyObject *times = PyDict_GetItemWithError(s->grants, task);
    if (times == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_ssize_t n = PyList_GET_SIZE(times);
    assert(n > 0);
    *granted = PyFloat_AS_DOUBLE(PyList_GET_ITEM(times, n - 1));
    if (n == 1) {
        return PyDict_DelItem(s->grants, task) < 0 ? -1 : 1;
    }
    return PyList_SetSlice(times, n - 1, n, NULL) < 0 ? -1 : 1;
}

void
sampler_on_release(TokenSource *source, Py_ssize_t n, int known,
                   PyObject *error)
{
    ASSERT_NO_ERROR();
    HoldSampler *s = source->sampler;
    ModuleState *st = source->state;
    assert(s != NULL);
    /* (only a source that counts what it lends samples: _sample_holds) */
    Py_ssize_t held = source->ops->held(source);
    if (held < n || source->loop == NULL) {
        if (held < 0) {
            PyErr_WriteUnraisable((PyObject *)source);
        }
        return;     /* release() will say what is wrong */
    }
    PyObject *task = current_task_of(st, source->loop);
    double granted, now;
    int found = task == NULL ? -1 : grant_of(s, task, &granted);
    if (found <= 0) {
        goto done;  /* taken by another task, or before sampling began */
    }
    PyObject *cancel = NULL;
    if (!known && task != Py_None) {
        /* A release() mid-cancellation ends a cancelled hold. */
        PyObject *res = call_method0(task, st->str_cancelling);
        int cancelling = res == NULL ? -1 : PyObject_IsTrue(res);
        Py_XDECREF(res);
        if (cancelling < 0) {
            goto done;
        }
        if (cancelling) {
            cancel = PyObject_CallNoArgs(st->cancelled_error);
            if (cancel == NULL) {
                goto done;
            }
            error = cancel;
        }
        else {
            error = NULL;
        }
    }
    if (sample_time(source, source->loop, &now) == 0) {
        sampler_record(source, task, now - granted, error, held);
    }
    Py_XDECREF(cancel);
done:
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)source);
    }
    Py_XDECREF(task);
}
