/* StreamIterator: what amap() and as_completed() return in C.
 *
 * An async iterator and an async context manager over a Stream. It is a
 * separate object because the stream's workers hold the stream: only this
 * one is the consumer's alone, so dropping it (a break) finalizes it, and
 * that closes the stream in the background. A consumer cancelled while it
 * waits closes the stream before the CancelledError reaches it.
 */
#include "stream/stream.h"

typedef struct {
    PyObject_HEAD
    StreamObject *stream;
    /* The awaitable of the last __anext__(), set up again for the next
     * one when the consumer has let it go: one object per value was a
     * large part of the cost of an async for. */
    PyObject *spare_step;
    PyObject *weakreflist;
} StreamIteratorObject;

static PyObject *
iterator_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ModuleState *st = state_of_type(type);
    PyObject *stream;
    if (st == NULL
            || !PyArg_ParseTuple(args, "O!:StreamIterator", st->stream_type,
                                 &stream)) {
        return NULL;
    }
    StreamIteratorObject *self =
        (StreamIteratorObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->stream = (StreamObject *)Py_NewRef(stream);
    }
    return (PyObject *)self;
}

static PyObject *
iterator_anext(StreamIteratorObject *self)
{
    PyObject *step = stream_step_anew(self->spare_step, self->stream);
    if (step != NULL && step != self->spare_step) {
        Py_XSETREF(self->spare_step, Py_NewRef(step));
    }
    return step;
}

static PyObject *
iterator_aclose(StreamIteratorObject *self, PyObject *Py_UNUSED(ignored))
{
    return stream_step_new(self->stream, STEP_CLOSE);
}

static PyObject *
iterator_aenter(StreamIteratorObject *self, PyObject *Py_UNUSED(ignored))
{
    return stream_step_ready(self->stream, (PyObject *)self);
}

static PyObject *
iterator_aexit(StreamIteratorObject *self, PyObject *const *args,
               Py_ssize_t nargs)
{
    return stream_step_new(self->stream, STEP_CLOSE);
}

static void
iterator_finalize(PyObject *op)
{
    StreamIteratorObject *self = (StreamIteratorObject *)op;
    if (self->stream == NULL) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *res = PyObject_CallMethod((PyObject *)self->stream, "finalize",
                                        NULL);
    if (res == NULL) {
        PyErr_WriteUnraisable(op);
    }
    Py_XDECREF(res);
    PyErr_SetRaisedException(exc);
}

static int
iterator_traverse(StreamIteratorObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->stream);
    Py_VISIT(self->spare_step);
    return 0;
}

static int
iterator_clear(StreamIteratorObject *self)
{
    Py_CLEAR(self->stream);
    Py_CLEAR(self->spare_step);
    return 0;
}

static void
iterator_dealloc(StreamIteratorObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    (void)iterator_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef iterator_methods[] = {
    {"aclose", (PyCFunction)iterator_aclose, METH_NOARGS,
     "Cancel and await what is in flight, close the source."},
    {"__aenter__", (PyCFunction)iterator_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))iterator_aexit, METH_FASTCALL,
     NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef iterator_members[] = {
    {"__weaklistoffset__", T_PYSSIZET,
     offsetof(StreamIteratorObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot iterator_slots[] = {
    {Py_tp_doc, "StreamIterator(stream)\n--\n\n"
                "The async iterator of amap() and as_completed()."},
    {Py_tp_new, iterator_new},
    {Py_tp_dealloc, iterator_dealloc},
    {Py_tp_finalize, iterator_finalize},
    {Py_tp_traverse, iterator_traverse},
    {Py_tp_clear, iterator_clear},
    {Py_tp_methods, iterator_methods},
    {Py_tp_members, iterator_members},
    {Py_am_aiter, PyObject_SelfIter},
    {Py_am_anext, iterator_anext},
    {0, NULL},
};

PyType_Spec stream_iterator_spec = {
    .name = "taskbound._taskbound.StreamIterator",
    .basicsize = sizeof(StreamIteratorObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = iterator_slots,
};
