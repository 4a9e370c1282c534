/* otelprof_middleware._native: shared declarations.
 *
 * One extension module, several parts, each in its own source file:
 *
 *   module.c         module definition; each part adds its methods and state here
 *   safe_read.c      reading our own memory without faulting (process_vm_readv)
 *   code_registry.c  code objects we hold a strong reference to (address -> code)
 *   frames.c         the CPython-version-specific frame walk and code validation
 *   cpu_sampler.c    per-thread CPU timers, the SIGPROF handler, ring buffers, drain
 *   thread_state.c   what a thread does now (/proc), read by a watcher thread at the tick's moment
 *   alloc_hook.c     the object allocator hook: Poisson-sampled allocations of profiled threads
 *   lock_wrap.c      ProfiledLock, the `lock` profile type's lock wrapper (any platform)
 *
 * A new part (e.g. an allocator hook) adds a source file, a PyMethodDef table and
 * an init function declared below, and registers them in module.c.
 */
#ifndef OTELPROF_NATIVE_H
#define OTELPROF_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>

/* The CPU sampler needs Linux (per-thread CPU timers, SIGEV_THREAD_ID,
 * process_vm_readv), a GIL build, and a CPython whose frame layout we know. */
#if defined(__linux__) && PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030E0000 \
    && !defined(Py_GIL_DISABLED) && !defined(Py_LIMITED_API) && !defined(PYPY_VERSION)
#  define OTP_HAVE_CPU_SAMPLER 1
#else
#  define OTP_HAVE_CPU_SAMPLER 0
#endif

#if OTP_HAVE_CPU_SAMPLER
#include <sys/types.h>
#include <sys/uio.h>

/* ------------------------------------------------------------------ safe_read.c */
/* 0 if process_vm_readv works on our own pid (checked once at install). */
int otp_safe_read_init(void);
/* In a forked child (pthread_atfork): our pid changed. */
void otp_safe_read_after_fork(void);
/* Copy len bytes at remote address addr into dst without faulting; 0 or -1.
 * Async-signal-safe; errno is left as the caller saved it. */
int otp_safe_read(uintptr_t addr, void *dst, size_t len);
/* Scatter/gather form: returns the number of leading iovecs read completely. */
int otp_safe_readv(struct iovec *local, struct iovec *remote, int n);

/* ------------------------------------------------------------------ frames.c */
/* One frame of a sample, as the signal handler records it (40 bytes). */
typedef struct {
    uint64_t frame;       /* interpreter frame address (task cut, identity) */
    uint64_t code;        /* code object address */
    uint64_t name_key;    /* co_qualname (3.10: co_name) and co_filename pointers mixed: validation */
    int32_t lasti;        /* instruction offset in bytes, as frame.f_lasti */
    int32_t firstlineno;  /* co_firstlineno: validation */
    uint8_t owner;        /* frame owner (3.11+), OTP_OWNER_GENERATOR for generator frames */
    uint8_t flags;        /* OTP_FRAME_* */
    uint16_t pad16;
    uint32_t pad32;
} otp_frame;

#define OTP_FRAME_META_OK 1  /* qualname/firstlineno were read */
#define OTP_OWNER_GENERATOR 1

/* Scratch memory of one thread's walk (preallocated; used by that thread's handler only). */
typedef struct {
    char *block[2];       /* copies of data-stack chunks: [0] the current one, [1] an older one */
    size_t block_cap;
    uintptr_t block_lo[2], block_hi[2];
    uintptr_t older;      /* the next older chunk to look in */
    int older_loads;
    char *meta;           /* code header reads, OTP_META_SPAN bytes per frame */
    struct iovec *liov, *riov;
    int *pending;         /* frame indices whose code header must be read */
} otp_walk_scratch;

#define OTP_MAX_FRAMES_LIMIT 512   /* hard cap of frames recorded per sample */
#define OTP_MAX_WALK 4096          /* frames followed at most (torn or cyclic chains) */
#define OTP_BLOCK_BYTES (64 * 1024)

extern const size_t OTP_META_SPAN;

/* Walk the interrupted thread's frames (signal handler).  Fills out[0..n) leaf
 * first, keeping the root as the last frame when the stack is deeper than
 * max_frames; *omitted = frames left out between them.  Returns n, or -1 if the
 * chain could not be read at all. */
int otp_walk(PyThreadState *ts, otp_walk_scratch *w, otp_frame *out, int max_frames,
             uint32_t *omitted, uint32_t *read_errors);

/* Drain side (GIL held): the code object for a recorded frame, as a new
 * reference, or NULL (not a live code object with the recorded metadata);
 * *skip = 1 if the frame is an incomplete (not yet started) frame to leave out. */
PyObject *otp_resolve_code(const otp_frame *f, int *skip);

/* Address of a frame object's interpreter frame (what otp_frame.frame holds). */
uintptr_t otp_frame_address(PyObject *frame);

/* ------------------------------------------------------------------ code_registry.c */
int otp_registry_init(void);
/* Signal-safe lookup of a pinned code object's metadata; 1 if found. */
int otp_registry_peek(uintptr_t addr, int32_t *firstlineno, uint64_t *name_key);
/* GIL held: the pinned object at addr (borrowed) or NULL. */
PyObject *otp_registry_get(uintptr_t addr, int32_t *firstlineno, uint64_t *name_key);
/* GIL held: pin code (takes a new reference) with its metadata. */
void otp_registry_pin(PyObject *code, int32_t firstlineno, uint64_t name_key);
/* GIL held: drop every pin when the table is over half full (bounded memory). */
void otp_registry_maintain(void);
void otp_registry_clear(void);
Py_ssize_t otp_registry_size(void);
extern uint64_t otp_registry_resets;

/* ------------------------------------------------------------------ cpu_sampler.c */
int otp_cpu_sampler_init(PyObject *module);
/* (Re)allocate walk scratch for max_frames frames (frees the previous one). */
int otp_alloc_walk(otp_walk_scratch *w, otp_frame **frames_out, int max_frames);
/* GIL held: (codes, lastis, frame addresses) tuples of recorded frames, leaf first. */
int otp_frame_tuples(const otp_frame *frames, int nframes, PyObject **codes_out, PyObject **lastis_out,
                     PyObject **addrs_out, uint64_t *unknown);

/* ------------------------------------------------------------------ alloc_hook.c */
int otp_alloc_hook_init(PyObject *module);
#endif /* OTP_HAVE_CPU_SAMPLER */

extern PyMethodDef otp_cpu_sampler_methods[];
extern PyMethodDef otp_thread_state_methods[];
extern PyMethodDef otp_alloc_hook_methods[];

/* ------------------------------------------------------------------ lock_wrap.c (any platform) */
int otp_lock_wrap_init(PyObject *module);
extern PyMethodDef otp_lock_wrap_methods[];

#endif /* OTELPROF_NATIVE_H */
