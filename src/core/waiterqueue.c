/* WaiterQueue: a FIFO line of futures in a ring buffer, each a strong
 * reference. Token sources queue their waiters in one; streams queue the
 * futures of workers and of the consumer. */
#include "core/core.h"

PyObject *
queue_at(WaiterQueue *q, Py_ssize_t i)
{
    return q->items[(q->head + i) % q->cap];
}

int
queue_push(WaiterQueue *q, PyObject *item)
{
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 8;
        PyObject **items = PyMem_New(PyObject *, cap);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->len; i++) {
            items[i] = queue_at(q, i);
        }
        PyMem_Free(q->items);
        q->items = items;
        q->head = 0;
        q->cap = cap;
    }
    q->items[(q->head + q->len) % q->cap] = Py_NewRef(item);
    q->len++;
    return 0;
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
                q->items[(q->head + j) % q->cap] = queue_at(q, j + 1);
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
    q->items = NULL;
    q->head = q->len = q->cap = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_DECREF(items[(head + i) % cap]);
    }
    PyMem_Free(items);
}
