/* taskbound._taskbound: the module. It only assembles the three layers
 * (core/, group/, stream/): their types, the Python objects they call, the
 * interned names.
 *
 * Multi-phase init; every Python object the C code needs is in the module
 * state (core/state.h), reached from each type with PyType_GetModuleByDef.
 */
#include "core/core.h"
#include "group/group.h"
#include "stream/stream.h"

static ModuleState *
get_state(PyObject *module)
{
    void *state = PyModule_GetState(module);
    assert(state != NULL);
    return (ModuleState *)state;
}

static PyObject *
import_attr(const char *module_name, const char *attr)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(module, attr);
    Py_DECREF(module);
    return value;
}

/* A truth of taskbound._compat, copied into *flag. */
static int
import_flag(const char *attr, char *flag)
{
    PyObject *value = import_attr("taskbound._compat", attr);
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (truth < 0) {
        return -1;
    }
    *flag = (char)truth;
    return 0;
}

/* A function of taskbound._compat, or NULL where it is None. */
static int
import_optional(const char *attr, PyObject **slot)
{
    PyObject *value = import_attr("taskbound._compat", attr);
    if (value == NULL) {
        return -1;
    }
    if (value == Py_None) {
        Py_DECREF(value);
        value = NULL;
    }
    *slot = value;
    return 0;
}

static int
add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot,
         int public, PyTypeObject *base)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec,
                                                     (PyObject *)base);
    if (*slot == NULL) {
        return -1;
    }
    return public ? PyModule_AddType(module, *slot) : 0;
}

static int
add_types(PyObject *module, ModuleState *st)
{
    if (add_type(module, &token_source_spec, &st->token_source_type, 0,
                 NULL) < 0) {
        return -1;
    }
    PyTypeObject *source = st->token_source_type;
    if (source_add_context_methods(module, source) < 0) {
        return -1;
    }
    if (add_type(module, &limiter_spec, &st->limiter_type, 1, source) < 0
            || add_type(module, &rate_limiter_spec, &st->rate_limiter_type,
                        1, source) < 0
            || add_type(module, &external_source_spec,
                        &st->external_source_type, 1, source) < 0
            || add_type(module, &group_spec, &st->group_type, 1, NULL) < 0
            || add_type(module, &child_spec, &st->child_type, 0, NULL) < 0
            || add_type(module, &claim_wait_spec, &st->claim_wait_type, 0,
                        NULL) < 0
            || add_type(module, &holding_spec, &st->holding_type, 0,
                        NULL) < 0
            || add_type(module, &ready_spec, &st->ready_type, 0, NULL) < 0
            || add_type(module, &spawn_spec, &st->spawn_type, 0, NULL) < 0
            || add_type(module, &group_exit_spec, &st->group_exit_type, 0,
                        NULL) < 0
            || add_type(module, &stream_spec, &st->stream_type, 1, NULL) < 0
            || add_type(module, &stream_step_spec, &st->stream_step_type, 0,
                        NULL) < 0
            || add_type(module, &worker_spec, &st->worker_type, 0, NULL) < 0
            || add_type(module, &parked_item_spec, &st->parked_item_type, 0,
                        NULL) < 0
            || add_type(module, &stream_iterator_spec,
                        &st->stream_iterator_type, 1, NULL) < 0) {
        return -1;
    }
    return 0;
}

/* What the core calls in asyncio and in the package's Python modules. */
static int
import_python(ModuleState *st)
{
#define IMPORT(field, mod, name)                                \
    if ((st->field = import_attr(mod, name)) == NULL) {         \
        return -1;                                              \
    }
    IMPORT(get_running_loop, "asyncio.events", "_get_running_loop");
    IMPORT(current_task, "asyncio", "current_task");
    IMPORT(cancelled_error, "asyncio", "CancelledError");
    IMPORT(coroutine_abc, "collections.abc", "Coroutine");
    IMPORT(isfuture, "asyncio", "isfuture");
    IMPORT(future_type, "asyncio", "Future");
    /* Its methods, for the futures as_completed makes (exactly that type):
     * no lookup by name per item. */
    st->future_set_result = PyObject_GetAttrString(st->future_type,
                                                   "set_result");
    st->future_set_exception = PyObject_GetAttrString(st->future_type,
                                                      "set_exception");
    st->future_done = PyObject_GetAttrString(st->future_type, "done");
    st->future_result = PyObject_GetAttrString(st->future_type, "result");
    st->future_blocking = PyObject_GetAttrString(st->future_type,
                                                 "_asyncio_future_blocking");
    if (st->future_set_result == NULL || st->future_set_exception == NULL
            || st->future_done == NULL || st->future_result == NULL
            || st->future_blocking == NULL) {
        return -1;
    }
    if (Py_TYPE(st->future_blocking)->tp_descr_set == NULL) {
        PyErr_SetString(PyExc_ImportError, "asyncio.Future's "
                        "_asyncio_future_blocking is not a settable slot");
        return -1;
    }
    IMPORT(invalid_state_error, "asyncio", "InvalidStateError");
    PyObject *base_loop = import_attr("asyncio.base_events", "BaseEventLoop");
    if (base_loop == NULL) {
        return -1;
    }
    st->base_create_future = PyObject_GetAttrString(base_loop,
                                                    "create_future");
    st->base_time = PyObject_GetAttrString(base_loop, "time");
    Py_DECREF(base_loop);
    st->kwnames_loop = Py_BuildValue("(s)", "loop");
    if (st->base_create_future == NULL || st->base_time == NULL
            || st->kwnames_loop == NULL) {
        return -1;
    }
    IMPORT(would_block, "taskbound._common", "WouldBlock");
    IMPORT(deadlock_error, "taskbound._common", "DeadlockError");
    IMPORT(on_block, "taskbound._deadlock", "on_block");
    IMPORT(on_exit_wait, "taskbound._deadlock", "on_exit_wait");
    IMPORT(limiter_statistics, "taskbound._common", "LimiterStatistics");
    IMPORT(rate_limiter_statistics, "taskbound._common",
           "RateLimiterStatistics");
    IMPORT(check_positive, "taskbound._common", "check_positive");
    IMPORT(check_burst, "taskbound._common", "check_burst");
    IMPORT(group_statistics, "taskbound._common", "GroupStatistics");
    IMPORT(check_total_tokens, "taskbound._common", "check_total_tokens");
    IMPORT(check_tokens, "taskbound._common", "check_tokens");
    IMPORT(costs_in_rank_order, "taskbound._common", "costs_in_rank_order");
    IMPORT(check_pause, "taskbound._common", "check_pause");
    IMPORT(check_limit, "taskbound._common", "check_limit");
    IMPORT(waiting_stand_in, "taskbound._common", "waiting_stand_in");
#undef IMPORT
    PyObject *lateness = import_attr("taskbound._common", "TIMER_LATENESS");
    if (lateness == NULL) {
        return -1;
    }
    st->timer_lateness = PyFloat_AsDouble(lateness);
    Py_DECREF(lateness);
    if (st->timer_lateness == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (import_flag("UNCANCEL_AFTER_WAIT", &st->uncancel_after_wait) < 0
            || import_flag("CLOSES_REFUSED_CORO",
                           &st->closes_refused_coro) < 0
            || import_flag("EAGER_DONE_SCHEDULED",
                           &st->eager_done_scheduled) < 0
            || import_flag("CREATE_TASK_KWARGS", &st->create_task_kwargs) < 0
            || import_flag("BARE_GENERATOR_EXIT",
                           &st->bare_generator_exit) < 0
            || import_optional("add_to_awaited_by",
                               &st->add_to_awaited_by) < 0
            || import_optional("discard_from_awaited_by",
                               &st->discard_from_awaited_by) < 0
            || import_optional("current_tasks", &st->current_tasks) < 0) {
        return -1;
    }
    return 0;
}

static int
intern_strings(ModuleState *st)
{
#define INTERN(field, text)                                     \
    if ((st->field = PyUnicode_InternFromString(text)) == NULL) {  \
        return -1;                                              \
    }
    INTERN(str_asyncio_future_blocking, "_asyncio_future_blocking");
    INTERN(str_call_at, "call_at");
    INTERN(str_call_exception_handler, "call_exception_handler");
    INTERN(str_call_soon, "call_soon");
    INTERN(str_cancel, "cancel");
    INTERN(str_cancelled, "cancelled");
    INTERN(str_cancelling, "cancelling");
    INTERN(str_close, "close");
    INTERN(str_create_future, "create_future");
    INTERN(str_create_task, "create_task");
    INTERN(str_add_done_callback, "add_done_callback");
    INTERN(str_aclose, "aclose");
    INTERN(str_set_exception, "set_exception");
    INTERN(str_done, "done");
    INTERN(str_exception, "exception");
    INTERN(str_get_coro, "get_coro");
    INTERN(str_result, "result");
    INTERN(str_send, "send");
    INTERN(str_set_result, "set_result");
    INTERN(str_throw, "throw");
    INTERN(str_time, "time");
    INTERN(str_is_closed, "is_closed");
    INTERN(str_uncancel, "uncancel");
    INTERN(str__try_take, "_try_take");
    INTERN(str__enqueue, "_enqueue");
    INTERN(str__dequeue, "_dequeue");
    INTERN(str__pass_on, "_pass_on");
    INTERN(str__give_back, "_give_back");
    INTERN(str__check_weight, "_check_weight");
#undef INTERN
    return 0;
}

/* Asyncio must take our child and worker coroutines for coroutines. */
static int
register_coroutines(ModuleState *st)
{
    PyTypeObject *coroutines[] = {st->child_type, st->worker_type};
    for (size_t i = 0; i < sizeof(coroutines) / sizeof(*coroutines); i++) {
        PyObject *registered = PyObject_CallMethod(
            st->coroutine_abc, "register", "O", (PyObject *)coroutines[i]);
        if (registered == NULL) {
            return -1;
        }
        Py_DECREF(registered);
    }
    return 0;
}

static int
module_exec(PyObject *module)
{
    ModuleState *st = get_state(module);
    st->next_rank = 0;
    /* The core asks the group layer, above it, through this. */
    st->task_may_deadlock = group_task_may_deadlock;
    if (add_types(module, st) < 0
            || (st->ready = ready_new(st->ready_type)) == NULL
            || import_python(st) < 0
            || intern_strings(st) < 0 || register_coroutines(st) < 0) {
        return -1;
    }
    return 0;
}

/* Every reference the state holds, for traverse and clear. */
#define STATE_FIELDS(X)                                                    \
    X(token_source_type) X(limiter_type) X(rate_limiter_type)              \
    X(external_source_type) X(claim_wait_type) X(holding_type) X(ready)    \
    X(ready_type) X(check_tokens) X(check_pause) X(costs_in_rank_order)    \
    X(get_running_loop) X(current_task) X(current_tasks)                   \
    X(cancelled_error) X(coroutine_abc) X(isfuture)                        \
    X(future_type) X(future_set_result) X(future_set_exception)            \
    X(future_done) X(future_result) X(future_blocking)                     \
    X(invalid_state_error) X(base_create_future) X(base_time) X(kwnames_loop)           \
    X(would_block) X(deadlock_error) X(on_block) X(on_exit_wait)           \
    X(limiter_statistics) X(rate_limiter_statistics) X(check_positive)     \
    X(check_burst) X(check_total_tokens) X(str_asyncio_future_blocking)    \
    X(str_call_at) X(str_call_exception_handler) X(str_call_soon)          \
    X(str_cancel) X(str_cancelled) X(str_cancelling) X(str_close)          \
    X(str_create_future) X(str_create_task) X(str_add_done_callback)       \
    X(str_aclose) X(str_set_exception) X(str_done) X(str_exception)        \
    X(str_get_coro) X(str_is_closed)                                       \
    X(str_result) X(str_send) X(str_set_result) X(str_throw) X(str_time)   \
    X(str_uncancel) X(str__try_take) X(str__enqueue) X(str__dequeue)       \
    X(str__pass_on) X(str__give_back) X(str__check_weight)                \
    X(group_type) X(child_type) X(spawn_type) X(group_exit_type)           \
    X(group_statistics) X(check_limit) X(waiting_stand_in)                 \
    X(add_to_awaited_by) X(discard_from_awaited_by)                        \
    X(stream_type) X(stream_step_type) X(worker_type) X(parked_item_type)  \
    X(stream_iterator_type) X(spare_stop_iteration)

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ModuleState *st = get_state(module);
#define VISIT(field) Py_VISIT(st->field);
    STATE_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int
module_clear(PyObject *module)
{
    ModuleState *st = get_state(module);
    /* Before the types: freeing a kept object reads its type. */
    freelist_clear(&st->child_freelist);
    freelist_clear(&st->claim_wait_freelist);
    freelist_clear(&st->spawn_freelist);
    freelist_clear(&st->stream_step_freelist);
#define CLEAR(field) Py_CLEAR(st->field);
    STATE_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void
module_free(void *module)
{
    (void)module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

PyModuleDef taskbound_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "taskbound._taskbound",
    .m_doc = "The C core of taskbound: Limiter and BoundedTaskGroup.",
    .m_size = sizeof(ModuleState),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__taskbound(void)
{
    return PyModuleDef_Init(&taskbound_module);
}
