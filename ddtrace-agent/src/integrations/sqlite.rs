//! SQLite (`libsqlite3`, which Python's `sqlite3` module uses): a `sqlite.query` span for each
//! statement execution, named as dd-trace-py's sqlite3 integration names it.
//!
//! A statement's SQL is captured when it is prepared (`sqlite3_prepare*`: the SQL argument at
//! entry, the `sqlite3_stmt*` written through `ppStmt` at exit). An execution is the first
//! `sqlite3_step` after a prepare or a `sqlite3_reset`; later steps fetch rows of the same
//! execution (dd-trace-py's span covers `execute`, not the fetches). A prepare that fails is an
//! error span of its own, since no step follows it.
//!
//! Only the application's statements become spans, as dd-trace-py shows them (it wraps
//! Python's `execute`): a statement prepared while another SQLite call runs on the same thread
//! is SQLite's own (the schema read inside a prepare, `OP_ParseSchema` after a `CREATE`, the
//! steps of a `VACUUM`), and so is the `BEGIN ` Python's sqlite3 module issues by itself before
//! a DML statement (dd-trace-py's span of that statement covers it). Their steps give no span.
//!
//! Statements prepared before the agent attached (Python caches up to 128 per connection) are
//! named by reading their SQL out of the target, read-only, at the `zSql` offset this build of
//! SQLite uses (see `sqlite_layout`); when that is not possible they get a placeholder resource.

use std::{collections::HashMap, sync::Arc};

use super::{
    at_function_entries,
    sqlite_layout::{sql_field_offset, SCAN_BYTES},
    sqlite_text::{first_statement, result_code, SQLITE_DONE, SQLITE_OK, SQLITE_ROW},
    Integration, LibraryMatch, ProbePlacement, ProbeSite,
};
use crate::{
    core::{CallStacks, ContextData, ContextError, ContextId, ContextTree, SpanKind},
    obfuscation::obfuscate_sql,
    probes::{Capture, ProbeDef, ProbeEvent},
    symbols::{ElfSymbols, ProbeLocation},
    target::memory,
};

/// Resource of executions whose statement was prepared before the agent attached and whose SQL
/// could not be read back from the target.
pub const UNKNOWN_STATEMENT_RESOURCE: &str = "sqlite3_step (statement prepared before ddtrace-agent attached)";

const PREPARE_V2: usize = 0;
const PREPARE_V3: usize = 1;
const PREPARE_LEGACY: usize = 2;
const STEP: usize = 3;
const RESET: usize = 4;
const FINALIZE: usize = 5;
const PREPARE_INTERNAL: usize = 6;

static PROBES: [ProbeDef; 7] = [
    // int sqlite3_prepare_v2(sqlite3 *db, const char *zSql, int nByte, sqlite3_stmt **ppStmt, const char **pzTail)
    ProbeDef::entry("sqlite3_prepare_v2").with_exit().capturing(Capture::StringArg(1)).capture_length(2).out_pointer(3),
    // int sqlite3_prepare_v3(sqlite3 *db, const char *zSql, int nByte, unsigned prepFlags, sqlite3_stmt **ppStmt, ...)
    ProbeDef::entry("sqlite3_prepare_v3").with_exit().capturing(Capture::StringArg(1)).capture_length(2).out_pointer(4),
    ProbeDef::entry("sqlite3_prepare").with_exit().capturing(Capture::StringArg(1)).capture_length(2).out_pointer(3),
    // int sqlite3_step(sqlite3_stmt*): an execution's first step starts its span, where the
    // code that ran the statement is known (the handler it ran in).
    // (Not again while it returns SQLITE_ROW: the same loop over the same rows.)
    ProbeDef::entry("sqlite3_step").with_exit().recording_caller(SQLITE_ROW as u32).required(),
    // A reset or finalized statement runs again for whatever code runs it next (Python's
    // statement cache): its next first step records its caller again.
    ProbeDef::entry("sqlite3_reset").forgetting_caller(),
    ProbeDef::entry("sqlite3_finalize").forgetting_caller(),
    // static int sqlite3LockAndPrepare(sqlite3 *db, const char *zSql, int nBytes, u32 prepFlags,
    //     Vdbe *pOld, sqlite3_stmt **ppStmt, const char **pzTail): what the three prepare
    // functions call (not exported; found from their code, see `probe_sites`).
    ProbeDef::entry("sqlite3LockAndPrepare")
        .with_exit()
        .capturing(Capture::StringArg(1))
        .capture_length(2)
        .out_pointer(5),
];

/// Statements SQLite finalizes internally (schema loading) never pass through
/// `sqlite3_finalize`; their entries are replaced when the address is reused, and the whole
/// table is dropped if it still grows past this bound.
const STATEMENT_LIMIT: usize = 65_536;

/// Obfuscated resources are cached by raw SQL: apps that prepare the same text over and over
/// pay for obfuscation once. Bounded: cleared when full.
const RESOURCE_CACHE_LIMIT: usize = 4096;

/// The most SQL read back from the target for a statement prepared before attach; the same
/// bound as the kernel's capture.
const MAX_SQL_READ: usize = ddtrace_common::MAX_CAPTURE;

struct Statement {
    resource: Arc<str>,
    /// Issued by SQLite or the driver on their own behalf: no span.
    internal: bool,
    /// No step since the prepare or the last reset: the next step starts an execution.
    fresh: bool,
}

struct PendingStep {
    tgid: u32,
    statement: u64,
    /// The execution's context; `None` for steps that fetch rows of an execution.
    context: Option<ContextId>,
}

struct PendingPrepare {
    tgid: u32,
    ktime_ns: u64,
    sql: Option<Box<[u8]>>,
    internal: bool,
}

#[derive(Default)]
pub struct SqliteIntegration {
    pub probes: ProbePlacement,
    /// (tgid, sqlite3_stmt address) -> statement.
    statements: HashMap<(u32, u64), Statement>,
    /// Prepares in progress, per thread and call frame.
    prepares: CallStacks<PendingPrepare>,
    /// Steps in progress, per thread and call frame.
    steps: CallStacks<PendingStep>,
    resources: HashMap<Box<[u8]>, Arc<str>>,
    /// tgid -> offset of `zSql` in `sqlite3_stmt` for the library that process maps.
    sql_offsets: HashMap<u32, u64>,
}

impl SqliteIntegration {
    pub fn placed(probes: ProbePlacement) -> Self {
        Self { probes, ..Self::default() }
    }

    fn resource_for(&mut self, sql: &[u8]) -> Arc<str> {
        if let Some(resource) = self.resources.get(sql) {
            return resource.clone();
        }
        let text = String::from_utf8_lossy(sql);
        let resource: Arc<str> = obfuscate_sql(first_statement(&text)).into();
        if self.resources.len() >= RESOURCE_CACHE_LIMIT {
            self.resources.clear();
        }
        self.resources.insert(sql.into(), resource.clone());
        resource
    }

    /// The SQL of a statement prepared before we attached, read from the target (read-only,
    /// bounded); the placeholder when it cannot be read.
    fn resource_of_unknown_statement(&mut self, tgid: u32, stmt: u64) -> Arc<str> {
        let sql = self
            .sql_offsets
            .get(&tgid)
            .and_then(|offset| memory::read_u64(tgid, stmt.checked_add(*offset)?))
            .filter(|pointer| *pointer != 0)
            .and_then(|pointer| memory::read_c_string(tgid, pointer, MAX_SQL_READ))
            .filter(|sql| !sql.is_empty() && std::str::from_utf8(sql).is_ok());
        match sql {
            Some(sql) => self.resource_for(&sql),
            None => Arc::from(UNKNOWN_STATEMENT_RESOURCE),
        }
    }

    fn query_context(resource: &str) -> ContextData {
        ContextData::new("sqlite.query", "sqlite", "sql", SpanKind::Client)
            .with_resource(resource.to_string())
            .with_meta("db.system", "sqlite")
    }

    fn on_prepare(&mut self, event: &ProbeEvent, contexts: &mut ContextTree) {
        match event {
            ProbeEvent::Entry(entry) => {
                let nested =
                    self.prepares.encloses(entry.tid, entry.frame) || self.steps.encloses(entry.tid, entry.frame);
                let implicit_begin = entry.capture.as_deref().is_some_and(|sql| is_driver_begin(sql, entry.args[2]));
                let pending = PendingPrepare {
                    tgid: entry.tgid,
                    ktime_ns: entry.ktime_ns,
                    sql: entry.capture.clone(),
                    internal: nested || implicit_begin,
                };
                self.prepares.enter(entry.tid, entry.frame, pending);
            }
            ProbeEvent::Exit(exit) => {
                let Some((pending, _lost)) = self.prepares.exit(exit.tid, exit.frame) else { return };
                if pending.internal {
                    if let Some(stmt) = exit.out_value.filter(|stmt| exit.ret as i32 == SQLITE_OK && *stmt != 0) {
                        if self.statements.len() >= STATEMENT_LIMIT {
                            self.statements.clear();
                        }
                        self.statements.insert(
                            (exit.tgid, stmt),
                            Statement { resource: Arc::from(""), internal: true, fresh: true },
                        );
                    }
                    return;
                }
                let resource = match &pending.sql {
                    Some(sql) => self.resource_for(sql),
                    None => Arc::from("?"),
                };
                let rc = exit.ret as i32;
                if rc == SQLITE_OK {
                    // A NULL statement means the text held only whitespace or comments.
                    if let Some(stmt) = exit.out_value.filter(|stmt| *stmt != 0) {
                        if self.statements.len() >= STATEMENT_LIMIT {
                            self.statements.clear();
                        }
                        self.statements.insert((exit.tgid, stmt), Statement { resource, internal: false, fresh: true });
                    }
                    return;
                }
                let mut data = Self::query_context(&resource);
                data.error = Some(sqlite_error(rc));
                contexts.record(pending.tgid, exit.tid, pending.ktime_ns, exit.ktime_ns, data);
            }
        }
    }

    fn on_step(&mut self, event: &ProbeEvent, contexts: &mut ContextTree) {
        match event {
            ProbeEvent::Entry(entry) => {
                let key = (entry.tgid, entry.args[0]);
                let resource = match self.statements.get_mut(&key) {
                    Some(statement) if statement.internal => None,
                    Some(statement) if statement.fresh => {
                        statement.fresh = false;
                        Some(statement.resource.clone())
                    }
                    Some(_) => None,
                    None => {
                        let resource = self.resource_of_unknown_statement(entry.tgid, entry.args[0]);
                        self.statements
                            .insert(key, Statement { resource: resource.clone(), internal: false, fresh: false });
                        Some(resource)
                    }
                };
                let context = resource.map(|resource| {
                    contexts.start(entry.tgid, entry.tid, entry.ktime_ns, entry.frame, Self::query_context(&resource))
                });
                // Steps whose exits were lost end with this entry (core ends their contexts).
                self.steps.enter(entry.tid, entry.frame, PendingStep { tgid: entry.tgid, statement: key.1, context });
            }
            ProbeEvent::Exit(exit) => {
                let Some((step, _lost)) = self.steps.exit(exit.tid, exit.frame) else { return };
                let rc = exit.ret as i32;
                if rc != SQLITE_ROW {
                    // SQLite resets a statement by itself when it is stepped again after DONE or
                    // an error: the next step starts a new execution even without sqlite3_reset.
                    if let Some(statement) = self.statements.get_mut(&(step.tgid, step.statement)) {
                        statement.fresh = true;
                    }
                }
                let Some(context) = step.context else { return };
                contexts.end(exit.tid, context, exit.ktime_ns, |data| {
                    if rc != SQLITE_ROW && rc != SQLITE_DONE {
                        data.error = Some(sqlite_error(rc));
                    }
                });
            }
        }
    }
}

/// The function every prepare form calls, when each of `sqlite3_prepare`, `_v2` and `_v3`
/// passes it `db`, `zSql` and `nByte` untouched and its own `ppStmt` as the 6th argument, and
/// its first instruction is one the kernel emulates.
fn shared_prepare(library: &ElfSymbols) -> Option<ProbeLocation> {
    use crate::symbols::x86_calls::{Source, ARGUMENT_REGISTERS};
    let mut shared = None;
    for (wrapper, pp_stmt_argument) in [("sqlite3_prepare_v2", 3), ("sqlite3_prepare_v3", 4), ("sqlite3_prepare", 3)] {
        let (location, call) = library.forwarded_call(wrapper)?;
        let passes = |argument: usize, from: usize| {
            call.registers[ARGUMENT_REGISTERS[argument] as usize] == Source::Entry(ARGUMENT_REGISTERS[from])
        };
        if !(passes(0, 0) && passes(1, 1) && passes(2, 2) && passes(5, pp_stmt_argument)) {
            return None;
        }
        if shared.is_some_and(|known: ProbeLocation| known.address != location.address) {
            return None;
        }
        shared = Some(location);
    }
    shared.filter(|location| library.emulated_at(location))
}

/// CPython's sqlite3 module opens a transaction by itself before a DML statement with
/// `sqlite3_prepare_v2(db, "BEGIN " + isolation_level, -1, ...)`, where the application's own
/// statements are prepared with their length: that text with a length of -1 is the driver's.
fn is_driver_begin(sql: &[u8], n_byte: u64) -> bool {
    let Some(level) = sql.strip_prefix(b"BEGIN ") else { return false };
    (n_byte as i32) < 0 && matches!(level, b"" | b"DEFERRED" | b"IMMEDIATE" | b"EXCLUSIVE")
}

fn sqlite_error(rc: i32) -> ContextError {
    let (name, message) = result_code(rc);
    ContextError { kind: name.to_string(), message: format!("{message} (SQLite result code {rc})") }
}

impl Integration for SqliteIntegration {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn library(&self) -> LibraryMatch {
        LibraryMatch::SharedLibrary {
            display: "libsqlite3",
            file_prefixes: &["libsqlite3"],
            marker_symbol: "sqlite3_step",
        }
    }

    fn probes(&self) -> &'static [ProbeDef] {
        &PROBES
    }

    /// The three prepare functions start with `sub $0x10,%rsp`, which a uprobe must
    /// single-step (~7-16 µs per call here): when all three only rearrange their arguments and
    /// call one function, whose first instruction the kernel emulates, that function gets one
    /// probe for all of them (and the UTF-16 forms, which call it too). Otherwise each is probed.
    fn probe_sites(&self, library: &ElfSymbols) -> Vec<ProbeSite> {
        let shared = if self.probes == ProbePlacement::Auto { shared_prepare(library) } else { None };
        let mut sites = match shared {
            Some(location) => vec![(PREPARE_INTERNAL, Ok(location))],
            None => at_function_entries(&PROBES[..STEP], library),
        };
        sites.extend(
            at_function_entries(&PROBES[STEP..PREPARE_INTERNAL], library).into_iter().map(|(i, s)| (i + STEP, s)),
        );
        sites
    }

    fn on_event(&mut self, probe_index: usize, event: &ProbeEvent, contexts: &mut ContextTree) {
        match (probe_index, event) {
            (PREPARE_V2 | PREPARE_V3 | PREPARE_LEGACY, _) => self.on_prepare(event, contexts),
            // A re-prepare after a schema change (`pOld`, the 5th argument, is set) swaps the new
            // program into the statement the application holds: nothing new to name.
            (PREPARE_INTERNAL, ProbeEvent::Entry(entry)) if entry.args[4] != 0 => {}
            (PREPARE_INTERNAL, _) => self.on_prepare(event, contexts),
            (STEP, _) => self.on_step(event, contexts),
            (RESET, ProbeEvent::Entry(entry)) => {
                if let Some(statement) = self.statements.get_mut(&(entry.tgid, entry.args[0])) {
                    statement.fresh = true;
                }
            }
            (FINALIZE, ProbeEvent::Entry(entry)) => {
                self.statements.remove(&(entry.tgid, entry.args[0]));
            }
            _ => {}
        }
    }

    fn on_library_attached(&mut self, tgid: u32, library: &ElfSymbols) {
        match library.function_code("sqlite3_sql", SCAN_BYTES).and_then(sql_field_offset) {
            Some(offset) => {
                self.sql_offsets.insert(tgid, offset);
            }
            None => tracing::info!(
                library = %library.path().display(),
                "statements prepared before attach will be named {UNKNOWN_STATEMENT_RESOURCE:?}: sqlite3_sql has an unknown shape"
            ),
        }
    }

    fn on_process_exit(&mut self, tgid: u32) {
        self.sql_offsets.remove(&tgid);
        self.statements.retain(|(owner, _), _| *owner != tgid);
        self.prepares.forget(|p| p.tgid == tgid);
        self.steps.forget(|step| step.tgid == tgid);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc as StdArc, Mutex};

    use super::*;
    use crate::{
        core::{CoreEvent, EventHub, ExecutionContext, WallClock},
        probes::{EntryData, ExitData},
    };

    fn harness() -> (SqliteIntegration, ContextTree, StdArc<Mutex<Vec<ExecutionContext>>>) {
        let ended = StdArc::new(Mutex::new(Vec::new()));
        let sink = ended.clone();
        let mut hub = EventHub::new();
        hub.on("context.ended", move |e| {
            if let CoreEvent::ContextEnded(c) = e {
                sink.lock().unwrap().push((*c).clone());
            }
        });
        (SqliteIntegration::default(), ContextTree::new(WallClock::calibrate(), hub), ended)
    }

    fn entry(t: u64, arg0: u64, capture: Option<&str>) -> ProbeEvent {
        ProbeEvent::Entry(EntryData {
            probe_id: 0,
            tgid: 1,
            tid: 2,
            ktime_ns: t,
            args: [arg0, 0, 0, 0, 0, 0],
            frame: 0x1000,
            capture: capture.map(|s| s.as_bytes().into()),
            capture_truncated: false,
        })
    }

    fn exit(t: u64, ret: u64, out: Option<u64>) -> ProbeEvent {
        ProbeEvent::Exit(ExitData { probe_id: 0, tgid: 1, tid: 2, ktime_ns: t, ret, frame: 0x1000, out_value: out })
    }

    #[test]
    fn one_span_per_execution_with_obfuscated_sql() {
        let (mut sqlite, mut tree, ended) = harness();
        sqlite.on_event(PREPARE_V2, &entry(10, 0, Some("SELECT * FROM users WHERE id = 42")), &mut tree);
        sqlite.on_event(PREPARE_V2, &exit(20, 0, Some(0xabc)), &mut tree);
        // Execution 1: three steps (two rows, then done) -> one span.
        for (t, rc) in [(30, 100), (50, 100), (60, 101)] {
            sqlite.on_event(STEP, &entry(t, 0xabc, None), &mut tree);
            sqlite.on_event(STEP, &exit(t + 5, rc, None), &mut tree);
        }
        // Execution 2 after a reset.
        sqlite.on_event(RESET, &entry(70, 0xabc, None), &mut tree);
        sqlite.on_event(STEP, &entry(80, 0xabc, None), &mut tree);
        sqlite.on_event(STEP, &exit(90, 101, None), &mut tree);
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[0].data.name, "sqlite.query");
        assert!(!ended[0].data.resource.contains("42"), "{}", ended[0].data.resource);
        assert_eq!(ended[0].duration_ns(), 5);
        assert!(ended[0].data.error.is_none());
    }

    #[test]
    fn failing_step_and_failing_prepare_are_errors() {
        let (mut sqlite, mut tree, ended) = harness();
        sqlite.on_event(PREPARE_V2, &entry(10, 0, Some("INSERT INTO t VALUES (1)")), &mut tree);
        sqlite.on_event(PREPARE_V2, &exit(20, 0, Some(0x1)), &mut tree);
        sqlite.on_event(STEP, &entry(30, 0x1, None), &mut tree);
        sqlite.on_event(STEP, &exit(40, 2067, None), &mut tree);
        sqlite.on_event(PREPARE_V2, &entry(50, 0, Some("SELEC nonsense")), &mut tree);
        sqlite.on_event(PREPARE_V2, &exit(60, 1, None), &mut tree);
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[0].data.error.as_ref().unwrap().kind, "SQLITE_CONSTRAINT");
        assert_eq!(ended[1].data.error.as_ref().unwrap().kind, "SQLITE_ERROR");
        assert_eq!((ended[1].start_unix_ns, ended[1].duration_ns()), (ended[1].end_unix_ns - 10, 10));
    }

    #[test]
    fn statements_prepared_before_attach_get_a_span_with_a_placeholder_resource() {
        let (mut sqlite, mut tree, ended) = harness();
        sqlite.on_event(STEP, &entry(30, 0x9, None), &mut tree);
        sqlite.on_event(STEP, &exit(40, 101, None), &mut tree);
        assert_eq!(ended.lock().unwrap()[0].data.resource, UNKNOWN_STATEMENT_RESOURCE);
    }

    fn at_frame(event: ProbeEvent, frame: u64, n_byte: u64) -> ProbeEvent {
        match event {
            ProbeEvent::Entry(mut data) => {
                data.frame = frame;
                data.args[2] = n_byte;
                ProbeEvent::Entry(data)
            }
            ProbeEvent::Exit(mut data) => {
                data.frame = frame;
                ProbeEvent::Exit(data)
            }
        }
    }

    /// SQLite reads the schema inside the application's first prepare (`sqlite3_exec` of a
    /// `SELECT*FROM"main".sqlite_master`) and re-reads it inside the step of a `CREATE`:
    /// neither is the application's statement, and dd-trace-py shows neither.
    #[test]
    fn statements_nested_in_a_prepare_or_a_step_give_no_span() {
        let (mut sqlite, mut tree, ended) = harness();
        let outer = |event| at_frame(event, 0x1000, 40);
        let inner = |event| at_frame(event, 0x0800, u64::MAX);
        sqlite.on_event(PREPARE_V2, &outer(entry(10, 0, Some("CREATE TABLE t (x)"))), &mut tree);
        sqlite.on_event(
            PREPARE_V2,
            &inner(entry(11, 0, Some("SELECT*FROM\"main\".sqlite_master ORDER BY rowid"))),
            &mut tree,
        );
        sqlite.on_event(PREPARE_V2, &inner(exit(12, 0, Some(0x77))), &mut tree);
        sqlite.on_event(STEP, &inner(entry(13, 0x77, None)), &mut tree);
        sqlite.on_event(STEP, &inner(exit(14, 101, None)), &mut tree);
        sqlite.on_event(PREPARE_V2, &outer(exit(20, 0, Some(0x1))), &mut tree);
        // The CREATE's step parses the new schema with statements of its own.
        sqlite.on_event(STEP, &outer(entry(30, 0x1, None)), &mut tree);
        sqlite.on_event(
            PREPARE_V2,
            &inner(entry(31, 0, Some("SELECT*FROM\"main\".sqlite_master WHERE tbl_name='t'"))),
            &mut tree,
        );
        sqlite.on_event(PREPARE_V2, &inner(exit(32, 0, Some(0x78))), &mut tree);
        sqlite.on_event(STEP, &inner(entry(33, 0x78, None)), &mut tree);
        sqlite.on_event(STEP, &inner(exit(34, 101, None)), &mut tree);
        sqlite.on_event(STEP, &outer(exit(40, 101, None)), &mut tree);
        // The internal statement's address is reused by the application's next statement.
        sqlite.on_event(PREPARE_V2, &outer(entry(50, 0, Some("SELECT x FROM t"))), &mut tree);
        sqlite.on_event(PREPARE_V2, &outer(exit(51, 0, Some(0x77))), &mut tree);
        sqlite.on_event(STEP, &outer(entry(52, 0x77, None)), &mut tree);
        sqlite.on_event(STEP, &outer(exit(53, 101, None)), &mut tree);
        let resources: Vec<String> = ended.lock().unwrap().iter().map(|c| c.data.resource.to_string()).collect();
        assert_eq!(resources, ["CREATE TABLE t ( x )", "SELECT x FROM t"]);
    }

    /// Python's `BEGIN ` before a DML statement (length -1) is the driver's; the same text the
    /// application prepares itself (with its length, as Python's cursor does) is a span.
    #[test]
    fn the_drivers_implicit_begin_gives_no_span_but_an_explicit_one_does() {
        let (mut sqlite, mut tree, ended) = harness();
        for (t, n_byte, stmt) in [(10, u64::MAX, 0x5), (100, 7, 0x6)] {
            sqlite.on_event(PREPARE_V2, &at_frame(entry(t, 0, Some("BEGIN ")), 0x1000, n_byte), &mut tree);
            sqlite.on_event(PREPARE_V2, &exit(t + 1, 0, Some(stmt)), &mut tree);
            sqlite.on_event(STEP, &entry(t + 2, stmt, None), &mut tree);
            sqlite.on_event(STEP, &exit(t + 3, 101, None), &mut tree);
        }
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].start_unix_ns + 1, ended[0].end_unix_ns);
        assert!(is_driver_begin(b"BEGIN IMMEDIATE", u64::MAX));
        assert!(!is_driver_begin(b"BEGIN", u64::MAX));
        assert!(!is_driver_begin(b"BEGIN TRANSACTION", u64::MAX));
    }

    /// Debian's libsqlite3 (which `cargo xtask test` installs): one probe on the function the
    /// three prepare forms call, at an instruction the kernel emulates, instead of three
    /// single-stepped ones; step, reset and finalize at their entries (each starts with a push).
    #[test]
    fn the_system_libsqlite3_gets_one_emulated_prepare_probe() {
        let path = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0");
        let library = ElfSymbols::load(path).expect("libsqlite3");
        let sites = SqliteIntegration::default().probe_sites(&library);
        let indices: Vec<usize> = sites.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, [PREPARE_INTERNAL, STEP, RESET, FINALIZE]);
        let exported: Vec<u64> = ["sqlite3_prepare", "sqlite3_prepare_v2", "sqlite3_prepare_v3"]
            .iter()
            .map(|name| library.function_entry(name).unwrap().address)
            .collect();
        for (index, site) in &sites {
            let site = site.as_ref().unwrap();
            assert!(library.emulated_at(site), "probe {index} at {site:?} would be single-stepped");
            assert!(!exported.contains(&site.address));
        }
    }
}
