/* The group layer: BoundedTaskGroup and what it is made of. It includes
 * the core, nothing else.
 *
 *   taskgroup.c   BoundedTaskGroup: its state, spawn() and create_task(),
 *                 its children's start and end, its abort
 *   groupexit.c   GroupExit, the awaitable of __aenter__ and __aexit__
 *   child.c       Child, the coroutine a child's Task drives: it waits
 *                 for its tokens (create_task) and then runs the user's
 *   spawn.c       Spawn, the awaitable of spawn(): the tokens first, then
 *                 the child's task
 */
#ifndef TASKBOUND_GROUP_H
#define TASKBOUND_GROUP_H

#include "core/core.h"

typedef struct ChildObject ChildObject;

/* How many finished children's tasks a group keeps to let go of one per
 * child it starts (see group_retire_task). */
#define RETIRED_MAX 128

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
    PyObject *pending;          /* dict: the Spawn of each waiting spawn() */
    PyObject *errors;           /* list, NULL once raised */
    PyObject *base_error;
    PyObject *on_completed_fut;
    Py_ssize_t spawned, running, done, failed;
    char entered, exiting, aborting, cancel_on_enter, cancel_called;
    char parent_cancel_requested;
    char task_limiters_given;   /* a task had limiter= or cost= */
    PyObject *weakreflist;
    PyObject *retired[RETIRED_MAX];  /* finished tasks, strong refs */
    Py_ssize_t retired_count;
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
/* Lets go of every finished task the group still keeps. */
void group_drop_retired(GroupObject *group);
int group_wake_exit(GroupObject *group);
int group_abort(GroupObject *group);
int group_on_child_done(GroupObject *group, ChildObject *child,
                        PyObject *task);
/* RuntimeError("TaskGroup <group> <problem>"), the form of asyncio's
 * messages: group_error() makes it, raise_group_error() raises it and
 * returns -1. */
PyObject *group_error(GroupObject *group, const char *problem);
int raise_group_error(GroupObject *group, const char *problem);

/* For ModuleState.task_may_deadlock: whether `task` runs a child that
 * holds `busy`, or one whose group's exit waits while its parent may. */
int group_task_may_deadlock(ModuleState *state, PyObject *task,
                            TokenSource *busy);
ChildObject *child_new(GroupObject *group, PyObject *target,
                       PyObject *iterator, Claim *claim, int waiting);
int child_close(ChildObject *child);

/* The awaitable of spawn(coro, **kwargs), taking `claim` (moved in);
 * kwargs may be NULL. */
PyObject *spawn_new(GroupObject *group, PyObject *target, Claim *claim,
                    PyObject *kwargs);
/* The claim of a waiting spawn() (borrowed). */
Claim *spawn_claim(PyObject *spawn);
/* Makes a waiting spawn() raise `error` when it next runs, giving back
 * what it holds. */
int spawn_abort(PyObject *spawn, PyObject *error);

extern PyType_Spec spawn_spec;
extern PyType_Spec group_exit_spec;
PyObject *group_exit_new(GroupObject *group, int entering, PyObject *et,
                         PyObject *exc, PyObject *tb);

#endif
