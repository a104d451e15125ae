//! `--profile-output`: the whole run's profile written to a file a person opens: a flame graph
//! SVG (`.svg`, interactive in a browser: click to zoom, Ctrl-F to search) or a pprof protobuf
//! (any other name; `go tool pprof -http=: FILE`, speedscope, or Datadog's profile upload).

use std::{io, path::Path, time::SystemTime};

use super::aggregate::ProfileWindow;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write the profile to {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot encode the profile for {path}: {reason}")]
    Encode { path: String, reason: String },
}

/// What the file is, from its name.
fn is_svg(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"))
}

/// Writes `window` to `path`; `title` heads the flame graph.
pub fn write_profile_output(path: &Path, window: &ProfileWindow, title: &str) -> Result<(), OutputError> {
    let shown = path.display().to_string();
    let write_error = |source| OutputError::Write { path: shown.clone(), source };
    let bytes = if is_svg(path) {
        flame_graph_svg(window, title)
            .map_err(|e| OutputError::Encode { path: shown.clone(), reason: e.to_string() })?
    } else {
        window
            .to_profile(SystemTime::now())
            .to_pprof()
            .map_err(|e| OutputError::Encode { path: shown.clone(), reason: e.to_string() })?
    };
    // Write beside and rename, so a reader never sees half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).map_err(write_error)?;
    std::fs::rename(&partial, path).map_err(write_error)
}

fn flame_graph_svg(window: &ProfileWindow, title: &str) -> io::Result<Vec<u8>> {
    let lines: Vec<String> =
        window.folded_stacks().into_iter().map(|(stack, count)| format!("{stack} {count}")).collect();
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "samples".to_string();
    let mut svg = Vec::new();
    if lines.is_empty() {
        // inferno refuses an empty input; an empty graph still tells the reader there was nothing.
        options.subtitle = Some("no samples: the process used no CPU while profiled".to_string());
        inferno::flamegraph::from_lines(&mut options, ["[no samples] 1"].iter().copied(), &mut svg)?;
    } else {
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{intake::profile_exporter::Frame, products::profiling::aggregate::ResolvedSample};

    fn window() -> ProfileWindow {
        let mut window = ProfileWindow::new(SystemTime::now(), Duration::from_millis(10));
        let frames = ["hot_leaf", "middle", "main"].iter().map(|n| Frame::new(*n, "/bin/app")).collect();
        window.add(ResolvedSample { frames, tid: 1, thread_name: "app", span: None });
        window
    }

    #[test]
    fn svg_and_pprof_files_are_written_by_name() {
        let dir = std::env::temp_dir().join(format!("ddtrace-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svg = dir.join("cpu.svg");
        write_profile_output(&svg, &window(), "ddtrace-agent test").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<?xml") && text.contains("<svg"), "not an SVG: {}", &text[..80.min(text.len())]);
        assert!(text.contains("hot_leaf") && text.contains("ddtrace-agent test"));
        let pprof = dir.join("cpu.pprof");
        write_profile_output(&pprof, &window(), "unused").unwrap();
        let bytes = std::fs::read(&pprof).unwrap();
        // A plain pprof protobuf (not compressed), with the function in its string table.
        use prost::Message as _;
        let decoded = libdd_profiling_protobuf::prost_impls::Profile::decode(bytes.as_slice()).expect("a pprof");
        assert_eq!(decoded.samples.len(), 1);
        assert!(decoded.string_table.iter().any(|s| s == "hot_leaf"), "{:?}", decoded.string_table);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let error = write_profile_output(Path::new("/nonexistent-dir/cpu.svg"), &window(), "t").unwrap_err();
        assert!(error.to_string().contains("/nonexistent-dir/cpu.svg"), "{error}");
    }
}
