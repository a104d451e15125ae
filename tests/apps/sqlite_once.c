/*
 * A short-lived SQLite client for the churn tests: opens an in-memory database, prepares and runs
 * `SELECT <i>` N times (argv[1], default 2) right after start, and exits; a process lives about a
 * millisecond. It declares the few functions it calls, so it needs libsqlite3 only, not its -dev
 * package: build with `gcc -o sqlite_once sqlite_once.c /usr/lib/x86_64-linux-gnu/libsqlite3.so.0`.
 */
#include <stdio.h>
#include <stdlib.h>

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
int sqlite3_open(const char *filename, sqlite3 **db);
int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int bytes, sqlite3_stmt **stmt, const char **tail);
int sqlite3_step(sqlite3_stmt *stmt);
int sqlite3_finalize(sqlite3_stmt *stmt);
int sqlite3_close(sqlite3 *db);

int main(int argc, char **argv)
{
    int statements = argc > 1 ? atoi(argv[1]) : 2;
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != 0)
        return 1;
    for (int i = 0; i < statements; i++) {
        char sql[64];
        sqlite3_stmt *stmt;
        snprintf(sql, sizeof sql, "SELECT %d", i);
        if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != 0)
            return 2;
        sqlite3_step(stmt);
        sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
    return 0;
}
