/* Limiter: a FIFO counting limiter shared by groups and tasks on one loop.
 *
 * A release hands its token straight to the first live waiter (its future
 * gets the result True), and the token counts as borrowed from then on, so
 * nobody can take it in between: no barging. Waiters cancelled from outside
 * stay queued until their task runs again; they are skipped and pruned.
 */
#include "taskbound.h"

/* ---- the waiter queue: a ring buffer of futures ---- */

static PyObject *
queue_at(WaiterQueue *q, Py_ssize_t i)
{
    return q->items[(q->head + i) % q->cap];
}

static int
queue_push(WaiterQueue *q, PyObject *item)
{
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 8;
        PyObject **items = PyMem_New(PyObject *, cap);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->len; i++) {
            items[i] = queue_at(q, i);
        }
        PyMem_Free(q->items);
        q->items = items;
        q->head = 0;
        q->cap = cap;
    }
    q->items[(q->head + q->len) % q->cap] = Py_NewRef(item);
    q->len++;
    return 0;
}

/* Removes the first item and returns it (a new ref). */
static PyObject *
queue_pop(WaiterQueue *q)
{
    PyObject *item = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return item;
}

/* Removes ``item``; returns 1 if it was there. */
static int
queue_remove(WaiterQueue *q, PyObject *item)
{
    for (Py_ssize_t i = 0; i < q->len; i++) {
        if (queue_at(q, i) == item) {
            for (Py_ssize_t j = i; j + 1 < q->len; j++) {
                q->items[(q->head + j) % q->cap] = queue_at(q, j + 1);
            }
            q->len--;
            Py_DECREF(item);
            return 1;
        }
    }
    return 0;
}

static void
queue_clear(WaiterQueue *q)
{
    /* Empty the structure before dropping references: a DECREF may run
     * code that looks at the queue. */
    PyObject **items = q->items;
    Py_ssize_t head = q->head, len = q->len, cap = q->cap;
    q->items = NULL;
    q->head = q->len = q->cap = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_DECREF(items[(head + i) % cap]);
    }
    PyMem_Free(items);
}

/* ---- the protocol a claim uses ---- */

int
call_method_bool(PyObject *obj, PyObject *name)
{
    PyObject *res = call_method0(obj, name);
    if (res == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(res);
    Py_DECREF(res);
    return truth;
}

static int
limiter_bind(LimiterObject *self, PyObject *loop)
{
    if (self->loop == NULL) {
        self->loop = Py_NewRef(loop);
        return 0;
    }
    if (self->loop != loop) {
        PyErr_Format(PyExc_RuntimeError,
                     "%R is bound to a different event loop", self);
        return -1;
    }
    return 0;
}

/* Drops waiters at the head that were cancelled from outside. */
static int
limiter_prune(LimiterObject *self)
{
    WaiterQueue *q = &self->waiters;
    while (q->len > 0) {
        int done = call_method_bool(queue_at(q, 0), self->state->str_done);
        if (done < 0) {
            return -1;
        }
        if (!done) {
            break;
        }
        Py_DECREF(queue_pop(q));
    }
    return 0;
}

/* Hands free tokens to waiters, first come first served. */
static int
limiter_wake(LimiterObject *self)
{
    WaiterQueue *q = &self->waiters;
    while (q->len > 0 && self->borrowed < self->total) {
        PyObject *future = queue_pop(q);
        self->borrowed++;   /* counted before set_result() runs any code */
        int handed = set_result_if_pending(self->state, future, Py_True);
        Py_DECREF(future);
        if (handed != 1) {
            self->borrowed--;
            if (handed < 0) {
                return -1;
            }
        }
    }
    return 0;
}

int
limiter_try_take(LimiterObject *self, PyObject *loop)
{
    if (limiter_bind(self, loop) < 0 || limiter_prune(self) < 0) {
        return -1;
    }
    if (self->waiters.len > 0 || self->borrowed >= self->total) {
        return 0;
    }
    self->borrowed++;
    return 1;
}

PyObject *
limiter_enqueue(LimiterObject *self, PyObject *loop)
{
    PyObject *future = call_method0(loop, self->state->str_create_future);
    if (future == NULL) {
        return NULL;
    }
    if (queue_push(&self->waiters, future) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    return future;
}

int
limiter_give_back(LimiterObject *self)
{
    if (self->borrowed <= 0) {
        PyErr_Format(PyExc_RuntimeError,
                     "release() called on %R, which has no borrowed tokens",
                     self);
        return -1;
    }
    self->borrowed--;
    return limiter_wake(self);
}

int
limiter_dequeue(LimiterObject *self, PyObject *future)
{
    return queue_remove(&self->waiters, future);
}

int
limiter_withdraw(LimiterObject *self, PyObject *future)
{
    ModuleState *st = self->state;
    int done = call_method_bool(future, st->str_done);
    if (done < 0) {
        return -1;
    }
    if (done) {
        int cancelled = call_method_bool(future, st->str_cancelled);
        if (cancelled < 0) {
            return -1;
        }
        if (!cancelled) {
            /* Woken already: the token it was handed (if any) goes on. */
            PyObject *handed = call_method0(future, st->str_result);
            if (handed == NULL) {
                return -1;
            }
            int had_token = (handed == Py_True);
            Py_DECREF(handed);
            return had_token ? limiter_give_back(self) : 0;
        }
    }
    queue_remove(&self->waiters, future);
    if (done) {
        return 0;
    }
    PyObject *res = call_method0(future, st->str_cancel);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* ---- the Python type ---- */

static Py_ssize_t
waiting_count(LimiterObject *self)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < self->waiters.len; i++) {
        int done = call_method_bool(queue_at(&self->waiters, i),
                                    self->state->str_done);
        if (done < 0) {
            return -1;
        }
        count += !done;
    }
    return count;
}

/* Converts a checked total_tokens (an int or math.inf) to the C field. */
static int
parse_total(ModuleState *st, PyObject *value, Py_ssize_t *total)
{
    PyObject *checked = PyObject_CallOneArg(st->check_total_tokens, value);
    if (checked == NULL) {
        return -1;
    }
    if (PyFloat_Check(checked)) {
        *total = TOTAL_INFINITE;
    }
    else {
        *total = PyLong_AsSsize_t(checked);
        if (*total == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            *total = TOTAL_INFINITE;  /* more tokens than can ever be held */
        }
    }
    Py_DECREF(checked);
    return 0;
}

static PyObject *
total_object(LimiterObject *self)
{
    if (self->total == TOTAL_INFINITE) {
        return PyFloat_FromDouble(Py_HUGE_VAL);
    }
    return PyLong_FromSsize_t(self->total);
}

static PyObject *
limiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"total_tokens", NULL};
    PyObject *total_arg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Limiter", kwlist,
                                     &total_arg)) {
        return NULL;
    }
    ModuleState *st = state_of_type(type);
    if (st == NULL) {
        return NULL;
    }
    Py_ssize_t total;
    if (parse_total(st, total_arg, &total) < 0) {
        return NULL;
    }
    LimiterObject *self = (LimiterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->state = st;
    self->total = total;
    self->rank = st->next_rank++;
    return (PyObject *)self;
}

static int
limiter_traverse(LimiterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    for (Py_ssize_t i = 0; i < self->waiters.len; i++) {
        Py_VISIT(queue_at(&self->waiters, i));
    }
    return 0;
}

static int
limiter_clear(LimiterObject *self)
{
    Py_CLEAR(self->loop);
    queue_clear(&self->waiters);
    return 0;
}

static void
limiter_dealloc(LimiterObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    (void)limiter_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* total_tokens (a new ref) and the number of live waiters. */
static int
snapshot(LimiterObject *self, PyObject **total, Py_ssize_t *waiting)
{
    *waiting = waiting_count(self);
    if (*waiting < 0) {
        return -1;
    }
    *total = total_object(self);
    return *total == NULL ? -1 : 0;
}

static PyObject *
limiter_repr(LimiterObject *self)
{
    PyObject *total;
    Py_ssize_t waiting;
    if (snapshot(self, &total, &waiting) < 0) {
        return NULL;
    }
    PyObject *repr = PyUnicode_FromFormat(
        "<Limiter total_tokens=%S borrowed=%zd waiting=%zd>",
        total, self->borrowed, waiting);
    Py_DECREF(total);
    return repr;
}

static PyObject *
limiter_acquire(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *limiters = PyTuple_Pack(1, (PyObject *)self);
    if (limiters == NULL) {
        return NULL;
    }
    PyObject *acq = acquisition_new(self->state, limiters, NULL, NULL,
                                    NULL, NULL);
    Py_DECREF(limiters);
    return acq;
}

static PyObject *
limiter_acquire_nowait(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *loop = running_loop(self->state);
    if (loop == NULL) {
        return NULL;
    }
    int taken = limiter_try_take(self, loop);
    Py_DECREF(loop);
    if (taken < 0) {
        return NULL;
    }
    if (!taken) {
        PyErr_Format(self->state->would_block, "no token of %R is free",
                     self);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
limiter_release(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (limiter_give_back(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
limiter_aexit(LimiterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (limiter_give_back(self) < 0) {
        return NULL;
    }
    /* An acquisition of no tokens: an awaitable that returns None. */
    PyObject *nothing = PyTuple_New(0);
    if (nothing == NULL) {
        return NULL;
    }
    PyObject *acq = acquisition_new(self->state, nothing, NULL, NULL, NULL,
                                    NULL);
    Py_DECREF(nothing);
    return acq;
}

static PyObject *
limiter_statistics(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *total;
    Py_ssize_t waiting;
    if (snapshot(self, &total, &waiting) < 0) {
        return NULL;
    }
    return PyObject_CallFunction(self->state->limiter_statistics, "Nnn",
                                 total, self->borrowed, waiting);
}

static PyObject *
limiter_locked(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (limiter_prune(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(self->borrowed >= self->total
                           || self->waiters.len > 0);
}

static PyObject *
limiter_get_total(LimiterObject *self, void *Py_UNUSED(closure))
{
    return total_object(self);
}

static int
limiter_set_total(LimiterObject *self, PyObject *value,
                  void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete total_tokens");
        return -1;
    }
    Py_ssize_t total;
    if (parse_total(self->state, value, &total) < 0) {
        return -1;
    }
    self->total = total;
    return limiter_wake(self);
}

static PyObject *
limiter_get_borrowed(LimiterObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->borrowed);
}

static PyObject *
limiter_get_available(LimiterObject *self, void *Py_UNUSED(closure))
{
    if (self->total == TOTAL_INFINITE) {
        return PyFloat_FromDouble(Py_HUGE_VAL);
    }
    Py_ssize_t free = self->total - self->borrowed;
    return PyLong_FromSsize_t(free > 0 ? free : 0);
}

static PyMethodDef limiter_methods[] = {
    {"acquire", (PyCFunction)limiter_acquire, METH_NOARGS,
     "Wait for a token (FIFO)."},
    {"acquire_nowait", (PyCFunction)limiter_acquire_nowait, METH_NOARGS,
     "Take a token now, or raise WouldBlock."},
    {"release", (PyCFunction)limiter_release, METH_NOARGS,
     "Give a token back; the first waiter gets it."},
    {"statistics", (PyCFunction)limiter_statistics, METH_NOARGS,
     "LimiterStatistics(total_tokens, borrowed_tokens, waiting)."},
    {"locked", (PyCFunction)limiter_locked, METH_NOARGS,
     "True when an acquire would have to wait."},
    {"__aenter__", (PyCFunction)limiter_acquire, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))limiter_aexit, METH_FASTCALL,
     NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef limiter_getset[] = {
    {"total_tokens", (getter)limiter_get_total, (setter)limiter_set_total,
     "How many tokens there are (an int >= 0 or math.inf).", NULL},
    {"borrowed_tokens", (getter)limiter_get_borrowed, NULL,
     "How many tokens are held.", NULL},
    {"available_tokens", (getter)limiter_get_available, NULL,
     "How many tokens are free.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef limiter_members[] = {
    {"__weaklistoffset__", T_PYSSIZET,
     offsetof(LimiterObject, weakreflist), READONLY, NULL},
    {"_rank", T_ULONGLONG, offsetof(LimiterObject, rank), READONLY,
     "The order in which tasks take this limiter's tokens."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot limiter_slots[] = {
    {Py_tp_doc, "Limiter(total_tokens)\n--\n\n"
                "A FIFO counting limiter, shareable by any number of groups "
                "on one event loop."},
    {Py_tp_new, limiter_new},
    {Py_tp_dealloc, limiter_dealloc},
    {Py_tp_traverse, limiter_traverse},
    {Py_tp_clear, limiter_clear},
    {Py_tp_repr, limiter_repr},
    {Py_tp_methods, limiter_methods},
    {Py_tp_getset, limiter_getset},
    {Py_tp_members, limiter_members},
    {0, NULL},
};

PyType_Spec limiter_spec = {
    .name = "taskbound._taskbound.Limiter",
    .basicsize = sizeof(LimiterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = limiter_slots,
};
