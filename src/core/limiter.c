/* Limiter: a FIFO counting limiter shared by groups and tasks on one loop.
 *
 * A release hands its token straight to the first live waiter (its future
 * gets the result True), and the token counts as borrowed from then on, so
 * nobody can take it in between: no barging. Waiters cancelled from outside
 * stay queued until their task runs again; they are skipped and pruned.
 */
#include "core/core.h"

#define TOTAL_INFINITE PY_SSIZE_T_MAX

typedef struct {
    TokenSource base;
    Py_ssize_t total;        /* TOTAL_INFINITE for math.inf */
    Py_ssize_t borrowed;     /* includes tokens handed to woken waiters */
    /* For deadlock detection: tokens taken with acquire()/acquire_nowait()
     * by task; groups' children hold theirs in their claims. */
    HolderTable holders;
    Py_ssize_t unattributed; /* taken outside any task */
    char lost_track;         /* a task released what it never took */
} LimiterObject;

/* Hands free tokens to waiters, first come first served. */
static int
limiter_wake(LimiterObject *self)
{
    WaiterQueue *q = &self->base.waiters;
    while (q->len > 0 && self->borrowed < self->total) {
        PyObject *future = queue_pop(q);
        self->borrowed++;   /* counted before set_result() runs any code */
        int handed = set_result_if_pending(self->base.state, future, Py_True);
        Py_DECREF(future);
        if (handed != 1) {
            self->borrowed--;
            if (handed < 0) {
                if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                    return -1;
                }
                /* Its loop is closed: that waiter can never run. */
                PyErr_Clear();
            }
        }
    }
    return 0;
}

static int
limiter_try_take(TokenSource *base, PyObject *loop)
{
    LimiterObject *self = (LimiterObject *)base;
    if (source_bind(base, loop) < 0) {
        return -1;
    }
    /* Full, it waits whoever is in line; only a free token needs the line
     * pruned of cancelled waiters, which would otherwise keep it. */
    if (self->borrowed >= self->total) {
        return 0;
    }
    if (source_prune(base) < 0) {
        return -1;
    }
    if (base->waiters.len > 0) {
        return 0;
    }
    self->borrowed++;
    return 1;
}

static int
check_borrowed(LimiterObject *self)
{
    if (self->borrowed <= 0) {
        PyErr_Format(PyExc_RuntimeError,
                     "release() called on %R, which has no borrowed tokens",
                     self);
        return -1;
    }
    return 0;
}

static int
limiter_give_back(TokenSource *base)
{
    LimiterObject *self = (LimiterObject *)base;
    if (check_borrowed(self) < 0) {
        return -1;
    }
    self->borrowed--;
    if (self->borrowed == 0) {
        /* Nothing is held: whoever was recorded is stale. */
        holders_clear(&self->holders);
        self->unattributed = 0;
        self->lost_track = 0;
    }
    return limiter_wake(self);
}

/* ---- who holds what, for deadlock detection (taskbound._deadlock) ---- */

int
limiter_wait_may_deadlock(ModuleState *st, TokenSource *busy, PyObject *loop,
                          PyObject *task)
{
    ASSERT_NO_ERROR();
    LimiterObject *self = (LimiterObject *)busy;
    if (!limiter_may_deadlock(busy) || self->lost_track
            || self->unattributed > 0) {
        return 0;   /* the detector could not tell either */
    }
    task = task != NULL ? Py_NewRef(task) : current_task_of(st, loop);
    if (task == NULL) {
        PyErr_Clear();
        return 0;
    }
    int may = 0;
    if (task != Py_None) {
        may = holders_count(&self->holders, task) > 0;
        if (!may && st->task_may_deadlock != NULL) {
            may = st->task_may_deadlock(st, task, busy);
        }
    }
    Py_DECREF(task);
    return may;
}

/* What cannot be recorded is lost track of: detection then stays quiet
 * until every token is back, which is always safe. */
static void
lose_track(LimiterObject *self)
{
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    self->lost_track = 1;
}

static void
limiter_note_holder(TokenSource *base, PyObject *task)
{
    LimiterObject *self = (LimiterObject *)base;
    if (task == NULL) {
        lose_track(self);
    }
    else if (task == Py_None) {
        self->unattributed++;
    }
    else if (holders_add(&self->holders, task) < 0) {
        lose_track(self);
    }
}

static int
limiter_release(TokenSource *base)
{
    LimiterObject *self = (LimiterObject *)base;
    if (check_borrowed(self) < 0) {
        return -1;
    }
    /* Its tokens are borrowed, so it is bound to a loop: the task giving
     * one back is that loop's (none when it is called from elsewhere). */
    PyObject *task = current_task_of(base->state, base->loop);
    int counted = task == NULL ? -1
        : task == Py_None ? 0 : holders_remove(&self->holders, task);
    Py_XDECREF(task);
    if (counted < 0) {
        lose_track(self);
    }
    else if (counted == 0) {
        if (self->unattributed > 0) {
            self->unattributed--;
        }
        else {
            self->lost_track = 1;
        }
    }
    return limiter_give_back(base);
}

static Py_ssize_t
limiter_held(TokenSource *base)
{
    return ((LimiterObject *)base)->borrowed;
}

static const TokenSourceOps limiter_ops = {
    .try_take = limiter_try_take,
    .enqueue = source_enqueue,
    .dequeue = source_dequeue,
    .pass_on = limiter_give_back,
    .give_back = limiter_give_back,
    .release = limiter_release,
    .note_holder = limiter_note_holder,
    .held = limiter_held,
};

int
limiter_has_holders(TokenSource *source)
{
    LimiterObject *self = (LimiterObject *)source;
    return self->holders.used > 0;
}

int
limiter_may_deadlock(TokenSource *source)
{
    LimiterObject *self = (LimiterObject *)source;
    return source->ops == &limiter_ops && self->total != TOTAL_INFINITE
           && self->borrowed >= self->total;
}

/* (loop, borrowed, holders, live waiters), or None when this limiter
 * cannot be deadlocked now or does not know who holds its tokens. */
static PyObject *
limiter_deadlock_state(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!limiter_may_deadlock(&self->base) || self->lost_track
            || self->unattributed > 0 || self->base.loop == NULL) {
        Py_RETURN_NONE;
    }
    WaiterQueue *q = &self->base.waiters;
    PyObject *waiters = PyList_New(0);
    if (waiters == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < q->len; i++) {
        PyObject *future = queue_at(q, i);
        int done = call_method_bool(future, self->base.state->str_done);
        if (done < 0 || (!done && PyList_Append(waiters, future) < 0)) {
            Py_DECREF(waiters);
            return NULL;
        }
    }
    if (PyList_GET_SIZE(waiters) == 0) {
        Py_DECREF(waiters);
        Py_RETURN_NONE;
    }
    PyObject *holders = holders_as_dict(&self->holders);
    if (holders == NULL) {
        Py_DECREF(waiters);
        return NULL;
    }
    return Py_BuildValue("OnNN", self->base.loop, self->borrowed, holders,
                         waiters);
}

/* Takes the futures out of the line and fails them with DeadlockError. */
static PyObject *
limiter_fail_waiters(LimiterObject *self, PyObject *const *args,
                     Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "_fail_waiters(futures, message)");
        return NULL;
    }
    ModuleState *st = self->base.state;
    PyObject *futures = PySequence_Fast(args[0], "futures must be a list");
    if (futures == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(futures); i++) {
        PyObject *future = PySequence_Fast_GET_ITEM(futures, i);
        if (source_dequeue(&self->base, future) != 1) {
            continue;   /* not in this line: not ours to fail */
        }
        PyObject *error = PyObject_CallOneArg(st->deadlock_error, args[1]);
        PyObject *res = error == NULL ? NULL
            : call_method1(future, st->str_set_exception, error);
        Py_XDECREF(error);
        if (res == NULL) {
            Py_DECREF(futures);
            return NULL;
        }
        Py_DECREF(res);
    }
    Py_DECREF(futures);
    Py_RETURN_NONE;
}

/* ---- the Python type ---- */

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
        return PyFloat_FromDouble(INFINITY);
    }
    return PyLong_FromSsize_t(self->total);
}

/* Arguments are taken by __init__, so that a subclass may have its own
 * (class Semaphore(Limiter): def __init__(self, value=1): ...). */
static PyObject *
limiter_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
            PyObject *Py_UNUSED(kwds))
{
    LimiterObject *self = (LimiterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (source_init(&self->base, type, &limiter_ops) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
limiter_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    LimiterObject *self = (LimiterObject *)op;
    static char *kwlist[] = {"total_tokens", NULL};
    PyObject *total_arg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Limiter", kwlist,
                                     &total_arg)) {
        return -1;
    }
    Py_ssize_t total;
    if (parse_total(self->base.state, total_arg, &total) < 0) {
        return -1;
    }
    self->total = total;
    self->base.initialized = 1;
    return limiter_wake(self);
}

static int
limiter_traverse(LimiterObject *self, visitproc visit, void *arg)
{
    int err = holders_traverse(&self->holders, visit, arg);
    return err ? err : source_traverse(&self->base, visit, arg);
}

static int
limiter_clear(LimiterObject *self)
{
    holders_clear(&self->holders);
    source_clear(&self->base);
    return 0;
}

static void
limiter_dealloc(LimiterObject *self)
{
    source_dealloc(&self->base, (inquiry)limiter_clear);
}

/* total_tokens (a new ref) and the number of live waiters. */
static int
snapshot(LimiterObject *self, PyObject **total, Py_ssize_t *waiting)
{
    *waiting = source_waiting(&self->base);
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
limiter_statistics(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *total;
    Py_ssize_t waiting;
    if (snapshot(self, &total, &waiting) < 0) {
        return NULL;
    }
    return PyObject_CallFunction(self->base.state->limiter_statistics, "Nnn",
                                 total, self->borrowed, waiting);
}

static PyObject *
limiter_locked(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (source_prune(&self->base) < 0) {
        return NULL;
    }
    return PyBool_FromLong(self->borrowed >= self->total
                           || self->base.waiters.len > 0);
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
    if (parse_total(self->base.state, value, &total) < 0) {
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
        return PyFloat_FromDouble(INFINITY);
    }
    Py_ssize_t free = self->total - self->borrowed;
    return PyLong_FromSsize_t(free > 0 ? free : 0);
}

static PyMethodDef limiter_methods[] = {
    {"statistics", (PyCFunction)limiter_statistics, METH_NOARGS,
     "LimiterStatistics(total_tokens, borrowed_tokens, waiting)."},
    {"locked", (PyCFunction)limiter_locked, METH_NOARGS,
     "True when an acquire would have to wait."},
    {"_deadlock_state", (PyCFunction)limiter_deadlock_state, METH_NOARGS,
     NULL},
    {"_fail_waiters", (PyCFunction)(void (*)(void))limiter_fail_waiters,
     METH_FASTCALL, NULL},
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

static PyType_Slot limiter_slots[] = {
    {Py_tp_doc, "Limiter(total_tokens)\n--\n\n"
                "A FIFO counting limiter, shareable by any number of groups "
                "on one event loop."},
    {Py_tp_new, limiter_new},
    {Py_tp_init, limiter_init},
    {Py_tp_dealloc, limiter_dealloc},
    {Py_tp_traverse, limiter_traverse},
    {Py_tp_clear, limiter_clear},
    {Py_tp_repr, limiter_repr},
    {Py_tp_methods, limiter_methods},
    {Py_tp_getset, limiter_getset},
    {0, NULL},
};

PyType_Spec limiter_spec = {
    .name = "taskbound.Limiter",
    .basicsize = sizeof(LimiterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = limiter_slots,
};
