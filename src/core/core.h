/* The core layer: token sources, claims, and the asyncio helpers the
 * layers above build on. It includes nothing above it.
 *
 *   waiterqueue.c    WaiterQueue, a FIFO line of futures
 *   tokensource.c    TokenSource, the base type of every token source:
 *                    the loop it is bound to, its rank, its waiter line,
 *                    acquire()/acquire_nowait()/release()/async with
 *   limiter.c        Limiter (a counting limiter)
 *   ratelimiter.c    RateLimiter (starts per period, GCRA)
 *   externalsource.c ExternalSource (tokens kept outside the process)
 *   holders.c        HolderTable: the tokens each task took of a Limiter
 *   sampler.c        HoldSampler: hold times, for an AdaptiveLimiter
 *   claim.c          Claim: one token of each of several sources
 *   claimwait.c      ClaimWait, the awaitable of acquire()
 *   deadlock.c       the hooks into taskbound._deadlock
 *   awaitable.c      the coroutine protocol of the C awaitables, and the
 *                    calls into asyncio they share
 *   freelist.c       FreeList (core/state.h)
 */
#ifndef TASKBOUND_CORE_H
#define TASKBOUND_CORE_H

#include "core/compat.h"
#include "core/state.h"

/* The rule of the C core: no token-source operation, helper or call into
 * Python starts with an exception set. The interpreter's own functions
 * assume it: with an error pending, future.done() raises SystemError, and a
 * failure reported then is lost, so that the caller sees -1 with nothing
 * set (a crash on 3.11). Cleanup that must run while an error is pending
 * takes the error out first and puts it back after
 * (PyErr_GetRaisedException, PyErr_SetRaisedException). The suite's run on
 * a debug interpreter checks these asserts. */
#define ASSERT_NO_ERROR() assert(!PyErr_Occurred())

/* method(obj) / method(obj, arg) through vectorcall. */
static inline PyObject *
call_method0(PyObject *obj, PyObject *name)
{
    ASSERT_NO_ERROR();
    PyObject *args[1] = {obj};
    return PyObject_VectorcallMethod(
        name, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline PyObject *
call_method1(PyObject *obj, PyObject *name, PyObject *arg)
{
    ASSERT_NO_ERROR();
    PyObject *args[2] = {obj, arg};
    return PyObject_VectorcallMethod(
        name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* Calls method(obj) and returns its truth, or -1 on error. */
int call_method_bool(PyObject *obj, PyObject *name);

/* ---- WaiterQueue (waiterqueue.c) ---- */

typedef struct {
    PyObject **items;   /* ring buffer of waiter futures (strong refs) */
    Py_ssize_t *wants;  /* beside each, the tokens it waits for */
    Py_ssize_t head;
    Py_ssize_t len;
    Py_ssize_t cap;
} WaiterQueue;

PyObject *queue_at(WaiterQueue *q, Py_ssize_t i);
Py_ssize_t queue_wants_at(WaiterQueue *q, Py_ssize_t i);
int queue_push(WaiterQueue *q, PyObject *item);
/* Queues a future that waits for n tokens. */
int queue_push_wanting(WaiterQueue *q, PyObject *item, Py_ssize_t n);
/* Takes the first future out (the caller owns it); the line is not empty. */
PyObject *queue_pop(WaiterQueue *q);
/* Takes item out wherever it is: 1 if it was there. */
int queue_remove(WaiterQueue *q, PyObject *item);
void queue_clear(WaiterQueue *q);

/* ---- TokenSource (tokensource.c) ---- */

/* How a claim takes tokens, whatever the kind of source: n of them at a
 * time (n >= 1, checked by check_weight). */
typedef struct {
    /* 0 when it can ever grant n at once, else -1 with ValueError (n > 1
     * only: one token is always a valid request) */
    int (*check_weight)(TokenSource *self, Py_ssize_t n);
    /* 1 taken, 0 busy (or others queued ahead), -1 error */
    int (*try_take)(TokenSource *self, PyObject *loop, Py_ssize_t n);
    /* a new waiter future for n, queued last */
    PyObject *(*enqueue)(TokenSource *self, PyObject *loop, Py_ssize_t n);
    /* takes a waiter out of the line; 1 if it was there */
    int (*dequeue)(TokenSource *self, PyObject *future);
    /* a waiter handed n tokens gave up: pass them on */
    int (*pass_on)(TokenSource *self, Py_ssize_t n);
    /* n tokens come back from a claim */
    int (*give_back)(TokenSource *self, Py_ssize_t n);
    /* release(n), by whoever took tokens with acquire() */
    int (*release)(TokenSource *self, Py_ssize_t n);
    /* acquire()/acquire_nowait() took n tokens for `task` (the current
     * task, None when there is none; NULL when it could not be found, with
     * the error set). The op NULL: nothing to note. */
    void (*note_holder)(TokenSource *self, PyObject *task, Py_ssize_t n);
    /* tokens held by tasks (of the loop it is bound to), -1 error; the op
     * NULL: the source never moves to another loop */
    Py_ssize_t (*held)(TokenSource *self);
    /* it moves, idle, to a loop whose clock is `shift` ahead of the old
     * one's; its waiters are dropped. The op NULL: nothing of its own to
     * carry over */
    int (*move)(TokenSource *self, double shift);
    /* pause() began or extended a pause (paused_until); the op NULL: this
     * kind cannot pause */
    int (*pause_changed)(TokenSource *self);
} TokenSourceOps;

/* ---- HoldSampler (sampler.c) ---- */

typedef struct {
    PyObject *on_window;     /* (samples, drops, mean, least, in_flight)
                                -> the next window's size */
    PyObject *is_overload;   /* (error) -> whether it is a drop */
    PyObject *marked;        /* set of tasks whose next sample is a drop,
                                or NULL */
    PyObject *grants;        /* {task: [grant time, ...]} of acquire(),
                                or NULL */
    Py_ssize_t size;         /* samples per window */
    Py_ssize_t samples, drops, in_flight;   /* the window so far */
    double total_time, least_time;          /* of its holds not dropped */
} HoldSampler;

HoldSampler *sampler_new(PyObject *on_window, PyObject *is_overload,
                         Py_ssize_t size);
void sampler_free(HoldSampler *s);
int sampler_traverse(HoldSampler *s, visitproc visit, void *arg);
void sampler_clear(HoldSampler *s);
/* The next hold of `task` that ends is a drop. */
int sampler_mark(HoldSampler *s, PyObject *task);
/* Nothing is held: marks and grant times are stale. */
void sampler_forget(HoldSampler *s);
int sampler_note_grant(HoldSampler *s, PyObject *task, double now);
/* A hold of `source`'s tokens ended, `held_for` seconds long, its holder
 * `task` (NULL: unknown) failing with `error` (NULL: it did not), while
 * `in_flight` tokens were held (this one's too). Never fails: what goes
 * wrong is reported as unraisable. */
void sampler_record(TokenSource *source, PyObject *task, double held_for,
                    PyObject *error, Py_ssize_t in_flight);
/* release(n) of an acquire()'s tokens by the current task, ending with
 * `error` if `known`, else as the task's state says (cancelling: no
 * sample). Before the tokens go back; never fails. */
void sampler_on_release(TokenSource *source, Py_ssize_t n, int known,
                        PyObject *error);

struct TokenSource {
    PyObject_HEAD
    const TokenSourceOps *ops;
    ModuleState *state;
    WaiterQueue waiters;
    PyObject *loop;          /* the loop it is bound to, or NULL */
    double paused_until;     /* no token granted before (loop time), or
                                -INFINITY */
    char plain_futures;      /* its create_future() is asyncio's own */
    char monotonic_clock;    /* its time() is asyncio's own, which reads
                                time.monotonic() */
    unsigned long long rank;
    char initialized;        /* its __init__ has run (a subclass may skip) */
    PyObject *weakreflist;
    PyObject *bound_aenter;  /* its __aenter__ and __aexit__, once bound */
    PyObject *bound_aexit;
    HoldSampler *sampler;    /* its hold times are sampled, or NULL */
};

/* Every use of a source's operations goes through these, which hold them
 * to the rule above. */
static inline int
op_check_weight(TokenSource *self, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    assert(n >= 1);
    return n == 1 ? 0 : self->ops->check_weight(self, n);
}

static inline int
op_try_take(TokenSource *self, PyObject *loop, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    return self->ops->try_take(self, loop, n);
}

static inline PyObject *
op_enqueue(TokenSource *self, PyObject *loop, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    return self->ops->enqueue(self, loop, n);
}

static inline int
op_dequeue(TokenSource *self, PyObject *future)
{
    ASSERT_NO_ERROR();
    return self->ops->dequeue(self, future);
}

static inline int
op_pass_on(TokenSource *self, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    return self->ops->pass_on(self, n);
}

static inline int
op_give_back(TokenSource *self, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    return self->ops->give_back(self, n);
}

static inline int
op_release(TokenSource *self, Py_ssize_t n)
{
    ASSERT_NO_ERROR();
    return self->ops->release(self, n);
}

static inline void
op_note_holder(TokenSource *self, PyObject *task, Py_ssize_t n)
{
    if (self->ops->note_holder != NULL) {
        self->ops->note_holder(self, task, n);
    }
}

/* What the kinds of source share, for their own files. */
int source_init(TokenSource *self, PyTypeObject *type,
                const TokenSourceOps *ops);
int source_bind(TokenSource *self, PyObject *loop);
/* loop.time() */
int source_time(TokenSource *self, PyObject *loop, double *now);
int sample_time(TokenSource *self, PyObject *loop, double *now);
/* Whether a pause holds its tokens back now (1, 0, -1); one that is over
 * is forgotten. */
int source_paused(TokenSource *self);
/* When the pause under way ends (a float), or None: for statistics(). */
PyObject *source_pause_end(TokenSource *self);
/* Cancels the loop timer in *timer, if any, and clears it. */
int source_cancel_timer(TokenSource *self, PyObject **timer);
/* *timer = loop.call_at(when, self.<method>), the source's own loop. */
int source_call_at(TokenSource *self, double when, const char *method,
                   PyObject **timer);
int source_prune(TokenSource *self);
Py_ssize_t source_waiting(TokenSource *self);
PyObject *source_enqueue(TokenSource *self, PyObject *loop, Py_ssize_t n);
int source_dequeue(TokenSource *self, PyObject *future);
/* A claim waiting at `future` for n tokens gives up. */
int source_withdraw(TokenSource *self, PyObject *future, Py_ssize_t n);
/* A count of tokens given to acquire(n) and the like (NULL: 1): an int
 * >= 1, else -1 with TypeError or ValueError, as the reference words it. */
int parse_tokens(ModuleState *state, PyObject *arg, Py_ssize_t *n);
int source_traverse(TokenSource *self, visitproc visit, void *arg);
void source_clear(TokenSource *self);
void source_dealloc(TokenSource *self, inquiry clear);

int is_token_source(ModuleState *state, PyObject *obj);
/* The token sources a task takes tokens of: those in `first` (a tuple of
 * sources: a group's own Limiter, or a group's limiters; or NULL) and
 * `limiter` (None, a token source, or a list or tuple of them), each once,
 * as a tuple in rank order. A TypeError for anything else. */
PyObject *sources_in_rank_order(ModuleState *state, PyObject *first,
                                PyObject *limiter);

extern PyType_Spec token_source_spec;   /* their base */
/* Puts __aenter__ and __aexit__ in the base type (made from the spec
 * above), as descriptors that bind once per source. */
int source_add_context_methods(PyObject *module, PyTypeObject *base);
extern PyType_Spec holding_spec;       /* what hold(n) returns */
extern PyType_Spec limiter_spec;
extern PyType_Spec rate_limiter_spec;
extern PyType_Spec external_source_spec;

/* ---- HolderTable (holders.c) ---- */

typedef struct {
    PyObject *task;          /* a strong reference, or NULL: empty */
    Py_ssize_t count;
} HolderSlot;

typedef struct {
    HolderSlot *slots;
    Py_ssize_t cap;          /* 0 or a power of two */
    Py_ssize_t used;
} HolderTable;

int holders_add(HolderTable *t, PyObject *task, Py_ssize_t n);
/* Up to n fewer held by task: how many it held of them (0..n). */
Py_ssize_t holders_remove(HolderTable *t, PyObject *task, Py_ssize_t n);
Py_ssize_t holders_count(const HolderTable *t, PyObject *task);
void holders_clear(HolderTable *t);
int holders_traverse(const HolderTable *t, visitproc visit, void *arg);
/* {task: count}, a new dict. */
PyObject *holders_as_dict(const HolderTable *t);

/* ---- deadlock detection (limiter.c, deadlock.c) ---- */

/* Whether a wait on this source could be part of a deadlock: a finite
 * Limiter with no token free. */
int limiter_may_deadlock(TokenSource *source);
/* Whether the current task of `loop` (`task`, or NULL to look it up),
 * about to wait on `busy`, could complete a deadlock by it: `busy` may
 * deadlock, and the task holds one of its tokens (taken with acquire(),
 * or as state->task_may_deadlock says). Only then is taskbound._deadlock
 * asked. Never fails: what it cannot find out counts as no. */
int limiter_wait_may_deadlock(ModuleState *state, TokenSource *busy,
                              PyObject *loop, PyObject *task);
/* Whether some task holds tokens of this Limiter taken with acquire(). */
int limiter_has_holders(TokenSource *source);
/* Lets taskbound._deadlock look at a wait that may be part of a deadlock
 * (on_block) or at a group's exit about to wait (on_exit_wait). Reports
 * its own errors as unraisable. */
void deadlock_on_block(ModuleState *state, TokenSource *source,
                       PyObject *future);
void deadlock_on_exit_wait(ModuleState *state, PyObject *group,
                           PyObject *future);

/* ---- Claim (claim.c) ---- */

typedef struct {
    PyObject *limiters;      /* tuple of TokenSource, in rank order, or
                                one TokenSource alone (acquire()) */
    Py_ssize_t cost;         /* tokens of a lone source */
    PyObject *costs;         /* tuple of ints, the tokens of each source
                                of a tuple; NULL: 1 of each */
    Py_ssize_t held;         /* limiters[:held] have given their tokens */
    PyObject *waiter;        /* future queued at limiters[held], or NULL */
    PyObject *abort_error;   /* raised by claim_resume once set */
    double granted_at;       /* when its holder began to use the tokens,
                                if a source samples hold times; else NAN */
} Claim;

void claim_init(Claim *claim, PyObject *limiters);
/* The claim of a group's task: the group's `limiters` (a tuple in rank
 * order) and the task's own `limiter` (None, a source or a sequence of
 * them), `cost` tokens of each source it names (None: 1 of each); as the
 * reference's, by taskbound._common's rules. -1 with nothing set up on
 * error. */
int claim_init_for_task(ModuleState *state, Claim *claim, PyObject *limiters,
                        PyObject *limiter, PyObject *cost);
/* How many sources a claim takes a token of, and the i-th, in rank order.
 * A lone source is not wrapped in a tuple: that would be made and freed
 * on every acquire(). */
#define CLAIM_SIZE(claim) \
    (PyTuple_CheckExact((claim)->limiters) \
     ? PyTuple_GET_SIZE((claim)->limiters) : 1)
#define LIMITER_AT(claim, i) \
    ((TokenSource *)(PyTuple_CheckExact((claim)->limiters) \
                     ? PyTuple_GET_ITEM((claim)->limiters, (i)) \
                     : (assert((i) == 0), (claim)->limiters)))
static inline Py_ssize_t
claim_cost_at(Claim *claim, Py_ssize_t i)
{
    if (!PyTuple_CheckExact(claim->limiters)) {
        return claim->cost;
    }
    if (claim->costs == NULL) {
        return 1;
    }
    /* Checked ints >= 1 (costs_in_rank_order): this cannot fail. */
    return PyLong_AsSsize_t(PyTuple_GET_ITEM(claim->costs, i));
}

int claim_try_take(Claim *claim, PyObject *loop);
int claim_take_tokens(Claim *claim, PyObject *loop);
int claim_resume(Claim *claim, PyObject *loop);
/* For an awaitable taking a claim for `task` (the current task, or NULL
 * to look it up if need be): carries on from `status` (what
 * claim_try_take or claim_resume returned). 1 when every token is held,
 * 0 with *waiter (borrowed) the future to yield to the Task, marked
 * blocking, -1 on error. */
int claim_wait_for_next(ModuleState *state, Claim *claim, PyObject *loop,
                        PyObject *task, int status, PyObject **waiter);
int claim_abort(Claim *claim, PyObject *error);
int claim_abandon(Claim *claim);
/* Gives back every token held, last taken first, as no sample (the tokens
 * were not used to the end). */
int claim_release(Claim *claim);
/* Its holder begins to use the tokens now (a stream's worker may hold
 * them while it pulls the item): the start of a sampled hold. */
void claim_note_start(Claim *claim, PyObject *loop);
/* claim_release() once the holder's work ended (`error`: how it failed,
 * or NULL), for `task` (NULL: the current task of the sources' loop): a
 * source that samples hold times counts this one. */
int claim_release_after(Claim *claim, PyObject *task, PyObject *error);
int claim_traverse(Claim *claim, visitproc visit, void *arg);
void claim_clear(Claim *claim);

/* ---- ClaimWait (claimwait.c) ---- */

extern PyType_Spec claim_wait_spec;
/* The awaitable of acquire(n): takes n tokens of a lone source, or one of
 * each of a tuple of them (n 1). */
PyObject *claim_wait_new(ModuleState *state, PyObject *limiters,
                         Py_ssize_t n);

/* ---- awaitables and asyncio (awaitable.c) ---- */

/* The coroutine protocol shared by the awaitable types: each provides a
 * step function; send(), throw(), __next__ and am_send are built on it. */
typedef PySendResult (*step_func)(PyObject *self, PyObject *value,
                                  PyObject *exc, PyObject **result);
PyObject *step_send_method(PyObject *self, PyObject *value, step_func step);
PyObject *step_throw_method(PyObject *self, PyObject *const *args,
                            Py_ssize_t nargs, step_func step);
PyObject *step_iternext(PyObject *self, step_func step);
/* Defines a type's coroutine protocol on its step function `step`:
 * am_send, send() and throw(), and with STEP_PROTOCOL tp_iternext, each
 * named in full where it is used, so that a search finds it. */
#define STEP_PROTOCOL_BUT_ITERNEXT(am_send, send, throw, step)              \
    static PySendResult                                                     \
    am_send(PyObject *self, PyObject *value, PyObject **result)             \
    {                                                                       \
        return step(self, value, NULL, result);                             \
    }                                                                       \
    static PyObject *                                                       \
    send(PyObject *self, PyObject *value)                                   \
    {                                                                       \
        return step_send_method(self, value, step);                         \
    }                                                                       \
    static PyObject *                                                       \
    throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)          \
    {                                                                       \
        return step_throw_method(self, args, nargs, step);                  \
    }
#define STEP_PROTOCOL(am_send, send, throw, iternext, step)                 \
    STEP_PROTOCOL_BUT_ITERNEXT(am_send, send, throw, step)                  \
    static PyObject *                                                       \
    iternext(PyObject *self)                                                \
    {                                                                       \
        return step_iternext(self, step);                                   \
    }

/* Ready: an awaitable that returns None at once, without state, so that
 * one (state->ready) serves every await. */
extern PyType_Spec ready_spec;
PyObject *ready_new(PyTypeObject *type);

/* Drives an iterator one step: send(value), or throw(exc) when exc is set. */
PySendResult drive_iterator(ModuleState *state, PyObject *iterator,
                            PyObject *value, PyObject *exc,
                            PyObject **result);
/* What a task drives for an awaitable, or NULL with TypeError. */
PyObject *iterator_of(ModuleState *state, PyObject *awaitable);
/* Closes a coroutine or iterator that will never run (if it can close). */
int close_awaitable(ModuleState *state, PyObject *obj);
/* The current StopIteration's value (new ref), clearing it; NULL if the
 * error is another one (left set). */
PyObject *take_stop_iteration_value(void);
/* The running loop (new ref), or NULL with RuntimeError. */
PyObject *running_loop(ModuleState *state);
/* future.set_result(value) unless it is done: 1 if set, 0 if done, -1. */
int set_result_if_pending(ModuleState *state, PyObject *future,
                          PyObject *value);
/* Yields a future to the running Task: marks it blocking. */
int mark_blocking(ModuleState *state, PyObject *future);
/* future.done() (1, 0, -1) and future.result() (new ref, or NULL). */
int future_done(ModuleState *state, PyObject *future);
PyObject *future_result(ModuleState *state, PyObject *future);
/* The current task of `loop` (new ref; None when there is none or no
 * loop), or NULL with the error set. */
PyObject *current_task_of(ModuleState *state, PyObject *loop);
/* Whether the current exception is asyncio.CancelledError. */
int is_cancelled_error(ModuleState *state, PyObject *exc);
/* Whether exc is a KeyboardInterrupt or SystemExit: what asyncio lets
 * through a TaskGroup or Task as it is, not as another task's failure. */
int is_interrupt(PyObject *exc);

#endif
