/* Reaping benchmark helper: makes N orphans that all exit at once and
 * measures how long until the init has reaped every one of them.
 * Usage: orphans N    (run as the child of the init under test, in a fresh pid namespace) */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int zombies(void) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    char path[64], buf[256];
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(buf, sizeof buf, f)) {
            char *p = strrchr(buf, ')');
            if (p && p[2] == 'Z') n++;
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    int gate[2];
    if (pipe(gate)) return 1;
    for (int i = 0; i < n; i++) {
        pid_t c = fork();
        if (c < 0) { perror("fork"); return 1; }
        if (c == 0) {
            if (fork() == 0) {          /* the grandchild: waits for the gate, then exits */
                char x;
                close(gate[1]);
                read(gate[0], &x, 1);
                _exit(0);
            }
            _exit(0);                   /* its parent exits: the grandchild is orphaned */
        }
        waitpid(c, NULL, 0);
    }
    close(gate[0]);
    double start = now();
    close(gate[1]);                     /* every orphan exits now */
    while (zombies() > 0) {
        struct timespec t = {0, 1000000};
        nanosleep(&t, NULL);
    }
    /* Count once more after a pause: an init that reaps lazily shows up here. */
    printf("reaped %d orphans in %.3f s\n", n, now() - start);
    return 0;
}
