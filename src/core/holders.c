/* HolderTable: how many tokens of a Limiter each task took with acquire()
 * or acquire_nowait(), for deadlock detection.
 *
 * Every such acquire and release updates it, so it is an open-addressing
 * table keyed by the task's address (linear probing, deletion by backward
 * shift, at most half full) holding a strong reference to each task and a
 * C count: a probe each, where a dict of PyLong counts cost a lookup and
 * an insertion or deletion. The detector, on its slow path, gets a dict
 * made from it.
 */
#include "core/core.h"

#define HOLDERS_MIN_CAP 8

static size_t
home_of(const HolderTable *t, PyObject *task)
{
    uint64_t h = (uint64_t)(uintptr_t)task * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (size_t)(t->cap - 1);
}

/* The slot of task, or of the empty slot where it would go. */
static HolderSlot *
slot_of(const HolderTable *t, PyObject *task)
{
    size_t mask = (size_t)(t->cap - 1);
    size_t i = home_of(t, task);
    while (t->slots[i].task != NULL && t->slots[i].task != task) {
        i = (i + 1) & mask;
    }
    return &t->slots[i];
}

static int
holders_grow(HolderTable *t)
{
    Py_ssize_t cap = t->cap ? t->cap * 2 : HOLDERS_MIN_CAP;
    HolderSlot *slots = PyMem_Calloc((size_t)cap, sizeof(HolderSlot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    HolderSlot *old = t->slots;
    Py_ssize_t old_cap = t->cap;
    t->slots = slots;
    t->cap = cap;
    for (Py_ssize_t i = 0; i < old_cap; i++) {
        if (old[i].task != NULL) {
            *slot_of(t, old[i].task) = old[i];
        }
    }
    PyMem_Free(old);
    return 0;
}

int
holders_add(HolderTable *t, PyObject *task, Py_ssize_t n)
{
    if (2 * (t->used + 1) > t->cap && holders_grow(t) < 0) {
        return -1;
    }
    HolderSlot *slot = slot_of(t, task);
    if (slot->task == NULL) {
        slot->task = Py_NewRef(task);
        slot->count = 0;
        t->used++;
    }
    slot->count += n;
    return 0;
}

Py_ssize_t
holders_count(const HolderTable *t, PyObject *task)
{
    return t->used == 0 ? 0 : slot_of(t, task)->count;
}

/* Empties slot i, moving back the entries after it that probed past it,
 * so that every entry stays reachable from its home. */
static void
remove_at(HolderTable *t, size_t i)
{
    size_t mask = (size_t)(t->cap - 1);
    PyObject *task = t->slots[i].task;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (t->slots[j].task == NULL) {
            break;
        }
        size_t home = home_of(t, t->slots[j].task);
        /* Whether home lies cyclically in (i, j]: then it stays. */
        int stays = i <= j ? (i < home && home <= j)
                           : (i < home || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].task = NULL;
    t->slots[i].count = 0;
    t->used--;
    Py_DECREF(task);   /* last: it may run code that looks at the table */
}

Py_ssize_t
holders_remove(HolderTable *t, PyObject *task, Py_ssize_t n)
{
    if (t->used == 0) {
        return 0;
    }
    HolderSlot *slot = slot_of(t, task);
    if (slot->task == NULL) {
        return 0;
    }
    Py_ssize_t own = slot->count < n ? slot->count : n;
    slot->count -= own;
    if (slot->count == 0) {
        remove_at(t, (size_t)(slot - t->slots));
    }
    return own;
}

void
holders_clear(HolderTable *t)
{
    /* Emptied before the references go: a DECREF may run code. */
    HolderSlot *slots = t->slots;
    Py_ssize_t cap = t->cap;
    t->slots = NULL;
    t->cap = t->used = 0;
    for (Py_ssize_t i = 0; i < cap; i++) {
        Py_XDECREF(slots[i].task);
    }
    PyMem_Free(slots);
}

int
holders_traverse(const HolderTable *t, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < t->cap; i++) {
        Py_VISIT(t->slots[i].task);
    }
    return 0;
}

PyObject *
holders_as_dict(const HolderTable *t)
{
    PyObject *dict = PyDict_New();
    for (Py_ssize_t i = 0; dict != NULL && i < t->cap; i++) {
        if (t->slots[i].task == NULL) {
            continue;
        }
        PyObject *count = PyLong_FromSsize_t(t->slots[i].count);
        if (count == NULL
                || PyDict_SetItem(dict, t->slots[i].task, count) < 0) {
            Py_CLEAR(dict);
        }
        Py_XDECREF(count);
    }
    return dict;
}
