/* Reading our own memory without faulting.
 *
 * The signal handler follows pointers of a frame chain that the interrupted
 * thread may be changing (a frame half pushed), and the drain validates code
 * addresses that may have been freed.  A plain load from such a pointer can hit
 * an unmapped page; process_vm_readv on our own pid returns EFAULT instead.
 * It is a plain system call, so it is async-signal-safe.  Cost on a 2-core VM
 * (Linux 6.x): ~0.4 us for a small read, ~0.5 us for 4 KiB.
 */
#include "otelprof_native.h"

#if OTP_HAVE_CPU_SAMPLER
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static pid_t self_pid;

static ssize_t
pvr(struct iovec *local, unsigned long nl, struct iovec *remote, unsigned long nr)
{
    return syscall(SYS_process_vm_readv, self_pid, local, nl, remote, nr, 0UL);
}

int
otp_safe_read_init(void)
{
    static volatile uint64_t probe = 0x6f74656c70726f66ULL;
    uint64_t out = 0;
    self_pid = getpid();
    if (otp_safe_read((uintptr_t)&probe, &out, sizeof out) != 0 || out != probe)
        return -1;
    return 0;
}

int
otp_safe_read(uintptr_t addr, void *dst, size_t len)
{
    if (addr == 0 || addr + len < addr)
        return -1;
    struct iovec l = {dst, len}, r = {(void *)addr, len};
    return pvr(&l, 1, &r, 1) == (ssize_t)len ? 0 : -1;
}

void
otp_safe_read_after_fork(void)
{
    self_pid = getpid();  /* else a child would read its parent's memory */
}

int
otp_safe_readv(struct iovec *local, struct iovec *remote, int n)
{
    int done = 0;
    while (done < n) {
        int batch = n - done > 1024 ? 1024 : n - done;  /* IOV_MAX */
        ssize_t got = pvr(local + done, batch, remote + done, batch);
        if (got <= 0)
            return done;
        /* a partial read stops at the first iovec that failed */
        int i = done;
        size_t left = (size_t)got;
        while (i < done + batch && left >= remote[i].iov_len) {
            left -= remote[i].iov_len;
            i++;
        }
        if (i < done + batch)
            return i;
        done = i;
    }
    return done;
}
#endif
