/* WaiterQueue: a FIFO line of futures in a ring buffer, each a strong
 * reference, with the tokens each waits for beside it. Token sources queue
 * their waiters in one; streams queue the futures of workers and of the
 * consumer (each wanting 1). */
#include "core/core.h"

PyObject *
queue_at(WaiterQueue *q, Py_ssize_t i)
{
    return q->items[(q->head + i) % q->cap];
}

Py_ssize_t
queue_wants_at(WaiterQueue *q, Py_ssize_t i)
{
    return q->wants[(q->head + i) % q->cap];
}

static int
queue_grow(WaiterQueue *q)
{
    Py_ssize_t cap = q->cap ? q->cap * 2 : 8;
    PyObject **items = PyMem_New(PyObject *, cap);
    Py_ssize_t *wants = PyMem_New(Py_ssize_t, cap);
    if (items == NULL || wants == NULL) {
        PyMem_Free(items);
        PyMem_Free(wants);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < q->len; i++) {
        items[i] = queue_at(q, i);
        wants[i] = queue_wants_at(q, i);
    }
    PyMem_Free(q->items);
    PyMem_Free(q->wants);
    q->items = items;
    q->wants = wants;
    q->head = 0;
    q->cap = cap;
    return 0;
}

int
queue_push_wanting(WaiterQueue *q, PyObject *item, Py_ssize_t n)
{
    if (q->len == q->cap && queue_grow(q) < 0) {
        return -1;
    }
    Py_ssize_t at = (q->head + q->len) % q->cap;
    q->items[at] = Py_NewRef(item);
    q->wants[at] = n;
    q->len++;
    return 0;
}

int
queue_push(WaiterQueue *q, PyObject *item)
{
    return queue_push_wanting(q, item, 1);
}

PyObject *
queue_pop(WaiterQueue *q)
{
    PyObject *item = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return item;
}

int
queue_remove(WaiterQueue *q, PyObject *item)
{
    for (Py_ssize_t i = 0; i < q->len; i++) {
        if (queue_at(q, i) == item) {
            for (Py_ssize_t j = i; j + 1 < q->len; j++) {
                Py_ssize_t to = (q->head + j) % q->cap;
                q->items[to] = queue_at(q, j + 1);
                q->wants[to] = queue_wants_at(q, j + 1);
            }
            q->len--;
            Py_DECREF(item);
            return 1;
        }
    }
    return 0;
}

void
queue_clear(WaiterQueue *q)
{
    /* Empty the structure before dropping references: a DECREF may run
     * code that looks at the queue. */
    PyObject **items = q->items;
    Py_ssize_t head = q->head, len = q->len, cap = q->cap;
    PyMem_Free(q->wants);
    q->items = NULL;
    q->wants = NULL;
    q->head = q->len = q->cap = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_DECREF(items[(head + i) % cap]);
    }
    PyMem_Free(items);
}
