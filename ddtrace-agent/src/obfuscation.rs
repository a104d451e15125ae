//! Obfuscation of captured values before they leave the daemon, with libdatadog's obfuscator so
//! that our resources match what the Datadog agent itself would produce.

use libdd_trace_obfuscation::obfuscation_config::{DbmsKind, SqlConfig};
use libdd_trace_obfuscation::sql::{obfuscate_sql_resource, SQL_NON_PARSABLE_REPLACEMENT};

/// Obfuscates a SQL statement the way the Datadog agent does by default for the resource of a
/// `sql` span: literals (strings, numbers) become `?`, `IN (1, 2, 3)` becomes `IN ( ? )`,
/// comments are dropped.
///
/// Never returns the input as captured when obfuscation fails: the result is then the agent's
/// own marker, `Non-parsable SQL query`. An empty statement stays empty.
pub fn obfuscate_sql(sql: &str) -> String {
    obfuscate_sql_for_dbms(sql, None)
}

/// Like [`obfuscate_sql`], with the dialect named the way the `db.type` span tag names it
/// (`postgresql`, `mysql`, `mssql`, `oracle`); unknown or absent names use the generic dialect,
/// as the agent does.
pub fn obfuscate_sql_for_dbms(sql: &str, db_type: Option<&str>) -> String {
    if sql.is_empty() {
        // The agent leaves empty resources alone; there is nothing to hide.
        return String::new();
    }
    let dbms = db_type.and_then(|d| DbmsKind::try_from(d).ok()).unwrap_or_default();
    // The tokenizer runs on bytes copied out of another process; a panic on hostile input
    // must cost one resource, not the daemon.
    std::panic::catch_unwind(|| obfuscate_sql_resource(sql, &SqlConfig::default(), dbms))
        .unwrap_or_else(|_| SQL_NON_PARSABLE_REPLACEMENT.to_owned())
}

/// Obfuscates Redis commands (one per line, as a pipeline's `redis.raw_command` has them) as the
/// Datadog agent does by default: the values of commands that store them (`SET k ?`,
/// `HSET h f ?`, `AUTH ?`...) become `?`. Never returns the input when the tokenizer fails: `?`.
pub fn obfuscate_redis(commands: &str) -> String {
    std::panic::catch_unwind(|| libdd_trace_obfuscation::redis::obfuscate_redis_string(commands))
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_replaced() {
        let out = obfuscate_sql("SELECT * FROM t WHERE a = 'secret' AND b = 42");
        assert!(!out.contains("secret"), "{out}");
        assert!(!out.contains("42"), "{out}");
        assert_eq!(out, "SELECT * FROM t WHERE a = ? AND b = ?");
    }

    #[test]
    fn in_lists_are_collapsed() {
        assert_eq!(
            obfuscate_sql("select name from users where id in (1, 2, 3)"),
            "select name from users where id in ( ? )"
        );
    }

    #[test]
    fn identifiers_and_placeholders_are_kept() {
        assert_eq!(obfuscate_sql("SELECT * FROM users WHERE id = ?"), "SELECT * FROM users WHERE id = ?");
    }

    #[test]
    fn unparsable_input_is_never_returned_as_is() {
        // Whitespace and lone comments tokenize to nothing.
        for input in ["   ", "-- password = 'hunter2'"] {
            let out = obfuscate_sql(input);
            assert_eq!(out, SQL_NON_PARSABLE_REPLACEMENT, "input {input:?}");
        }
        assert_eq!(obfuscate_sql(""), "");
    }

    #[test]
    fn dialect_specific_quoting() {
        // Postgres dollar-quoted strings are literals too.
        let out = obfuscate_sql_for_dbms("SELECT $tag$secret$tag$ FROM t", Some("postgresql"));
        assert!(!out.contains("secret"), "{out}");
        // Unknown dialects fall back to the generic one rather than failing.
        assert_eq!(obfuscate_sql_for_dbms("SELECT 1", Some("sqlite")), "SELECT ?");
    }
}
