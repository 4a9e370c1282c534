/* ProfiledLock: the `lock` profile type's wrapper around a threading lock, in C.
 *
 * The Python wrapper (profiletypes/locks.py, _Watched) costs two Python calls per
 * `with lock:`; this type does the same in C: every acquisition first tries the
 * inner lock without blocking (one call of its bound `acquire`), and only a lock
 * that is held calls the Python slow path (`set_lock_slow_path`), which decides
 * whether the thread is profiled and times the wait.  `release` and `__exit__`
 * call the inner lock's `release`.  Other attributes (RLock's `_is_owned`,
 * `_release_save`, `_acquire_restore`, `_at_fork_reinit`) are the inner lock's.
 */
#include "otelprof_native.h"
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *inner;
    PyObject *site;
    PyObject *acquire;      /* inner.acquire, bound */
    PyObject *release;      /* inner.release, bound */
    PyObject *weakreflist;
} plock;

static PyObject *slow_path;  /* (lock, timeout) -> bool */

static int
plock_init(plock *self, PyObject *args, PyObject *kwds)
{
    PyObject *inner, *site;
    static char *kwlist[] = {"inner", "site", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU", kwlist, &inner, &site))
        return -1;
    PyObject *acquire = PyObject_GetAttrString(inner, "acquire");
    if (acquire == NULL)
        return -1;
    PyObject *release = PyObject_GetAttrString(inner, "release");
    if (release == NULL) {
        Py_DECREF(acquire);
        return -1;
    }
    Py_INCREF(inner);
    Py_INCREF(site);
    Py_XSETREF(self->inner, inner);
    Py_XSETREF(self->site, site);
    Py_XSETREF(self->acquire, acquire);
    Py_XSETREF(self->release, release);
    return 0;
}

static int
plock_traverse(plock *self, visitproc visit, void *arg)
{
    Py_VISIT(self->inner);
    Py_VISIT(self->site);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    return 0;
}

static int
plock_clear(plock *self)
{
    Py_CLEAR(self->inner);
    Py_CLEAR(self->site);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    return 0;
}

static void
plock_dealloc(plock *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    plock_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The lock was free: Py_True (new ref); held: NULL with no error set; error: NULL + error. */
static PyObject *
try_acquire(plock *self)
{
    if (self->acquire == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ProfiledLock not initialised");
        return NULL;
    }
    PyObject *r = PyObject_CallOneArg(self->acquire, Py_False);
    if (r == NULL)
        return NULL;
    int got = PyObject_IsTrue(r);
    if (got > 0)
        return r;
    Py_DECREF(r);
    return NULL;
}

static PyObject *
wait_for(plock *self, double timeout)
{
    if (slow_path == NULL)
        return PyObject_CallFunction(self->acquire, "Od", Py_True, timeout);
    return PyObject_CallFunction(slow_path, "Od", (PyObject *)self, timeout);
}

static PyObject *
plock_acquire(plock *self, PyObject *args, PyObject *kwds)
{
    int blocking = 1;
    double timeout = -1;
    static char *kwlist[] = {"blocking", "timeout", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pd", kwlist, &blocking, &timeout))
        return NULL;
    PyObject *r = try_acquire(self);
    if (r != NULL || PyErr_Occurred())
        return r;
    if (!blocking)
        Py_RETURN_FALSE;
    return wait_for(self, timeout);
}

static PyObject *
plock_enter(plock *self, PyObject *noarg)
{
    (void)noarg;
    PyObject *r = try_acquire(self);
    if (r != NULL || PyErr_Occurred())
        return r;
    return wait_for(self, -1);
}

static PyObject *
plock_release(plock *self, PyObject *noarg)
{
    (void)noarg;
    if (self->release == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ProfiledLock not initialised");
        return NULL;
    }
    return PyObject_CallNoArgs(self->release);
}

static PyObject *
plock_exit(plock *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    PyObject *r = plock_release(self, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
plock_getattro(PyObject *self, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr(self, name);
    if (r != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return r;
    PyObject *inner = ((plock *)self)->inner;
    if (inner == NULL)
        return NULL;
    PyErr_Clear();
    return PyObject_GetAttr(inner, name);
}

static PyObject *
plock_repr(plock *self)
{
    return PyUnicode_FromFormat("<profiled %R from %S>", self->inner ? self->inner : Py_None,
                                self->site ? self->site : Py_None);
}

static PyMethodDef plock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))plock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1)"},
    {"release", (PyCFunction)plock_release, METH_NOARGS, "release()"},
    {"__enter__", (PyCFunction)plock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))plock_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL}
};

static PyMemberDef plock_members[] = {
    {"_inner", T_OBJECT, offsetof(plock, inner), READONLY, NULL},
    {"_site", T_OBJECT, offsetof(plock, site), READONLY, NULL},
    {"_acquire", T_OBJECT, offsetof(plock, acquire), READONLY, NULL},
    {NULL, 0, 0, 0, NULL}
};

static PyTypeObject plock_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otelprof_middleware._native.ProfiledLock",
    .tp_basicsize = sizeof(plock),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ProfiledLock(inner, site): a lock whose contended acquisitions go to a Python slow path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)plock_init,
    .tp_dealloc = (destructor)plock_dealloc,
    .tp_traverse = (traverseproc)plock_traverse,
    .tp_clear = (inquiry)plock_clear,
    .tp_getattro = plock_getattro,
    .tp_repr = (reprfunc)plock_repr,
    .tp_methods = plock_methods,
    .tp_members = plock_members,
    .tp_weaklistoffset = offsetof(plock, weakreflist),
};

static PyObject *
lw_set_slow_path(PyObject *self, PyObject *fn)
{
    (void)self;
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "a callable or None");
        return NULL;
    }
    Py_XSETREF(slow_path, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

int
otp_lock_wrap_init(PyObject *module)
{
    if (PyType_Ready(&plock_type) < 0)
        return -1;
    Py_INCREF(&plock_type);
    if (PyModule_AddObject(module, "ProfiledLock", (PyObject *)&plock_type) < 0) {
        Py_DECREF(&plock_type);
        return -1;
    }
    return 0;
}

PyMethodDef otp_lock_wrap_methods[] = {
    {"set_lock_slow_path", lw_set_slow_path, METH_O,
     "set_lock_slow_path(fn): fn(lock, timeout) -> bool waits for a held ProfiledLock."},
    {NULL, NULL, 0, NULL}
};
