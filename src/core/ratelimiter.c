/* RateLimiter: at most `rate` starts per `per` seconds, bursts of `burst`.
 *
 * GCRA keeps the bucket as one timestamp, the theoretical arrival time of
 * the next start (tat): a start of n units at `now` is allowed when
 * now >= tat - interval * (burst - n), and moves tat to
 * max(tat, now) + n * interval. Waiters queue in FIFO order; one loop
 * timer wakes the first of them when its start comes. release() is a
 * no-op.
 *
 * A loop's timer fires late: asyncio's rounds its wait up to the next
 * millisecond, uvloop counts in milliseconds. Were each start taken at the
 * time the timer woke, every start would lose that lateness, and a rate
 * finer than the loop's timers would never be reached (2,000/s gave
 * 680/s). So the waiters a timer wakes start on the schedule, as if at the
 * time it was set for, when it is at most TIMER_LATENESS (taskbound._common)
 * late, and the starts that came due meanwhile go at once: a window gets
 * at most its share plus TIMER_LATENESS worth. A longer stall (the loop
 * blocked) restarts the schedule from then, never a flood of missed starts.
 */
#include "core/core.h"

typedef struct {
    TokenSource base;
    double rate;
    double per;
    Py_ssize_t burst;
    double tat;              /* theoretical arrival time of the next start */
    PyObject *timer;         /* loop handle waking the first waiter */
    double timer_when;       /* the time it is set for */
} RateLimiterObject;

static double
interval(RateLimiterObject *self)
{
    return self->per / self->rate;
}

/* When a start of n units may be made: GCRA allows it while the schedule,
 * n intervals further on, stays within the burst; and not before a pause
 * ends (the spacing then goes on from there). */
static double
next_start(RateLimiterObject *self, Py_ssize_t n)
{
    double start = self->tat - interval(self) * (double)(self->burst - n);
    return start > self->base.paused_until ? start : self->base.paused_until;
}

/* A start is due a microsecond early: loop clocks are floats (uvloop's
 * counts milliseconds), so a timer set for a start can wake to a time that
 * rounds a hair below it. */
#define START_SLACK 1e-6

static int
due(RateLimiterObject *self, double now, Py_ssize_t n)
{
    return now + START_SLACK >= next_start(self, n);
}

static void
start(RateLimiterObject *self, double now, Py_ssize_t n)
{
    self->tat = (self->tat > now ? self->tat : now)
                + interval(self) * (double)n;
}

static int
loop_time(RateLimiterObject *self, PyObject *loop, double *now)
{
    return source_time(&self->base, loop, now);
}

/* Arms the timer for the first waiter's start (and disarms an old one). */
static int
schedule(RateLimiterObject *self)
{
    if (source_cancel_timer(&self->base, &self->timer) < 0
            || source_prune(&self->base) < 0) {
        return -1;
    }
    if (self->base.waiters.len == 0) {
        return 0;
    }
    self->timer_when = next_start(self, queue_wants_at(&self->base.waiters,
                                                       0));
    return source_call_at(&self->base, self->timer_when, "_on_timer",
                          &self->timer);
}

static int
rate_try_take(TokenSource *base, PyObject *loop, Py_ssize_t n)
{
    RateLimiterObject *self = (RateLimiterObject *)base;
    double now;
    if (source_bind(base, loop) < 0 || source_prune(base) < 0) {
        return -1;
    }
    if (base->waiters.len > 0) {
        return 0;
    }
    if (loop_time(self, loop, &now) < 0) {
        return -1;
    }
    if (!due(self, now, n)) {
        return 0;
    }
    start(self, now, n);
    return 1;
}

static int
rate_check_weight(TokenSource *base, Py_ssize_t n)
{
    RateLimiterObject *self = (RateLimiterObject *)base;
    if (n > self->burst) {
        PyErr_Format(PyExc_ValueError,
                     "n=%zd is more than burst=%zd of %R: a start of that "
                     "many units could never be made", n, self->burst, self);
        return -1;
    }
    return 0;
}

static PyObject *
rate_enqueue(TokenSource *base, PyObject *loop, Py_ssize_t n)
{
    PyObject *future = source_enqueue(base, loop, n);
    if (future != NULL && base->waiters.len == 1
            && schedule((RateLimiterObject *)base) < 0) {
        source_dequeue(base, future);
        Py_CLEAR(future);
    }
    return future;
}

static int
rate_dequeue(TokenSource *base, PyObject *future)
{
    int head = base->waiters.len > 0 && queue_at(&base->waiters, 0) == future;
    int removed = source_dequeue(base, future);
    if (head && schedule((RateLimiterObject *)base) < 0) {
        PyErr_WriteUnraisable((PyObject *)base);
    }
    return removed;
}

/* A waiter handed a start of n units gave up: the next one gets it if it
 * wants as many; else the n intervals go back to the schedule, and the
 * next one starts when that allows. */
static int
rate_pass_on(TokenSource *base, Py_ssize_t n)
{
    RateLimiterObject *self = (RateLimiterObject *)base;
    if (source_prune(base) < 0) {
        return -1;
    }
    WaiterQueue *q = &base->waiters;
    if (q->len > 0 && queue_wants_at(q, 0) == n) {
        PyObject *future = queue_pop(q);
        int handed = set_result_if_pending(base->state, future, Py_True);
        Py_DECREF(future);
        if (handed < 0) {
            return -1;
        }
    }
    else {
        self->tat -= interval(self) * (double)n;
    }
    return schedule(self);
}

static int
rate_give_back(TokenSource *base, Py_ssize_t n)
{
    return 0;   /* a start, once made, is spent */
}

static Py_ssize_t
rate_held(TokenSource *base)
{
    return 0;   /* a start, once made, is spent: nothing is held */
}

/* The schedule goes with it, so that the rate holds across the move. */
static int
rate_move(TokenSource *base, double shift)
{
    RateLimiterObject *self = (RateLimiterObject *)base;
    /* (its timer was armed for waiters that are gone) */
    if (source_cancel_timer(base, &self->timer) < 0) {
        return -1;
    }
    self->tat += shift;     /* (-inf, never started, stays) */
    return 0;
}

/* The first waiter's start moved. */
static int
rate_pause_changed(TokenSource *base)
{
    return schedule((RateLimiterObject *)base);
}

static const TokenSourceOps rate_limiter_ops = {
    .check_weight = rate_check_weight,
    .try_take = rate_try_take,
    .enqueue = rate_enqueue,
    .dequeue = rate_dequeue,
    .pass_on = rate_pass_on,
    .give_back = rate_give_back,
    .release = rate_give_back,
    .held = rate_held,
    .move = rate_move,
    .pause_changed = rate_pause_changed,
};

/* ---- the Python type ---- */

static int
parse_positive(ModuleState *st, const char *name, PyObject *value,
               double *out)
{
    PyObject *checked = PyObject_CallFunction(st->check_positive, "sO", name,
                                              value);
    if (checked == NULL) {
        return -1;
    }
    *out = PyFloat_AsDouble(checked);
    Py_DECREF(checked);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* Arguments are taken by __init__, so that a subclass may have its own. */
static PyObject *
rate_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
         PyObject *Py_UNUSED(kwds))
{
    RateLimiterObject *self = (RateLimiterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (source_init(&self->base, type, &rate_limiter_ops) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->rate = 1.0;
    self->per = 1.0;
    self->burst = 1;
    self->tat = -INFINITY;
    return (PyObject *)self;
}

static int
rate_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    RateLimiterObject *self = (RateLimiterObject *)op;
    static char *kwlist[] = {"rate", "per", "burst", NULL};
    PyObject *rate_arg, *per_arg = NULL, *burst_arg = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:RateLimiter", kwlist,
                                     &rate_arg, &per_arg, &burst_arg)) {
        return -1;
    }
    ModuleState *st = self->base.state;
    double rate, per = 1.0;
    Py_ssize_t burst = 1;
    if (parse_positive(st, "rate", rate_arg, &rate) < 0
            || (per_arg != NULL
                && parse_positive(st, "per", per_arg, &per) < 0)) {
        return -1;
    }
    if (burst_arg != NULL) {
        PyObject *checked = PyObject_CallOneArg(st->check_burst, burst_arg);
        if (checked == NULL) {
            return -1;
        }
        burst = PyLong_AsSsize_t(checked);
        Py_DECREF(checked);
        if (burst == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    self->rate = rate;
    self->per = per;
    self->burst = burst;
    self->base.initialized = 1;
    return 0;
}

static int
rate_traverse(RateLimiterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->timer);
    return source_traverse(&self->base, visit, arg);
}

static int
rate_clear(RateLimiterObject *self)
{
    Py_CLEAR(self->timer);
    source_clear(&self->base);
    return 0;
}

static void
rate_dealloc(RateLimiterObject *self)
{
    source_dealloc(&self->base, (inquiry)rate_clear);
}

static PyObject *
rate_repr(RateLimiterObject *self)
{
    Py_ssize_t waiting = source_waiting(&self->base);
    if (waiting < 0) {
        return NULL;
    }
    PyObject *rate = PyFloat_FromDouble(self->rate);
    PyObject *per = PyFloat_FromDouble(self->per);
    PyObject *repr = NULL;
    if (rate != NULL && per != NULL) {
        repr = PyUnicode_FromFormat(
            "<RateLimiter rate=%S per=%S burst=%zd waiting=%zd>",
            rate, per, self->burst, waiting);
    }
    Py_XDECREF(rate);
    Py_XDECREF(per);
    return repr;
}

static PyObject *
rate_on_timer(RateLimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    TokenSource *base = &self->base;
    double now;
    Py_CLEAR(self->timer);
    if (loop_time(self, base->loop, &now) < 0 || source_prune(base) < 0) {
        return NULL;
    }
    /* The timer may fire a clock tick early: the first waiter goes anyway,
     * and start() keeps the schedule from there. Late, its waiters start
     * on the schedule (see the top). */
    double late = now - self->timer_when;
    double scheduled = (late > 0 && late <= base->state->timer_lateness)
                       ? self->timer_when : now;
    int first = 1;
    WaiterQueue *q = &base->waiters;
    while (q->len > 0 && (first || due(self, now, queue_wants_at(q, 0)))) {
        Py_ssize_t n = queue_wants_at(q, 0);
        PyObject *future = queue_pop(q);
        int handed = set_result_if_pending(base->state, future, Py_True);
        Py_DECREF(future);
        if (handed < 0) {
            return NULL;
        }
        if (handed) {
            start(self, scheduled, n);
            first = 0;
        }
        if (source_prune(base) < 0) {
            return NULL;
        }
    }
    if (schedule(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
rate_statistics(RateLimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t waiting = source_waiting(&self->base);
    if (waiting < 0) {
        return NULL;
    }
    PyObject *pause_end = source_pause_end(&self->base);
    if (pause_end == NULL) {
        return NULL;
    }
    return PyObject_CallFunction(self->base.state->rate_limiter_statistics,
                                 "ddnnN", self->rate, self->per, self->burst,
                                 waiting, pause_end);
}

static PyObject *
rate_locked(RateLimiterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (source_prune(&self->base) < 0) {
        return NULL;
    }
    if (self->base.waiters.len > 0) {
        Py_RETURN_TRUE;
    }
    if (self->base.loop == NULL) {
        Py_RETURN_FALSE;
    }
    double now;
    if (loop_time(self, self->base.loop, &now) < 0) {
        return NULL;
    }
    return PyBool_FromLong(!due(self, now, 1));
}

static PyObject *
rate_get_rate(RateLimiterObject *self, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(self->rate);
}

static int
rate_set_rate(RateLimiterObject *self, PyObject *value,
              void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete rate");
        return -1;
    }
    double rate;
    if (parse_positive(self->base.state, "rate", value, &rate) < 0) {
        return -1;
    }
    /* The last start stays where it was; the next one follows it at the
     * new interval. */
    double old_interval = interval(self);
    self->rate = rate;
    self->tat += interval(self) - old_interval;
    return self->base.loop == NULL ? 0 : schedule(self);
}

static PyObject *
rate_get_per(RateLimiterObject *self, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(self->per);
}

static PyObject *
rate_get_burst(RateLimiterObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->burst);
}

static PyMethodDef rate_methods[] = {
    {"statistics", (PyCFunction)rate_statistics, METH_NOARGS,
     "RateLimiterStatistics(rate, per, burst, waiting)."},
    {"locked", (PyCFunction)rate_locked, METH_NOARGS,
     "True when an acquire would have to wait."},
    {"_on_timer", (PyCFunction)rate_on_timer, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rate_getset[] = {
    {"rate", (getter)rate_get_rate, (setter)rate_set_rate,
     "Starts allowed per `per` seconds.", NULL},
    {"per", (getter)rate_get_per, NULL, "The period, in seconds.", NULL},
    {"burst", (getter)rate_get_burst, NULL,
     "How many starts may follow each other at once.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rate_slots[] = {
    {Py_tp_doc, "RateLimiter(rate, per=1.0, burst=1)\n--\n\n"
                "Starts at most `rate` acquisitions per `per` seconds "
                "(GCRA), in FIFO order."},
    {Py_tp_new, rate_new},
    {Py_tp_init, rate_init},
    {Py_tp_dealloc, rate_dealloc},
    {Py_tp_traverse, rate_traverse},
    {Py_tp_clear, rate_clear},
    {Py_tp_repr, rate_repr},
    {Py_tp_methods, rate_methods},
    {Py_tp_getset, rate_getset},
    {0, NULL},
};

PyType_Spec rate_limiter_spec = {
    .name = "taskbound.RateLimiter",
    .basicsize = sizeof(RateLimiterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rate_slots,
};
