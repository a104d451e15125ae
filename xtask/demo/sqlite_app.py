#!/usr/bin/env python3
"""Demo workload for `cargo xtask demo`: SQLite statements in a loop, for the agent to trace.

sqlite3 is imported only after a short delay, so the agent is already attached when the library
gets loaded and has to notice it appear, as with a real app that imports its drivers lazily.
It then waits --warmup seconds before the first statement: Python caches prepared statements, and
one prepared before the agent's probes are in place is re-run without the agent ever seeing its
SQL text (its spans would read "statement prepared before ddtrace-agent attached").
Each iteration inserts a row, runs a parameterized select, and one statement that fails on purpose
(an error span). Stops on SIGTERM/SIGINT or after --seconds.
"""

import argparse
import os
import signal
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    parser.add_argument("--interval", type=float, default=0.5, help="pause between iterations")
    parser.add_argument("--import-delay", type=float, default=1.0, help="wait before importing sqlite3")
    parser.add_argument("--warmup", type=float, default=1.0, help="wait after importing sqlite3")
    parser.add_argument("--db", default=":memory:", help="database file (default: in memory)")
    args = parser.parse_args()

    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    print(f"sqlite demo app: pid {os.getpid()}, importing sqlite3 in {args.import_delay:g} s", flush=True)
    time.sleep(args.import_delay)
    if stopping:
        print("sqlite demo app: stopped before importing sqlite3", flush=True)
        return
    import sqlite3  # noqa: PLC0415 - lazy on purpose, see the module docstring

    print(f"sqlite demo app: sqlite {sqlite3.sqlite_version} loaded, first query in {args.warmup:g} s", flush=True)
    time.sleep(args.warmup)
    conn = sqlite3.connect(args.db)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS orders ("
        " id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount REAL NOT NULL)"
    )

    deadline = time.monotonic() + args.seconds
    iterations = failures = 0
    while not stopping and time.monotonic() < deadline:
        iterations += 1
        customer = f"customer-{iterations % 5}"
        with conn:
            conn.execute(
                "INSERT INTO orders (customer, amount) VALUES (?, ?)", (customer, iterations * 1.5)
            )
        rows = conn.execute(
            "SELECT id, amount FROM orders WHERE customer = ? AND amount > ? ORDER BY id",
            (customer, 1.0),
        ).fetchall()
        try:
            conn.execute("SELECT amount FROM missing_table WHERE id = ?", (iterations,))
        except sqlite3.OperationalError:
            failures += 1
        print(f"iteration {iterations}: {customer} has {len(rows)} orders", flush=True)
        time.sleep(args.interval)

    conn.close()
    print(
        f"sqlite demo app: stopped after {iterations} iterations "
        f"({failures} statements failed, as intended)",
        flush=True,
    )


if __name__ == "__main__":
    main()
