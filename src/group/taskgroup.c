/* BoundedTaskGroup: asyncio.TaskGroup with a bound.
 *
 * A child takes one token of each of the group's limiters (its own
 * Limiter(limit) and the shared ones, in rank order) before its coroutine
 * starts, and gives them back in its task's last step (child.c). What
 * asyncio.TaskGroup does in a done callback per task is done here only
 * where it is needed: for a failed child, and for the last child while the
 * exit waits; both run as one call_soon() callback, at the moment asyncio's
 * done callback would have run.
 */
#include "group/group.h"

/* ---- the list of children (each linked child is a strong ref) ---- */

static void
link_child(GroupObject *group, ChildObject *child)
{
    child->prev = group->last_child;
    child->next = NULL;
    if (group->last_child != NULL) {
        group->last_child->next = child;
    }
    else {
        group->first_child = child;
    }
    group->last_child = child;
    group->children++;
    child->linked = 1;
    Py_INCREF(child);
}

static void
unlink_child(GroupObject *group, ChildObject *child)
{
    if (!child->linked) {
        return;
    }
    if (child->prev != NULL) {
        child->prev->next = child->next;
    }
    else {
        group->first_child = child->next;
    }
    if (child->next != NULL) {
        child->next->prev = child->prev;
    }
    else {
        group->last_child = child->prev;
    }
    child->prev = child->next = NULL;
    child->linked = 0;
    group->children--;
    Py_DECREF(child);
}

/* A finished child's task is let go of when the group starts its next
 * child, not at its end. A bounded group's children end in a burst (as
 * slots free up) and the next ones start in a burst: freed at once, the
 * objects of the ended ones (Task, weak reference, context) are counted off
 * CPython's young generation while it is near empty, and the new ones'
 * count crosses its threshold about once per `limit` spawns (92 collections
 * per 10,000 spawns on 3.12 at limit 100, against 1 for bare tasks made in
 * batches). One out per one in keeps the count level, as asyncio.TaskGroup
 * does by dropping its tasks in a done callback a loop turn later. */
static void
retire_task(GroupObject *group, PyObject *task)
{
    if (group->retired_count < RETIRED_MAX) {
        group->retired[group->retired_count++] = task;
    }
    else {
        Py_DECREF(task);
    }
}

static void
drop_one_retired(GroupObject *group)
{
    if (group->retired_count > 0) {
        PyObject *task = group->retired[--group->retired_count];
        Py_DECREF(task);
    }
}

void
group_drop_retired(GroupObject *group)
{
    while (group->retired_count > 0) {
        drop_one_retired(group);
    }
}

static int
has_work(GroupObject *group)
{
    return group->children > 0 || PyDict_GET_SIZE(group->pending) > 0;
}

/* ---- what the other files call ---- */

PyObject *
group_error(GroupObject *group, const char *problem)
{
    PyObject *message = PyUnicode_FromFormat("TaskGroup %R %s", group,
                                             problem);
    if (message == NULL) {
        return NULL;
    }
    PyObject *error = PyObject_CallOneArg(PyExc_RuntimeError, message);
    Py_DECREF(message);
    return error;
}

int
raise_group_error(GroupObject *group, const char *problem)
{
    PyObject *error = group_error(group, problem);
    if (error != NULL) {
        PyErr_SetObject(PyExc_RuntimeError, error);
        Py_DECREF(error);
    }
    return -1;
}

int
group_check_can_create(GroupObject *group, PyObject *coro, int close_refused)
{
    const char *problem;
    if (!group->entered) {
        problem = "has not been entered";
    }
    else if (group->exiting && !has_work(group)) {
        problem = "is finished";
    }
    else if (group->aborting) {
        problem = "is shutting down";
    }
    else {
        return 0;
    }
    if (close_refused && close_awaitable(group->state, coro) < 0) {
        return -1;
    }
    return raise_group_error(group, problem);
}

int
group_wake_exit(GroupObject *group)
{
    ASSERT_NO_ERROR();
    PyObject *future = group->on_completed_fut;
    if (future == NULL || has_work(group)) {
        return 0;
    }
    return set_result_if_pending(group->state, future, Py_True) < 0 ? -1 : 0;
}

int
group_abort(GroupObject *group)
{
    ASSERT_NO_ERROR();
    ModuleState *st = group->state;
    group->aborting = 1;
    /* Snapshots: cancelling may run code that changes the group. */
    PyObject *tasks = PyList_New(0);
    if (tasks == NULL) {
        return -1;
    }
    for (ChildObject *c = group->first_child; c != NULL; c = c->next) {
        if (c->task != NULL && PyList_Append(tasks, c->task) < 0) {
            Py_DECREF(tasks);
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tasks); i++) {
        PyObject *task = PyList_GET_ITEM(tasks, i);
        int done = call_method_bool(task, st->str_done);
        if (done == 0) {
            PyObject *res = call_method0(task, st->str_cancel);
            if (res == NULL) {
                done = -1;
            }
            Py_XDECREF(res);
        }
        if (done < 0) {
            /* As asyncio's _abort(): the first failure stops it. */
            Py_DECREF(tasks);
            return -1;
        }
    }
    Py_DECREF(tasks);
    if (PyDict_GET_SIZE(group->pending) == 0) {
        return 0;
    }
    PyObject *pending = PyDict_Keys(group->pending);
    if (pending == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pending); i++) {
        PyObject *spawn = PyList_GET_ITEM(pending, i);
        PyObject *error = group_error(group, "is shutting down");
        if (error == NULL || spawn_abort(spawn, error) < 0) {
            Py_XDECREF(error);
            Py_DECREF(pending);
            return -1;
        }
        Py_DECREF(error);
    }
    Py_DECREF(pending);
    return 0;
}

static int
cancel_parent(GroupObject *group)
{
    assert(group->parent_task != NULL);
    group->parent_cancel_requested = 1;
    PyObject *res = call_method0(group->parent_task, group->state->str_cancel);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* A child's error that no exit will raise goes to the loop's handler. */
static int
report_orphan_error(GroupObject *group, PyObject *task, PyObject *exc)
{
    ModuleState *st = group->state;
    PyObject *parent = group->parent_task ? group->parent_task : Py_None;
    PyObject *context = Py_BuildValue(
        "{s:N,s:O,s:O}",
        "message", PyUnicode_FromFormat(
            "Task %R has errored out but its parent task %S is already "
            "completed", task, parent),
        "exception", exc, "task", task);
    if (context == NULL) {
        return -1;
    }
    PyObject *res = call_method1(group->loop, st->str_call_exception_handler,
                                 context);
    Py_DECREF(context);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* asyncio.TaskGroup._on_task_done, less the bookkeeping done already. */
static int
after_child(GroupObject *group, ChildObject *child, PyObject *task)
{
    ModuleState *st = group->state;
    unlink_child(group, child);
    if (group_wake_exit(group) < 0) {
        return -1;
    }
    int cancelled = call_method_bool(task, st->str_cancelled);
    if (cancelled != 0) {
        return cancelled < 0 ? -1 : 0;
    }
    PyObject *exc = call_method0(task, st->str_exception);
    if (exc == NULL) {
        return -1;
    }
    int status = 0;
    if (exc == Py_None) {
        goto done;
    }
    if (group->parent_task == NULL) {
        /* The exit is over: it ended without waiting for this child, its
         * wait interrupted by an error other than a cancellation. */
        status = report_orphan_error(group, task, exc);
        goto done;
    }
    if ((group->errors == NULL && (group->errors = PyList_New(0)) == NULL)
            || PyList_Append(group->errors, exc) < 0) {
        status = -1;
        goto done;
    }
    if (is_interrupt(exc) && group->base_error == NULL) {
        group->base_error = Py_NewRef(exc);
    }
    int parent_done = call_method_bool(group->parent_task, st->str_done);
    if (parent_done != 0) {
        status = parent_done < 0 ? -1 : report_orphan_error(group, task, exc);
    }
    else if (!group->aborting && !group->parent_cancel_requested) {
        status = group_abort(group) < 0 ? -1 : cancel_parent(group);
    }
done:
    Py_DECREF(exc);
    return status;
}

/* A finished child's tokens come back; a sampled hold ends with the
 * task's error (a cancelled task's hold is no sample). */
static int
release_after_task(GroupObject *group, Claim *claim, PyObject *task)
{
    ModuleState *st = group->state;
    if (isnan(claim->granted_at) || claim->held == 0) {
        return claim_release(claim);
    }
    int cancelled = call_method_bool(task, st->str_cancelled);
    PyObject *error = cancelled != 0 ? NULL
                                     : call_method0(task, st->str_exception);
    if (cancelled != 0 || error == NULL) {
        if (PyErr_Occurred()) {
            PyErr_WriteUnraisable((PyObject *)group);
        }
        return claim_release(claim);
    }
    int status = claim_release_after(claim, task,
                                     error == Py_None ? NULL : error);
    Py_DECREF(error);
    return status;
}

int
group_on_child_done(GroupObject *group, ChildObject *child, PyObject *task)
{
    int status = after_child(group, child, task);
    /* A failed child's tokens come back only now, after the group has
     * failed its own waiting spawns. */
    PyObject *exc = PyErr_GetRaisedException();
    if (release_after_task(group, &child->claim, task) < 0) {
        if (exc == NULL) {
            exc = PyErr_GetRaisedException();
        }
        else {
            PyErr_WriteUnraisable((PyObject *)group);
        }
        status = -1;
    }
    PyErr_SetRaisedException(exc);
    return status;
}

/* Records, for asyncio.capture_call_graph() and `python -m asyncio ps`,
 * that the parent task awaits a child's task (add) or no longer does. */
static void
link_to_parent(GroupObject *group, PyObject *task, PyObject *how)
{
    if (how == NULL || group->parent_task == NULL) {
        return;   /* before 3.14, or the exit is over */
    }
    PyObject *args[2] = {task, group->parent_task};
    PyObject *res = PyObject_Vectorcall(how, args, 2, NULL);
    if (res == NULL) {
        PyErr_WriteUnraisable((PyObject *)group);
    }
    Py_XDECREF(res);
}

/* A finished child leaves the group at once, unless it failed or is the
 * last one the exit waits for: then after the task has its outcome, in the
 * turn asyncio's done callback would have had. */
static void
settle_child(GroupObject *group, ChildObject *child, PyObject *task)
{
    ModuleState *st = group->state;
    int last = group->children == 1 && PyDict_GET_SIZE(group->pending) == 0
               && group->on_completed_fut != NULL;
    if (!child->failed && !last) {
        unlink_child(group, child);
        return;
    }
    PyObject *callback = PyObject_GetAttrString((PyObject *)group,
                                                "_on_child_done");
    PyObject *res = NULL;
    if (callback != NULL) {
        PyObject *args[4] = {group->loop, callback, (PyObject *)child, task};
        res = PyObject_VectorcallMethod(
            st->str_call_soon, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
            NULL);
        Py_DECREF(callback);
    }
    if (res == NULL) {
        /* The loop is closed (the task is being destroyed with it): nobody
         * will await the group any more. Forget the child, give its tokens
         * back. */
        if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            PyErr_Clear();
        }
        else {
            PyErr_WriteUnraisable((PyObject *)group);
        }
        unlink_child(group, child);
        if (claim_release(&child->claim) < 0) {
            PyErr_WriteUnraisable((PyObject *)group);
        }
    }
    Py_XDECREF(res);
}

void
group_child_finished(GroupObject *group, ChildObject *child, PyObject *error)
{
    ASSERT_NO_ERROR();
    ModuleState *st = group->state;
    child->finished = 1;
    if (child->waiting) {
        child->waiting = 0;
        Py_CLEAR(child->stand_in);
    }
    else {
        group->running--;
    }
    group->done++;
    child->failed = error != NULL && !is_cancelled_error(st, error);
    if (child->failed) {
        group->failed++;
    }
    /* A failed child's tokens wait for the group's callback, which fails
     * the group's waiting spawns first; a KeyboardInterrupt or SystemExit
     * may stop the loop before that callback runs, so theirs come back
     * now. */
    if ((!child->failed || is_interrupt(error))
            && claim_release_after(&child->claim, NULL, error) < 0) {
        PyErr_WriteUnraisable((PyObject *)child);
    }
    PyObject *task = child->task;
    if (task == NULL) {
        return;  /* still inside create_task(): start_child settles it */
    }
    child->task = NULL;
    link_to_parent(group, task, st->discard_from_awaited_by);
    settle_child(group, child, task);
    retire_task(group, task);
}

static PyObject *
create_task(GroupObject *group, PyObject *coro, PyObject *kwargs)
{
    ModuleState *st = group->state;
    if (kwargs == NULL) {
        return call_method1(group->loop, st->str_create_task, coro);
    }
    PyObject *method = PyObject_GetAttr(group->loop, st->str_create_task);
    if (method == NULL) {
        return NULL;
    }
    PyObject *task = PyObject_VectorcallDict(method, &coro, 1, kwargs);
    Py_DECREF(method);
    return task;
}

PyObject *
group_start_child(GroupObject *group, PyObject *target, PyObject *iterator,
                  Claim *claim, int waiting, PyObject *kwargs)
{
    ModuleState *st = group->state;
    ChildObject *child = child_new(group, target, iterator, claim, waiting);
    if (child == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        if (claim_abandon(claim) < 0
                || close_awaitable(st, target) < 0) {
            PyErr_WriteUnraisable((PyObject *)group);
        }
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    link_child(group, child);
    if (!waiting) {
        group->running++;
    }
    PyObject *task = create_task(group, (PyObject *)child, kwargs);
    if (task == NULL) {
        /* Nothing started: the tokens go back, the coroutine is closed. */
        PyObject *exc = PyErr_GetRaisedException();
        if (child_close(child) < 0) {
            PyErr_WriteUnraisable((PyObject *)group);
        }
        unlink_child(group, child);
        group->done--;
        Py_DECREF(child);
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    group->spawned++;
    drop_one_retired(group);
    if (child->finished) {
        /* An eager task ran to its end inside create_task(). */
        if (st->eager_done_scheduled) {
            settle_child(group, child, task);
        }
        else if (group_on_child_done(group, child, task) < 0) {
            PyErr_WriteUnraisable((PyObject *)group);
        }
    }
    else {
        child->task = Py_NewRef(task);
        link_to_parent(group, task, st->add_to_awaited_by);
        if (group->aborting
                && (st->eager_done_scheduled || group->cancel_called)) {
            /* gh-155418: its eager first step called cancel() before the
             * task was known. (Where finished eager children are handled
             * at once, a grandchild failing in that step aborts the group
             * too, and asyncio leaves the task running.) */
            PyObject *res = call_method0(task, st->str_cancel);
            if (res == NULL) {
                PyErr_WriteUnraisable((PyObject *)group);
            }
            Py_XDECREF(res);
        }
    }
    Py_DECREF(child);
    return task;
}

/* ---- the Python type ---- */

/* Arguments are taken by __init__, so that a subclass may have its own;
 * until then the group has no limit. */
static PyObject *
group_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
          PyObject *Py_UNUSED(kwds))
{
    ModuleState *st = state_of_type(type);
    if (st == NULL) {
        return NULL;
    }
    GroupObject *self = (GroupObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->state = st;
    self->limit = Py_NewRef(Py_None);
    self->limiters = PyTuple_New(0);
    self->pending = PyDict_New();
    self->errors = PyList_New(0);
    if (self->limiters == NULL || self->pending == NULL
            || self->errors == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
group_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    GroupObject *self = (GroupObject *)op;
    static char *kwlist[] = {"limit", "limiter", NULL};
    PyObject *limit = Py_None, *limiter = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$O:BoundedTaskGroup",
                                     kwlist, &limit, &limiter)) {
        return -1;
    }
    if (self->entered) {
        PyErr_Format(PyExc_RuntimeError,
                     "%R has been entered: its limits cannot change", self);
        return -1;
    }
    ModuleState *st = self->state;
    PyObject *checked_limit = NULL, *own = NULL;
    if (limit != Py_None) {
        checked_limit = PyObject_CallOneArg(st->check_limit, limit);
        if (checked_limit == NULL) {
            return -1;
        }
        PyObject *own_limiter = PyObject_CallOneArg(
            (PyObject *)st->limiter_type, checked_limit);
        own = own_limiter != NULL ? PyTuple_Pack(1, own_limiter) : NULL;
        Py_XDECREF(own_limiter);
        if (own == NULL) {
            Py_DECREF(checked_limit);
            return -1;
        }
    }
    PyObject *limiters = sources_in_rank_order(st, own, limiter);
    Py_XDECREF(own);
    if (limiters == NULL) {
        Py_XDECREF(checked_limit);
        return -1;
    }
    Py_SETREF(self->limiters, limiters);
    Py_SETREF(self->limit, checked_limit ? checked_limit
                                         : Py_NewRef(Py_None));
    return 0;
}

static int
group_traverse(GroupObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->limit);
    Py_VISIT(self->limiters);
    Py_VISIT(self->loop);
    Py_VISIT(self->parent_task);
    for (ChildObject *c = self->first_child; c != NULL; c = c->next) {
        Py_VISIT(c);
    }
    Py_VISIT(self->pending);
    Py_VISIT(self->errors);
    Py_VISIT(self->base_error);
    Py_VISIT(self->on_completed_fut);
    for (Py_ssize_t i = 0; i < self->retired_count; i++) {
        Py_VISIT(self->retired[i]);
    }
    return 0;
}

static int
group_clear(GroupObject *self)
{
    while (self->first_child != NULL) {
        unlink_child(self, self->first_child);
    }
    Py_CLEAR(self->limit);
    Py_CLEAR(self->limiters);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->parent_task);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->errors);
    Py_CLEAR(self->base_error);
    Py_CLEAR(self->on_completed_fut);
    group_drop_retired(self);
    return 0;
}

static void
group_dealloc(GroupObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    (void)group_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
group_repr(GroupObject *self)
{
    PyObject *parts = PyList_New(0);
    if (parts == NULL) {
        return NULL;
    }
    PyObject *part;
#define ADD(expr)                                               \
    do {                                                        \
        part = (expr);                                          \
        if (part == NULL || PyList_Append(parts, part) < 0) {   \
            Py_XDECREF(part);                                   \
            Py_DECREF(parts);                                   \
            return NULL;                                        \
        }                                                       \
        Py_DECREF(part);                                        \
    } while (0)
    ADD(PyUnicode_FromString("<BoundedTaskGroup"));
    if (self->limit != NULL && self->limit != Py_None) {
        ADD(PyUnicode_FromFormat("limit=%S", self->limit));
    }
    if (self->children > 0) {
        ADD(PyUnicode_FromFormat("tasks=%zd", self->children));
    }
    if (self->errors != NULL && PyList_GET_SIZE(self->errors) > 0) {
        ADD(PyUnicode_FromFormat("errors=%zd",
                                 PyList_GET_SIZE(self->errors)));
    }
    if (self->aborting) {
        ADD(PyUnicode_FromString("cancelling"));
    }
    else if (self->entered) {
        ADD(PyUnicode_FromString("entered"));
    }
#undef ADD
    PyObject *sep = PyUnicode_FromString(" ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    if (joined == NULL) {
        return NULL;
    }
    PyObject *repr = PyUnicode_FromFormat("%U>", joined);
    Py_DECREF(joined);
    return repr;
}

/* What spawn() and create_task() are given: (coro, *, limiter=None,
 * cost=None, **kwargs); `kwargs` is NULL or a new dict. */
typedef struct {
    PyObject *coro;
    PyObject *limiter;
    PyObject *cost;
    PyObject *kwargs;
} TaskArgs;

/* Before 3.14 the keywords for the loop can only be name= and context=;
 * a refused keyword leaves the coroutine as it was, as a failed call does,
 * so that the caller may retry without it. */
static int
parse_task_args(ModuleState *st, const char *method, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames, TaskArgs *parsed)
{
    parsed->limiter = parsed->cost = Py_None;
    parsed->kwargs = NULL;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError,
                     "%s() expected 1 positional argument (the coroutine), "
                     "got %zd", method, nargs);
        return -1;
    }
    parsed->coro = args[0];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        if (PyUnicode_CompareWithASCIIString(key, "limiter") == 0) {
            parsed->limiter = value;
            continue;
        }
        if (PyUnicode_CompareWithASCIIString(key, "cost") == 0) {
            parsed->cost = value;
            continue;
        }
        if (!st->create_task_kwargs
                && PyUnicode_CompareWithASCIIString(key, "name") != 0
                && PyUnicode_CompareWithASCIIString(key, "context") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'",
                         method, key);
            Py_CLEAR(parsed->kwargs);
            return -1;
        }
        if (parsed->kwargs == NULL) {
            parsed->kwargs = PyDict_New();
        }
        if (parsed->kwargs == NULL
                || PyDict_SetItem(parsed->kwargs, key, value) < 0) {
            Py_CLEAR(parsed->kwargs);
            return -1;
        }
    }
    return 0;
}

/* The claim of a task with `parsed`'s limiter and cost; a bad one closes
 * the coroutine, which will never run. */
static int
claim_of_task(GroupObject *self, TaskArgs *parsed, Claim *claim)
{
    if (claim_init_for_task(self->state, claim, self->limiters,
                            parsed->limiter, parsed->cost) < 0) {
        PyObject *exc = PyErr_GetRaisedException();
        if (close_awaitable(self->state, parsed->coro) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        PyErr_SetRaisedException(exc);
        return -1;
    }
    if (claim->limiters != self->limiters) {
        self->task_limiters_given = 1;
    }
    return 0;
}

static PyObject *
group_spawn(GroupObject *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    TaskArgs parsed;
    if (parse_task_args(self->state, "spawn", args, nargs, kwnames,
                        &parsed) < 0) {
        return NULL;
    }
    Claim claim;
    PyObject *spawn = NULL;
    if (claim_of_task(self, &parsed, &claim) == 0) {
        spawn = spawn_new(self, parsed.coro, &claim, parsed.kwargs);
        claim_clear(&claim);
    }
    Py_XDECREF(parsed.kwargs);
    return spawn;
}

static PyObject *
group_create_task(GroupObject *self, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    ModuleState *st = self->state;
    TaskArgs parsed;
    if (parse_task_args(st, "create_task", args, nargs, kwnames,
                        &parsed) < 0) {
        return NULL;
    }
    PyObject *coro = parsed.coro;
    PyObject *task = NULL;
    PyObject *iterator = iterator_of(st, coro);
    if (iterator == NULL) {
        goto done;
    }
    Claim claim;
    if (claim_of_task(self, &parsed, &claim) < 0) {
        goto done;
    }
    if (group_check_can_create(self, coro, st->closes_refused_coro) < 0) {
        claim_clear(&claim);
        goto done;
    }
    int held = -1;
    PyObject *running = PyObject_CallNoArgs(st->get_running_loop);
    if (running != NULL) {
        if (running != self->loop) {
            raise_group_error(self, "is bound to a different event loop");
        }
        else {
            held = claim_try_take(&claim, self->loop);
        }
        Py_DECREF(running);
    }
    if (held < 0) {
        PyObject *exc = PyErr_GetRaisedException();
        if (close_awaitable(st, coro) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        PyErr_SetRaisedException(exc);
    }
    else {
        task = group_start_child(self, coro, iterator, &claim, !held,
                                 parsed.kwargs);
    }
    claim_clear(&claim);
done:
    Py_XDECREF(iterator);
    Py_XDECREF(parsed.kwargs);
    return task;
}

static PyObject *
group_cancel(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->entered) {
        self->cancel_on_enter = 1;
        Py_RETURN_NONE;
    }
    if (self->exiting && !has_work(self)) {
        Py_RETURN_NONE;
    }
    self->cancel_called = 1;
    if (!self->aborting) {
        if (group_abort(self) < 0) {
            return NULL;
        }
        if (self->parent_task != NULL && !self->parent_cancel_requested
                && cancel_parent(self) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
group_on_child_done_method(GroupObject *self, PyObject *const *args,
                           Py_ssize_t nargs)
{
    if (nargs != 2 || !PyObject_TypeCheck(args[0], self->state->child_type)) {
        PyErr_SetString(PyExc_TypeError, "_on_child_done(child, task)");
        return NULL;
    }
    if (group_on_child_done(self, (ChildObject *)args[0], args[1]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
group_statistics(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t waiting = PyDict_GET_SIZE(self->pending);
    for (ChildObject *c = self->first_child; c != NULL; c = c->next) {
        waiting += c->waiting;
    }
    return PyObject_CallFunction(self->state->group_statistics, "nnnnn",
                                 self->spawned, self->running, waiting,
                                 self->done, self->failed);
}

static PyObject *
group_aenter(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    return group_exit_new(self, 1, NULL, NULL, NULL);
}

static PyObject *
group_aexit(GroupObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__aexit__ takes 3 arguments");
        return NULL;
    }
    return group_exit_new(self, 0, args[0], args[1], args[2]);
}

static PyObject *
group_get_limit(GroupObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->limit);
}

static PyObject *
group_get_limiters(GroupObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->limiters);
}

/* ---- views for deadlock detection (taskbound._deadlock) ---- */

/* The future the exit waits on for the children, or None. */
static PyObject *
group_get_exit_waiter(GroupObject *self, void *Py_UNUSED(closure))
{
    PyObject *future = self->exiting ? self->on_completed_fut : NULL;
    return Py_NewRef(future != NULL ? future : Py_None);
}

static PyObject *
group_get_parent_task(GroupObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->parent_task != NULL ? self->parent_task
                                               : Py_None);
}

/* The task of each unfinished child (None for one without a task yet). */
static PyObject *
group_child_tasks(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *tasks = PyList_New(0);
    if (tasks == NULL) {
        return NULL;
    }
    for (ChildObject *child = self->first_child; child != NULL;
            child = child->next) {
        if (child->finished) {
            continue;
        }
        if (PyList_Append(tasks, child->task != NULL ? child->task
                                                     : Py_None) < 0) {
            Py_DECREF(tasks);
            return NULL;
        }
    }
    return tasks;
}

/* Adds to `found` each source of `claim` that is not one of the group's. */
static int
add_task_limiters(GroupObject *self, Claim *claim, PyObject *found)
{
    if (claim->limiters == NULL || claim->limiters == self->limiters) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < CLAIM_SIZE(claim); i++) {
        PyObject *source = (PyObject *)LIMITER_AT(claim, i);
        int own = PySequence_Contains(self->limiters, source);
        if (own < 0 || (!own && PyDict_SetItem(found, source, Py_None) < 0)) {
            return -1;
        }
    }
    return 0;
}

/* For deadlock detection: the limiters the group's children and waiting
 * spawns take beyond the group's own (given to spawn() or create_task()). */
static PyObject *
group_task_limiters(GroupObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->task_limiters_given) {
        return PyTuple_New(0);
    }
    PyObject *found = PyDict_New();
    if (found == NULL) {
        return NULL;
    }
    for (ChildObject *child = self->first_child; child != NULL;
            child = child->next) {
        if (!child->finished
                && add_task_limiters(self, &child->claim, found) < 0) {
            goto error;
        }
    }
    Py_ssize_t pos = 0;
    PyObject *spawn, *unused;
    while (PyDict_Next(self->pending, &pos, &spawn, &unused)) {
        if (add_task_limiters(self, spawn_claim(spawn), found) < 0) {
            goto error;
        }
    }
    PyObject *limiters = PySequence_Tuple(found);
    Py_DECREF(found);
    return limiters;
error:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef group_methods[] = {
    {"_child_tasks", (PyCFunction)group_child_tasks, METH_NOARGS, NULL},
    {"_task_limiters", (PyCFunction)group_task_limiters, METH_NOARGS, NULL},
    {"spawn", (PyCFunction)(void (*)(void))group_spawn,
     METH_FASTCALL | METH_KEYWORDS,
     "spawn(coro, /, *, limiter=None, cost=None, **kwargs)\n--\n\n"
     "Wait for the tokens, then start coro in a task of the group.\n"
     "limiter adds limiters for this task only; cost maps a limiter to the\n"
     "tokens this task takes of it (1 of each otherwise). Other keywords\n"
     "(name, context; any from 3.14) go to the loop's create_task."},
    {"create_task", (PyCFunction)(void (*)(void))group_create_task,
     METH_FASTCALL | METH_KEYWORDS,
     "create_task(coro, /, *, limiter=None, cost=None, **kwargs)\n--\n\n"
     "Return a task at once; its coroutine starts when it has the tokens.\n"
     "Keywords as for spawn()."},
    {"cancel", (PyCFunction)group_cancel, METH_NOARGS,
     "Cancel every task and the body; the group then exits without error."},
    {"statistics", (PyCFunction)group_statistics, METH_NOARGS,
     "GroupStatistics(spawned, running, waiting, done, failed)."},
    {"__aenter__", (PyCFunction)group_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))group_aexit, METH_FASTCALL,
     NULL},
    {"_on_child_done", (PyCFunction)(void (*)(void))group_on_child_done_method,
     METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef group_getset[] = {
    {"limit", (getter)group_get_limit, NULL,
     "The group's own bound, or None.", NULL},
    {"limiters", (getter)group_get_limiters, NULL,
     "Every limiter a task takes a token of, in the order taken.", NULL},
    {"_exit_waiter", (getter)group_get_exit_waiter, NULL, NULL, NULL},
    {"_parent_task", (getter)group_get_parent_task, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef group_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(GroupObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot group_slots[] = {
    {Py_tp_doc, "BoundedTaskGroup(limit=None, *, limiter=None)\n--\n\n"
                "An asyncio.TaskGroup that runs at most `limit` tasks at once "
                "and takes a token of each shared limiter before a task may "
                "start."},
    {Py_tp_new, group_new},
    {Py_tp_init, group_init},
    {Py_tp_dealloc, group_dealloc},
    {Py_tp_traverse, group_traverse},
    {Py_tp_clear, group_clear},
    {Py_tp_repr, group_repr},
    {Py_tp_methods, group_methods},
    {Py_tp_getset, group_getset},
    {Py_tp_members, group_members},
    {0, NULL},
};

PyType_Spec group_spec = {
    .name = "taskbound.BoundedTaskGroup",
    .basicsize = sizeof(GroupObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = group_slots,
};
