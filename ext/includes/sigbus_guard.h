/* Reading a file through a shared mapping without dying of SIGBUS.
 *
 * A page of a mapped file that lies beyond the file's end (the file was
 * truncated after it was mapped) raises SIGBUS when touched, and SIGBUS kills
 * the process.  sf_guarded(fn, arg) calls fn(arg) with this thread's jump
 * point set: a SIGBUS inside it returns to sf_guarded, which returns EIO, and
 * fn must leave nothing behind that needs undoing (it only reads the mapping
 * and writes to memory the caller owns).  A SIGBUS anywhere else goes to the
 * handler that was there before (Python's faulthandler, or the default).
 * sf_guard_install() installs the handler once per process; call it with the
 * GIL held.
 */
#ifndef SYNFAST_SIGBUS_GUARD_H
#define SYNFAST_SIGBUS_GUARD_H

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>

/* initial-exec: read in a signal handler, the variable must not be allocated
 * lazily by __tls_get_addr (this is a dlopen'ed module). */
static __thread sigjmp_buf *sf_guard_jump __attribute__((tls_model("initial-exec")));
static struct sigaction sf_guard_previous;
static int sf_guard_installed;

static void sf_guard_handler(int sig, siginfo_t *info, void *context)
{
    sigjmp_buf *jump = sf_guard_jump;
    if (jump != NULL) {
        sf_guard_jump = NULL;
        siglongjmp(*jump, 1);
    }
    if (sf_guard_previous.sa_flags & SA_SIGINFO) {
        sf_guard_previous.sa_sigaction(sig, info, context);
        return;
    }
    if (sf_guard_previous.sa_handler != SIG_DFL && sf_guard_previous.sa_handler != SIG_IGN) {
        sf_guard_previous.sa_handler(sig);
        return;
    }
    /* The default action: a faulting access runs again and kills us; a
     * SIGBUS sent by kill() is sent again. */
    signal(sig, SIG_DFL);
    if (info == NULL || info->si_code <= 0)
        raise(sig);
}

static int sf_guard_install(void)
{
    struct sigaction sa;
    if (sf_guard_installed)
        return 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sf_guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &sf_guard_previous) != 0)
        return errno;
    sf_guard_installed = 1;
    return 0;
}

static int sf_guarded(void (*fn)(void *), void *arg)
{
    sigjmp_buf jump;
    if (sigsetjmp(jump, 1) != 0)
        return EIO;
    sf_guard_jump = &jump;
    fn(arg);
    sf_guard_jump = NULL;
    return 0;
}

#endif
