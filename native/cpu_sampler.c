/* Per-thread CPU timers and the SIGPROF handler.
 *
 * A thread being profiled gets a slot: a POSIX timer on *its own* CPU clock
 * (timer_create on the thread's CPU clock id, SIGEV_THREAD_ID to its kernel tid),
 * so SIGPROF is delivered to that thread each `interval` of CPU it uses, whether
 * or not it holds the GIL (Go's profiler does the same on Linux).  The handler
 * runs on the interrupted thread: it checks that the slot is live and that the
 * thread's Python state is the one registered, walks the frame chain (frames.c)
 * into preallocated scratch memory, and appends one record to the slot's
 * single-producer ring buffer.  It allocates nothing, takes no lock and touches
 * no reference count.  The drain (GIL held; the sampler thread each tick, and the
 * thread itself at detach) turns records into Python tuples.
 *
 * Lifetime rules that keep a late signal harmless:
 * - slots live in a static array and their buffers are never freed;
 * - a timer's signal value carries (magic, generation, slot); the handler ignores
 *   a signal whose generation is not the slot's current one, so a signal still
 *   queued after timer_delete, or after the slot was reused, does nothing;
 * - stop() marks the slot stopping, deletes the timer and waits until no handler
 *   is inside the slot before draining and freeing it;
 * - the handler compares the registered thread state with the thread's current
 *   one (PyGILState_GetThisThreadState, a thread-specific read) and does nothing
 *   once the thread has left Python (its state is cleared before it is freed);
 * - in a forked child no timer exists; every slot is reset;
 * - the SIGPROF handler, once installed, is never removed (a default SIGPROF
 *   would kill the process); with no live slot it returns at once.
 */
#include "otelprof_native.h"

#if OTP_HAVE_CPU_SAMPLER
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#ifndef sigev_notify_thread_id
#  define sigev_notify_thread_id _sigev_un._tid
#endif

/* The kernel's encoding of a thread's CPU clock id (glibc's MAKE_THREAD_CPUCLOCK):
 * works from the kernel tid, so a thread that has exited yields EINVAL, never a
 * dangling pthread_t. */
#define OTP_THREAD_CPUCLOCK(tid) ((clockid_t)((~(unsigned int)(tid)) << 3) | 6)

#define OTP_MAX_SLOTS 256
#define OTP_MAGIC 0x0F7EULL
#define OTP_RING_MIN (512 * 1024)
#define OTP_WRAP 0xFFFFFFFFu

enum { SLOT_FREE = 0, SLOT_ACTIVE = 1, SLOT_STOPPING = 2, SLOT_LEAKED = 3 };

/* Two ways to interrupt a thread each `interval` of its CPU time:
 * - OTP_SRC_PERF: a perf_event task-clock counter of that thread, signalling it at
 *   each overflow.  The kernel runs an hrtimer only while the thread is on a CPU,
 *   so an overflow happens after exactly `interval` of its CPU time, wherever it is.
 * - OTP_SRC_TIMER: a POSIX timer on the thread's CPU clock.  The kernel checks CPU
 *   timers at its scheduler tick, when the thread is the one running: code that
 *   gives up the CPU very often (time.sleep(0), sched_yield) on a busy machine is
 *   rarely running at a tick and gets fewer samples than its CPU share.  Used where
 *   perf events are not allowed (perf_event_paranoid, seccomp in containers). */
enum { OTP_SRC_TIMER = 1, OTP_SRC_PERF = 2 };
#define OTP_FD_TABLE 4096
static int16_t fd_slot[OTP_FD_TABLE];  /* perf fd -> slot index + 1 */
static int perf_mode = 0;              /* 0 untried, 1 full, 2 user-space only, -1 unavailable */

typedef struct {
    uint32_t size;        /* bytes of this record, 8-aligned; OTP_WRAP = go to offset 0 */
    uint16_t nframes;
    uint16_t flags;
    uint32_t omitted;
    uint32_t overruns;
    uint64_t cpu_start;   /* thread CPU at the previous sample (ns) */
    uint64_t cpu_end;     /* thread CPU now (ns) */
    uint64_t mono;        /* CLOCK_MONOTONIC now (ns) */
    uint64_t lost;        /* CPU of samples dropped (buffer full) just before this one */
} rec_header;             /* 48 bytes, then nframes otp_frame */

typedef struct {
    int state;            /* SLOT_*, seq_cst atomics */
    int in_handler;
    uint32_t gen;
    pid_t tid;
    unsigned long ident;
    PyThreadState *tstate;
    int source;           /* OTP_SRC_*: what interrupts the thread */
    timer_t timer;        /* OTP_SRC_TIMER */
    int has_timer;
    int perf_fd;          /* OTP_SRC_PERF, -1 if none */
    int max_frames;
    int64_t interval_ns;  /* the mean interval; each expiry is drawn around it */
    uint64_t rng;         /* xorshift state of the handler */
    uint64_t target;      /* perf: CPU after last_cpu at which to record the next sample */
    unsigned redraws;     /* perf: samples recorded (a new base period every 4th) */
    uint64_t base;        /* perf: the short period that overflows near the target (ns) */
    uint64_t period;      /* perf: the counter's period now (ns) */
    uint64_t mark_cpu;    /* perf: the thread's CPU at the last overflow (or start) */
    uint32_t hidden;      /* perf: estimated share of the CPU the counter does not see, /1024 */
    uint64_t last_cpu;    /* written by the handler while active */
    uint64_t pause_cpu;   /* the thread's CPU clock when paused (0: running) */
    int64_t pause_left;   /* POSIX timer: what was left of the interval when paused */
    uint64_t lost_cpu;    /* CPU of samples dropped since the last record (handler only) */
    /* ring: head written by the handler, tail by the drain */
    char *ring;
    uint64_t cap;
    uint64_t head, tail;
    /* handler scratch */
    otp_frame *frames;
    otp_walk_scratch walk;
    int scratch_frames;   /* capacity of the scratch arrays */
    /* counters (handler: relaxed atomic adds) */
    uint64_t samples, dropped_full, skipped_state, read_errors, handler_cpu_ns, overruns;
    uint64_t overflows;   /* perf: overflows handled (the interrupts a sample costs) */
} otp_slot;

static otp_slot slots[OTP_MAX_SLOTS];
static int installed;
static int max_frames_setting = 128;
static uint64_t slots_leaked;

static inline uint64_t
ts_ns(const struct timespec *t)
{
    return (uint64_t)t->tv_sec * 1000000000ULL + (uint64_t)t->tv_nsec;
}

static inline void
add_relaxed(uint64_t *p, uint64_t v)
{
    __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static inline uint64_t
next_random(otp_slot *s)
{
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return x;
}

/* Uniform in [mean/2, 3*mean/2). */
static inline int64_t
draw(otp_slot *s, int64_t mean)
{
    return mean / 2 + (int64_t)(next_random(s) % (uint64_t)(mean > 0 ? mean : 1));
}

/* The CPU before a new timer's first sample: uniform in [1, mean].  A thread that
 * lives for c < mean of CPU is then sampled with probability c/mean, as one alive
 * long before would be; drawing the first like the others ([mean/2, 3*mean/2)) never
 * sampled threads shorter than mean/2 (e.g. a worker started per request). */
static inline int64_t
first_draw(otp_slot *s, int64_t mean)
{
    return 1 + (int64_t)(next_random(s) % (uint64_t)(mean > 0 ? mean : 1));
}

/* After each recorded sample, the next one is drawn at random around the mean
 * interval.  A fixed interval of CPU time locks onto a workload that repeats with
 * the same period (a loop whose iteration costs 10 ms, sampled every 10 ms of CPU,
 * is always caught at the same point); with random intervals the phase of every
 * sample in such a cycle is uniform.  Weights stay exact: each sample carries the
 * CPU actually used since the previous one.
 *
 * A POSIX timer is re-armed with the drawn interval.  A perf counter records the
 * first overflow after the drawn amount of the thread's CPU (`target`, read from
 * its CPU clock) and returns at once for the others.  Near the target the counter
 * overflows every ~1 ms (`base`, at most OTP_PERF_BASE_NS): measured, overflows
 * only at the drawn points (4-10 ms apart) billed too little to code that gives
 * the CPU up at a high rate (time.sleep(0): 6-7 % of the samples for 10 % of the
 * CPU), because the counter runs only between the scheduler's switch hooks while
 * the CPU clock also counts the switches themselves; checking the CPU clock every
 * ~1 ms near the target keeps that error within the base period.  Far from the
 * target the counter makes one long step instead of many short ones (`plan`): an
 * overflow is an interrupt and a signal, which cost ~25-50 us each in a virtual
 * machine (a 1 ms period alone took 7-8 % of a trivial endpoint's throughput).
 * The long step ends one base period plus the CPU the counter is expected not to
 * see (`hidden`, the largest recent share, decaying) before the target, so the
 * base periods, not the step, find the target.  Every 4th recorded sample also
 * draws a new base period, so the overflows' own phase is random too. */
#define OTP_PERF_BASE_NS 1000000LL

static inline uint64_t
base_of(int64_t iv)
{
    return (uint64_t)(iv < OTP_PERF_BASE_NS ? iv : OTP_PERF_BASE_NS);
}

/* The counter's next period with `rem` of CPU left before the target.  Long steps
 * only for a full counter: a user-space-only one (perf_event_paranoid 2) drops the
 * overflows that fall in the kernel, and a dropped long step would move the sample a
 * whole step later instead of ~1 ms (and before the first counter is open, the kind
 * is not known yet). */
static inline uint64_t
plan(const otp_slot *s, uint64_t rem)
{
    uint64_t base = s->base;
    if (rem > 2 * base && perf_mode == 1) {
        uint64_t step = ((rem - base) * (uint64_t)(1024 - s->hidden)) >> 10;
        if (step > base)
            return step;
    }
    return base;
}

/* A new period starts now (the system call costs ~14-25 us: only on a change). */
static inline void
set_period(otp_slot *s, uint64_t period)
{
    if (period != s->period) {
        s->period = period;
        ioctl(s->perf_fd, PERF_EVENT_IOC_PERIOD, &period);
    }
}

/* At an overflow: how much of the CPU since the previous one the counter saw (its
 * period) and how much the CPU clock counted. */
static inline void
note_overflow(otp_slot *s, uint64_t cpu)
{
    uint64_t seen = s->period, real = cpu - s->mark_cpu;
    s->mark_cpu = cpu;
    uint32_t h = s->hidden - (s->hidden >> 3);
    if (real > seen && real < 4 * seen) {  /* (4x: a lost signal or a pause, not a share) */
        uint32_t now = (uint32_t)(1024 - (seen * 1024) / real);
        if (now > 768)
            now = 768;
        if (now > h)
            h = now;
    }
    s->hidden = h;
}

static int arm_at(otp_slot *s, int64_t first_ns, long long interval_ns);

static void
arm_next(otp_slot *s)
{
    int64_t iv = __atomic_load_n(&s->interval_ns, __ATOMIC_RELAXED);
    if (s->source == OTP_SRC_PERF) {
        s->target = (uint64_t)draw(s, iv);
        if (++s->redraws % 4 == 0)
            s->base = (uint64_t)draw(s, (int64_t)base_of(iv));
        set_period(s, plan(s, s->target));
        return;
    }
    int64_t next = draw(s, iv);
    arm_at(s, next, next);  /* (periodic: if a signal is ever lost) */
}

/* ------------------------------------------------------------------ the handler */

/* Append one sample.  When the buffer is full (the drain is late) the sample is
 * dropped and its CPU is carried by the next record as `lost`: billing it to the
 * next stack instead would give one stack the CPU of many samples. */
static void
write_record(otp_slot *s, int n, uint32_t omitted, uint32_t overruns, uint64_t c0, uint64_t c1, uint64_t mono)
{
    uint64_t need = sizeof(rec_header) + (uint64_t)n * sizeof(otp_frame);
    need = (need + 7) & ~7ULL;
    uint64_t head = s->head;
    uint64_t tail = __atomic_load_n(&s->tail, __ATOMIC_ACQUIRE);
    uint64_t pos = head % s->cap;
    uint64_t to_end = s->cap - pos;
    uint64_t extra = to_end < need ? to_end : 0;  /* skip to offset 0 */
    if (head + extra + need - tail > s->cap) {
        add_relaxed(&s->dropped_full, 1);
        s->lost_cpu += c1 - c0;
        return;
    }
    if (extra) {
        *(uint32_t *)(s->ring + pos) = OTP_WRAP;
        head += extra;
        pos = 0;
    }
    rec_header *h = (rec_header *)(s->ring + pos);
    h->size = (uint32_t)need;
    h->nframes = (uint16_t)n;
    h->flags = 0;
    h->omitted = omitted;
    h->overruns = overruns;
    h->cpu_start = c0;
    h->cpu_end = c1;
    h->mono = mono;
    h->lost = s->lost_cpu;
    s->lost_cpu = 0;
    memcpy(h + 1, s->frames, (size_t)n * sizeof(otp_frame));
    __atomic_store_n(&s->head, head + need, __ATOMIC_RELEASE);
}

static void
on_sigprof(int sig, siginfo_t *si, void *uctx)
{
    (void)sig;
    (void)uctx;
    int saved_errno = errno;
    if (si == NULL)
        goto out;
    unsigned idx;
    uint32_t gen = 0;
    int by_fd = 0;
    if (si->si_code == SI_TIMER) {
        uint64_t v = (uint64_t)(uintptr_t)si->si_value.sival_ptr;
        if ((v >> 48) != OTP_MAGIC)
            goto out;
        idx = (unsigned)(v & 0xFFFF);
        gen = (uint32_t)((v >> 16) & 0xFFFFFFFFu);
    } else if (si->si_code >= POLL_IN && si->si_code <= POLL_HUP && si->si_fd >= 0 && si->si_fd < OTP_FD_TABLE) {
        int v = __atomic_load_n(&fd_slot[si->si_fd], __ATOMIC_ACQUIRE);
        if (v <= 0)
            goto out;
        idx = (unsigned)(v - 1);
        by_fd = 1;
    } else {
        goto out;
    }
    if (idx >= OTP_MAX_SLOTS)
        goto out;
    otp_slot *s = &slots[idx];
    __atomic_fetch_add(&s->in_handler, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->state, __ATOMIC_SEQ_CST) != SLOT_ACTIVE)
        goto leave;
    if (by_fd ? (s->source != OTP_SRC_PERF || s->perf_fd != si->si_fd) : (s->source != OTP_SRC_TIMER || s->gen != gen))
        goto leave;
    if (PyGILState_GetThisThreadState() != s->tstate) {
        /* the thread left Python (or is not the one registered): nothing to walk */
        add_relaxed(&s->skipped_state, 1);
        goto leave;
    }
    struct timespec t0, t1, m;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    if (by_fd) {
        uint64_t used = ts_ns(&t0) - s->last_cpu;
        add_relaxed(&s->overflows, 1);
        note_overflow(s, ts_ns(&t0));
        if (used < s->target) {  /* an overflow before the drawn target: the next step only */
            set_period(s, plan(s, s->target - used));
            add_relaxed(&s->handler_cpu_ns, 300);
            goto leave;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &m);
    uint32_t omitted = 0, read_errors = 0;
    int n = otp_walk(s->tstate, &s->walk, s->frames, s->max_frames, &omitted, &read_errors);
    uint64_t c0 = s->last_cpu, c1 = ts_ns(&t0);
    int overrun = !by_fd && si->si_overrun > 0 ? si->si_overrun : 0;
    if (n >= 0)
        write_record(s, n, omitted, (uint32_t)overrun, c0, c1, ts_ns(&m));
    else
        s->lost_cpu += c1 - c0;  /* the chain could not be read: measured, not located */
    add_relaxed(&s->samples, 1);
    if (read_errors)
        add_relaxed(&s->read_errors, read_errors);
    if (overrun)
        add_relaxed(&s->overruns, (uint64_t)overrun);
    arm_next(s);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    /* the next window starts after this handler: its own CPU is not the user's */
    s->last_cpu = ts_ns(&t1);
    if (by_fd)
        s->mark_cpu = ts_ns(&t1);
    add_relaxed(&s->handler_cpu_ns, ts_ns(&t1) - ts_ns(&t0));
leave:
    __atomic_fetch_sub(&s->in_handler, 1, __ATOMIC_SEQ_CST);
out:
    errno = saved_errno;
}

/* ------------------------------------------------------------------ install / fork */

static int
handler_is_ours(void)
{
    struct sigaction cur;
    if (sigaction(SIGPROF, NULL, &cur) != 0)
        return 0;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigprof;
}

static void
reset_slots_in_child(void)
{
    otp_safe_read_after_fork();
    for (int i = 0; i < OTP_MAX_SLOTS; i++) {
        otp_slot *s = &slots[i];
        /* timers are not inherited: nothing fires here; forget the parent's threads */
        s->state = s->state == SLOT_LEAKED ? SLOT_LEAKED : SLOT_FREE;
        s->in_handler = 0;
        s->gen++;
        s->has_timer = 0;
        if (s->perf_fd >= 0) {
            /* the inherited counter watches the parent's thread: not ours to keep */
            if (s->perf_fd < OTP_FD_TABLE)
                fd_slot[s->perf_fd] = 0;
            close(s->perf_fd);
            s->perf_fd = -1;
        }
        s->tstate = NULL;
        s->head = s->tail = 0;
    }
}

static PyObject *
cs_install(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    if (installed) {
        if (!handler_is_ours()) {
            PyErr_SetString(PyExc_RuntimeError, "another SIGPROF handler replaced ours");
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (otp_safe_read_init() != 0) {
        PyErr_SetString(PyExc_OSError, "process_vm_readv on our own process is not permitted (seccomp?)");
        return NULL;
    }
    if (otp_registry_init() != 0)
        return PyErr_NoMemory();
    struct sigaction old;
    if (sigaction(SIGPROF, NULL, &old) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int has_handler = (old.sa_flags & SA_SIGINFO) ? old.sa_sigaction != NULL
                                                   : (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN);
    if (has_handler) {
        PyErr_SetString(PyExc_RuntimeError,
                        "SIGPROF already has a handler (another profiler?); not taking it over");
        return NULL;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigprof;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPROF, &sa, NULL) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (pthread_atfork(NULL, NULL, reset_slots_in_child) != 0) {
        /* keep the handler (never remove it), but refuse to run timers */
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    installed = 1;
    Py_RETURN_NONE;
}

static PyObject *
cs_handler_ok(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    return PyBool_FromLong(installed && handler_is_ours());
}

/* ------------------------------------------------------------------ slots */

/* Scratch for walking up to max_frames frames: frames, two chunk copies, code
 * header reads.  Replaces (and frees) the previous scratch: call it only when no
 * walk can be using that one. */
int
otp_alloc_walk(otp_walk_scratch *w, otp_frame **frames_out, int max_frames)
{
    otp_frame *frames = malloc((size_t)max_frames * sizeof(otp_frame));
    char *block = malloc(OTP_BLOCK_BYTES);
    char *block2 = malloc(OTP_BLOCK_BYTES);
    char *meta = malloc((size_t)max_frames * OTP_META_SPAN);
    struct iovec *liov = malloc((size_t)max_frames * sizeof(struct iovec));
    struct iovec *riov = malloc((size_t)max_frames * sizeof(struct iovec));
    int *pending = malloc((size_t)max_frames * sizeof(int));
    if (!frames || !block || !block2 || !meta || !liov || !riov || !pending) {
        free(frames); free(block); free(block2); free(meta); free(liov); free(riov); free(pending);
        return -1;
    }
    free(*frames_out); free(w->block[0]); free(w->block[1]); free(w->meta);
    free(w->liov); free(w->riov); free(w->pending);
    *frames_out = frames;
    w->block[0] = block;
    w->block[1] = block2;
    w->block_cap = OTP_BLOCK_BYTES;
    w->meta = meta;
    w->liov = liov;
    w->riov = riov;
    w->pending = pending;
    return 0;
}

static int
ensure_buffers(otp_slot *s, int max_frames)
{
    if (s->frames != NULL && s->scratch_frames >= max_frames)
        return 0;
    uint64_t rec_max = sizeof(rec_header) + (uint64_t)max_frames * sizeof(otp_frame);
    uint64_t cap = OTP_RING_MIN;
    while (cap < 8 * rec_max)
        cap *= 2;
    char *ring = malloc(cap);
    /* the slot is free (not active): no handler can be using the old buffers */
    if (ring == NULL || otp_alloc_walk(&s->walk, &s->frames, max_frames) != 0) {
        free(ring);
        return -1;
    }
    free(s->ring);
    s->ring = ring;
    s->cap = cap;
    s->scratch_frames = max_frames;
    return 0;
}

static PyThreadState *
find_tstate(unsigned long ident)
{
    PyInterpreterState *interp = PyInterpreterState_Get();
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL; ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == ident)
            return ts;
    }
    return NULL;
}

static otp_slot *
slot_from_handle(PyObject *handle, unsigned *idx_out)
{
    unsigned long long h = PyLong_AsUnsignedLongLong(handle);
    if (h == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    unsigned idx = (unsigned)(h & 0xFFFF);
    uint32_t gen = (uint32_t)(h >> 16);
    if (idx >= OTP_MAX_SLOTS || slots[idx].gen != gen
        || (slots[idx].state != SLOT_ACTIVE && slots[idx].state != SLOT_STOPPING)) {
        PyErr_SetString(PyExc_ValueError, "not a live sampler handle");
        return NULL;
    }
    if (idx_out)
        *idx_out = idx;
    return &slots[idx];
}

/* A POSIX timer's next expiry after `first_ns` of CPU, then every `interval_ns`. */
static int
arm_at(otp_slot *s, int64_t first_ns, long long interval_ns)
{
    struct itimerspec its;
    its.it_interval.tv_sec = interval_ns / 1000000000LL;
    its.it_interval.tv_nsec = interval_ns % 1000000000LL;
    its.it_value.tv_sec = first_ns / 1000000000LL;
    its.it_value.tv_nsec = first_ns % 1000000000LL;
    return timer_settime(s->timer, 0, &its, NULL);
}

static int
arm(otp_slot *s, long long interval_ns)
{
    __atomic_store_n(&s->interval_ns, (int64_t)interval_ns, __ATOMIC_RELAXED);
    return arm_at(s, interval_ns, interval_ns);
}

static PyObject *handle_of(otp_slot *s, int idx);
static int start_perf(otp_slot *s, int idx, pid_t tid, long long interval_ns);
static int start_timer(otp_slot *s, int idx, pid_t tid, long long interval_ns);

/* start(ident, native_id, interval_ns, perf=True) -> handle */
static PyObject *
cs_start(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long ident;
    long native_id;
    long long interval_ns;
    int want_perf = 1;
    if (!PyArg_ParseTuple(args, "klL|p", &ident, &native_id, &interval_ns, &want_perf))
        return NULL;
    if (!installed || !handler_is_ours()) {
        PyErr_SetString(PyExc_RuntimeError, "the SIGPROF handler is not installed");
        return NULL;
    }
    if (interval_ns < 50000)
        interval_ns = 50000;
    PyThreadState *ts = find_tstate(ident);
    if (ts == NULL) {
        PyErr_SetString(PyExc_LookupError, "no Python thread with that ident");
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030B0000
    if (ts->native_thread_id != 0)
        native_id = (long)ts->native_thread_id;
#endif
    if (native_id <= 0) {
        PyErr_SetString(PyExc_ValueError, "unknown native thread id");
        return NULL;
    }
    int idx = -1;
    for (int i = 0; i < OTP_MAX_SLOTS; i++) {
        if (slots[i].state == SLOT_FREE) {
            idx = i;
            break;
        }
    }
    if (idx < 0) {
        PyErr_SetString(PyExc_RuntimeError, "too many threads sampled at once");
        return NULL;
    }
    otp_slot *s = &slots[idx];
    int mf = max_frames_setting;
    if (ensure_buffers(s, mf) != 0)
        return PyErr_NoMemory();
    clockid_t clk = OTP_THREAD_CPUCLOCK(native_id);
    struct timespec now;
    if (clock_gettime(clk, &now) != 0) {
        PyErr_SetString(PyExc_LookupError, "the thread has exited");
        return NULL;
    }
    s->gen++;
    s->tid = (pid_t)native_id;
    s->ident = ident;
    s->tstate = ts;
    s->max_frames = mf;
    s->head = s->tail = 0;
    s->last_cpu = ts_ns(&now);
    s->pause_cpu = 0;
    s->lost_cpu = 0;
    s->rng = ((uint64_t)ts_ns(&now) * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)native_id << 32) ^ 0x5DEECE66DULL;
    if (s->rng == 0)
        s->rng = 1;
    /* the counters stay cumulative per slot: totals never go back */
    s->perf_fd = -1;
    s->has_timer = 0;
    __atomic_store_n(&s->interval_ns, (int64_t)interval_ns, __ATOMIC_RELAXED);
    if (want_perf && start_perf(s, idx, (pid_t)native_id, interval_ns) == 0)
        return handle_of(s, idx);
    if (start_timer(s, idx, (pid_t)native_id, interval_ns) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return handle_of(s, idx);
}

static PyObject *
handle_of(otp_slot *s, int idx)
{
    return PyLong_FromUnsignedLongLong(((unsigned long long)s->gen << 16) | (unsigned)idx);
}

static int
perf_open(pid_t tid, uint64_t period, int exclude_kernel)
{
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.sample_period = period;
    attr.disabled = 1;
    attr.exclude_kernel = exclude_kernel;
    attr.exclude_hv = 1;
    return (int)syscall(SYS_perf_event_open, &attr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

/* A task-clock counter of thread tid that signals it (SIGPROF) at each overflow. */
static int
start_perf(otp_slot *s, int idx, pid_t tid, long long interval_ns)
{
    if (perf_mode < 0)
        return -1;
    int fd = -1;
    s->base = base_of(interval_ns);
    s->hidden = 0;
    s->target = (uint64_t)first_draw(s, interval_ns);
    s->period = plan(s, s->target);
    s->mark_cpu = s->last_cpu;
    if (perf_mode == 0 || perf_mode == 1) {
        fd = perf_open(tid, s->period, 0);
        if (fd >= 0)
            perf_mode = 1;
    }
    if (fd < 0 && (perf_mode == 0 || perf_mode == 2)) {
        /* perf_event_paranoid=2: only user-space samples are allowed (a sample that
           lands in a system call is skipped; its CPU goes with the next sample) */
        fd = perf_open(tid, s->period, 1);
        if (fd >= 0)
            perf_mode = 2;
    }
    if (fd < 0) {
        if (perf_mode == 0 && (errno == EACCES || errno == EPERM || errno == ENOSYS || errno == ENOENT
                               || errno == EOPNOTSUPP || errno == EINVAL))
            perf_mode = -1;  /* not allowed here: POSIX timers from now on */
        return -1;
    }
    struct f_owner_ex owner = {F_OWNER_TID, tid};
    if (fd >= OTP_FD_TABLE || fcntl(fd, F_SETOWN_EX, &owner) != 0 || fcntl(fd, F_SETSIG, SIGPROF) != 0
        || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) != 0) {
        close(fd);
        return -1;
    }
    s->source = OTP_SRC_PERF;
    s->perf_fd = fd;
    __atomic_store_n(&s->state, SLOT_ACTIVE, __ATOMIC_SEQ_CST);
    __atomic_store_n(&fd_slot[fd], (int16_t)(idx + 1), __ATOMIC_RELEASE);
    /* with an async owner set, every overflow signals the thread (no ring buffer needed) */
    if (ioctl(fd, PERF_EVENT_IOC_RESET, 0) != 0 || ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) != 0) {
        __atomic_store_n(&fd_slot[fd], 0, __ATOMIC_RELEASE);
        __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_SEQ_CST);
        close(fd);
        s->perf_fd = -1;
        return -1;
    }
    return 0;
}

/* A POSIX timer on thread tid's CPU clock, signalling that thread. */
static int
start_timer(otp_slot *s, int idx, pid_t tid, long long interval_ns)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGPROF;
    sev.sigev_notify_thread_id = tid;
    uint64_t value = (OTP_MAGIC << 48) | ((uint64_t)s->gen << 16) | (uint64_t)idx;
    sev.sigev_value.sival_ptr = (void *)(uintptr_t)value;
    s->source = OTP_SRC_TIMER;
    __atomic_store_n(&s->state, SLOT_ACTIVE, __ATOMIC_SEQ_CST);
    if (timer_create(OTP_THREAD_CPUCLOCK(tid), &sev, &s->timer) != 0) {
        int e = errno;
        __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_SEQ_CST);
        errno = e;
        return -1;
    }
    s->has_timer = 1;
    if (arm_at(s, first_draw(s, interval_ns), interval_ns) != 0) {  /* (the first: see first_draw) */
        int e = errno;
        timer_delete(s->timer);
        s->has_timer = 0;
        __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_SEQ_CST);
        errno = e;
        return -1;
    }
    return 0;
}

static PyObject *
cs_set_interval(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *handle;
    long long interval_ns;
    if (!PyArg_ParseTuple(args, "OL", &handle, &interval_ns))
        return NULL;
    otp_slot *s = slot_from_handle(handle, NULL);
    if (s == NULL)
        return NULL;
    if (interval_ns < 50000)
        interval_ns = 50000;
    if (s->state != SLOT_ACTIVE)
        Py_RETURN_NONE;
    if (s->source == OTP_SRC_PERF) {
        /* the handler draws each next period around this mean; a faster rate also
         * brings the pending draw in (a parked timer taken up by a 1 kHz profile would
         * otherwise wait out a draw made at its old rate: no sample in a 3 ms request) */
        int64_t was = __atomic_load_n(&s->interval_ns, __ATOMIC_RELAXED);
        __atomic_store_n(&s->interval_ns, (int64_t)interval_ns, __ATOMIC_RELAXED);
        if (__atomic_load_n(&s->target, __ATOMIC_RELAXED) > (uint64_t)interval_ns)
            __atomic_store_n(&s->target, (uint64_t)interval_ns, __ATOMIC_RELAXED);
        if (interval_ns < was) {  /* (a long step under way would wait for the old target) */
            s->base = base_of(interval_ns);
            set_period(s, s->base);
        }
    } else if (s->has_timer && arm(s, interval_ns) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* pause(handle, paused): stop interrupting the thread while its timer is parked
 * (kept for the thread's next profile), or start again.  Measured: a perf counter
 * left running on an idle-between-profiles uvicorn loop thread cost every request
 * 9 % of the throughput of a trivial endpoint, a POSIX timer 3 %.  The CPU used
 * while paused is not carried by the next sample. */
static PyObject *
cs_pause(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *handle;
    int paused;
    if (!PyArg_ParseTuple(args, "Op", &handle, &paused))
        return NULL;
    otp_slot *s = slot_from_handle(handle, NULL);
    if (s == NULL)
        return NULL;
    if (s->state != SLOT_ACTIVE || (paused != 0) == (s->pause_cpu != 0))
        Py_RETURN_NONE;
    struct timespec now;
    uint64_t now_ns = clock_gettime(OTP_THREAD_CPUCLOCK(s->tid), &now) == 0 ? ts_ns(&now) : 0;
    if (!paused) {
        /* the CPU used while paused is nobody's: the next sample's interval (and the
           countdown to it) counts only CPU while running, so a thread profiled in
           short bursts is sampled as if the bursts were one run */
        if (now_ns > s->pause_cpu) {
            __atomic_fetch_add(&s->last_cpu, now_ns - s->pause_cpu, __ATOMIC_RELAXED);
            __atomic_fetch_add(&s->mark_cpu, now_ns - s->pause_cpu, __ATOMIC_RELAXED);
        }
        s->pause_cpu = 0;
    }
    int rc = 0;
    if (s->source == OTP_SRC_PERF && s->perf_fd >= 0) {
        rc = ioctl(s->perf_fd, paused ? PERF_EVENT_IOC_DISABLE : PERF_EVENT_IOC_ENABLE, 0);
    } else if (s->has_timer) {
        struct itimerspec its;
        memset(&its, 0, sizeof its);
        if (paused) {
            struct itimerspec left;
            rc = timer_settime(s->timer, 0, &its, &left);  /* disarmed; `left`: what remained */
            s->pause_left = rc == 0 ? (int64_t)ts_ns(&left.it_value) : 0;
        } else {
            int64_t iv = __atomic_load_n(&s->interval_ns, __ATOMIC_RELAXED);
            int64_t next = s->pause_left > 0 && s->pause_left <= 2 * iv ? s->pause_left : draw(s, iv);
            rc = arm_at(s, next, iv);  /* the countdown goes on where it stopped */
        }
    }
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (paused)
        s->pause_cpu = now_ns ? now_ns : 1;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ drain */

/* (codes, lastis, frame addresses) of recorded frames, leaf first; a code that does
 * not validate is None, a frame not yet started is left out. */
int
otp_frame_tuples(const otp_frame *frames, int nframes, PyObject **codes_out, PyObject **lastis_out,
             PyObject **addrs_out, uint64_t *unknown)
{
    PyObject *codes = PyTuple_New(nframes);
    PyObject *lastis = PyTuple_New(nframes);
    PyObject *addrs = PyTuple_New(nframes);
    if (!codes || !lastis || !addrs)
        goto fail;
    Py_ssize_t n = 0;
    for (int i = 0; i < nframes; i++) {
        int skip = 0;
        PyObject *code = otp_resolve_code(&frames[i], &skip);
        if (skip) {
            Py_XDECREF(code);
            continue;
        }
        if (code == NULL) {
            (*unknown)++;
            code = Py_None;
            Py_INCREF(code);
        }
        PyObject *lasti = PyLong_FromLong(frames[i].lasti);
        PyObject *addr = PyLong_FromUnsignedLongLong(frames[i].frame);
        if (!lasti || !addr) {
            Py_DECREF(code);
            Py_XDECREF(lasti);
            Py_XDECREF(addr);
            goto fail;
        }
        PyTuple_SET_ITEM(codes, n, code);
        PyTuple_SET_ITEM(lastis, n, lasti);
        PyTuple_SET_ITEM(addrs, n, addr);
        n++;
    }
    if (n != nframes) {
        if (_PyTuple_Resize(&codes, n) || _PyTuple_Resize(&lastis, n) || _PyTuple_Resize(&addrs, n))
            goto fail;
    }
    *codes_out = codes;
    *lastis_out = lastis;
    *addrs_out = addrs;
    return 0;
fail:
    Py_XDECREF(codes);
    Py_XDECREF(lastis);
    Py_XDECREF(addrs);
    return -1;
}

static PyObject *
sample_tuple(const rec_header *h, const otp_frame *frames, uint64_t *unknown)
{
    PyObject *codes, *lastis, *addrs;
    if (otp_frame_tuples(frames, h->nframes, &codes, &lastis, &addrs, unknown) != 0)
        return NULL;
    return Py_BuildValue("(KKKIINNNK)", (unsigned long long)h->cpu_start, (unsigned long long)h->cpu_end,
                         (unsigned long long)h->mono, (unsigned int)h->overruns, (unsigned int)h->omitted,
                         codes, lastis, addrs, (unsigned long long)h->lost);
}

static uint64_t unknown_frames;
static uint64_t walk_unknown;

static PyObject *
drain_slot(otp_slot *s)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    otp_registry_maintain();
    uint64_t t = s->tail;
    uint64_t head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
    while (t < head) {
        uint64_t pos = t % s->cap;
        const rec_header *h = (const rec_header *)(s->ring + pos);
        if (h->size == OTP_WRAP) {
            t += s->cap - pos;
            continue;
        }
        PyObject *item = sample_tuple(h, (const otp_frame *)(h + 1), &unknown_frames);
        if (item == NULL || PyList_Append(out, item) != 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            __atomic_store_n(&s->tail, t + h->size, __ATOMIC_RELEASE);  /* skip the bad record */
            return NULL;
        }
        Py_DECREF(item);
        t += h->size;
    }
    __atomic_store_n(&s->tail, t, __ATOMIC_RELEASE);
    return out;
}

/* walk(ident, max_frames) -> (codes, lastis, frame addresses, omitted) of another
 * thread's Python stack, or None if it has none.  Called with the GIL held, when
 * the other thread cannot be changing its frames (it pushes and pops them only
 * while holding the GIL); read with the handler's fault-free walker, without
 * creating frame objects: sys._current_frames() plus f_back does create them, and
 * has crashed CPython 3.11 while threads came and went. */
static otp_walk_scratch walk_scratch;
static otp_frame *walk_frames;
static int walk_cap;

static PyObject *
cs_walk(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long ident;
    int max_frames;
    if (!PyArg_ParseTuple(args, "ki", &ident, &max_frames))
        return NULL;
    static int ready = 0;  /* the walker needs the fault-free reads, not the signal handler */
    if (!ready) {
        if (otp_safe_read_init() != 0 || otp_registry_init() != 0) {
            PyErr_SetString(PyExc_OSError, "process_vm_readv on our own process is not permitted");
            return NULL;
        }
        ready = 1;
    }
    if (max_frames < 8)
        max_frames = 8;
    if (max_frames > OTP_MAX_FRAMES_LIMIT)
        max_frames = OTP_MAX_FRAMES_LIMIT;
    if (walk_cap < max_frames) {
        if (otp_alloc_walk(&walk_scratch, &walk_frames, max_frames) != 0)
            return PyErr_NoMemory();
        walk_cap = max_frames;
    }
    PyThreadState *ts = find_tstate(ident);
    if (ts == NULL)
        Py_RETURN_NONE;
    uint32_t omitted = 0, errors = 0;
    int n = otp_walk(ts, &walk_scratch, walk_frames, max_frames, &omitted, &errors);
    if (n <= 0)
        Py_RETURN_NONE;
    PyObject *codes, *lastis, *addrs;
    if (otp_frame_tuples(walk_frames, n, &codes, &lastis, &addrs, &walk_unknown) != 0)
        return NULL;
    return Py_BuildValue("(NNNI)", codes, lastis, addrs, (unsigned int)omitted);
}

static PyObject *
cs_drain(PyObject *self, PyObject *handle)
{
    (void)self;
    otp_slot *s = slot_from_handle(handle, NULL);
    if (s == NULL)
        return NULL;
    return drain_slot(s);
}

/* pending(handle) -> True when the thread's buffer holds samples not drained yet
 * (a request that no sample fell in skips the drain and its lock). */
static PyObject *
cs_pending(PyObject *self, PyObject *handle)
{
    (void)self;
    otp_slot *s = slot_from_handle(handle, NULL);
    if (s == NULL)
        return NULL;
    uint64_t head = __atomic_load_n(&s->head, __ATOMIC_ACQUIRE);
    return PyBool_FromLong(head != __atomic_load_n(&s->tail, __ATOMIC_RELAXED));
}

static void
delete_timer_and_wait(otp_slot *s)
{
    __atomic_store_n(&s->state, SLOT_STOPPING, __ATOMIC_SEQ_CST);
    if (s->has_timer) {
        timer_delete(s->timer);
        s->has_timer = 0;
    }
    if (s->perf_fd >= 0) {
        ioctl(s->perf_fd, PERF_EVENT_IOC_DISABLE, 0);
        if (s->perf_fd < OTP_FD_TABLE)
            __atomic_store_n(&fd_slot[s->perf_fd], 0, __ATOMIC_RELEASE);
        close(s->perf_fd);  /* a signal still queued finds no slot for its fd */
        s->perf_fd = -1;
    }
    /* a handler that saw the slot active may still be writing its record */
    for (int i = 0; __atomic_load_n(&s->in_handler, __ATOMIC_SEQ_CST) != 0; i++) {
        if (i > 200000) {  /* ~ seconds: the thread is stopped inside the handler */
            __atomic_store_n(&s->state, SLOT_LEAKED, __ATOMIC_SEQ_CST);
            slots_leaked++;
            return;
        }
        sched_yield();
    }
}

/* stop(handle) -> the samples not drained yet; the slot is free afterwards */
static PyObject *
cs_stop(PyObject *self, PyObject *handle)
{
    (void)self;
    otp_slot *s = slot_from_handle(handle, NULL);
    if (s == NULL)
        return NULL;
    delete_timer_and_wait(s);
    if (s->state == SLOT_LEAKED)
        return PyList_New(0);
    PyObject *rest = drain_slot(s);
    s->tstate = NULL;
    s->gen++;
    __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_SEQ_CST);
    return rest;
}

/* stop_all(): at interpreter exit; samples are dropped */
static PyObject *
cs_stop_all(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    for (int i = 0; i < OTP_MAX_SLOTS; i++) {
        otp_slot *s = &slots[i];
        if (s->state != SLOT_ACTIVE && s->state != SLOT_STOPPING)
            continue;
        delete_timer_and_wait(s);
        if (s->state == SLOT_LEAKED)
            continue;
        s->tstate = NULL;
        s->gen++;
        s->head = s->tail = 0;
        __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_SEQ_CST);
    }
    Py_RETURN_NONE;
}

static PyObject *
cs_set_max_frames(PyObject *self, PyObject *arg)
{
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 8)
        n = 8;
    if (n > OTP_MAX_FRAMES_LIMIT)
        n = OTP_MAX_FRAMES_LIMIT;
    max_frames_setting = (int)n;  /* applies to threads started from now on */
    return PyLong_FromLong(n);
}

static PyObject *
cs_frame_address(PyObject *self, PyObject *frame)
{
    (void)self;
    return PyLong_FromUnsignedLongLong(otp_frame_address(frame));
}

static PyObject *
cs_stats(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    uint64_t samples = 0, dropped = 0, skipped = 0, errors = 0, handler_ns = 0, overruns = 0, overflows = 0;
    int active = 0;
    for (int i = 0; i < OTP_MAX_SLOTS; i++) {
        otp_slot *s = &slots[i];
        samples += __atomic_load_n(&s->samples, __ATOMIC_RELAXED);
        dropped += __atomic_load_n(&s->dropped_full, __ATOMIC_RELAXED);
        skipped += __atomic_load_n(&s->skipped_state, __ATOMIC_RELAXED);
        errors += __atomic_load_n(&s->read_errors, __ATOMIC_RELAXED);
        handler_ns += __atomic_load_n(&s->handler_cpu_ns, __ATOMIC_RELAXED);
        overruns += __atomic_load_n(&s->overruns, __ATOMIC_RELAXED);
        overflows += __atomic_load_n(&s->overflows, __ATOMIC_RELAXED);
        active += s->state == SLOT_ACTIVE;
    }
    return Py_BuildValue("{sKsKsKsKsKsKsKsnsKsisKsK}",
                         "samples", (unsigned long long)samples, "dropped_full", (unsigned long long)dropped,
                         "skipped_state", (unsigned long long)skipped, "read_errors", (unsigned long long)errors,
                         "handler_cpu_ns", (unsigned long long)handler_ns, "overruns", (unsigned long long)overruns,
                         "unknown_frames", (unsigned long long)unknown_frames,
                         "registry_size", otp_registry_size(),
                         "registry_resets", (unsigned long long)otp_registry_resets,
                         "active_threads", active, "slots_leaked", (unsigned long long)slots_leaked,
                         "overflows", (unsigned long long)overflows);
}

/* slot_stats(handle) -> (handler_cpu_ns, overruns, dropped_full) of one live slot */
static PyObject *
cs_slot_stats(PyObject *self, PyObject *handle)
{
    (void)self;
    otp_slot *s = slot_from_handle(handle, NULL);
    if (s == NULL)
        return NULL;
    return Py_BuildValue("(KKKs)", (unsigned long long)__atomic_load_n(&s->handler_cpu_ns, __ATOMIC_RELAXED),
                         (unsigned long long)__atomic_load_n(&s->overruns, __ATOMIC_RELAXED),
                         (unsigned long long)__atomic_load_n(&s->dropped_full, __ATOMIC_RELAXED),
                         s->source == OTP_SRC_PERF ? (perf_mode == 2 ? "perf-user" : "perf") : "timer");
}

int
otp_cpu_sampler_init(PyObject *module)
{
    (void)module;
    for (int i = 0; i < OTP_MAX_SLOTS; i++)
        slots[i].perf_fd = -1;
    return 0;
}

#define OTP_CS_METHODS                                                                                        \
    {"install", cs_install, METH_NOARGS, "Install the SIGPROF handler (refuses if SIGPROF is taken)."},        \
    {"handler_ok", cs_handler_ok, METH_NOARGS, "True while our SIGPROF handler is in place."},                  \
    {"start", cs_start, METH_VARARGS, "start(ident, native_id, interval_ns, perf=True) -> handle: sample a thread."}, \
    {"set_interval", cs_set_interval, METH_VARARGS, "set_interval(handle, interval_ns)"},                      \
    {"pause", cs_pause, METH_VARARGS, "pause(handle, paused): stop or restart interrupting the thread."},      \
    {"pending", cs_pending, METH_O, "pending(handle) -> True if samples wait to be drained."},               \
    {"drain", cs_drain, METH_O, "drain(handle) -> [(cpu_start, cpu_end, mono, overruns, omitted, codes, lastis, frames, lost)]"}, \
    {"stop", cs_stop, METH_O, "stop(handle) -> the samples not drained yet; frees the slot."},               \
    {"stop_all", cs_stop_all, METH_NOARGS, "Delete every timer (interpreter exit)."},                          \
    {"set_max_frames", cs_set_max_frames, METH_O, "Frames recorded per sample for threads started later."},   \
    {"frame_address", cs_frame_address, METH_O, "The interpreter frame address of a frame object."},          \
    {"walk", cs_walk, METH_VARARGS, "walk(ident, max_frames) -> (codes, lastis, frames, omitted) or None."},   \
    {"stats", cs_stats, METH_NOARGS, "Counters of the CPU sampler."},                                          \
    {"slot_stats", cs_slot_stats, METH_O, "(handler_cpu_ns, overruns, dropped_full, source) of one thread."},

PyMethodDef otp_cpu_sampler_methods[] = {
    OTP_CS_METHODS
    {NULL, NULL, 0, NULL}
};

#else  /* !OTP_HAVE_CPU_SAMPLER */

PyMethodDef otp_cpu_sampler_methods[] = {
    {NULL, NULL, 0, NULL}
};

#endif
