/* The stream layer: the engine of gather(), as_completed() and amap().
 * It includes the core, nothing else.
 *
 *   stream.c          Stream: the items, the workers, the values waiting
 *                     to be taken, the first failure
 *   worker.c          Worker, the coroutine of one worker task: pulls an
 *                     item, takes its tokens, runs it, delivers its outcome
 *   parked.c          ParkedItem, an item whose own tokens (item_limiter=,
 *                     item_cost=) were busy: waits for them with no worker
 *   streamstep.c      StreamStep, the awaitable of a consumer's next value,
 *                     of collecting them all, and of closing
 *   streamiterator.c  StreamIterator, what `async for` iterates
 */
#ifndef TASKBOUND_STREAM_H
#define TASKBOUND_STREAM_H

#include "core/core.h"

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
    PyObject *item_limiter;    /* item -> limiter(s); None */
    PyObject *item_cost;       /* item -> {limiter: n}; None */
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
    WaiterQueue parked;        /* ParkedItems waiting for their tokens */
    WaiterQueue runnable;      /* ParkedItems holding them, for a worker */
    Py_ssize_t pulls;          /* pulls under way (claims per item) */
    PyObject *wakeup;          /* the consumer's future */
    PyObject *workers_done;    /* a closer's future */
    PyObject *error;           /* the first failure */
    PyObject *name;            /* the helper's, for its workers' tasks */
    Py_ssize_t workers_named;  /* the number in the last worker's name */
    char is_async, ordered, return_exceptions, as_futures, strict_input;
    char started, pulling, exhausted, closed, raised;
    char claims_per_item;      /* item_limiter or item_cost given */
} StreamObject;

/* An item pulled whose claim was not held at once. Its claim keeps its
 * places in line; the ParkedItem is the done callback of the claim's
 * waiter, and moves to the stream's runnable line once all is held. */
typedef struct {
    PyObject_HEAD
    StreamObject *stream;
    PyObject *item;
    Py_ssize_t index;
    Claim claim;
    char in_line;              /* in the stream's parked or runnable line */
} ParkedItemObject;

extern PyType_Spec stream_spec;
extern PyType_Spec stream_step_spec;
extern PyType_Spec worker_spec;
extern PyType_Spec stream_iterator_spec;
extern PyType_Spec parked_item_spec;

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
/* Wakes a worker waiting for room; all of them once nothing is left to
 * run, so that they end. */
void stream_wake_worker(StreamObject *s);
/* Claims per item: whether a worker may pull another item now. */
int stream_may_pull(StreamObject *s);
/* Parks the item at `index` with `claim` (its waiter queued): both move
 * into a ParkedItem. -1 on error, with the claim abandoned and the item
 * left to the caller. */
int stream_park(StreamObject *s, Py_ssize_t index, PyObject *item,
                Claim *claim);
/* The stream stops: the parked and runnable items never run. */
void stream_drop_parked(StreamObject *s);
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

/* Drops every value still waiting. */
void ring_clear(SlotRing *r);

#endif
