/* A Redis client as lean as one can be, for `cargo xtask bench --redis`: one connection to
 * 127.0.0.1:PORT, then, after a `go` line on stdin, GET requests at RATE per second for SECONDS
 * (open loop: request k is due at k / RATE whatever happened before). Prints `ready` once
 * connected, and at the end `done <requests> <user_ns> <system_ns> <p50_ns> <p99_ns>`: its own CPU
 * time and the latency of its requests from their due time to their reply. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int compare(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT RATE SECONDS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), rate = atoi(argv[2]), seconds = atoi(argv[3]);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);
    if (connect(fd, (struct sockaddr *)&server, sizeof server) != 0) {
        perror("connect");
        return 1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const char set[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    const char get[] = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    char reply[256];
    if (write(fd, set, sizeof set - 1) < 0 || read(fd, reply, sizeof reply) <= 0) {
        perror("SET");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    if (!fgets(reply, sizeof reply, stdin)) return 1;

    long long total = (long long)rate * seconds;
    long long *latency = malloc(sizeof(long long) * total);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    long long start = now_ns(), interval = 1000000000LL / rate;
    for (long long k = 0; k < total; k++) {
        long long due = start + k * interval;
        while (now_ns() < due) {
            struct timespec pause = {0, 20000};
            nanosleep(&pause, NULL);
        }
        if (write(fd, get, sizeof get - 1) < 0 || read(fd, reply, sizeof reply) <= 0) {
            perror("GET");
            return 1;
        }
        latency[k] = now_ns() - due;
    }
    getrusage(RUSAGE_SELF, &after);
    qsort(latency, total, sizeof(long long), compare);
    long long user = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) * 1000000000LL +
                     (after.ru_utime.tv_usec - before.ru_utime.tv_usec) * 1000LL;
    long long system = (after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1000000000LL +
                       (after.ru_stime.tv_usec - before.ru_stime.tv_usec) * 1000LL;
    printf("done %lld %lld %lld %lld %lld\n", total, user, system, latency[total / 2], latency[total * 99 / 100]);
    fflush(stdout);
    return 0;
}
