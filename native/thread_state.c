/* What a thread of this process is doing now, from /proc: running, blocked in the
 * kernel, waiting for the GIL, or a loop idle in its selector.
 *
 * The light ticks (sampler.py, _WhereNow) ask it about the threads that short,
 * aggregated requests occupy: a request whose thread is off CPU at a tick gets the
 * tick's wall time where it waits; one that runs gets none (its CPU timer's samples
 * carry that time).
 *
 * Where the reading is taken matters.  The sampler thread ticks once it holds the
 * GIL, and it gets the GIL when another thread lets it go: just as a loop thread
 * goes into a blocking call, or just after.  Read then, a thread that blocked for
 * 2 ms had often woken and was waiting for the GIL (the sampler holds it), so its
 * wait was lost (0.52-0.91 of the truth in the tests, varying with the machine's
 * load).  The watcher is a plain thread that never takes the GIL: asked by
 * watch_at(deadline, tids), it sleeps until the deadline (the sampler's next wake),
 * reads the states there, and watched() hands them to the tick.  The moment read is
 * the timer's, whatever the GIL does.
 *
 * States: -1 /proc cannot tell, 0 running or runnable, 1 blocked in the kernel for
 * something other than the GIL (I/O, a sleep, a lock, an event), 2 waiting for the
 * GIL, 3 waiting in epoll_wait (an asyncio or uvloop loop with nothing to run).
 * With each state come the thread's total time on a CPU and waiting for one (its
 * schedstat): a thread read as runnable is running, or waiting for a CPU that other
 * processes hold, in the proportion of those two since the previous reading.
 */
#include "otelprof_native.h"

#if OTP_HAVE_CPU_SAMPLER
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define OTP_WATCH_MAX 32

/* Up to cap-1 bytes of /proc/self/task/<tid>/<name>, NUL-terminated; -1 on failure. */
static int
read_task_file(long tid, const char *name, char *buf, size_t cap)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/self/task/%ld/%s", tid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    do {
        n = read(fd, buf, cap - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return (int)n;
}

/* The address a thread waiting for the GIL sleeps on (a futex in the runtime's GIL
 * state: its condition variable or mutex), learnt once by learn_gil(); 0 unknown. */
static uintptr_t gil_futex;
static volatile pid_t gil_probe_tid;

/* The system call thread `tid` waits in now and its first argument, from /proc
 * (-1: running, or unreadable). */
static long
syscall_of(long tid, uintptr_t *arg0)
{
    char buf[256];
    if (read_task_file(tid, "syscall", buf, sizeof buf) <= 0)
        return -1;
    long nr = -1;
    unsigned long addr = 0;
    if (sscanf(buf, "%ld 0x%lx", &nr, &addr) != 2)
        return -1;
    *arg0 = (uintptr_t)addr;
    return nr;
}

static char
state_of(long tid)
{
    char buf[512];
    if (read_task_file(tid, "stat", buf, sizeof buf) <= 0)
        return 0;
    char *p = strrchr(buf, ')');  /* (the name may hold spaces and parentheses) */
    if (p == NULL || p[1] != ' ' || p[2] == 0)
        return 0;
    return p[2];
}

/* The thread's time on a CPU and runnable but waiting for one, in ns (-1: unknown). */
static void
schedstat_of(long tid, long long *run, long long *wait)
{
    char buf[128];
    *run = *wait = -1;
    if (read_task_file(tid, "schedstat", buf, sizeof buf) <= 0)
        return;
    long long r, w;
    if (sscanf(buf, "%lld %lld", &r, &w) == 2) {
        *run = r;
        *wait = w;
    }
}

static int
is_epoll_wait(long nr)
{
#ifdef SYS_epoll_wait
    if (nr == SYS_epoll_wait)
        return 1;
#endif
#ifdef SYS_epoll_pwait
    if (nr == SYS_epoll_pwait)
        return 1;
#endif
#ifdef SYS_epoll_pwait2
    if (nr == SYS_epoll_pwait2)
        return 1;
#endif
    return 0;
}

/* The state of thread `tid` (see the top of this file).  Needs no GIL. */
static int
classify(long tid)
{
    if (tid <= 0)
        return -1;
    char state = state_of(tid);
    if (state == 'R')
        return 0;
    if (state != 'S' && state != 'D')
        return -1;
    char buf[256];
    int n = read_task_file(tid, "wchan", buf, sizeof buf);
    if (n <= 0 || (buf[0] == '0' && (n == 1 || buf[1] == '\n')))
        return -1;  /* (no symbol: hidden, or it just woke up) */
    if (strncmp(buf, "futex", 5) != 0) {
        if (strstr(buf, "epoll") != NULL || strncmp(buf, "ep_poll", 7) == 0) {
            uintptr_t arg0 = 0;
            long nr = syscall_of(tid, &arg0);
            if (nr < 0 || is_epoll_wait(nr))
                return 3;
        }
        return 1;
    }
    if (!gil_futex)
        return 2;
    uintptr_t addr = 0;
    if (syscall_of(tid, &addr) != SYS_futex)
        addr = 0;
    /* (within the GIL's state: its condition variable, mutex or switch lock) */
    return addr != 0 && addr + 256 >= gil_futex && addr <= gil_futex + 256 ? 2 : 1;
}

static void *
gil_probe(void *arg)
{
    (void)arg;
    gil_probe_tid = (pid_t)syscall(SYS_gettid);
    PyGILState_STATE st = PyGILState_Ensure();  /* waits: learn_gil's caller holds the GIL */
    PyGILState_Release(st);
    return NULL;
}

/* learn_gil() -> True once the GIL's futex is known: a helper thread is made to wait
 * for the GIL (the caller holds it) and /proc says where it sleeps.  It takes well
 * under a millisecond; the caller's GIL is held for at most ~50 ms (no /proc: ~2 ms). */
static PyObject *
ts_learn_gil(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    if (gil_futex)
        Py_RETURN_TRUE;
    pthread_t t;
    gil_probe_tid = 0;
    if (pthread_create(&t, NULL, gil_probe, NULL) != 0)
        Py_RETURN_FALSE;
    uintptr_t addr = 0;
    int unreadable = 0;
    for (int i = 0; i < 100 && addr == 0 && unreadable < 4; i++) {
        struct timespec ts = {0, 500000};
        nanosleep(&ts, NULL);
        long tid = gil_probe_tid;
        if (tid <= 0)
            continue;
        char state = state_of(tid);
        if (state == 0)
            unreadable++;  /* (no /proc here: give up soon) */
        else if (state == 'S' && syscall_of(tid, &addr) != SYS_futex)
            addr = 0;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(t, NULL);
    Py_END_ALLOW_THREADS
    gil_futex = addr;
    return PyBool_FromLong(addr != 0);
}

typedef struct {
    int state;
    long long run, wait;
} otp_thread_reading;

static void
read_thread(long tid, otp_thread_reading *r)
{
    r->state = classify(tid);
    schedstat_of(tid, &r->run, &r->wait);
}

static PyObject *
reading_tuple(const otp_thread_reading *r)
{
    return Py_BuildValue("(iLL)", r->state, r->run, r->wait);
}

/* thread_state(native_id) -> (state, run_ns, wait_ns) of that thread of this process
 * now (see the top of this file).  A futex wait is told from a GIL wait only once
 * learn_gil() learnt the GIL's address (before, it reads 2).  The GIL is kept
 * throughout (letting it go would let the thread run on and change the answer). */
static PyObject *
ts_thread_state(PyObject *self, PyObject *arg)
{
    (void)self;
    long tid = PyLong_AsLong(arg);
    if (tid == -1 && PyErr_Occurred())
        return NULL;
    otp_thread_reading r;
    read_thread(tid, &r);
    return reading_tuple(&r);
}

/* ------------------------------------------------------------------ the watcher */

static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cv;
static int watch_cv_ready;
static int watch_running;           /* the watcher thread exists in this process */
static int watch_atfork;
static uint64_t watch_gen;          /* bumped by each watch_at() */
static int64_t watch_deadline;      /* CLOCK_MONOTONIC ns */
static int watch_n;
static long watch_tids[OTP_WATCH_MAX];
static uint64_t watch_done;         /* the request the reading below answers */
static int64_t watch_read_at;
static otp_thread_reading watch_states[OTP_WATCH_MAX];
static uint64_t watch_readings, watch_superseded;

static int64_t
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *
watcher(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&watch_mu);
    for (;;) {
        uint64_t gen = watch_gen;
        if (gen == watch_done || watch_n == 0) {
            pthread_cond_wait(&watch_cv, &watch_mu);
            continue;
        }
        int64_t deadline = watch_deadline;
        if (mono_ns() < deadline) {
            struct timespec ts = {(time_t)(deadline / 1000000000LL), (long)(deadline % 1000000000LL)};
            pthread_cond_timedwait(&watch_cv, &watch_mu, &ts);
            continue;  /* the deadline passed, or a new request came */
        }
        int n = watch_n;
        long tids[OTP_WATCH_MAX];
        memcpy(tids, watch_tids, (size_t)n * sizeof tids[0]);
        pthread_mutex_unlock(&watch_mu);
        int64_t at = mono_ns();
        otp_thread_reading states[OTP_WATCH_MAX];
        for (int i = 0; i < n; i++)
            read_thread(tids[i], &states[i]);
        pthread_mutex_lock(&watch_mu);
        if (watch_gen == gen) {
            memcpy(watch_states, states, (size_t)n * sizeof states[0]);
            watch_read_at = at;
            watch_done = gen;
            watch_readings++;
        } else {
            watch_superseded++;
        }
    }
    return NULL;
}

static void
watch_reset_in_child(void)
{
    /* no watcher thread in a forked child; the lock may have been held at the fork */
    pthread_mutex_init(&watch_mu, NULL);
    watch_running = 0;
    watch_cv_ready = 0;
    watch_n = 0;
    watch_done = watch_gen;
}

/* GIL held, watch_mu held: start the watcher once per process. */
static int
watch_start(void)
{
    if (!watch_cv_ready) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        int rc = pthread_cond_init(&watch_cv, &attr);
        pthread_condattr_destroy(&attr);
        if (rc != 0)
            return -1;
        watch_cv_ready = 1;
    }
    if (!watch_atfork) {
        if (pthread_atfork(NULL, NULL, watch_reset_in_child) != 0)
            return -1;
        watch_atfork = 1;
    }
    /* no signal is ever delivered to the watcher (it runs no Python) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t t;
    int rc = pthread_create(&t, &attr, watcher, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -1;
    watch_running = 1;
    return 0;
}

/* watch_at(deadline_ns, native_ids) -> True: read those threads' states at that
 * CLOCK_MONOTONIC time (time.monotonic_ns()), replacing any earlier request; False
 * when the watcher cannot run (the tick then reads the states itself). */
static PyObject *
ts_watch_at(PyObject *self, PyObject *args)
{
    (void)self;
    long long deadline;
    PyObject *ids;
    if (!PyArg_ParseTuple(args, "LO", &deadline, &ids))
        return NULL;
    PyObject *seq = PySequence_Fast(ids, "native_ids must be a sequence");
    if (seq == NULL)
        return NULL;
    long tids[OTP_WATCH_MAX];
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > OTP_WATCH_MAX)
        n = OTP_WATCH_MAX;
    for (Py_ssize_t i = 0; i < n; i++) {
        tids[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (tids[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    int ok = 1;
    pthread_mutex_lock(&watch_mu);
    if (!watch_running && watch_start() != 0)
        ok = 0;
    if (ok) {
        memcpy(watch_tids, tids, (size_t)n * sizeof tids[0]);
        watch_n = (int)n;
        watch_deadline = deadline;
        watch_gen++;
        pthread_cond_signal(&watch_cv);
    }
    pthread_mutex_unlock(&watch_mu);
    return PyBool_FromLong(ok);
}

/* watched(deadline_ns) -> (read_at_ns, {native_id: (state, run_ns, wait_ns)}) for the latest request if
 * it was for that deadline and its reading is done; None otherwise (not read yet:
 * the tick came early, or the watcher is late).  A reading is handed out once. */
static PyObject *
ts_watched(PyObject *self, PyObject *arg)
{
    (void)self;
    long long deadline = PyLong_AsLongLong(arg);
    if (deadline == -1 && PyErr_Occurred())
        return NULL;
    int n = 0;
    long tids[OTP_WATCH_MAX];
    otp_thread_reading states[OTP_WATCH_MAX];
    int64_t at = 0;
    pthread_mutex_lock(&watch_mu);
    int ready = watch_running && watch_done == watch_gen && watch_n > 0 && watch_deadline == deadline;
    if (ready) {
        n = watch_n;
        memcpy(tids, watch_tids, (size_t)n * sizeof tids[0]);
        memcpy(states, watch_states, (size_t)n * sizeof states[0]);
        at = watch_read_at;
        watch_n = 0;  /* (handed out) */
    }
    pthread_mutex_unlock(&watch_mu);
    if (!ready)
        Py_RETURN_NONE;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *k = PyLong_FromLong(tids[i]);
        PyObject *v = reading_tuple(&states[i]);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) != 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return Py_BuildValue("(LN)", (long long)at, d);
}

/* watch_stats() -> (readings, superseded): the watcher's counters. */
static PyObject *
ts_watch_stats(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    pthread_mutex_lock(&watch_mu);
    uint64_t r = watch_readings, s = watch_superseded;
    pthread_mutex_unlock(&watch_mu);
    return Py_BuildValue("(KK)", (unsigned long long)r, (unsigned long long)s);
}

PyMethodDef otp_thread_state_methods[] = {
    {"thread_state", ts_thread_state, METH_O,
     "thread_state(native_id) -> (state, run_ns, wait_ns); state: 0 runs, 1 blocked, 2 waits for the GIL, "
     "3 idle in epoll_wait, -1 unknown."},
    {"learn_gil", ts_learn_gil, METH_NOARGS, "learn_gil() -> True once the GIL's futex address is known."},
    {"watch_at", ts_watch_at, METH_VARARGS,
     "watch_at(deadline_ns, native_ids) -> True: read those threads' states at that monotonic time."},
    {"watched", ts_watched, METH_O,
     "watched(deadline_ns) -> (read_at_ns, {native_id: (state, run_ns, wait_ns)}) once read, else None."},
    {"watch_stats", ts_watch_stats, METH_NOARGS, "(readings, superseded) of the watcher."},
    {NULL, NULL, 0, NULL}
};

#else  /* !OTP_HAVE_CPU_SAMPLER */

PyMethodDef otp_thread_state_methods[] = {
    {NULL, NULL, 0, NULL}
};

#endif
