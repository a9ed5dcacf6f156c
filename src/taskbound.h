/* Shared declarations of the taskbound C core.
 *
 * Types: Limiter (limiter.c), BoundedTaskGroup (taskgroup.c), the child
 * coroutine a group's Task drives (child.c), the awaitable of an acquire or
 * spawn (acquisition.c) and of a group's enter/exit (groupexit.c). A claim
 * (claim.c) is not a type: it is the state of taking one token of each of
 * several limiters, embedded in the objects that take them.
 */
#ifndef TASKBOUND_H
#define TASKBOUND_H

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

/* Objects of one type kept for reuse instead of being freed. Each spawn
 * makes a Child and an Acquisition, each value an async for takes from a
 * stream a StreamStep; every GC allocation counts towards the
 * collector's young generation and a free only lowers that count while it
 * is above zero, so at steady state the limit's children alone were enough
 * to run a collection every ~100 spawns. Reused objects count neither way,
 * and skip the allocator. */
#define FREELIST_SIZE 128

typedef struct {
    Py_ssize_t count;
    PyObject *items[FREELIST_SIZE];
} FreeList;

typedef struct {
    PyTypeObject *limiter_type;
    PyTypeObject *rate_limiter_type;
    PyTypeObject *external_source_type;
    PyTypeObject *token_source_type;    /* the base of the three above */
    PyTypeObject *group_type;
    PyTypeObject *child_type;
    PyTypeObject *acquisition_type;
    PyTypeObject *group_exit_type;
    PyTypeObject *stream_type;
    PyTypeObject *stream_step_type;
    PyTypeObject *worker_type;
    PyTypeObject *stream_iterator_type;

    /* From asyncio and taskbound._common. */
    PyObject *get_running_loop;     /* asyncio.events._get_running_loop */
    PyObject *current_task;         /* asyncio.current_task */
    PyObject *cancelled_error;      /* asyncio.CancelledError */
    PyObject *would_block;          /* taskbound.WouldBlock */
    PyObject *deadlock_error;       /* taskbound.DeadlockError */
    PyObject *on_block;             /* taskbound._deadlock.on_block */
    PyObject *on_exit_wait;         /* taskbound._deadlock.on_exit_wait */
    PyObject *limiter_statistics;   /* taskbound.LimiterStatistics */
    PyObject *rate_limiter_statistics;
    PyObject *check_positive;
    PyObject *check_burst;
    PyObject *group_statistics;     /* taskbound.GroupStatistics */
    PyObject *check_total_tokens;
    PyObject *check_limit;
    PyObject *coroutine_abc;        /* collections.abc.Coroutine */
    PyObject *isfuture;             /* asyncio.isfuture */
    PyObject *future_type;          /* asyncio.Future */
    PyObject *future_set_result;    /* asyncio.Future.set_result */
    PyObject *future_set_exception; /* asyncio.Future.set_exception */
    PyObject *waiting_stand_in;     /* taskbound._common.waiting_stand_in */

    /* What the running interpreter's asyncio.TaskGroup does where CPython
     * releases differ: taskbound._compat decides, these are its copies. */
    char uncancel_after_wait;
    char closes_refused_coro;
    char eager_done_scheduled;
    char create_task_kwargs;
    char bare_generator_exit;
    PyObject *add_to_awaited_by;        /* NULL before 3.14 */
    PyObject *discard_from_awaited_by;  /* NULL before 3.14 */

    /* Interned names of the methods called on loops, futures and tasks. */
    PyObject *str_asyncio_future_blocking;
    PyObject *str_call_at;
    PyObject *str_call_exception_handler;
    PyObject *str_call_soon;
    PyObject *str_cancel;
    PyObject *str_cancelled;
    PyObject *str_cancelling;
    PyObject *str_close;
    PyObject *str_create_future;
    PyObject *str_create_task;
    PyObject *str_add_done_callback;
    PyObject *str_aclose;
    PyObject *str_set_exception;
    PyObject *str_done;
    PyObject *str_exception;
    PyObject *str_result;
    PyObject *str_send;
    PyObject *str_set_result;
    PyObject *str_throw;
    PyObject *str_time;
    PyObject *str_uncancel;
    PyObject *str__try_take;
    PyObject *str__enqueue;
    PyObject *str__dequeue;
    PyObject *str__pass_on;
    PyObject *str__give_back;

    /* Limiters take tokens in the order of their creation. */
    unsigned long long next_rank;

    FreeList child_freelist;
    FreeList acquisition_freelist;
    FreeList stream_step_freelist;
    /* The StopIteration that carried a stream's last value to an async
     * for, for the next value when nothing else holds it. */
    PyObject *spare_stop_iteration;
} ModuleState;

/* A new, untracked object of type tp (basicsize bytes), reused from the
 * list when it can be. */
PyObject *freelist_new(FreeList *list, PyTypeObject *tp);
/* For tp_dealloc, after untracking and clearing: 1 if the list kept the
 * object (the caller must not free it), 0 if the caller frees it. An
 * object whose finalizer ran is never kept: the flag would stay set. */
int freelist_keep(FreeList *list, PyTypeObject *owner, PyObject *op);
void freelist_clear(FreeList *list);

extern PyModuleDef taskbound_module;

static inline ModuleState *
state_of_type(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &taskbound_module);
    return module == NULL ? NULL : (ModuleState *)PyModule_GetState(module);
}

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

/* ---- Limiter and RateLimiter: token sources (tokensource.c) ---- */

#define TOTAL_INFINITE PY_SSIZE_T_MAX

typedef struct {
    PyObject **items;   /* ring buffer of waiter futures (strong refs) */
    Py_ssize_t head;
    Py_ssize_t len;
    Py_ssize_t cap;
} WaiterQueue;

typedef struct TokenSource TokenSource;

/* How a claim takes tokens, whatever the kind of source. */
typedef struct {
    /* 1 taken, 0 busy (or others queued ahead), -1 error */
    int (*try_take)(TokenSource *self, PyObject *loop);
    /* a new waiter future, queued last */
    PyObject *(*enqueue)(TokenSource *self, PyObject *loop);
    /* takes a waiter out of the line; 1 if it was there */
    int (*dequeue)(TokenSource *self, PyObject *future);
    /* a waiter handed a token gave up: pass it on */
    int (*pass_on)(TokenSource *self);
    /* a token comes back from a claim */
    int (*give_back)(TokenSource *self);
    /* release(), by whoever took a token with acquire() */
    int (*release)(TokenSource *self);
    /* acquire()/acquire_nowait() took a token (NULL: nothing to note) */
    void (*note_holder)(TokenSource *self, PyObject *loop);
} TokenSourceOps;

struct TokenSource {
    PyObject_HEAD
    const TokenSourceOps *ops;
    ModuleState *state;
    WaiterQueue waiters;
    PyObject *loop;          /* the loop it is bound to, or NULL */
    unsigned long long rank;
    char initialized;        /* its __init__ has run (a subclass may skip) */
    PyObject *weakreflist;
};

/* Every use of a source's operations goes through these, which hold them
 * to the rule above. */
static inline int
op_try_take(TokenSource *self, PyObject *loop)
{
    ASSERT_NO_ERROR();
    return self->ops->try_take(self, loop);
}

static inline PyObject *
op_enqueue(TokenSource *self, PyObject *loop)
{
    ASSERT_NO_ERROR();
    return self->ops->enqueue(self, loop);
}

static inline int
op_dequeue(TokenSource *self, PyObject *future)
{
    ASSERT_NO_ERROR();
    return self->ops->dequeue(self, future);
}

static inline int
op_pass_on(TokenSource *self)
{
    ASSERT_NO_ERROR();
    return self->ops->pass_on(self);
}

static inline int
op_give_back(TokenSource *self)
{
    ASSERT_NO_ERROR();
    return self->ops->give_back(self);
}

static inline int
op_release(TokenSource *self)
{
    ASSERT_NO_ERROR();
    return self->ops->release(self);
}

static inline void
op_note_holder(TokenSource *self, PyObject *loop)
{
    ASSERT_NO_ERROR();
    if (self->ops->note_holder != NULL) {
        self->ops->note_holder(self, loop);
    }
}

typedef struct {
    TokenSource base;
    Py_ssize_t total;        /* TOTAL_INFINITE for math.inf */
    Py_ssize_t borrowed;     /* includes tokens handed to woken waiters */
    /* For deadlock detection: tokens taken with acquire()/acquire_nowait()
     * by task (a dict, made on first use); groups' children hold theirs in
     * their claims. */
    PyObject *holders;
    Py_ssize_t unattributed; /* taken outside any task */
    char lost_track;         /* a task released what it never took */
} LimiterObject;

/* Whether a wait on this source could be part of a deadlock: a finite
 * Limiter with no token free. */
int limiter_may_deadlock(TokenSource *source);
/* Whether some task holds tokens of this Limiter taken with acquire(). */
int limiter_has_holders(TokenSource *source);
/* Lets taskbound._deadlock look at a wait that may be part of a deadlock
 * (on_block) or at a group's exit about to wait (on_exit_wait). Reports
 * its own errors as unraisable. */
void deadlock_on_block(ModuleState *state, TokenSource *source,
                       PyObject *future);
void deadlock_on_exit_wait(ModuleState *state, PyObject *group,
                           PyObject *future);

typedef struct {
    TokenSource base;
    double rate;
    double per;
    Py_ssize_t burst;
    double tat;              /* theoretical arrival time of the next start */
    PyObject *timer;         /* loop handle waking the first waiter */
} RateLimiterObject;

extern PyType_Spec token_source_spec;   /* their base */
extern PyType_Spec limiter_spec;
extern PyType_Spec rate_limiter_spec;
extern PyType_Spec external_source_spec;

PyObject *queue_at(WaiterQueue *q, Py_ssize_t i);
PyObject *queue_pop(WaiterQueue *q);
int source_init(TokenSource *self, PyTypeObject *type,
                const TokenSourceOps *ops);
int source_bind(TokenSource *self, PyObject *loop);
int source_prune(TokenSource *self);
Py_ssize_t source_waiting(TokenSource *self);
PyObject *source_enqueue(TokenSource *self, PyObject *loop);
int source_dequeue(TokenSource *self, PyObject *future);
int source_withdraw(TokenSource *self, PyObject *future);
int source_traverse(TokenSource *self, visitproc visit, void *arg);
void source_clear(TokenSource *self);
void source_dealloc(TokenSource *self, inquiry clear);
int is_token_source(ModuleState *state, PyObject *obj);
/* The token sources a task takes one token of: `first` (a group's own
 * Limiter, or NULL) and `limiter` (None, a token source, or a list or
 * tuple of them), each once, as a tuple in rank order. A TypeError for
 * anything else. */
PyObject *sources_in_rank_order(ModuleState *state, PyObject *first,
                                PyObject *limiter);

/* ---- Claim ---- */

typedef struct {
    PyObject *limiters;      /* tuple of TokenSource, in rank order */
    Py_ssize_t held;         /* limiters[:held] have given a token */
    PyObject *waiter;        /* future queued at limiters[held], or NULL */
    PyObject *abort_error;   /* raised by claim_resume once set */
} Claim;

void claim_init(Claim *claim, PyObject *limiters);
/* The i-th source of a claim, in rank order. */
#define LIMITER_AT(claim, i) \
    ((TokenSource *)PyTuple_GET_ITEM((claim)->limiters, (i)))

int claim_try_take(Claim *claim, PyObject *loop);
int claim_resume(Claim *claim, PyObject *loop);
int claim_abort(Claim *claim, PyObject *error);
int claim_abandon(Claim *claim);
int claim_release(Claim *claim);
int claim_traverse(Claim *claim, visitproc visit, void *arg);
void claim_clear(Claim *claim);

/* ---- BoundedTaskGroup and its children ---- */

typedef struct ChildObject ChildObject;

typedef struct {
    PyObject_HEAD
    ModuleState *state;
    PyObject *limit;            /* int or None */
    PyObject *limiters;         /* tuple, rank order */
    PyObject *loop;
    PyObject *parent_task;
    ChildObject *first_child;   /* each linked child is a strong ref */
    ChildObject *last_child;
    Py_ssize_t children;
    PyObject *pending;          /* dict: Acquisition of each waiting spawn */
    PyObject *errors;           /* list, NULL once raised */
    PyObject *base_error;
    PyObject *on_completed_fut;
    Py_ssize_t spawned, running, done, failed;
    char entered, exiting, aborting, cancel_on_enter, cancel_called;
    char parent_cancel_requested;
    PyObject *weakreflist;
} GroupObject;

struct ChildObject {
    PyObject_HEAD
    GroupObject *group;
    PyObject *target;       /* what the user passed */
    PyObject *iterator;     /* what is driven: target or its __await__() */
    Claim claim;
    PyObject *task;         /* set once create_task() returns */
    PyObject *stand_in;     /* what introspection shows while waiting */
    ChildObject *prev, *next;
    char waiting;           /* tokens not all held yet */
    char finished;
    char failed;            /* finished with an error, not a cancellation */
    char linked;
};

extern PyType_Spec group_spec;
extern PyType_Spec child_spec;

/* Raises what asyncio's create_task() raises for the group's state (not
 * entered, finished, shutting down); closes coro first if close_refused. */
int group_check_can_create(GroupObject *group, PyObject *coro,
                           int close_refused);
/* Starts a child task with the loop's create_task(child, **kwargs);
 * kwargs may be NULL. The claim moves into the child. */
PyObject *group_start_child(GroupObject *group, PyObject *target,
                            PyObject *iterator, Claim *claim, int waiting,
                            PyObject *kwargs);
void group_child_finished(GroupObject *group, ChildObject *child,
                          PyObject *error);
int group_wake_exit(GroupObject *group);
int group_abort(GroupObject *group);
int group_on_child_done(GroupObject *group, ChildObject *child,
                        PyObject *task);
PyObject *group_error(GroupObject *group, const char *problem);

ChildObject *child_new(GroupObject *group, PyObject *target,
                       PyObject *iterator, Claim *claim, int waiting);
int child_close(ChildObject *child);

/* What a child drives for an awaitable, or NULL with TypeError. */
PyObject *iterator_of(ModuleState *state, PyObject *awaitable);
/* Closes a coroutine or iterator that will never run (if it can close). */
int close_awaitable(ModuleState *state, PyObject *obj);

/* ---- Streams: gather, as_completed, amap ---- */

/* Values waiting for their turn: slot (head + i) % cap holds the value of
 * the i-th index from the next one to be taken, or NULL. */
typedef struct {
    PyObject **slots;
    Py_ssize_t head;
    Py_ssize_t cap;
    Py_ssize_t count;          /* slots that hold a value */
} SlotRing;

typedef struct {
    PyObject_HEAD
    ModuleState *state;
    PyObject *source;          /* the iterable given */
    PyObject *iterator;        /* its iterator; NULL before start, after close */
    PyObject *make;            /* item -> awaitable */
    Py_ssize_t limit;          /* 0: unbounded */
    PyObject *limiters;        /* tuple of TokenSource, rank order */
    PyObject *context;         /* the caller's context */
    PyObject *loop;
    PyObject *future_kwargs;   /* {"loop": loop}, made on first use */
    PyObject *workers;         /* the worker tasks not finished: a dict, whose
                                * order (the order of their start) is the
                                * order in which they are cancelled */
    Py_ssize_t live;           /* workers not finished */
    Py_ssize_t pulled;         /* index of the next item */
    Py_ssize_t emitted;        /* ordered: index of the next value */
    SlotRing done;             /* ordered: values by index - emitted */
    WaiterQueue ready;         /* unordered: values in completion order */
    WaiterQueue room;          /* futures of workers waiting for room */
    WaiterQueue pull_line;     /* futures of workers waiting to pull */
    PyObject *wakeup;          /* the consumer's future */
    PyObject *workers_done;    /* a closer's future */
    PyObject *error;           /* the first failure */
    char is_async, ordered, return_exceptions, as_futures, strict_input;
    char started, pulling, exhausted, closed, raised;
} StreamObject;

extern PyType_Spec stream_spec;
extern PyType_Spec stream_step_spec;
extern PyType_Spec worker_spec;
extern PyType_Spec stream_iterator_spec;

/* stream.c, for the workers and the consumer's awaitables */
Py_ssize_t stream_buffered(StreamObject *s);
int stream_stopped(StreamObject *s);
void stream_wake_consumer(StreamObject *s);
void stream_fail(StreamObject *s, PyObject *error, PyObject *current);
/* Cancels every worker task but `spare`, each once. */
void stream_cancel_workers(StreamObject *s, PyObject *spare);
/* Closes the coroutines that iterator yields (never started). */
void stream_close_coroutines_in(StreamObject *s, PyObject *iterator);
int stream_deliver(StreamObject *s, Py_ssize_t index, PyObject *value,
                   PyObject *error, int given);
int stream_add_worker(StreamObject *s);
void stream_worker_finished(StreamObject *s, PyObject *task);
int stream_start(StreamObject *s);
PyObject *stream_take(StreamObject *s);
/* A new waiter future at the end of `line`, marked blocking. */
PyObject *stream_wait_in(StreamObject *s, WaiterQueue *line);
void stream_wake_first(StreamObject *s, WaiterQueue *line);
PyObject *worker_new(StreamObject *stream);
/* 1 when the worker runs on in task, 0 when it has ended already. */
int worker_set_task(PyObject *worker, PyObject *task);
enum { STEP_NEXT, STEP_ANEXT, STEP_CLOSE, STEP_COLLECT };
PyObject *stream_step_new(StreamObject *stream, int mode);
/* The awaitable of __anext__(): `spare` (a step of an earlier one, or
 * NULL) emptied and set up again when nothing else holds it, else new. */
PyObject *stream_step_anew(PyObject *spare, StreamObject *stream);
/* An awaitable that returns `value` at once. */
PyObject *stream_step_ready(StreamObject *stream, PyObject *value);

void ring_clear(SlotRing *r);
/* queue helpers shared with the token sources */
int queue_push(WaiterQueue *q, PyObject *item);
void queue_clear(WaiterQueue *q);

/* Drives an iterator one step: send(value), or throw(exc) when exc is set. */
PySendResult drive_iterator(ModuleState *state, PyObject *iterator,
                            PyObject *value, PyObject *exc,
                            PyObject **result);

/* ---- Awaitables ---- */

typedef struct {
    PyObject_HEAD
    ModuleState *state;
    Claim claim;
    PyObject *loop;
    /* Set for spawn(); NULL for Limiter.acquire(). */
    GroupObject *group;
    PyObject *target;
    PyObject *iterator;
    PyObject *kwargs;       /* for the loop's create_task, or NULL */
    char started;
    char finished;
    char pending;           /* listed in group->pending */
} AcquisitionObject;

extern PyType_Spec acquisition_spec;
PyObject *acquisition_new(ModuleState *state, PyObject *limiters,
                          GroupObject *group, PyObject *target,
                          PyObject *kwargs);

extern PyType_Spec group_exit_spec;
PyObject *group_exit_new(GroupObject *group, int entering, PyObject *et,
                         PyObject *exc, PyObject *tb);

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
/* Whether the current exception is asyncio.CancelledError. */
int is_cancelled_error(ModuleState *state, PyObject *exc);
/* Whether exc is a KeyboardInterrupt or SystemExit: what asyncio lets
 * through a TaskGroup or Task as it is, not as another task's failure. */
int is_interrupt(PyObject *exc);

#endif
