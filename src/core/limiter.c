/* Limiter: a FIFO counting limiter shared by groups and tasks on one loop.
 *
 * A release hands its tokens straight to the first live waiters (their
 * futures get the result True), and the tokens count as borrowed from then
 * on, so nobody can take them in between: no barging. A waiter for more
 * than is free holds back those behind it, however little they want, so a
 * big request is never starved. Waiters cancelled from outside stay queued
 * until their task runs again; they are skipped and pruned.
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
    PyObject *resume_timer;  /* wakes the waiters when a pause ends */
} LimiterObject;

/* Whether n more tokens fit (an infinite total takes any number). */
static int
fits(LimiterObject *self, Py_ssize_t n)
{
    return self->total == TOTAL_INFINITE || n <= self->total - self->borrowed;
}

/* Hands free tokens to waiters, first come first served; the first that
 * wants more than is free stops the others behind it. */
static int
limiter_wake(LimiterObject *self)
{
    WaiterQueue *q = &self->base.waiters;
    if (q->len > 0) {
        int paused = source_paused(&self->base);
        if (paused != 0) {
            return paused < 0 ? -1 : 0;  /* the pause's end wakes them */
        }
    }
    while (q->len > 0 && fits(self, queue_wants_at(q, 0))) {
        Py_ssize_t n = queue_wants_at(q, 0);
        PyObject *future = queue_pop(q);
        self->borrowed += n;   /* counted before set_result() runs code */
        int handed = set_result_if_pending(self->base.state, future, Py_True);
        Py_DECREF(future);
        if (handed != 1) {
            self->borrowed -= n;
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
limiter_try_take(TokenSource *base, PyObject *loop, Py_ssize_t n)
{
    LimiterObject *self = (LimiterObject *)base;
    if (source_bind(base, loop) < 0) {
        return -1;
    }
    /* Full, it waits whoever is in line; only free tokens need the line
     * pruned of cancelled waiters, which would otherwise keep them. */
    if (!fits(self, n)) {
        return 0;
    }
    if (source_prune(base) < 0) {
        return -1;
    }
    if (base->waiters.len > 0) {
        return 0;
    }
    int paused = source_paused(base);
    if (paused != 0) {
        return paused < 0 ? -1 : 0;
    }
    self->borrowed += n;
    return 1;
}

/* Wakes the waiters when the pause ends (at its latest end). */
static int
arm_resume(LimiterObject *self)
{
    if (source_cancel_timer(&self->base, &self->resume_timer) < 0) {
        return -1;
    }
    return source_call_at(&self->base, self->base.paused_until, "_resume",
                          &self->resume_timer);
}

static PyObject *
limiter_enqueue(TokenSource *base, PyObject *loop, Py_ssize_t n)
{
    LimiterObject *self = (LimiterObject *)base;
    PyObject *future = source_enqueue(base, loop, n);
    if (future != NULL && base->paused_until != -INFINITY
            && self->resume_timer == NULL && arm_resume(self) < 0) {
        source_dequeue(base, future);
        Py_CLEAR(future);
    }
    return future;
}

static int
limiter_pause_changed(TokenSource *base)
{
    return base->waiters.len > 0 ? arm_resume((LimiterObject *)base) : 0;
}

/* The resume timer, armed for the pause's end as it stands: the pause is
 * over, even if the loop's clock reads a tick short of it. */
static PyObject *
limiter_resume(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->resume_timer);
    self->base.paused_until = -INFINITY;
    if (limiter_wake(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
limiter_move(TokenSource *base, double shift)
{
    /* (its timer was armed for waiters that are gone) */
    return source_cancel_timer(base, &((LimiterObject *)base)->resume_timer);
}

static int
limiter_check_weight(TokenSource *base, Py_ssize_t n)
{
    LimiterObject *self = (LimiterObject *)base;
    /* A total of 0 is a closed limiter, not a small one: everyone waits. */
    if (self->total != TOTAL_INFINITE && self->total > 0 && n > self->total) {
        PyErr_Format(PyExc_ValueError,
                     "n=%zd is more than total_tokens=%zd of %R: it could "
                     "never be granted", n, self->total, self);
        return -1;
    }
    return 0;
}

static int
check_borrowed(LimiterObject *self, Py_ssize_t n)
{
    if (self->borrowed < n) {
        PyErr_Format(PyExc_RuntimeError,
                     "release() of %zd token(s) called on %R, which has %zd "
                     "borrowed", n, self, self->borrowed);
        return -1;
    }
    return 0;
}

static int
limiter_give_back(TokenSource *base, Py_ssize_t n)
{
    LimiterObject *self = (LimiterObject *)base;
    if (check_borrowed(self, n) < 0) {
        return -1;
    }
    self->borrowed -= n;
    if (self->borrowed == 0) {
        /* Nothing is held: whoever was recorded is stale. */
        holders_clear(&self->holders);
        self->unattributed = 0;
        self->lost_track = 0;
        if (base->sampler != NULL) {
            sampler_forget(base->sampler);
        }
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
limiter_note_holder(TokenSource *base, PyObject *task, Py_ssize_t n)
{
    LimiterObject *self = (LimiterObject *)base;
    if (task == NULL) {
        lose_track(self);
    }
    else if (task == Py_None) {
        self->unattributed += n;
    }
    else if (holders_add(&self->holders, task, n) < 0) {
        lose_track(self);
    }
    double now;
    if (base->sampler != NULL && task != NULL
            && (sample_time(base, base->loop, &now) < 0
                || sampler_note_grant(base->sampler, task, now) < 0)) {
        PyErr_WriteUnraisable((PyObject *)self);  /* (no sample, then) */
    }
}

static int
limiter_release(TokenSource *base, Py_ssize_t n)
{
    LimiterObject *self = (LimiterObject *)base;
    if (check_borrowed(self, n) < 0) {
        return -1;
    }
    /* Its tokens are borrowed, so it is bound to a loop: the task giving
     * them back is that loop's (none when it is called from elsewhere).
     * What it did not take is counted off those taken outside any task,
     * and what is left of that is lost track of. */
    PyObject *task = current_task_of(base->state, base->loop);
    if (task == NULL) {
        lose_track(self);
    }
    else {
        Py_ssize_t own = task == Py_None
            ? 0 : holders_remove(&self->holders, task, n);
        Py_ssize_t anyone = n - own < self->unattributed
            ? n - own : self->unattributed;
        self->unattributed -= anyone;
        if (own + anyone < n) {
            self->lost_track = 1;
        }
        Py_DECREF(task);
    }
    return limiter_give_back(base, n);
}

/* A waiter for more than is free holds back those behind it (so a big
 * request is never starved); once it leaves, they may fit. */
static int
limiter_dequeue(TokenSource *base, PyObject *future)
{
    WaiterQueue *q = &base->waiters;
    int head = q->len > 0 && queue_at(q, 0) == future;
    int removed = source_dequeue(base, future);
    if (head && limiter_wake((LimiterObject *)base) < 0) {
        /* Leaving a line cannot fail for its claim; the waiters behind
         * are woken by the next give-back instead. */
        PyErr_WriteUnraisable((PyObject *)base);
    }
    return removed;
}

static Py_ssize_t
limiter_held(TokenSource *base)
{
    return ((LimiterObject *)base)->borrowed;
}

static const TokenSourceOps limiter_ops = {
    .check_weight = limiter_check_weight,
    .try_take = limiter_try_take,
    .enqueue = limiter_enqueue,
    .dequeue = limiter_dequeue,
    .pass_on = limiter_give_back,
    .give_back = limiter_give_back,
    .release = limiter_release,
    .note_holder = limiter_note_holder,
    .held = limiter_held,
    .move = limiter_move,
    .pause_changed = limiter_pause_changed,
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
    WaiterQueue *q = &source->waiters;
    return source->ops == &limiter_ops && self->total != TOTAL_INFINITE
           && !fits(self, q->len > 0 ? queue_wants_at(q, 0) : 1);
}

/* (loop, borrowed, holders, live waiters), or None when this limiter
 * cannot be deadlocked now or does not know who holds its tokens. */
static PyObject *
limiter_deadlock_state(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->lost_track || self->unattributed > 0 || self->base.loop == NULL
            || source_prune(&self->base) < 0
            || !limiter_may_deadlock(&self->base)) {
        if (PyErr_Occurred()) {
            return NULL;
        }
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
        if (limiter_dequeue(&self->base, future) != 1) {
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
    Py_VISIT(self->resume_timer);
    int err = holders_traverse(&self->holders, visit, arg);
    return err ? err : source_traverse(&self->base, visit, arg);
}

static int
limiter_clear(LimiterObject *self)
{
    Py_CLEAR(self->resume_timer);
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
    PyObject *pause_end = source_pause_end(&self->base);
    if (pause_end == NULL) {
        Py_DECREF(total);
        return NULL;
    }
    return PyObject_CallFunction(self->base.state->limiter_statistics, "NnnN",
                                 total, self->borrowed, waiting, pause_end);
}

static PyObject *
limiter_locked(LimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (source_prune(&self->base) < 0) {
        return NULL;
    }
    return PyBool_FromLong(!fits(self, 1) || self->base.waiters.len > 0);
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
    {"_resume", (PyCFunction)limiter_resume, METH_NOARGS, NULL},
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
