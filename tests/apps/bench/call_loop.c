/*
 * Target of `cargo xtask bench`: calls bench_work() in a timed loop on command, so the harness
 * can measure the per-call cost of uprobes attached to it.
 *
 * Protocol (one line each way, stdout flushed after every line):
 *   startup          -> "ready pid=<pid>"
 *   "go N"           -> "ns_per_call=<float> cpu_ns_per_call=<float> sum=<n>"
 *   "pace R S"       -> "calls=<n> behind_ms=<n> sum=<n>": R calls per second for S seconds, in
 *                       1 ms slices (R = 0: as fast as it can); behind_ms counts the slices that
 *                       ended after their deadline (the target slowed down by its probes)
 *   "exit" or EOF    -> exits 0
 *
 * Build with -O1 -fno-omit-frame-pointer -fcf-protection=none so bench_work starts with
 * `push %rbp` (and no `endbr64`): the kernel emulates that instruction instead of single-stepping
 * it out of line, which on a VM costs 20x more and would swamp the difference between programs.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Externally visible and never inlined: the harness attaches its probes to this symbol. */
__attribute__((noinline, used)) uint64_t bench_work(uint64_t x)
{
    /* A little real work the loop depends on, so no call can be dropped or hoisted. The volatile
     * local makes the function use its stack: gcc 12 leaves out the frame (and so the leading
     * `push %rbp`) in leaf functions that do not, even with -fno-omit-frame-pointer. */
    volatile uint64_t mixed = (x ^ (x >> 7)) * 0x9E3779B97F4A7C15ull;
    return mixed + 1;
}

static double elapsed_ns(const struct timespec *start, const struct timespec *end)
{
    return (double)(end->tv_sec - start->tv_sec) * 1e9 + (double)(end->tv_nsec - start->tv_nsec);
}

static uint64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* `cargo xtask bench --soak`: bench_work at `rate` calls per second for `seconds`. */
static void pace(unsigned long long rate, unsigned long long seconds, uint64_t *acc)
{
    const uint64_t slice_ns = 1000000;
    uint64_t start = monotonic_ns(), end = start + seconds * 1000000000ull;
    unsigned long long calls = 0, behind = 0, per_slice = rate / 1000;
    for (uint64_t deadline = start + slice_ns; deadline <= end; deadline += slice_ns) {
        if (rate == 0) {
            while (monotonic_ns() < deadline) {
                for (int i = 0; i < 256; i++, calls++) {
                    *acc = bench_work(*acc);
                }
            }
            continue;
        }
        for (unsigned long long i = 0; i < per_slice; i++, calls++) {
            *acc = bench_work(*acc);
        }
        uint64_t now = monotonic_ns();
        if (now > deadline) {
            behind++;
        } else {
            struct timespec pause = {0, (long)(deadline - now)};
            nanosleep(&pause, NULL);
        }
    }
    printf("calls=%llu behind_ms=%llu sum=%llu\n", calls, behind, (unsigned long long)*acc);
    fflush(stdout);
}

int main(void)
{
    char line[128];
    /* The loop's result feeds the next call and is printed, so the compiler must keep it. */
    uint64_t acc = 1;

    printf("ready pid=%ld\n", (long)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin) != NULL) {
        unsigned long long calls;
        unsigned long long rate, seconds;
        if (strncmp(line, "exit", 4) == 0) {
            break;
        }
        if (sscanf(line, "pace %llu %llu", &rate, &seconds) == 2) {
            pace(rate, seconds, &acc);
            continue;
        }
        if (sscanf(line, "go %llu", &calls) != 1 || calls == 0) {
            printf("error: expected \"go N\" (N > 0) or \"exit\", got: %s", line);
            fflush(stdout);
            continue;
        }
        struct timespec wall_start, wall_end, cpu_start, cpu_end;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
        clock_gettime(CLOCK_MONOTONIC, &wall_start);
        for (unsigned long long i = 0; i < calls; i++) {
            acc = bench_work(acc);
        }
        clock_gettime(CLOCK_MONOTONIC, &wall_end);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_end);
        printf("ns_per_call=%.3f cpu_ns_per_call=%.3f sum=%llu\n",
               elapsed_ns(&wall_start, &wall_end) / (double)calls,
               elapsed_ns(&cpu_start, &cpu_end) / (double)calls,
               (unsigned long long)acc);
        fflush(stdout);
    }
    return 0;
}
