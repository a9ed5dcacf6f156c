/* Free lists for the objects made once per spawn (see FreeList). */
#include "core/core.h"

PyObject *
freelist_new(FreeList *list, PyTypeObject *tp)
{
#ifndef Py_GIL_DISABLED
    if (list->count > 0) {
        PyObject *op = list->items[--list->count];
        memset((char *)op + sizeof(PyObject), 0,
               (size_t)tp->tp_basicsize - sizeof(PyObject));
        return PyObject_Init(op, tp);
    }
#endif
    return (PyObject *)PyObject_GC_New(PyObject, tp);
}

int
freelist_keep(FreeList *list, PyTypeObject *owner, PyObject *op)
{
#ifndef Py_GIL_DISABLED
    /* owner is NULL once the module was cleared: nothing may be kept then,
     * as freeing it later needs the type. */
    if (Py_TYPE(op) == owner && list->count < FREELIST_SIZE
            && !PyObject_GC_IsFinalized(op)) {
        list->items[list->count++] = op;
        return 1;
    }
#endif
    return 0;
}

void
freelist_clear(FreeList *list)
{
    while (list->count > 0) {
        PyObject_GC_Del(list->items[--list->count]);
    }
}
