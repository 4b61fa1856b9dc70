/* Signal latency helper: prints CLOCK_MONOTONIC (ns) each time SIGTERM arrives. */
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int sig;
        sigwait(&set, &sig);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        printf("%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
        fflush(stdout);
    }
}
