/* What Limiter and RateLimiter share: a FIFO line of waiter futures, the
 * event loop they are bound to, a rank, and the acquire protocol.
 *
 * A waiter is woken with the result True when it is handed its token (which
 * counts as taken from that moment, so nobody can barge in between), or
 * False when a group aborts its claim. Waiters cancelled from outside stay
 * queued until their task runs again; they are skipped and pruned.
 */
#include "core/core.h"

int
source_init(TokenSource *self, PyTypeObject *type, const TokenSourceOps *ops)
{
    self->state = state_of_type(type);
    if (self->state == NULL) {
        return -1;
    }
    self->ops = ops;
    self->rank = self->state->next_rank++;
    self->paused_until = -INFINITY;
    return 0;
}

int
source_time(TokenSource *self, PyObject *loop, double *now)
{
    PyObject *t = call_method0(loop, self->state->str_time);
    if (t == NULL) {
        return -1;
    }
    *now = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* The time of a hold's grant or end, for its sample: loop.time(), read
 * from the clock itself where that is asyncio's own time() (a Python call
 * less at each end of every sampled hold). */
int
sample_time(TokenSource *self, PyObject *loop, double *now)
{
    PyTime_t t;
    if (loop != self->loop || !self->monotonic_clock) {
        return source_time(self, loop, now);
    }
    if (PyTime_Monotonic(&t) < 0) {
        return -1;
    }
    *now = PyTime_AsSecondsDouble(t);
    return 0;
}

/* The time on a loop it leaves: a closed loop's clock stands still, and
 * asyncio's and uvloop's both count on the monotonic clock. */
static int
time_on_loop_left(TokenSource *self, int closed, double *now)
{
    if (!closed) {
        return source_time(self, self->loop, now);
    }
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) {
        return -1;
    }
    PyObject *t = PyObject_CallMethod(time, "monotonic", NULL);
    Py_DECREF(time);
    if (t == NULL) {
        return -1;
    }
    *now = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

int
source_paused(TokenSource *self)
{
    double now;
    if (self->paused_until == -INFINITY) {
        return 0;
    }
    if (source_time(self, self->loop, &now) < 0) {
        return -1;
    }
    if (now < self->paused_until) {
        return 1;
    }
    self->paused_until = -INFINITY;
    return 0;
}

int
source_cancel_timer(TokenSource *self, PyObject **timer)
{
    PyObject *handle = *timer;
    if (handle == NULL) {
        return 0;
    }
    *timer = NULL;
    PyObject *res = call_method0(handle, self->state->str_cancel);
    Py_DECREF(handle);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

int
source_call_at(TokenSource *self, double when, const char *method,
               PyObject **timer)
{
    assert(*timer == NULL);
    PyObject *at = PyFloat_FromDouble(when);
    PyObject *callback = PyObject_GetAttrString((PyObject *)self, method);
    if (at != NULL && callback != NULL) {
        PyObject *args[3] = {self->loop, at, callback};
        *timer = PyObject_VectorcallMethod(
            self->state->str_call_at, args,
            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_XDECREF(at);
    Py_XDECREF(callback);
    return *timer == NULL ? -1 : 0;
}

PyObject *
source_pause_end(TokenSource *self)
{
    int paused = self->loop == NULL ? 0 : source_paused(self);
    if (paused < 0) {
        return NULL;
    }
    return paused ? PyFloat_FromDouble(self->paused_until)
                  : Py_NewRef(Py_None);
}

/* Whether loop.<name> is `base`, BaseEventLoop's own function, bound to
 * loop: then the core may do what it does without a Python call. A loop
 * without the method is not asyncio's; its use will say what is wrong. */
static int
is_base_method(PyObject *loop, PyObject *name, PyObject *base)
{
    PyObject *method = PyObject_GetAttr(loop, name);
    if (method == NULL) {
        PyErr_Clear();
        return 0;
    }
    int own = PyMethod_Check(method)
              && PyMethod_GET_FUNCTION(method) == base
              && PyMethod_GET_SELF(method) == loop;
    Py_DECREF(method);
    return own;
}

/* What a source learns of a loop when it binds to it. */
static void
learn_loop(TokenSource *self, PyObject *loop)
{
    ModuleState *st = self->state;
    /* BaseEventLoop.create_future() only makes an asyncio.Future(loop=loop):
     * the waiters are then made so directly, without a Python call per
     * wait. (uvloop's is its own, in C already.) */
    self->plain_futures = is_base_method(loop, st->str_create_future,
                                         st->base_create_future);
    /* BaseEventLoop.time() returns time.monotonic(), which hold samples
     * then read in C. (uvloop's is its own clock, in milliseconds.) */
    self->monotonic_clock = is_base_method(loop, st->str_time, st->base_time);
}

/* A source serves one loop at a time, and moves to another one only when
 * nothing of it is in use where it is: no task waiting, no token held. So
 * a module-level limiter serves one asyncio.run() after another, and a
 * test suite's loop per test, while two loops never share its tokens. A
 * closed loop's waiters can never run again; they are dropped, and tokens
 * its tasks still hold stay counted until given back but no longer keep
 * the source there. */
static int
source_move(TokenSource *self, PyObject *loop)
{
    ModuleState *st = self->state;
    if (self->ops->held == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "%R is bound to a different event loop: it stays with "
                     "the loop it first served, as its connections do; make "
                     "one per event loop", self);
        return -1;
    }
    int closed = call_method_bool(self->loop, st->str_is_closed);
    if (closed < 0) {
        return -1;
    }
    Py_ssize_t waiting = 0, held = 0;
    if (!closed && ((waiting = source_waiting(self)) < 0
                    || (held = self->ops->held(self)) < 0)) {
        return -1;
    }
    if (waiting > 0 || held > 0) {
        PyErr_Format(PyExc_RuntimeError,
                     "%R is in use on a different event loop (tokens held "
                     "there: %zd, tasks waiting there: %zd): it moves to "
                     "another loop only when idle, so give its tokens back "
                     "on that loop first, or make one limiter per event "
                     "loop", self, held, waiting);
        return -1;
    }
    /* The next start of a schedule and the end of a pause stay as far
     * ahead on the new loop's clock as on the old one's. */
    double then, now;
    if (time_on_loop_left(self, closed, &then) < 0
            || source_time(self, loop, &now) < 0) {
        return -1;
    }
    self->paused_until += now - then;   /* (-inf, no pause, stays) */
    if (self->ops->move != NULL && self->ops->move(self, now - then) < 0) {
        return -1;
    }
    queue_clear(&self->waiters);    /* none of them can be served */
    Py_SETREF(self->loop, Py_NewRef(loop));
    learn_loop(self, loop);
    return 0;
}

int
source_bind(TokenSource *self, PyObject *loop)
{
    if (!self->initialized) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s.__init__() was not called on this object",
                     _PyType_Name(Py_TYPE(self)));
        return -1;
    }
    if (self->loop == loop) {
        return 0;
    }
    if (self->loop == NULL) {
        self->loop = Py_NewRef(loop);
        learn_loop(self, loop);
        return 0;
    }
    return source_move(self, loop);
}

int
source_prune(TokenSource *self)
{
    WaiterQueue *q = &self->waiters;
    while (q->len > 0) {
        int done = future_done(self->state, queue_at(q, 0));
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

Py_ssize_t
source_waiting(TokenSource *self)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < self->waiters.len; i++) {
        int done = future_done(self->state, queue_at(&self->waiters, i));
        if (done < 0) {
            return -1;
        }
        count += !done;
    }
    return count;
}

PyObject *
source_enqueue(TokenSource *self, PyObject *loop, Py_ssize_t n)
{
    PyObject *future;
    if (self->plain_futures) {
        PyObject *args[1] = {loop};
        future = PyObject_Vectorcall(self->state->future_type, args, 0,
                                     self->state->kwnames_loop);
    }
    else {
        future = call_method0(loop, self->state->str_create_future);
    }
    if (future == NULL) {
        return NULL;
    }
    if (queue_push_wanting(&self->waiters, future, n) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    return future;
}

int
source_dequeue(TokenSource *self, PyObject *future)
{
    return queue_remove(&self->waiters, future);
}

int
source_withdraw(TokenSource *self, PyObject *future, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
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
            /* Woken already: the tokens it was handed (if any) go on. A
             * waiter failed by deadlock detection was handed nothing. */
            PyObject *error = call_method0(future, st->str_exception);
            if (error == NULL) {
                return -1;
            }
            int failed = error != Py_None;
            Py_DECREF(error);
            if (failed) {
                op_dequeue(self, future);
                return 0;
            }
            PyObject *handed = call_method0(future, st->str_result);
            if (handed == NULL) {
                return -1;
            }
            int had_token = (handed == Py_True);
            Py_DECREF(handed);
            return had_token ? op_pass_on(self, n) : 0;
        }
    }
    op_dequeue(self, future);
    if (done) {
        return 0;
    }
    PyObject *res = call_method0(future, st->str_cancel);
    if (res == NULL && PyErr_ExceptionMatches(PyExc_RuntimeError)) {
        PyErr_Clear();      /* its loop is closed: out of line is enough */
        return 0;
    }
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

int
source_traverse(TokenSource *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->bound_aenter);
    Py_VISIT(self->bound_aexit);
    int err = sampler_traverse(self->sampler, visit, arg);
    if (err) {
        return err;
    }
    for (Py_ssize_t i = 0; i < self->waiters.len; i++) {
        Py_VISIT(queue_at(&self->waiters, i));
    }
    return 0;
}

void
source_clear(TokenSource *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->bound_aenter);
    Py_CLEAR(self->bound_aexit);
    sampler_clear(self->sampler);
    queue_clear(&self->waiters);
}

void
source_dealloc(TokenSource *self, inquiry clear)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    (void)clear((PyObject *)self);
    sampler_free(self->sampler);
    self->sampler = NULL;
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* ---- the base type: what every token source has ---- */

int
parse_tokens(ModuleState *st, PyObject *arg, Py_ssize_t *n)
{
    int overflow;
    if (arg == NULL || (PyLong_CheckExact(arg)
                        && PyLong_AsLongAndOverflow(arg, &overflow) == 1)) {
        *n = 1;
        return 0;
    }
    /* The rule and its words are the reference's (_common.check_tokens). */
    PyObject *checked = PyObject_CallOneArg(st->check_tokens, arg);
    if (checked == NULL) {
        return -1;
    }
    *n = PyLong_AsSsize_t(checked);
    Py_DECREF(checked);
    return *n == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The one optional argument n of acquire(), acquire_nowait(), release()
 * and hold(), positional or by name. */
static int
parse_n_argument(ModuleState *st, const char *method, PyObject *const *args,
                 Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t *n)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most 1 argument (n), %zd given", method,
                     nargs + nkw);
        return -1;
    }
    if (nkw == 1 && PyUnicode_CompareWithASCIIString(
                        PyTuple_GET_ITEM(kwnames, 0), "n") != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%s() got an unexpected keyword argument '%U'", method,
                     PyTuple_GET_ITEM(kwnames, 0));
        return -1;
    }
    return parse_tokens(st, nargs + nkw == 1 ? args[0] : NULL, n);
}

/* n, checked for this source: what acquire(n) and hold(n) may ask. */
static int
parse_weight(TokenSource *self, const char *method, PyObject *const *args,
             Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t *n)
{
    if (parse_n_argument(self->state, method, args, nargs, kwnames, n) < 0) {
        return -1;
    }
    return op_check_weight(self, *n);
}

static PyObject *
source_acquire(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    TokenSource *self = (TokenSource *)op;
    Py_ssize_t n = 1;
    if ((nargs || kwnames)
            && parse_weight(self, "acquire", args, nargs, kwnames, &n) < 0) {
        return NULL;
    }
    return claim_wait_new(self->state, op, n);
}

static PyObject *
source_pause(PyObject *op, PyObject *arg)
{
    TokenSource *self = (TokenSource *)op;
    ModuleState *st = self->state;
    /* The rule and its words are the reference's (_common.check_pause). */
    PyObject *checked = PyObject_CallOneArg(st->check_pause, arg);
    if (checked == NULL) {
        return NULL;
    }
    double seconds = PyFloat_AsDouble(checked);
    Py_DECREF(checked);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->ops->pause_changed == NULL) {
        PyErr_Format(PyExc_NotImplementedError,
                     "%R cannot pause: its tokens live elsewhere, and its "
                     "class does not implement pause() there", self);
        return NULL;
    }
    PyObject *loop = running_loop(st);
    if (loop == NULL) {
        return NULL;
    }
    double now;
    int status = source_bind(self, loop) < 0 ? -1
                 : source_time(self, loop, &now);
    Py_DECREF(loop);
    if (status < 0) {
        return NULL;
    }
    if (now + seconds > self->paused_until) {
        self->paused_until = now + seconds;
        if (self->ops->pause_changed(self) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
source_aenter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return claim_wait_new(((TokenSource *)op)->state, op, 1);
}

static PyObject *
source_acquire_nowait(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    TokenSource *self = (TokenSource *)op;
    Py_ssize_t n = 1;
    if ((nargs || kwnames)
            && parse_weight(self, "acquire_nowait", args, nargs, kwnames,
                            &n) < 0) {
        return NULL;
    }
    PyObject *loop = running_loop(self->state);
    if (loop == NULL) {
        return NULL;
    }
    int taken = op_try_take(self, loop, n);
    if (taken == 1) {
        PyObject *task = current_task_of(self->state, loop);
        op_note_holder(self, task, n);
        Py_XDECREF(task);
    }
    Py_DECREF(loop);
    if (taken < 0) {
        return NULL;
    }
    if (!taken) {
        PyErr_Format(self->state->would_block,
                     "%zd token(s) of %R are not free", n, self);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
source_release(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames)
{
    TokenSource *self = (TokenSource *)op;
    Py_ssize_t n = 1;
    /* (n may be more than the total, lowered since they were taken) */
    if ((nargs || kwnames)
            && parse_n_argument(self->state, "release", args, nargs, kwnames,
                                &n) < 0) {
        return NULL;
    }
    if (self->sampler != NULL) {
        sampler_on_release(self, n, 0, NULL);
    }
    if (op_release(self, n) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* release(n) at the end of an `async with`, whose error (args[1]) a
 * sampled hold counts by. */
static int
release_after_block(TokenSource *self, Py_ssize_t n, PyObject *const *args,
                    Py_ssize_t nargs)
{
    if (self->sampler != NULL) {
        PyObject *error = nargs >= 2 && args[1] != Py_None ? args[1] : NULL;
        sampler_on_release(self, n, 1, error);
    }
    return op_release(self, n);
}

static PyObject *
source_aexit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    TokenSource *self = (TokenSource *)op;
    if (release_after_block(self, 1, args, nargs) < 0) {
        return NULL;
    }
    return Py_NewRef(self->state->ready);
}

/* ---- Holding: n tokens for an `async with`, from hold(n) ---- */

typedef struct {
    PyObject_HEAD
    TokenSource *source;
    Py_ssize_t n;
} HoldingObject;

#define Holding_CAST(op) ((HoldingObject *)(op))

static PyObject *
source_hold(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    TokenSource *self = (TokenSource *)op;
    Py_ssize_t n;
    if (parse_weight(self, "hold", args, nargs, kwnames, &n) < 0) {
        return NULL;
    }
    HoldingObject *holding = PyObject_GC_New(HoldingObject,
                                             self->state->holding_type);
    if (holding == NULL) {
        return NULL;
    }
    holding->source = (TokenSource *)Py_NewRef(op);
    holding->n = n;
    PyObject_GC_Track(holding);
    return (PyObject *)holding;
}

static PyObject *
holding_aenter(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    HoldingObject *self = Holding_CAST(op);
    return claim_wait_new(self->source->state, (PyObject *)self->source,
                          self->n);
}

static PyObject *
holding_aexit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    HoldingObject *self = Holding_CAST(op);
    if (release_after_block(self->source, self->n, args, nargs) < 0) {
        return NULL;
    }
    return Py_NewRef(self->source->state->ready);
}

static PyObject *
holding_repr(PyObject *op)
{
    HoldingObject *self = Holding_CAST(op);
    return PyUnicode_FromFormat("<Holding %zd of %R>", self->n,
                                (PyObject *)self->source);
}

static int
holding_traverse(PyObject *op, visitproc visit, void *arg)
{
    HoldingObject *self = Holding_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->source);
    return 0;
}

static int
holding_clear(PyObject *op)
{
    Py_CLEAR(Holding_CAST(op)->source);
    return 0;
}

static void
holding_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)holding_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyMethodDef holding_methods[] = {
    {"__aenter__", holding_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))holding_aexit, METH_FASTCALL,
     NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot holding_slots[] = {
    {Py_tp_doc, "What limiter.hold(n) returns: n tokens for an async with."},
    {Py_tp_dealloc, holding_dealloc},
    {Py_tp_traverse, holding_traverse},
    {Py_tp_clear, holding_clear},
    {Py_tp_repr, holding_repr},
    {Py_tp_methods, holding_methods},
    {0, NULL},
};

PyType_Spec holding_spec = {
    .name = "taskbound.Holding",
    .basicsize = sizeof(HoldingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = holding_slots,
};

static int
token_source_traverse(PyObject *op, visitproc visit, void *arg)
{
    return source_traverse((TokenSource *)op, visit, arg);
}

/* Whether this source can ever grant n at once (for
 * taskbound._common.check_weight, which the reference's rules for n and
 * costs call): None, or the error acquire(n) would raise at the call. */
static PyObject *
source_check_weight_method(PyObject *op, PyObject *arg)
{
    TokenSource *self = (TokenSource *)op;
    Py_ssize_t n;
    if (parse_tokens(self->state, arg, &n) < 0
            || op_check_weight(self, n) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _sample_holds(on_window, is_overload, size): from now on, every hold
 * of its tokens that ends is a sample (core/sampler.c); once only. */
static PyObject *
source_sample_holds(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    TokenSource *self = (TokenSource *)op;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "_sample_holds() takes on_window, is_overload, size");
        return NULL;
    }
    if (self->sampler != NULL || self->ops->held == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%R cannot sample its holds%s",
                     self, self->sampler != NULL ? " twice" : "");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 1 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_ValueError,
                        "_sample_holds() takes two callables and a size >= 1");
        return NULL;
    }
    self->sampler = sampler_new(args[0], args[1], size);
    if (self->sampler == NULL) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
source_mark_overload(PyObject *op, PyObject *task)
{
    TokenSource *self = (TokenSource *)op;
    if (self->sampler != NULL && task != Py_None
            && sampler_mark(self->sampler, task) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* (samples, drops) of the window under way, for statistics(). */
static PyObject *
source_window_so_far(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    HoldSampler *s = ((TokenSource *)op)->sampler;
    return s == NULL ? Py_BuildValue("(ii)", 0, 0)
                     : Py_BuildValue("(nn)", s->samples, s->drops);
}

static PyMethodDef source_methods[] = {
    {"_window_so_far", source_window_so_far, METH_NOARGS,
     "(samples, drops) of the window of hold samples under way."},
    {"_sample_holds", (PyCFunction)(void (*)(void))source_sample_holds,
     METH_FASTCALL, "Sample the hold times of its tokens (AdaptiveLimiter)."},
    {"_mark_overload", source_mark_overload, METH_O,
     "The next hold of this task that ends counts as a drop."},
    {"acquire", (PyCFunction)(void (*)(void))source_acquire,
     METH_FASTCALL | METH_KEYWORDS,
     "acquire(n=1)\n--\n\nWait for n tokens (FIFO: a request that does "
     "not fit holds back those behind it); for a RateLimiter, for a start "
     "of n units."},
    {"acquire_nowait", (PyCFunction)(void (*)(void))source_acquire_nowait,
     METH_FASTCALL | METH_KEYWORDS,
     "acquire_nowait(n=1)\n--\n\nTake n tokens now, or raise WouldBlock."},
    {"release", (PyCFunction)(void (*)(void))source_release,
     METH_FASTCALL | METH_KEYWORDS,
     "release(n=1)\n--\n\nGive n tokens back; waiters get them in "
     "arrival order (a RateLimiter has nothing to give back)."},
    {"pause", source_pause, METH_O,
     "pause(seconds)\n--\n\nGrant no token for `seconds` from now (a "
     "server's push-back); holders keep theirs and waiters their places; "
     "a later pause extends it, an earlier one does not shorten it."},
    {"hold", (PyCFunction)(void (*)(void))source_hold,
     METH_FASTCALL | METH_KEYWORDS,
     "hold(n=1)\n--\n\nn tokens for an async with: taken on the way in, "
     "given back on the way out."},
    {"_check_weight", source_check_weight_method, METH_O,
     "Raise what acquire(n) would for this n, at the call."},
    {NULL, NULL, 0, NULL},
};

/* ---- __aenter__ and __aexit__, bound once per source ----
 *
 * `async with` looks both up on every entry and, up to 3.13, binds each
 * anew: two method objects made and freed per entry, a few per cent of a
 * contended entry's cost. So in the type they are BindOnce descriptors:
 * read on the class, they give the plain method descriptors; read on a
 * source, they bind once and the source keeps the bound method (a cycle,
 * which the collector breaks when the source goes).
 */

static PyMethodDef source_aenter_def = {
    "__aenter__", source_aenter, METH_NOARGS, NULL};
static PyMethodDef source_aexit_def = {
    "__aexit__", (PyCFunction)(void (*)(void))source_aexit, METH_FASTCALL,
    NULL};

typedef struct {
    PyObject_HEAD
    PyObject *unbound;      /* the method's own descriptor */
    Py_ssize_t offset;      /* where a source keeps it bound */
} BindOnceObject;

#define BindOnce_CAST(op) ((BindOnceObject *)(op))

static PyObject *
bind_once_get(PyObject *op, PyObject *obj, PyObject *type)
{
    BindOnceObject *self = BindOnce_CAST(op);
    descrgetfunc bind = Py_TYPE(self->unbound)->tp_descr_get;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self->unbound);    /* read on the class */
    }
    if (!PyObject_TypeCheck(obj, PyDescr_TYPE(self->unbound))) {
        /* The method descriptor's own error for another type's object. */
        return bind(self->unbound, obj, type);
    }
    PyObject **slot = (PyObject **)((char *)obj + self->offset);
    if (*slot == NULL) {
        *slot = bind(self->unbound, obj, type);
        if (*slot == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(*slot);
}

static int
bind_once_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(BindOnce_CAST(op)->unbound);
    return 0;
}

static int
bind_once_clear(PyObject *op)
{
    Py_CLEAR(BindOnce_CAST(op)->unbound);
    return 0;
}

static void
bind_once_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)bind_once_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyType_Slot bind_once_slots[] = {
    {Py_tp_doc, "A method of token sources that binds once per source."},
    {Py_tp_descr_get, bind_once_get},
    {Py_tp_traverse, bind_once_traverse},
    {Py_tp_clear, bind_once_clear},
    {Py_tp_dealloc, bind_once_dealloc},
    {0, NULL},
};

static PyType_Spec bind_once_spec = {
    .name = "taskbound._taskbound.BindOnce",
    .basicsize = sizeof(BindOnceObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = bind_once_slots,
};

static int
add_bind_once(PyTypeObject *bind_once, PyTypeObject *base, PyMethodDef *def,
              Py_ssize_t offset)
{
    PyObject *unbound = PyDescr_NewMethod(base, def);
    if (unbound == NULL) {
        return -1;
    }
    BindOnceObject *self = PyObject_GC_New(BindOnceObject, bind_once);
    if (self == NULL) {
        Py_DECREF(unbound);
        return -1;
    }
    self->unbound = unbound;
    self->offset = offset;
    PyObject_GC_Track(self);
    /* The type is immutable to Python code, not to the module making it. */
    int status = PyDict_SetItemString(base->tp_dict, def->ml_name,
                                      (PyObject *)self);
    Py_DECREF(self);
    return status;
}

int
source_add_context_methods(PyObject *module, PyTypeObject *base)
{
    PyTypeObject *bind_once = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &bind_once_spec, NULL);
    if (bind_once == NULL) {
        return -1;
    }
    int status = -1;
    if (add_bind_once(bind_once, base, &source_aenter_def,
                      offsetof(TokenSource, bound_aenter)) == 0
            && add_bind_once(bind_once, base, &source_aexit_def,
                             offsetof(TokenSource, bound_aexit)) == 0) {
        PyType_Modified(base);
        status = 0;
    }
    Py_DECREF(bind_once);
    return status;
}

static PyMemberDef source_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TokenSource, weakreflist),
     READONLY, NULL},
    {"_rank", T_ULONGLONG, offsetof(TokenSource, rank), READONLY,
     "The order in which tasks take this limiter's tokens."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot token_source_slots[] = {
    {Py_tp_doc, "The base of Limiter, RateLimiter and ExternalSource: a "
                "FIFO line of waiters, an event loop, a rank."},
    {Py_tp_traverse, token_source_traverse},
    {Py_tp_methods, source_methods},
    {Py_tp_members, source_members},
    {0, NULL},
};

/* Not instantiable: only its subclasses are. */
PyType_Spec token_source_spec = {
    .name = "taskbound._taskbound.TokenSource",
    .basicsize = sizeof(TokenSource),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = token_source_slots,
};

/* ---- the one rule for a task's limiters ---- */

/* (The reference's words too: _common.limiters_in_rank_order.) */
#define NOT_A_LIMITER \
    "limiter must be a taskbound limiter (Limiter, RateLimiter, " \
    "RedisLimiter, ...) or a sequence of them, not "

int
is_token_source(ModuleState *state, PyObject *obj)
{
    return PyObject_TypeCheck(obj, state->token_source_type);
}

static int
rank_order(const void *a, const void *b)
{
    unsigned long long ra = (*(TokenSource *const *)a)->rank;
    unsigned long long rb = (*(TokenSource *const *)b)->rank;
    return (ra > rb) - (ra < rb);
}

PyObject *
sources_in_rank_order(ModuleState *state, PyObject *first, PyObject *limiter)
{
    ASSERT_NO_ERROR();
    PyObject *given;
    if (limiter == Py_None) {
        given = PyTuple_New(0);
    }
    else if (is_token_source(state, limiter)) {
        given = PyTuple_Pack(1, limiter);
    }
    else if (PyList_Check(limiter) || PyTuple_Check(limiter)) {
        given = PySequence_Tuple(limiter);
    }
    else {
        PyErr_Format(PyExc_TypeError, NOT_A_LIMITER "%s",
                     _PyType_Name(Py_TYPE(limiter)));
        return NULL;
    }
    if (given == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(given);
    Py_ssize_t nfirst = first != NULL ? PyTuple_GET_SIZE(first) : 0;
    /* Borrowed from `first` and `given`, which outlive the array. */
    PyObject **sources = PyMem_New(PyObject *, nfirst + n);
    if (sources == NULL) {
        Py_DECREF(given);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    for (; count < nfirst; count++) {
        sources[count] = PyTuple_GET_ITEM(first, count);
    }
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(given, i);
        if (!is_token_source(state, item)) {
            PyErr_Format(PyExc_TypeError,
                         NOT_A_LIMITER "a sequence holding %s",
                         _PyType_Name(Py_TYPE(item)));
            goto done;
        }
        int known = 0;
        for (Py_ssize_t j = 0; j < count && !known; j++) {
            known = sources[j] == item;
        }
        if (!known) {
            sources[count++] = item;
        }
    }
    qsort(sources, (size_t)count, sizeof(PyObject *), rank_order);
    result = PyTuple_New(count);
    if (result != NULL) {
        for (Py_ssize_t i = 0; i < count; i++) {
            PyTuple_SET_ITEM(result, i, Py_NewRef(sources[i]));
        }
    }
done:
    PyMem_Free(sources);
    Py_DECREF(given);
    return result;
}
