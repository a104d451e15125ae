"""Target of `cargo xtask bench --profiler`: a fixed amount of pure-Python CPU work.

The same work runs unprofiled and under each profiler, so the difference in its times is what
being sampled costs the target. Run it with the real interpreter (not a pyenv shim), unbuffered.

Protocol (one line each way):
  startup              -> "ready pid=<pid>"
  any line on stdin    -> runs the work, then
                          "wall_s=<float> cpu_s=<float> result=<int>" and exits 0
  EOF before the line  -> exits 0 without working

Usage: cpu_workload.py [UNITS]  (default 50; one unit is ~0.1 s of CPU on a 2020s x86 core)

The work is a few levels of ordinary Python calls (a recursive function under a loop under a
driver), so the samples have real stacks to walk and the interpreter's frame chain is several
frames deep, as in an application.
"""

import os
import sys
import time


def mix(value, salt):
    # Leaf: integer arithmetic kept in 64 bits so the cost per call does not grow with the run.
    return ((value ^ (value >> 13)) * 0x9E3779B1 + salt) & 0xFFFFFFFFFFFFFFFF


def tree(depth, value):
    # Recursive middle: deep, regular stacks.
    if depth == 0:
        return mix(value, depth)
    return tree(depth - 1, mix(value, depth)) ^ tree(depth - 1, value + depth)


def batch(seed, size):
    total = 0
    for i in range(size):
        total ^= tree(6, seed + i)
    return total


def work(units):
    result = 0
    for unit in range(units):
        result ^= batch(unit * 7919 + result % 1000, 1400)
    return result


def main():
    units = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    print(f"ready pid={os.getpid()}", flush=True)
    if not sys.stdin.readline():
        return
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    result = work(units)
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    print(f"wall_s={wall:.6f} cpu_s={cpu:.6f} result={result}", flush=True)


if __name__ == "__main__":
    main()
