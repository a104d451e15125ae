//! A [`TraceSink`] that prints each trace chunk as an indented span tree, for looking at what the
//! daemon produces without running a Datadog agent.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;

use super::traces::{Span, TraceChunk};
use super::{IntakeError, TraceSink};

/// Writes span trees to `W` (stdout in the daemon, a buffer in tests).
#[derive(Debug)]
pub struct ConsoleExporter<W: Write + Send> {
    out: W,
}

impl ConsoleExporter<std::io::Stdout> {
    /// A console exporter writing to the daemon's stdout.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }
}

impl<W: Write + Send> ConsoleExporter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Gives the writer back (tests read what was printed).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> TraceSink for ConsoleExporter<W> {
    fn send(&mut self, chunks: Vec<TraceChunk>) -> Result<(), IntakeError> {
        let mut text = String::new();
        for chunk in chunks.iter().filter(|c| !c.spans.is_empty()) {
            text.push_str(&format_chunk(chunk));
        }
        // One write per batch so concurrent log lines do not land inside a tree.
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| IntakeError::Write { target: "the console", source })
    }

    fn shutdown(&mut self) -> Result<(), IntakeError> {
        self.out.flush().map_err(|source| IntakeError::Write { target: "the console", source })
    }
}

/// Renders one chunk:
///
/// ```text
/// trace 0000000000000000b1e2c3d4e5f60718 (service billing)
///   http.request  GET /users/?  12.500 ms  [web]
///     sqlite.query  SELECT * FROM users WHERE id = ?  1.234 ms  [sql] error=no such table
/// ```
///
/// Children are ordered by start time. A span whose parent is not in the chunk is printed as a
/// root, so partial chunks still show everything they hold.
pub fn format_chunk(chunk: &TraceChunk) -> String {
    let mut out = String::new();
    let Some(local_root) = chunk.spans.first() else {
        return out;
    };
    let _ = writeln!(out, "trace {:032x} (service {})", local_root.trace_id, display_or(&local_root.service, "<none>"));

    let spans = &chunk.spans;
    let present: HashSet<u64> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let has_parent_here =
            span.parent_id != 0 && span.parent_id != span.span_id && present.contains(&span.parent_id);
        if has_parent_here {
            children.entry(span.parent_id).or_default().push(i);
        } else {
            roots.push(i);
        }
    }
    let by_start = |a: &usize, b: &usize| spans[*a].start_unix_ns.cmp(&spans[*b].start_unix_ns).then(a.cmp(b));
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }

    let mut printed = vec![false; spans.len()];
    for &root in &roots {
        print_tree(root, spans, &children, &mut printed, &local_root.service, &mut out);
    }
    // Spans caught in a parent cycle have no root above them: still show them.
    for i in 0..spans.len() {
        if !printed[i] {
            print_tree(i, spans, &children, &mut printed, &local_root.service, &mut out);
        }
    }
    out
}

/// Iterative depth-first walk from `root`; `printed` also breaks parent cycles in malformed
/// input.
fn print_tree(
    root: usize,
    spans: &[Span],
    children: &HashMap<u64, Vec<usize>>,
    printed: &mut [bool],
    root_service: &str,
    out: &mut String,
) {
    let mut stack = vec![(root, 1usize)];
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut printed[i], true) {
            continue;
        }
        format_span_line(out, &spans[i], depth, root_service);
        if let Some(kids) = children.get(&spans[i].span_id) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
}

fn format_span_line(out: &mut String, span: &Span, depth: usize, root_service: &str) {
    let _ = write!(out, "{:indent$}{}", "", one_line(&span.name), indent = depth * 2);
    if !span.resource.is_empty() && span.resource != span.name {
        let _ = write!(out, "  {}", one_line(&span.resource));
    }
    let _ = write!(out, "  {:.3} ms", span.duration_ns as f64 / 1e6);
    if !span.span_type.is_empty() {
        let _ = write!(out, "  [{}]", one_line(&span.span_type));
    }
    if span.service != root_service && !span.service.is_empty() {
        let _ = write!(out, " service={}", one_line(&span.service));
    }
    if span.error != 0 {
        let reason = ["error.message", "error.msg", "error.type"]
            .iter()
            .find_map(|k| span.meta.get(k).filter(|v| !v.is_empty()))
            .map(|v| one_line(v))
            .unwrap_or_else(|| "true".to_owned());
        let _ = write!(out, " error={reason}");
    }
    out.push('\n');
}

/// Keeps one span on one line: captured SQL and messages often hold newlines and tabs.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn display_or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u64, parent: u64, name: &str, start: i64, duration_ns: i64) -> Span {
        Span {
            trace_id: 0x5b1e_0000_0000_0001_0000_0000_0000_00c2,
            span_id: id,
            parent_id: parent,
            name: name.to_owned().into(),
            resource: name.to_owned().into(),
            service: "billing".to_owned(),
            start_unix_ns: start,
            duration_ns,
            ..Default::default()
        }
    }

    #[test]
    fn tree_is_indented_and_children_ordered_by_start() {
        let mut root = span(1, 0, "http.request", 100, 12_500_000);
        root.resource = "GET /users/?".into();
        root.span_type = "web".into();
        let mut late = span(3, 1, "sqlite.query", 300, 1_234_000);
        late.resource = "SELECT * FROM users\n WHERE id = ?".into();
        late.span_type = "sql".into();
        late.error = 1;
        late.meta.insert("error.message".into(), "no such table: users".into());
        let early = span(2, 1, "sqlite.connect", 200, 500);
        let grandchild = span(4, 2, "fs.open", 210, 100);
        let chunk = TraceChunk { spans: vec![root, late, early, grandchild], container_id: None };

        let text = format_chunk(&chunk);
        let expected = "\
trace 5b1e00000000000100000000000000c2 (service billing)
  http.request  GET /users/?  12.500 ms  [web]
    sqlite.connect  0.001 ms
      fs.open  0.000 ms
    sqlite.query  SELECT * FROM users  WHERE id = ?  1.234 ms  [sql] error=no such table: users
";
        assert_eq!(text, expected);
    }

    #[test]
    fn orphans_and_cycles_are_printed_as_roots() {
        let root = span(1, 0, "root", 0, 1_000);
        // Parent 99 is in another process / chunk.
        let orphan = span(2, 99, "orphan", 50, 1_000);
        let mut other_service = span(3, 2, "child", 60, 1_000);
        other_service.service = "sqlite".to_owned();
        // 4 and 5 point at each other: malformed, but must not loop or vanish.
        let a = span(4, 5, "cycle.a", 70, 1_000);
        let b = span(5, 4, "cycle.b", 80, 1_000);
        let chunk = TraceChunk { spans: vec![root, orphan, other_service, a, b], container_id: None };
        let text = format_chunk(&chunk);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  root  0.001 ms");
        assert_eq!(lines[2], "  orphan  0.001 ms");
        assert_eq!(lines[3], "    child  0.001 ms service=sqlite");
        assert!(lines[4].starts_with("  cycle.a"), "{text}");
        assert!(lines[5].starts_with("    cycle.b"), "{text}");
        assert_eq!(lines.len(), 6, "{text}");
    }

    #[test]
    fn sink_writes_every_non_empty_chunk() {
        let mut sink = ConsoleExporter::new(Vec::new());
        sink.send(vec![
            TraceChunk { spans: vec![span(1, 0, "first", 0, 2_000_000)], container_id: None },
            TraceChunk::default(),
            TraceChunk { spans: vec![span(7, 0, "second", 0, 3_000_000)], container_id: None },
        ])
        .unwrap();
        sink.shutdown().unwrap();
        let text = String::from_utf8(sink.into_inner()).unwrap();
        assert_eq!(text.matches("trace ").count(), 2, "{text}");
        assert!(text.contains("  first  2.000 ms\n"), "{text}");
        assert!(text.contains("  second  3.000 ms\n"), "{text}");
    }
}
