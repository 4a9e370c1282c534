/* The object allocator hook: Poisson-sampled allocations of profiled threads.
 *
 * alloc_install() arms the hook; the PYMEM_DOMAIN_OBJ allocator is wrapped
 * (PyMem_SetAllocator, as tracemalloc does) only while at least one thread is
 * tracked, so between profiles allocations pay nothing.  Every call goes to the original allocator; then, per thread,
 * a countdown of bytes is decreased by the size asked for.  Only when it reaches
 * zero (on average every `interval` bytes: the countdown is drawn from an
 * exponential distribution, so sampling is a Poisson process over bytes, as in
 * Go's and Datadog's heap profilers) does anything else happen: the thread is
 * looked up among the tracked ones (threads attached to a profiling session), and
 * if it is one, its Python stack is read with the CPU sampler's fault-free walker
 * (frames.c: no frame object, no reference count, no Python allocation) into that
 * thread's preallocated buffer.  The sampler thread drains the buffers each tick
 * and a detaching thread drains them for itself.
 *
 * Object-domain calls hold the GIL (default build), and so do the drain and the
 * tracking calls: the GIL serialises all of them, no atomics needed.  A thread
 * that allocates inside our own code (the drain creates tuples) is kept out by a
 * thread-local busy flag.
 *
 * heap: the addresses of sampled allocations are kept in a table; a free or a
 * realloc of one of them is queued (freed list) for the drain, so the Python side
 * knows which sampled bytes are still live at the end of a request.  Without heap
 * tracking, frees are not hooked at all (our allocator's free is the original's).
 *
 * A hook that fails (the walker cannot read the stack many times in a row) stops
 * sampling and counts it; uninstall restores the original allocator if ours is
 * still the installed one, else leaves ours as a pass-through.
 */
#include "otelprof_native.h"

#if OTP_HAVE_CPU_SAMPLER
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pythread.h>

#define OTP_TLS __thread __attribute__((tls_model("initial-exec")))
#define OTP_ALLOC_THREADS 256
#define OTP_ALLOC_BUF (512 * 1024)
#define OTP_LIVE_SIZE 65536          /* power of two */
#define OTP_FREED_MAX 16384
#define OTP_WALK_FAILS_MAX 1000      /* consecutive walk failures before the hook gives up */

typedef struct {
    uint64_t size;      /* bytes asked for */
    uint64_t ptr;       /* address returned */
    uint32_t nframes;   /* OTP_SAME_STACK: the stack of the thread's previous record, not repeated */
    uint32_t omitted;
} alloc_rec;

#define OTP_SAME_STACK 0xFFFFFFFFu

typedef struct {
    unsigned long ident;
    int refs;           /* sessions with a target on this thread */
    char *buf;
    size_t used;
    size_t last;        /* offset of the last record with frames (+1; 0 = none since the drain) */
    uint64_t lost;      /* samples dropped: the buffer was full */
    double lost_space;  /* their estimated bytes and objects (scaled as the drain scales) */
    double lost_objects;
} tracked;

static PyMemAllocatorEx orig;
static int hooked;        /* our allocator is installed (maybe under another one) */
static int free_hooked;   /* ... with its free hook (heap tracking) */
static int wanted;        /* alloc_install() called, no alloc_uninstall() since */
static int n_active;      /* tracked threads (refs > 0) */
static int sampling;      /* 1 while samples are wanted */
static int heap_on;
static double mean_bytes = 512.0 * 1024;
static int max_frames = 128;
static tracked threads[OTP_ALLOC_THREADS];
static int n_threads;     /* entries in use are [0, n_threads) (free ones have refs 0) */
static otp_walk_scratch scratch;
static otp_frame *frames;
static int frames_cap;
static uint64_t live[OTP_LIVE_SIZE];   /* open addressing, 0 = empty, 1 = deleted */
static uint64_t live_tmp[OTP_LIVE_SIZE / 2];
static int live_count;
static int live_deleted;  /* tombstones: rehashed away before they make probes long */
static uint64_t freed[OTP_FREED_MAX];
static int n_freed;
static uint64_t st_samples, st_lost, st_walk_errors, st_disabled, st_live_full, st_freed_lost;
/* the governor's estimate of the hook's own time: hooked calls (each costs a few ns,
 * the caller multiplies), and the time spent sampling (a stack walk each) */
static uint64_t st_calls, st_sample_ns;
static int walk_fails;

static OTP_TLS int64_t tl_remaining;
static OTP_TLS uint64_t tl_rng;
static OTP_TLS int tl_busy;

static inline uint64_t
rng_next(void)
{
    uint64_t x = tl_rng;
    if (x == 0) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        x = ((uint64_t)t.tv_nsec << 20) ^ (uint64_t)(uintptr_t)&tl_rng ^ (uint64_t)t.tv_sec;
        if (x == 0)
            x = 0x9E3779B97F4A7C15ULL;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    tl_rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Bytes until the next sample: exponential with mean `mean_bytes`. */
static int64_t
draw(void)
{
    double u = ((double)(rng_next() >> 11) + 1.0) / 9007199254740993.0;  /* (0, 1] */
    double v = -log(u) * mean_bytes;
    if (v < 1.0)
        v = 1.0;
    if (v > 9.0e18)
        v = 9.0e18;
    return (int64_t)v;
}

static tracked *
find_thread(unsigned long ident)
{
    for (int i = 0; i < n_threads; i++) {
        if (threads[i].refs > 0 && threads[i].ident == ident)
            return &threads[i];
    }
    return NULL;
}

static inline size_t
live_slot(uint64_t p)
{
    p ^= p >> 33;
    p *= 0xff51afd7ed558ccdULL;
    p ^= p >> 33;
    return (size_t)p & (OTP_LIVE_SIZE - 1);
}

static void
live_rehash(void)
{
    int n = 0;
    for (size_t i = 0; i < OTP_LIVE_SIZE; i++) {
        if (live[i] > 1 && n < OTP_LIVE_SIZE / 2)
            live_tmp[n++] = live[i];
    }
    memset(live, 0, sizeof live);
    for (int k = 0; k < n; k++) {
        size_t i = live_slot(live_tmp[k]);
        while (live[i] != 0)
            i = (i + 1) & (OTP_LIVE_SIZE - 1);
        live[i] = live_tmp[k];
    }
    live_count = n;
    live_deleted = 0;
}

static int
live_add(uint64_t p)
{
    if (live_deleted > OTP_LIVE_SIZE / 4)
        live_rehash();
    if (live_count >= OTP_LIVE_SIZE / 2) {
        st_live_full++;
        return 0;
    }
    size_t i = live_slot(p);
    for (;;) {
        if (live[i] <= 1) {
            if (live[i] == 1)
                live_deleted--;
            live[i] = p;
            live_count++;
            return 1;
        }
        if (live[i] == p)
            return 1;
        i = (i + 1) & (OTP_LIVE_SIZE - 1);
    }
}

static void
live_forget(uint64_t p)
{
    size_t i = live_slot(p);
    for (int n = 0; n < OTP_LIVE_SIZE; n++) {
        uint64_t v = live[i];
        if (v == 0)
            return;
        if (v == p) {
            live[i] = 1;
            live_count--;
            live_deleted++;
            if (n_freed < OTP_FREED_MAX)
                freed[n_freed++] = p;
            else
                st_freed_lost++;
            return;
        }
        i = (i + 1) & (OTP_LIVE_SIZE - 1);
    }
}

/* The countdown reached zero: sample this allocation if the thread is tracked. */
static void
sample(void *ptr, size_t size)
{
    if (tl_busy)
        return;
    tl_busy = 1;
    tl_remaining = draw();
    tracked *t = find_thread(PyThread_get_thread_ident());
    PyThreadState *ts;
    if (t == NULL || !sampling || (ts = PyGILState_GetThisThreadState()) == NULL)
        goto done;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint32_t omitted = 0, errors = 0;
    int n = otp_walk(ts, &scratch, frames, max_frames, &omitted, &errors);
    if (n < 0 || (n == 0 && errors)) {
        st_walk_errors++;
        if (++walk_fails >= OTP_WALK_FAILS_MAX) {
            sampling = 0;  /* something is wrong with this process's frames: stop, counted */
            st_disabled++;
        }
        goto timed;
    }
    /* an allocation loop samples the same stack again and again: say so in 24 bytes */
    int same = 0;
    if (t->last) {
        const alloc_rec *prev = (const alloc_rec *)(t->buf + t->last - 1);
        same = prev->nframes == (uint32_t)n && prev->omitted == omitted
               && memcmp(prev + 1, frames, (size_t)n * sizeof(otp_frame)) == 0;
    }
    size_t need = sizeof(alloc_rec) + (same ? 0 : (size_t)n * sizeof(otp_frame));
    if (t->used + need > OTP_ALLOC_BUF) {
        /* not drained in time: keep the estimate, lose the stack */
        double k = size > 0 ? 1.0 / -expm1(-(double)size / mean_bytes) : 1.0;
        t->lost++;
        t->lost_space += (double)size * k;
        t->lost_objects += k;
        st_lost++;
        goto timed;
    }
    alloc_rec *r = (alloc_rec *)(t->buf + t->used);
    if (!same) {
        memcpy(r + 1, frames, (size_t)n * sizeof(otp_frame));
        t->last = t->used + 1;
    }
    walk_fails = 0;
    r->size = size;
    r->ptr = (uint64_t)(uintptr_t)ptr;
    r->nframes = same ? OTP_SAME_STACK : (uint32_t)n;
    r->omitted = omitted;
    t->used += need;
    st_samples++;
    if (heap_on)
        live_add(r->ptr);
timed:
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st_sample_ns += (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
done:
    tl_busy = 0;
}

static inline void
account(void *ptr, size_t size)
{
    st_calls++;
    tl_remaining -= (int64_t)size;
    if (tl_remaining <= 0)
        sample(ptr, size);
}

/* Our allocator carries the original's ctx, so each hook passes its own ctx on,
 * and without heap tracking `free` is the original's own function (no hook). */
static void *
h_malloc(void *ctx, size_t size)
{
    void *p = orig.malloc(ctx, size);
    if (p != NULL && sampling)
        account(p, size);
    return p;
}

static void *
h_calloc(void *ctx, size_t nelem, size_t elsize)
{
    void *p = orig.calloc(ctx, nelem, elsize);
    if (p != NULL && sampling)
        account(p, nelem * elsize);
    return p;
}

static void *
h_realloc(void *ctx, void *ptr, size_t size)
{
    void *p = orig.realloc(ctx, ptr, size);
    if (p != NULL) {
        if (live_count && ptr != NULL)
            live_forget((uint64_t)(uintptr_t)ptr);
        if (sampling)
            account(p, size);
    }
    return p;
}

static void
h_free(void *ctx, void *ptr)
{
    if (live_count && ptr != NULL)
        live_forget((uint64_t)(uintptr_t)ptr);
    orig.free(ctx, ptr);
}

static int
is_ours(const PyMemAllocatorEx *a)
{
    return a->malloc == h_malloc;
}

/* Install (or re-install, when heap tracking changes) our allocator over `orig`. */
static void
set_ours(int with_free_hook)
{
    PyMemAllocatorEx ours = {orig.ctx, h_malloc, h_calloc, h_realloc, with_free_hook ? h_free : orig.free};
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &ours);
}

/* Our allocator is in place only while a thread is tracked (or sampled heap
 * addresses are still watched): between profiles, allocations cost nothing. */
static void
sync_hook(void)
{
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur);
    int want = wanted && (n_active > 0 || (heap_on && live_count > 0));
    if (want && !hooked) {
        orig = cur;
        set_ours(heap_on);
        hooked = 1;
        free_hooked = heap_on;
    } else if (!want && hooked && is_ours(&cur)) {
        PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &orig);
        hooked = 0;
        free_hooked = 0;
        memset(live, 0, sizeof live);  /* frees are no longer seen */
        live_count = 0;
        live_deleted = 0;
        n_freed = 0;
    }
}

static int ready;

/* alloc_install(interval_bytes, max_frames, heap) */
static PyObject *
ah_install(PyObject *self, PyObject *args)
{
    (void)self;
    double interval;
    int frames_wanted, heap;
    if (!PyArg_ParseTuple(args, "dip", &interval, &frames_wanted, &heap))
        return NULL;
    if (!(interval >= 1.0))
        interval = 1.0;
    if (frames_wanted < 8)
        frames_wanted = 8;
    if (frames_wanted > OTP_MAX_FRAMES_LIMIT)
        frames_wanted = OTP_MAX_FRAMES_LIMIT;
    if (!ready) {
        if (otp_safe_read_init() != 0 || otp_registry_init() != 0) {
            PyErr_SetString(PyExc_OSError, "process_vm_readv on our own process is not permitted");
            return NULL;
        }
        ready = 1;
    }
    int was = sampling;
    sampling = 0;  /* no sample may use the scratch while it is replaced */
    if (frames_cap < frames_wanted) {
        if (otp_alloc_walk(&scratch, &frames, frames_wanted) != 0) {
            sampling = was;
            return PyErr_NoMemory();
        }
        frames_cap = frames_wanted;
    }
    max_frames = frames_wanted;
    mean_bytes = interval;
    if (heap && hooked && !free_hooked) {
        PyMemAllocatorEx cur;
        PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur);
        if (is_ours(&cur)) {
            set_ours(1);  /* frees must now be seen */
            free_hooked = 1;
        } else {
            heap = 0;     /* another hook sits over ours: no heap tracking */
        }
    }
    heap_on = heap;
    walk_fails = 0;
    sampling = 1;
    wanted = 1;
    sync_hook();
    Py_RETURN_NONE;
}

static void
forget_all(void)
{
    for (int i = 0; i < n_threads; i++) {
        threads[i].refs = 0;
        threads[i].used = 0;
        threads[i].last = 0;
        threads[i].lost = 0;
        threads[i].lost_space = threads[i].lost_objects = 0;
    }
    n_threads = 0;
    n_active = 0;
    memset(live, 0, sizeof live);
    live_count = 0;
    live_deleted = 0;
    n_freed = 0;
}

/* alloc_uninstall() -> True if the original allocator is back, False if another
 * hook was installed over ours (ours stays, passing every call through). */
static PyObject *
ah_uninstall(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    sampling = 0;
    heap_on = 0;
    wanted = 0;
    forget_all();
    if (!hooked)
        Py_RETURN_TRUE;
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur);
    if (is_ours(&cur)) {
        PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &orig);
        hooked = 0;
        free_hooked = 0;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* alloc_installed() -> (our allocator is the installed one, allocation sampling is wanted).
 * The allocator is in place only while a profiled thread is tracked. */
static PyObject *
ah_installed(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &cur);
    return Py_BuildValue("(ii)", is_ours(&cur), wanted && sampling);
}

/* alloc_track(ident, on) -> True: sample (or stop sampling) thread ident's allocations. */
static PyObject *
ah_track(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long ident;
    int on;
    if (!PyArg_ParseTuple(args, "kp", &ident, &on))
        return NULL;
    tracked *t = find_thread(ident);
    if (on) {
        if (t != NULL) {
            t->refs++;
            Py_RETURN_TRUE;
        }
        int free_i = -1;
        for (int i = 0; i < n_threads; i++) {
            if (threads[i].refs == 0) {
                free_i = i;
                break;
            }
        }
        if (free_i < 0) {
            if (n_threads >= OTP_ALLOC_THREADS)
                Py_RETURN_FALSE;
            free_i = n_threads++;
        }
        t = &threads[free_i];
        if (t->buf == NULL) {
            t->buf = malloc(OTP_ALLOC_BUF);
            if (t->buf == NULL)
                return PyErr_NoMemory();
        }
        t->ident = ident;
        t->used = 0;
        t->last = 0;
        t->lost = 0;
        t->lost_space = t->lost_objects = 0;
        t->refs = 1;
        n_active++;
        sync_hook();
        Py_RETURN_TRUE;
    }
    if (t != NULL && --t->refs <= 0) {
        t->refs = 0;
        t->used = 0;
        t->last = 0;
        n_active--;
        while (n_threads > 0 && threads[n_threads - 1].refs == 0)
            n_threads--;
        sync_hook();
    }
    Py_RETURN_TRUE;
}

/* alloc_drain() -> ([(ident, size, ptr, omitted, codes, lastis, addrs)], [freed ptr],
 *                  {ident: (samples lost, their estimated bytes, objects)}) */
static PyObject *
ah_drain(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    PyObject *samples = PyList_New(0), *gone = PyList_New(0), *lost = PyDict_New();
    char *copy = NULL;
    uint64_t *freed_copy = NULL;
    if (!samples || !gone || !lost)
        goto fail;
    int was_busy = tl_busy;
    tl_busy = 1;  /* our own allocations below are never sampled */
    for (int i = 0; i < n_threads; i++) {
        tracked *t = &threads[i];
        if (t->lost) {
            PyObject *k = PyLong_FromUnsignedLong(t->ident);
            PyObject *v = Py_BuildValue("(Kdd)", (unsigned long long)t->lost, t->lost_space, t->lost_objects);
            int bad = (!k || !v || PyDict_SetItem(lost, k, v) != 0);
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (bad) {
                tl_busy = was_busy;
                goto fail;
            }
            t->lost = 0;
            t->lost_space = t->lost_objects = 0;
        }
        if (t->used == 0)
            continue;
        /* detach the records first: creating objects may run a finalizer that lets
           another thread in, which may append to this buffer meanwhile */
        size_t used = t->used;
        unsigned long ident = t->ident;
        copy = malloc(used);
        if (copy == NULL) {
            tl_busy = was_busy;
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(copy, t->buf, used);
        t->used = 0;
        t->last = 0;
        size_t off = 0;
        PyObject *codes = NULL, *lastis = NULL, *addrs = NULL;  /* the last stack read */
        uint32_t omitted = 0;
        while (off < used) {
            alloc_rec *r = (alloc_rec *)(copy + off);
            if (r->nframes == OTP_SAME_STACK) {
                off += sizeof(alloc_rec);
                if (codes == NULL)
                    continue;  /* cannot happen: a repeat follows a full record of the same buffer */
            } else {
                off += sizeof(alloc_rec) + (size_t)r->nframes * sizeof(otp_frame);
                Py_XDECREF(codes);
                Py_XDECREF(lastis);
                Py_XDECREF(addrs);
                codes = lastis = addrs = NULL;
                uint64_t unknown = 0;
                if (otp_frame_tuples((otp_frame *)(r + 1), (int)r->nframes, &codes, &lastis, &addrs,
                                     &unknown) != 0) {
                    tl_busy = was_busy;
                    goto fail;
                }
                omitted = r->omitted;
            }
            PyObject *item = Py_BuildValue("(kKKIOOO)", ident, (unsigned long long)r->size,
                                           (unsigned long long)r->ptr, (unsigned int)omitted,
                                           codes, lastis, addrs);
            if (item == NULL || PyList_Append(samples, item) != 0) {
                Py_XDECREF(item);
                Py_XDECREF(codes);
                Py_XDECREF(lastis);
                Py_XDECREF(addrs);
                tl_busy = was_busy;
                goto fail;
            }
            Py_DECREF(item);
        }
        Py_XDECREF(codes);
        Py_XDECREF(lastis);
        Py_XDECREF(addrs);
        free(copy);
        copy = NULL;
    }
    int nf = n_freed;
    if (nf) {
        freed_copy = malloc((size_t)nf * sizeof(uint64_t));
        if (freed_copy != NULL) {
            memcpy(freed_copy, freed, (size_t)nf * sizeof(uint64_t));
            n_freed = 0;
            for (int i = 0; i < nf; i++) {
                PyObject *v = PyLong_FromUnsignedLongLong(freed_copy[i]);
                if (v == NULL || PyList_Append(gone, v) != 0) {
                    Py_XDECREF(v);
                    tl_busy = was_busy;
                    goto fail;
                }
                Py_DECREF(v);
            }
            free(freed_copy);
            freed_copy = NULL;
        }
    }
    tl_busy = was_busy;
    return Py_BuildValue("(NNN)", samples, gone, lost);
fail:
    free(copy);
    free(freed_copy);
    Py_XDECREF(samples);
    Py_XDECREF(gone);
    Py_XDECREF(lost);
    return NULL;
}

/* alloc_forget_live(ptr): the Python side no longer needs to hear about ptr. */
static PyObject *
ah_forget_live(PyObject *self, PyObject *arg)
{
    (void)self;
    unsigned long long p = PyLong_AsUnsignedLongLong(arg);
    if (p == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    size_t i = live_slot(p);
    for (int n = 0; n < OTP_LIVE_SIZE; n++) {
        if (live[i] == 0)
            break;
        if (live[i] == p) {
            live[i] = 1;
            live_count--;
            live_deleted++;
            break;
        }
        i = (i + 1) & (OTP_LIVE_SIZE - 1);
    }
    sync_hook();
    Py_RETURN_NONE;
}

static PyObject *
ah_stats(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    return Py_BuildValue("{sKsKsKsKsKsKsisisKsK}", "samples", (unsigned long long)st_samples,
                         "lost", (unsigned long long)st_lost, "walk_errors", (unsigned long long)st_walk_errors,
                         "disabled", (unsigned long long)st_disabled, "live_full", (unsigned long long)st_live_full,
                         "freed_lost", (unsigned long long)st_freed_lost, "live", live_count,
                         "threads", n_threads, "calls", (unsigned long long)st_calls,
                         "sample_ns", (unsigned long long)st_sample_ns);
}

/* alloc_bench(n, size) -> ns per PyObject_Malloc+PyObject_Free pair, the hook's
 * cost on the unsampled path measured from C (no interpreter overhead). */
static PyObject *
ah_bench(PyObject *self, PyObject *args)
{
    (void)self;
    long n;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "ln", &n, &size))
        return NULL;
    struct timespec a, b;  /* the thread's CPU clock: time given to other processes does not count */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++) {
        void *p = PyObject_Malloc((size_t)size);
        if (p == NULL)
            return PyErr_NoMemory();
        PyObject_Free(p);
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
    return PyFloat_FromDouble(n > 0 ? ns / (double)n : 0.0);
}

int
otp_alloc_hook_init(PyObject *module)
{
    (void)module;
    return 0;
}

PyMethodDef otp_alloc_hook_methods[] = {
    {"alloc_install", ah_install, METH_VARARGS, "alloc_install(interval_bytes, max_frames, heap): hook the object allocator."},
    {"alloc_uninstall", ah_uninstall, METH_NOARGS, "Restore the object allocator; False if another hook sits over ours."},
    {"alloc_installed", ah_installed, METH_NOARGS, "(ours is the installed allocator, sampling)"},
    {"alloc_track", ah_track, METH_VARARGS, "alloc_track(ident, on): sample that thread's allocations or stop."},
    {"alloc_drain", ah_drain, METH_NOARGS, "alloc_drain() -> (samples, freed addresses, {ident: (lost, lost bytes, lost objects)})"},
    {"alloc_forget_live", ah_forget_live, METH_O, "alloc_forget_live(ptr): stop watching a sampled address."},
    {"alloc_stats", ah_stats, METH_NOARGS, "Counters of the allocation sampler."},
    {"alloc_bench", ah_bench, METH_VARARGS, "alloc_bench(n, size) -> ns per object malloc+free pair."},
    {NULL, NULL, 0, NULL}
};

#else  /* !OTP_HAVE_CPU_SAMPLER */

PyMethodDef otp_alloc_hook_methods[] = {
    {NULL, NULL, 0, NULL}
};

#endif
