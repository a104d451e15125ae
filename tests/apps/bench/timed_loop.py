"""The protocol of the library-call benchmarks' loops (`cargo xtask bench --tls`, `--sqlite`):
prints `ready`, then for each `go N` line on stdin runs `one_pair()` N times and prints the mean
nanoseconds per pair; anything else (`exit`) ends it."""
import sys
import time


def serve(one_pair):
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "go":
            break
        n = int(words[1])
        started = time.perf_counter()
        for _ in range(n):
            one_pair()
        print(f"{(time.perf_counter() - started) / n * 1e9:.0f}", flush=True)
