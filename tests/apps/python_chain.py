"""A CPU-bound call chain for the profiler's tests: `python_chain.py SECONDS [sql]` prints
"ready", waits for a line on stdin, then spins SECONDS in main -> Worker.alpha_loop -> beta_step
-> gamma_spin, part of it inside sorted() calling back into Python (a sort key: C calling Python),
on two threads. The optional mode changes beta_step: `sql` runs a CPU-heavy SQLite query (traced
spans with the Python code that ran them), `deep` recurses 150 calls deep before spinning (more
frames than the sampler records), `gen` spins inside a generator that a loop consumes."""
import sys
import threading
import time

MODE = sys.argv[2] if len(sys.argv) > 2 else ""
local = threading.local()


def heavy_query():
    if not hasattr(local, "conn"):
        import sqlite3

        local.conn = sqlite3.connect(":memory:")
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000) SELECT sum(x) FROM c"
    return local.conn.execute(sql).fetchone()[0]


def gamma_spin(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def sort_key(x):
    return gamma_spin(50) + x


def recurse(depth):
    if depth == 0:
        return gamma_spin(3000)
    return recurse(depth - 1) + 1


def squares(count):
    for i in range(count):
        yield gamma_spin(300) + i


def beta_step(n):
    if MODE == "sql":
        return heavy_query()
    if MODE == "deep":
        return recurse(150)
    if MODE == "gen":
        return sum(squares(10))
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
