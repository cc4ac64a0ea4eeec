// text-touch: an LD_PRELOAD library that records which pages of a program's code run, in the
// order they first run. Used by scripts/hot-symbols/make.sh; not part of any daemon.
//
// With TEXTTOUCH_EXE=<file name of the program> and TEXTTOUCH_OUT=<prefix> in the environment,
// a process running that program makes its code segment inaccessible before main() starts. The
// first instruction fetched from each page then faults; the handler makes that page executable
// again and appends "<page offset> <faulting address offset>" (hex, from the start of the code
// mapping) to <prefix>.<pid>. Other programs (the shell, QEMU started by the daemon) are left
// alone, and the two variables are removed so children do not inherit them.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned long text_start, text_end;
static int out_fd = -1;

static void put_hex(char *buf, int *n, unsigned long v) {
    char digits[32];
    int k = 0;
    do {
        digits[k++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    buf[(*n)++] = '0';
    buf[(*n)++] = 'x';
    while (k) buf[(*n)++] = digits[--k];
}

static void on_fault(int sig, siginfo_t *info, void *context) {
    (void)context;
    unsigned long at = (unsigned long)info->si_addr;
    if (at < text_start || at >= text_end) {
        // A real fault: let it take the program down as it would have.
        signal(sig, SIG_DFL);
        return;
    }
    unsigned long page = at & ~4095UL;
    mprotect((void *)page, 4096, PROT_READ | PROT_EXEC);
    char line[80];
    int n = 0;
    put_hex(line, &n, page - text_start);
    line[n++] = ' ';
    put_hex(line, &n, at - text_start);
    line[n++] = '\n';
    ssize_t ignored = write(out_fd, line, n);
    (void)ignored;
}

__attribute__((constructor)) static void start(void) {
    const char *want = getenv("TEXTTOUCH_EXE");
    const char *prefix = getenv("TEXTTOUCH_OUT");
    if (!want || !prefix) return;
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return;
    exe[len] = 0;
    const char *base = strrchr(exe, '/');
    base = base ? base + 1 : exe;
    if (strcmp(want, base) != 0) return;
    char out[4200];
    snprintf(out, sizeof out, "%s.%d", prefix, (int)getpid());
    unsetenv("LD_PRELOAD");
    unsetenv("TEXTTOUCH_EXE");
    unsetenv("TEXTTOUCH_OUT");

    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) return;
    char line[8192];
    while (fgets(line, sizeof line, maps)) {
        unsigned long from, to, offset;
        char perms[8];
        char path[4096] = "";
        if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %4095s", &from, &to, perms, &offset, path) >= 4 &&
            strcmp(perms, "r-xp") == 0 && strcmp(path, exe) == 0) {
            text_start = from;
            text_end = to;
            break;
        }
    }
    fclose(maps);
    if (!text_start) return;
    out_fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) return;
    char head[4400];
    int n = snprintf(head, sizeof head, "# %s code 0x%lx-0x%lx\n", exe, text_start, text_end);
    ssize_t ignored = write(out_fd, head, n);
    (void)ignored;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    mprotect((void *)text_start, text_end - text_start, PROT_NONE);
}
