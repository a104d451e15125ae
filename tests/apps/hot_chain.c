/* A CPU-bound program with a known call chain for the profiler's tests:
 * main -> run_request -> hot_a -> hot_b -> hot_c, where hot_c spends nearly all the CPU time,
 * part of it inside libc's qsort (Debian's libc has no frame pointers: only its call frame
 * information lets an unwinder walk from the comparator back to hot_c).
 *
 * Usage: hot_chain SECONDS. Prints "ready", waits for a line on stdin (the test starts it once
 * the profiler is attached), then works for SECONDS of wall time in requests of a few ms
 * (run_request is what the tests trace as a span), and exits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NOINLINE __attribute__((noinline))

static volatile unsigned long sink;

static int NOINLINE compare_keys(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    /* Some arithmetic so the comparator, not qsort's bookkeeping, holds the samples. */
    for (int i = 0; i < 8; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        y = y * 6364136223846793005UL + 1442695040888963407UL;
    }
    return (x > y) - (x < y);
}

void NOINLINE hot_c(unsigned long *keys, int n) {
    unsigned long acc = 0;
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < n; i++) {
            acc += keys[i] * 2654435761UL ^ (acc >> 7);
        }
    }
    qsort(keys, n, sizeof keys[0], compare_keys);
    sink = acc;
}

void NOINLINE hot_b(unsigned long *keys, int n) {
    hot_c(keys, n);
    __asm__ volatile("" ::: "memory"); /* no tail call: keep hot_b on the stack */
}

void NOINLINE hot_a(unsigned long *keys, int n) {
    hot_b(keys, n);
    __asm__ volatile("" ::: "memory");
}

void NOINLINE run_request(unsigned long *keys, int n) {
    for (int i = 0; i < n; i++) {
        keys[i] = (unsigned long)rand() << 16 ^ (unsigned long)rand();
    }
    hot_a(keys, n);
    __asm__ volatile("" ::: "memory");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    enum { N = 4096 };
    static unsigned long keys[N];
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) {
        return 1;
    }
    double start = now();
    while (now() - start < seconds) {
        run_request(keys, N);
    }
    return 0;
}
