/* Code objects we hold a strong reference to: address -> (code, metadata).
 *
 * A sample records code *addresses*; by the time it is drained the code object
 * may be gone and its memory reused.  An address in this table is pinned (we own
 * a reference), so it cannot be reused while it is here: a sample that recorded
 * it while it was pinned names exactly this object.  Unknown addresses are
 * validated by the drain before they are pinned (frames.c).
 *
 * The table is a fixed open-addressing array allocated once and never freed.
 * The drain (GIL held) is the only writer; signal handlers read it without
 * locks to copy a pinned object's metadata instead of reading the object:
 * an entry's metadata is written before its address is published (release),
 * and a handler that reads a torn entry only records metadata that will not
 * match at drain time, so that frame is dropped as unknown, never misnamed.
 * Bounded: when the table is half full every pin is dropped (between drains)
 * and later drains validate and pin again.
 */
#include "otelprof_native.h"

#if OTP_HAVE_CPU_SAMPLER
#include <stdlib.h>

#define REG_BITS 15
#define REG_CAP (1u << REG_BITS)
#define REG_MASK (REG_CAP - 1)
#define REG_PROBES 16

typedef struct {
    uintptr_t addr;          /* 0 = empty; published with release, read with acquire */
    uint64_t name_key;
    int32_t firstlineno;
    PyObject *code;          /* owned reference while addr != 0 */
} reg_entry;

static reg_entry *table;
static Py_ssize_t used;
uint64_t otp_registry_resets;

static inline unsigned
slot_of(uintptr_t addr)
{
    uint64_t h = (uint64_t)addr >> 4;
    h *= 0x9E3779B97F4A7C15ULL;
    return (unsigned)(h >> (64 - REG_BITS));
}

int
otp_registry_init(void)
{
    if (table != NULL)
        return 0;
    table = calloc(REG_CAP, sizeof(reg_entry));
    return table != NULL ? 0 : -1;
}

int
otp_registry_peek(uintptr_t addr, int32_t *firstlineno, uint64_t *name_key)
{
    if (table == NULL)
        return 0;
    unsigned s = slot_of(addr);
    for (unsigned i = 0; i < REG_PROBES; i++) {
        reg_entry *e = &table[(s + i) & REG_MASK];
        uintptr_t a = __atomic_load_n(&e->addr, __ATOMIC_ACQUIRE);
        if (a == addr) {
            *firstlineno = e->firstlineno;
            *name_key = e->name_key;
            return 1;
        }
        if (a == 0)
            return 0;
    }
    return 0;
}

PyObject *
otp_registry_get(uintptr_t addr, int32_t *firstlineno, uint64_t *name_key)
{
    if (table == NULL)
        return NULL;
    unsigned s = slot_of(addr);
    for (unsigned i = 0; i < REG_PROBES; i++) {
        reg_entry *e = &table[(s + i) & REG_MASK];
        if (e->addr == addr) {
            *firstlineno = e->firstlineno;
            *name_key = e->name_key;
            return e->code;
        }
        if (e->addr == 0)
            return NULL;
    }
    return NULL;
}

void
otp_registry_pin(PyObject *code, int32_t firstlineno, uint64_t name_key)
{
    if (table == NULL)
        return;
    uintptr_t addr = (uintptr_t)code;
    unsigned s = slot_of(addr);
    for (unsigned i = 0; i < REG_PROBES; i++) {
        reg_entry *e = &table[(s + i) & REG_MASK];
        if (e->addr == addr)
            return;
        if (e->addr == 0) {
            Py_INCREF(code);
            e->code = code;
            e->firstlineno = firstlineno;
            e->name_key = name_key;
            __atomic_store_n(&e->addr, addr, __ATOMIC_RELEASE);
            used++;
            return;
        }
    }
    /* probe sequence full: not pinned; the next drain validates it again */
}

void
otp_registry_clear(void)
{
    if (table == NULL)
        return;
    for (unsigned i = 0; i < REG_CAP; i++) {
        reg_entry *e = &table[i];
        if (e->addr == 0)
            continue;
        PyObject *code = e->code;
        __atomic_store_n(&e->addr, 0, __ATOMIC_RELEASE);
        e->code = NULL;
        Py_DECREF(code);
    }
    used = 0;
    otp_registry_resets++;
}

void
otp_registry_maintain(void)
{
    if (used > (Py_ssize_t)(REG_CAP / 2))
        otp_registry_clear();
}

Py_ssize_t
otp_registry_size(void)
{
    return used;
}
#endif
