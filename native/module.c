/* otelprof_middleware._native: module definition.
 *
 * Each part of the extension contributes a method table (and, if it needs one,
 * an init function); this file only stitches them together.  `features` says
 * which parts this build has, so Python can tell a build without the CPU sampler
 * (another OS, an unsupported CPython) from a working one.
 */
#include "otelprof_native.h"

static PyMethodDef *const parts[] = {
    otp_cpu_sampler_methods,
    otp_thread_state_methods,
    otp_alloc_hook_methods,
    otp_lock_wrap_methods,
};

static PyMethodDef module_methods[64];

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "otelprof_middleware._native",
    "Native helpers of otelprof-middleware (optional; the package works without them).",
    -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    size_t n = 0;
    for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
        for (PyMethodDef *m = parts[p]; m->ml_name != NULL; m++) {
            if (n + 1 >= sizeof module_methods / sizeof module_methods[0])
                break;
            module_methods[n++] = *m;
        }
    }
    module_methods[n] = (PyMethodDef){NULL, NULL, 0, NULL};
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (otp_lock_wrap_init(m) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *features = Py_BuildValue("(s)", "lock_wrap");
#if OTP_HAVE_CPU_SAMPLER
    Py_XDECREF(features);
    features = Py_BuildValue("(sss)", "cpu_sampler", "alloc_hook", "lock_wrap");
    if (features != NULL && (otp_cpu_sampler_init(m) != 0 || otp_alloc_hook_init(m) != 0)) {
        Py_DECREF(features);
        Py_DECREF(m);
        return NULL;
    }
#endif
    if (features == NULL || PyModule_AddObject(m, "features", features) != 0) {
        Py_XDECREF(features);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_FRAMES_LIMIT", 512) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
