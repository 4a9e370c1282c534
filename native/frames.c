/* The CPython-version-specific part: walking a thread's frame chain from a
 * signal handler, and validating recorded code addresses at drain time.
 *
 *   3.10      tstate->frame, PyFrameObject.f_back / f_code / f_lasti (code units)
 *   3.11      tstate->cframe->current_frame, _PyInterpreterFrame.previous /
 *             f_code / prev_instr
 *   3.12      as 3.11; shim frames owned by the C stack are skipped
 *   3.13      tstate->current_frame, f_executable / instr_ptr
 *
 * The walk runs on the interrupted thread, which may be in the middle of pushing
 * or popping a frame, so every pointer it follows is read with otp_safe_read
 * (never dereferenced).  Frames of the thread's current data-stack chunk are
 * copied with one read and served from that copy.  The handler allocates
 * nothing and touches no reference count; garbage read from a torn chain only
 * produces frames that fail validation at drain time.
 */
#include "otelprof_native.h"

#if OTP_HAVE_CPU_SAMPLER
#include <string.h>

#if PY_VERSION_HEX >= 0x030B0000
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE 1
#    define OTP_UNDEF_BUILD_CORE
#  endif
#  include <internal/pycore_frame.h>
#  ifdef OTP_UNDEF_BUILD_CORE
#    undef Py_BUILD_CORE
#  endif
#else
#  include <frameobject.h>
#endif

#if PY_VERSION_HEX >= 0x030B0000
#  define OTP_QUALNAME co_qualname
#else
#  define OTP_QUALNAME co_name
#endif

/* What identifies a code object besides its address: co_firstlineno and a key
 * made of its name and file name pointers (the string objects it holds), read in
 * one span of the object. */
#define OFF_FIRST offsetof(PyCodeObject, co_firstlineno)
#define OFF_QUAL offsetof(PyCodeObject, OTP_QUALNAME)
#define OFF_FILE offsetof(PyCodeObject, co_filename)
#define MIN2(a, b) ((a) < (b) ? (a) : (b))
#define MAX2(a, b) ((a) < (b) ? (b) : (a))
#define META_LO MIN2(OFF_FIRST, MIN2(OFF_QUAL, OFF_FILE))
#define META_HI (MAX2(OFF_FIRST + sizeof(int), MAX2(OFF_QUAL, OFF_FILE) + sizeof(void *)))
const size_t OTP_META_SPAN = META_HI - META_LO;

static inline void
meta_from(const char *m, int32_t *first, uint64_t *key)
{
    uintptr_t qual, file;
    memcpy(first, m + (OFF_FIRST - META_LO), sizeof(int));
    memcpy(&qual, m + (OFF_QUAL - META_LO), sizeof(void *));
    memcpy(&file, m + (OFF_FILE - META_LO), sizeof(void *));
    *key = (uint64_t)qual ^ (((uint64_t)file << 17) | ((uint64_t)file >> 47));
}

static inline int
in_block(const otp_walk_scratch *w, int b, uintptr_t addr, size_t len)
{
    return addr >= w->block_lo[b] && addr + len <= w->block_hi[b] && addr + len > addr;
}

#if PY_VERSION_HEX >= 0x030B0000
/* Copy [lo, hi) of a data-stack chunk into block b (its last block_cap bytes if larger). */
static void
load_block(otp_walk_scratch *w, int b, uintptr_t lo, uintptr_t hi)
{
    w->block_lo[b] = w->block_hi[b] = 0;
    if (lo == 0 || hi <= lo || hi - lo > (64u << 20))
        return;  /* torn or odd: frame-by-frame reads */
    if (hi - lo > w->block_cap)
        lo = hi - w->block_cap;
    if (otp_safe_read(lo, w->block[b], hi - lo) == 0) {
        w->block_lo[b] = lo;
        w->block_hi[b] = hi;
    }
}

/* A frame outside the current chunk: find the older chunk holding it (deep
 * stacks span several chunks) and copy that one into the second block. */
static void
load_older_chunk(otp_walk_scratch *w, uintptr_t addr)
{
    uintptr_t chunk = w->older;
    for (int i = 0; chunk != 0 && i < 16; i++) {
        _PyStackChunk head;
        if (otp_safe_read(chunk, &head, offsetof(_PyStackChunk, data)) != 0)
            return;
        uintptr_t data = chunk + offsetof(_PyStackChunk, data);
        uintptr_t top = data + head.top * sizeof(PyObject *);
        if (addr >= chunk && addr < chunk + head.size) {
            load_block(w, 1, chunk, top);
            w->older = (uintptr_t)head.previous;
            return;
        }
        chunk = (uintptr_t)head.previous;
    }
}
#endif

static inline int
wread(otp_walk_scratch *w, uintptr_t addr, void *dst, size_t len)
{
    for (int b = 0; b < 2; b++) {
        if (in_block(w, b, addr, len)) {
            memcpy(dst, w->block[b] + (addr - w->block_lo[b]), len);
            return 0;
        }
    }
#if PY_VERSION_HEX >= 0x030B0000
    if (w->older != 0 && w->older_loads < 4) {
        w->older_loads++;
        load_older_chunk(w, addr);
        if (in_block(w, 1, addr, len)) {
            memcpy(dst, w->block[1] + (addr - w->block_lo[1]), len);
            return 0;
        }
    }
#endif
    return otp_safe_read(addr, dst, len);
}

/* Copy the live part of the current data-stack chunk: one read for most frames. */
static void
load_blocks(PyThreadState *ts, otp_walk_scratch *w)
{
    w->block_lo[0] = w->block_hi[0] = w->block_lo[1] = w->block_hi[1] = 0;
    w->older = 0;
    w->older_loads = 0;
#if PY_VERSION_HEX >= 0x030B0000
    _PyStackChunk *chunk = ts->datastack_chunk;
    load_block(w, 0, (uintptr_t)chunk, (uintptr_t)ts->datastack_top);
    _PyStackChunk *prev = NULL;
    if (chunk != NULL && otp_safe_read((uintptr_t)&chunk->previous, &prev, sizeof prev) == 0)
        w->older = (uintptr_t)prev;
#else
    (void)ts;
#endif
}

/* One step: read the frame at addr; fills code, instr/lasti, owner, previous.
 * Returns 1 for a frame to record, 0 for one to skip, -1 on a read failure. */
static int
read_frame(otp_walk_scratch *w, uintptr_t addr, otp_frame *out, uintptr_t *previous)
{
#if PY_VERSION_HEX >= 0x030B0000
    _PyInterpreterFrame fr;
    if (wread(w, addr, &fr, offsetof(_PyInterpreterFrame, localsplus)) != 0)
        return -1;
    *previous = (uintptr_t)fr.previous;
#  if PY_VERSION_HEX >= 0x030D0000
    uintptr_t code = (uintptr_t)fr.f_executable;
    uintptr_t instr = (uintptr_t)fr.instr_ptr;
#  else
    uintptr_t code = (uintptr_t)fr.f_code;
    uintptr_t instr = (uintptr_t)fr.prev_instr;
#  endif
#  if PY_VERSION_HEX >= 0x030C0000
    if (fr.owner == FRAME_OWNED_BY_CSTACK)
        return 0;  /* a shim frame of a C call into the interpreter */
#  endif
    out->frame = addr;
    out->code = code;
    intptr_t units = ((intptr_t)instr - (intptr_t)(code + offsetof(PyCodeObject, co_code_adaptive)))
                     / (intptr_t)sizeof(_Py_CODEUNIT);
    if (units < -1 || units > (1 << 28))
        units = -1;  /* garbage (torn frame): the line falls back to co_firstlineno */
    out->lasti = (int32_t)(units * (intptr_t)sizeof(_Py_CODEUNIT));
    out->owner = (uint8_t)fr.owner;
    return 1;
#else
    /* PyFrameObject: f_back, f_code ... f_lasti */
    char buf[sizeof(PyFrameObject)];
    size_t lo = offsetof(PyFrameObject, f_back);
    size_t hi = offsetof(PyFrameObject, f_lasti) + sizeof(int);
    if (wread(w, addr + lo, buf + lo, hi - lo) != 0)
        return -1;
    PyFrameObject *fr = (PyFrameObject *)buf;
    *previous = (uintptr_t)fr->f_back;
    out->frame = addr;
    out->code = (uintptr_t)fr->f_code;
    int lasti = fr->f_lasti;
    out->lasti = lasti < 0 || lasti > (1 << 28) ? -1 : lasti * (int32_t)sizeof(_Py_CODEUNIT);
    out->owner = fr->f_gen != NULL ? OTP_OWNER_GENERATOR : 0;
    return 1;
#endif
}

static uintptr_t
current_frame(PyThreadState *ts)
{
#if PY_VERSION_HEX >= 0x030D0000
    return (uintptr_t)ts->current_frame;
#elif PY_VERSION_HEX >= 0x030B0000
    /* tstate->cframe lives in a live C frame of this very thread (or in tstate) */
    _PyCFrame *cf = ts->cframe;
    uintptr_t f = 0;
    if (cf == NULL || otp_safe_read((uintptr_t)&cf->current_frame, &f, sizeof f) != 0)
        return 0;
    return f;
#else
    return (uintptr_t)ts->frame;
#endif
}

/* Fill firstlineno/name_key: from the registry when pinned, else one gather read. */
static void
read_metadata(otp_walk_scratch *w, otp_frame *frames, int n, uint32_t *read_errors)
{
    int npending = 0;
    for (int i = 0; i < n; i++) {
        otp_frame *f = &frames[i];
        int32_t first;
        uint64_t key;
        if (otp_registry_peek((uintptr_t)f->code, &first, &key)) {
            f->firstlineno = first;
            f->name_key = key;
            f->flags |= OTP_FRAME_META_OK;
            continue;
        }
        w->liov[npending].iov_base = w->meta + (size_t)npending * OTP_META_SPAN;
        w->liov[npending].iov_len = OTP_META_SPAN;
        w->riov[npending].iov_base = (void *)(uintptr_t)(f->code + META_LO);
        w->riov[npending].iov_len = OTP_META_SPAN;
        w->pending[npending++] = i;
    }
    int start = 0;
    while (start < npending) {
        int got = otp_safe_readv(w->liov + start, w->riov + start, npending - start);
        for (int k = start; k < start + got; k++) {
            otp_frame *f = &frames[w->pending[k]];
            meta_from(w->meta + (size_t)k * OTP_META_SPAN, &f->firstlineno, &f->name_key);
            f->flags |= OTP_FRAME_META_OK;
        }
        start += got;
        if (start < npending) {  /* this one is unreadable: not a live object */
            (*read_errors)++;
            start++;
        }
    }
}

int
otp_walk(PyThreadState *ts, otp_walk_scratch *w, otp_frame *out, int max_frames,
         uint32_t *omitted, uint32_t *read_errors)
{
    uintptr_t addr = current_frame(ts);
    *omitted = 0;
    if (addr == 0)
        return 0;
    load_blocks(ts, w);
    int n = 0;
    otp_frame tail;
    int have_tail = 0;
    for (int steps = 0; addr != 0 && steps < OTP_MAX_WALK; steps++) {
        otp_frame f;
        memset(&f, 0, sizeof f);
        uintptr_t previous = 0;
        int r = read_frame(w, addr, &f, &previous);
        if (r < 0) {
            (*read_errors)++;
            break;
        }
        if (r > 0) {
            if (n < max_frames - 1) {
                out[n++] = f;
            } else {
                if (have_tail)
                    (*omitted)++;
                tail = f;
                have_tail = 1;
            }
        }
        addr = previous;
    }
    if (have_tail)
        out[n++] = tail;  /* the root (or the deepest frame reached) */
    read_metadata(w, out, n, read_errors);
    return n;
}

/* ------------------------------------------------------------------ drain side */

/* A live object's reference count is small (immortal ones: below 2**32).  The
 * allocators write a free-list pointer over the first word of a freed block
 * (obmalloc, mimalloc, glibc), and pointers are above 2**40 on 64-bit Linux, so a
 * freed code object whose other fields are intact is never taken for a live one. */
static int
sane_refcnt(Py_ssize_t r)
{
    return r > 0 && r < ((Py_ssize_t)1 << 40);
}

PyObject *
otp_resolve_code(const otp_frame *f, int *skip)
{
    *skip = 0;
    if (!(f->flags & OTP_FRAME_META_OK) || f->code == 0)
        return NULL;
    int32_t first;
    uint64_t key;
    PyObject *code = otp_registry_get((uintptr_t)f->code, &first, &key);
    if (code != NULL) {
        if (first != f->firstlineno || key != f->name_key)
            return NULL;  /* the handler read something else at that address */
        Py_INCREF(code);
    } else {
        /* validate before pinning: a live code object with the recorded metadata
           (the GIL is held: a live object cannot be freed before we own a reference) */
        struct { Py_ssize_t refcnt; PyTypeObject *type; } head;
        char meta[96];
        if (OTP_META_SPAN > sizeof meta
            || otp_safe_read((uintptr_t)f->code, &head, sizeof head) != 0
            || head.type != &PyCode_Type || !sane_refcnt(head.refcnt)
            || otp_safe_read((uintptr_t)(f->code + META_LO), meta, OTP_META_SPAN) != 0)
            return NULL;
        meta_from(meta, &first, &key);
        if (first != f->firstlineno || key != f->name_key)
            return NULL;
        code = (PyObject *)(uintptr_t)f->code;
        otp_registry_pin(code, first, key);
        Py_INCREF(code);
    }
#if PY_VERSION_HEX >= 0x030B0000
    /* a frame pushed but not yet started (what sys._getframe skips too) */
    if (f->owner != FRAME_OWNED_BY_GENERATOR
        && f->lasti / (int)sizeof(_Py_CODEUNIT) < ((PyCodeObject *)code)->_co_firsttraceable) {
        *skip = 1;
    }
#endif
    return code;
}

uintptr_t
otp_frame_address(PyObject *frame)
{
    if (frame == NULL || !PyFrame_Check(frame))
        return 0;
#if PY_VERSION_HEX >= 0x030B0000
    return (uintptr_t)((struct _frame *)frame)->f_frame;
#else
    return (uintptr_t)frame;
#endif
}
#endif
