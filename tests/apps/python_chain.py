"""A pure-Python CPU-bound call chain for the profiler's tests: prints "ready", waits for a line
on stdin, then spins SECONDS in main -> Worker.alpha_loop -> beta_step -> gamma_spin, part of it
inside sorted() calling back into Python (a sort key: C calling Python), on two threads."""
import sys
import threading
import time


def gamma_spin(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def sort_key(x):
    return gamma_spin(50) + x


def beta_step(n):
    if n % 4 == 0:
        return sorted(range(20), key=sort_key)[0]
    return gamma_spin(2000)


class Worker:
    def alpha_loop(self, deadline):
        n = 0
        while time.monotonic() < deadline:
            beta_step(n)
            n += 1


def main():
    seconds = float(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    other = threading.Thread(target=Worker().alpha_loop, args=(deadline,), name="chain-worker")
    other.start()
    Worker().alpha_loop(deadline)
    other.join()


if __name__ == "__main__":
    main()
