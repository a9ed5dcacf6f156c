/* The module's state: every type and every Python object the C code uses,
 * reached from any of its types with state_of_type().
 *
 * There is one module, so there is one state; its fields are grouped by
 * the layer that uses them, and a layer touches only its own and those
 * below it (core, then group and stream).
 */
#ifndef TASKBOUND_CORE_STATE_H
#define TASKBOUND_CORE_STATE_H

#include "core/compat.h"

/* Objects of one type kept for reuse instead of being freed. Each spawn
 * makes a Child and a Spawn, each value an async for takes from a stream a
 * StreamStep; every GC allocation counts towards the collector's young
 * generation and a free only lowers that count while it is above zero, so
 * at steady state the limit's children alone were enough to run a
 * collection every ~100 spawns. Reused objects count neither way, and skip
 * the allocator. */
#define FREELIST_SIZE 128

typedef struct {
    Py_ssize_t count;
    PyObject *items[FREELIST_SIZE];
} FreeList;

/* A new, untracked object of type tp (basicsize bytes), reused from the
 * list when it can be. */
PyObject *freelist_new(FreeList *list, PyTypeObject *tp);
/* For tp_dealloc, after untracking and clearing: 1 if the list kept the
 * object (the caller must not free it), 0 if the caller frees it. An
 * object whose finalizer ran is never kept: the flag would stay set. */
int freelist_keep(FreeList *list, PyTypeObject *owner, PyObject *op);
void freelist_clear(FreeList *list);

typedef struct ModuleState ModuleState;
typedef struct TokenSource TokenSource;     /* core/core.h */

struct ModuleState {
    /* ---- core ---- */
    PyTypeObject *token_source_type;    /* the base of the three below */
    PyTypeObject *limiter_type;
    PyTypeObject *rate_limiter_type;
    PyTypeObject *external_source_type;
    PyTypeObject *claim_wait_type;
    PyTypeObject *holding_type;
    PyTypeObject *ready_type;
    PyObject *ready;                /* the one Ready */

    /* From asyncio and taskbound._common. */
    PyObject *get_running_loop;     /* asyncio.events._get_running_loop */
    PyObject *current_task;         /* asyncio.current_task */
    PyObject *current_tasks;        /* what it looks the task up in, or
                                       NULL (taskbound._compat) */
    PyObject *cancelled_error;      /* asyncio.CancelledError */
    PyObject *coroutine_abc;        /* collections.abc.Coroutine */
    PyObject *isfuture;             /* asyncio.isfuture */
    PyObject *future_type;          /* asyncio.Future */
    PyObject *future_set_result;    /* asyncio.Future.set_result */
    PyObject *future_set_exception; /* asyncio.Future.set_exception */
    PyObject *future_done;          /* asyncio.Future.done */
    PyObject *future_result;        /* asyncio.Future.result */
    PyObject *future_blocking;      /* its _asyncio_future_blocking slot */
    PyObject *invalid_state_error;  /* asyncio.InvalidStateError */
    PyObject *base_create_future;   /* BaseEventLoop.create_future */
    PyObject *base_time;            /* BaseEventLoop.time */
    PyObject *kwnames_loop;         /* ("loop",) */
    PyObject *would_block;          /* taskbound.WouldBlock */
    PyObject *deadlock_error;       /* taskbound.DeadlockError */
    PyObject *on_block;             /* taskbound._deadlock.on_block */
    PyObject *on_exit_wait;         /* taskbound._deadlock.on_exit_wait */
    PyObject *limiter_statistics;   /* taskbound.LimiterStatistics */
    PyObject *rate_limiter_statistics;
    PyObject *check_positive;
    PyObject *check_burst;
    PyObject *check_total_tokens;
    PyObject *check_tokens;
    PyObject *costs_in_rank_order;
    PyObject *check_pause;
    double timer_lateness;          /* taskbound._common.TIMER_LATENESS */

    /* Interned names of the methods called on loops, futures and tasks,
     * and of ExternalSource's operations. */
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
    PyObject *str_get_coro;
    PyObject *str_result;
    PyObject *str_send;
    PyObject *str_set_result;
    PyObject *str_throw;
    PyObject *str_time;
    PyObject *str_is_closed;
    PyObject *str_uncancel;
    PyObject *str__try_take;
    PyObject *str__enqueue;
    PyObject *str__dequeue;
    PyObject *str__pass_on;
    PyObject *str__give_back;
    PyObject *str__check_weight;

    /* Limiters take tokens in the order of their creation. */
    unsigned long long next_rank;
    FreeList claim_wait_freelist;
    /* Whether `task` may hold a token of `busy` through a layer above the
     * core (a group's child's claim), so that its wait on `busy` could
     * complete a deadlock; set by the module from the group layer. */
    int (*task_may_deadlock)(ModuleState *state, PyObject *task,
                             TokenSource *busy);

    /* ---- group ---- */
    PyTypeObject *group_type;
    PyTypeObject *child_type;
    PyTypeObject *spawn_type;
    PyTypeObject *group_exit_type;
    PyObject *group_statistics;     /* taskbound.GroupStatistics */
    PyObject *check_limit;
    PyObject *waiting_stand_in;     /* taskbound._common.waiting_stand_in */
    Py_ssize_t children_alive;      /* Child objects not yet freed */
    /* What the running interpreter's asyncio.TaskGroup does where CPython
     * releases differ: taskbound._compat decides, these are its copies. */
    char uncancel_after_wait;
    char closes_refused_coro;
    char eager_done_scheduled;
    char create_task_kwargs;
    char bare_generator_exit;
    PyObject *add_to_awaited_by;        /* NULL before 3.14 */
    PyObject *discard_from_awaited_by;  /* NULL before 3.14 */
    FreeList child_freelist;
    FreeList spawn_freelist;

    /* ---- stream ---- */
    PyTypeObject *stream_type;
    PyTypeObject *stream_step_type;
    PyTypeObject *worker_type;
    PyTypeObject *parked_item_type;
    PyTypeObject *stream_iterator_type;
    FreeList stream_step_freelist;
    /* The StopIteration that carried a stream's last value to an async
     * for, for the next value when nothing else holds it. */
    PyObject *spare_stop_iteration;
};

extern PyModuleDef taskbound_module;

static inline ModuleState *
state_of_type(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &taskbound_module);
    return module == NULL ? NULL : (ModuleState *)PyModule_GetState(module);
}

#endif
