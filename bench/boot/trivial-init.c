/* The floor for boot benchmarks: a static /init that prints how long the
 * kernel took to reach it (CLOCK_BOOTTIME) and powers off. */
#include <stdio.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    struct timespec ts;
    char line[80];
    clock_gettime(CLOCK_BOOTTIME, &ts);
    int n = snprintf(line, sizeof line, "trivial-init: reached /init %ld ms after kernel start\n",
                     (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    write(1, line, n);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}
