/* ExternalSource: the base of limiters whose tokens live outside this
 * process (taskbound.redis), written in Python.
 *
 * A claim drives every token source through the same few operations. For
 * Limiter and RateLimiter they are C functions; here each one calls the
 * Python method of the same name on the subclass, so a group, acquire()
 * and the streaming helpers take such a limiter unchanged, in the global
 * rank order. The base binds it to one loop (_bind, _loop); the subclass
 * keeps its own line of waiter futures:
 *
 *   _try_take(loop[, n]) -> bool   take n tokens now, without waiting
 *   _enqueue(loop[, n]) -> future  queue a waiter for n; its result is True
 *                                  once it holds them (False: the claim
 *                                  aborted)
 *   _dequeue(future)               the waiter leaves the line, unserved
 *   _pass_on([n])                  a waiter handed n tokens gave up: pass
 *                                  them on
 *   _give_back([n])                n tokens come back
 *   _check_weight(n)               raise if n at once can never be granted
 *
 * n is passed only when it is not 1, as the reference does, so a subclass
 * that takes one token at a time needs no n at all: the base's
 * _check_weight refuses any other n at the call.
 */
#include "core/core.h"

/* The n argument, or NULL (and nothing set) when it is 1. */
static int
weight_argument(Py_ssize_t n, PyObject **weight)
{
    *weight = NULL;
    if (n == 1) {
        return 0;
    }
    *weight = PyLong_FromSsize_t(n);
    return *weight == NULL ? -1 : 0;
}

/* method(self, [arg,] [n]) */
static PyObject *
call_with_weight(TokenSource *self, PyObject *name, PyObject *arg,
                 Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    PyObject *weight;
    if (weight_argument(n, &weight) < 0) {
        return NULL;
    }
    PyObject *args[3] = {(PyObject *)self};
    size_t nargs = 1;
    if (arg != NULL) {
        args[nargs++] = arg;
    }
    if (weight != NULL) {
        args[nargs++] = weight;
    }
    PyObject *res = PyObject_VectorcallMethod(
        name, args, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(weight);
    return res;
}

static int
call_with_weight_status(TokenSource *self, PyObject *name, Py_ssize_t n)
{
    PyObject *res = call_with_weight(self, name, NULL, n);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

static int
external_check_weight(TokenSource *self, Py_ssize_t n)
{
    assert(n != 1);
    return call_with_weight_status(self, self->state->str__check_weight, n);
}

static int
external_try_take(TokenSource *self, PyObject *loop, Py_ssize_t n)
{
    PyObject *res = call_with_weight(self, self->state->str__try_take, loop,
                                     n);
    if (res == NULL) {
        return -1;
    }
    int taken = PyObject_IsTrue(res);
    Py_DECREF(res);
    return taken;
}

static PyObject *
external_enqueue(TokenSource *self, PyObject *loop, Py_ssize_t n)
{
    return call_with_weight(self, self->state->str__enqueue, loop, n);
}

/* Leaving the line cannot fail for the claim: a failure of the subclass
 * here is reported as unraisable. */
static int
external_dequeue(TokenSource *self, PyObject *future)
{
    PyObject *res = call_method1((PyObject *)self,
                                 self->state->str__dequeue, future);
    if (res == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(res);
    return 1;
}

static int
external_pass_on(TokenSource *self, Py_ssize_t n)
{
    return call_with_weight_status(self, self->state->str__pass_on, n);
}

static int
external_give_back(TokenSource *self, Py_ssize_t n)
{
    return call_with_weight_status(self, self->state->str__give_back, n);
}

static const TokenSourceOps external_ops = {
    .check_weight = external_check_weight,
    .try_take = external_try_take,
    .enqueue = external_enqueue,
    .dequeue = external_dequeue,
    .pass_on = external_pass_on,
    .give_back = external_give_back,
    .release = external_give_back,
    .note_holder = NULL,
};

/* Subclasses take their own constructor arguments in __init__. */
static PyObject *
external_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
             PyObject *Py_UNUSED(kwargs))
{
    TokenSource *self = (TokenSource *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (source_init(self, type, &external_ops) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->initialized = 1;
    return (PyObject *)self;
}

static int
external_traverse(TokenSource *self, visitproc visit, void *arg)
{
    return source_traverse(self, visit, arg);
}

static int
external_clear(TokenSource *self)
{
    source_clear(self);
    return 0;
}

static void
external_dealloc(TokenSource *self)
{
    source_dealloc(self, (inquiry)external_clear);
}

/* The subclass binds itself to a loop as every source does. */
static PyObject *
external_bind(TokenSource *self, PyObject *loop)
{
    if (source_bind(self, loop) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The default: one token at a time. A subclass that takes more overrides
 * it with its own rule (n above its total, say). */
static PyObject *
external_refuse_weight(TokenSource *self, PyObject *n)
{
    PyErr_Format(PyExc_ValueError,
                 "%R takes one token at a time: n must be 1, not %S", self,
                 n);
    return NULL;
}

static PyMethodDef external_methods[] = {
    {"_check_weight", (PyCFunction)external_refuse_weight, METH_O,
     "Raise if n tokens at once can never be granted (here: any n but 1)."},
    {"_bind", (PyCFunction)external_bind, METH_O,
     "Bind to `loop` on first use; refuse any other loop after that."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef external_members[] = {
    {"_loop", T_OBJECT, offsetof(TokenSource, loop), READONLY,
     "The event loop it is bound to, or None."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot external_slots[] = {
    {Py_tp_doc, "The base of limiters whose tokens live outside this "
                "process; subclasses implement _try_take, _enqueue, "
                "_dequeue, _pass_on and _give_back."},
    {Py_tp_new, external_new},
    {Py_tp_dealloc, external_dealloc},
    {Py_tp_traverse, external_traverse},
    {Py_tp_clear, external_clear},
    {Py_tp_methods, external_methods},
    {Py_tp_members, external_members},
    {0, NULL},
};

PyType_Spec external_source_spec = {
    .name = "taskbound._taskbound.ExternalSource",
    .basicsize = sizeof(TokenSource),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = external_slots,
};
