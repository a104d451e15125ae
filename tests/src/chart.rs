//! Renders the Helm chart in `deploy/helm/ddtrace-agent` without helm: no helm binary can be had
//! here (Debian's Go is too old to build one, and no registry these machines reach ships it), so
//! the chart keeps to a small part of Go's template language, which this renders the way helm
//! does: `{{ .Values.x.y }}`, `{{ .Release.Name }}`, `{{ .Release.Namespace }}`,
//! `{{ .Chart.AppVersion }}`, the `quote`, `toYaml` and `nindent N` functions, `if`/`else`/`end`,
//! and `{{-`/`-}}` whitespace trimming. Anything else is an error, so the chart cannot drift into
//! syntax this does not check.

use serde_yaml::Value;

/// The release a plain `helm install ddtrace-agent deploy/helm/ddtrace-agent -n datadog` makes.
pub struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
}

/// Renders every template of `chart_dir` with its `values.yaml`, `overrides` merged over it
/// (maps merged key by key, as helm's `--set` and `-f` do), into one multi-document YAML text.
pub fn render(chart_dir: &std::path::Path, release: &Release, overrides: &Value) -> Result<String, String> {
    let read =
        |path: std::path::PathBuf| std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()));
    let mut values: Value = serde_yaml::from_str(&read(chart_dir.join("values.yaml"))?).map_err(|e| e.to_string())?;
    merge(&mut values, overrides);
    let chart: Value = serde_yaml::from_str(&read(chart_dir.join("Chart.yaml"))?).map_err(|e| e.to_string())?;
    let mut templates: Vec<_> = std::fs::read_dir(chart_dir.join("templates"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    templates.sort();
    let context = Context { values: &values, chart: &chart, release };
    let mut documents = Vec::new();
    for template in templates {
        let text = read(template.clone())?;
        let rendered = render_text(&text, &context).map_err(|e| format!("{}: {e}", template.display()))?;
        documents.push(format!(
            "# Source: ddtrace-agent/templates/{}\n{}",
            template.file_name().unwrap().to_string_lossy(),
            rendered.trim_end()
        ));
    }
    Ok(format!("---\n{}\n", documents.join("\n---\n")))
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) if !over.is_null() => *base = over.clone(),
        _ => {}
    }
}

struct Context<'a> {
    values: &'a Value,
    chart: &'a Value,
    release: &'a Release<'a>,
}

/// One piece of a template: text, or an action with its trimming marks.
enum Piece<'t> {
    Text(&'t str),
    Action(&'t str),
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").ok_or("an action is not closed")? + start;
        let mut before = &rest[..start];
        let mut action = &rest[start + 2..end];
        if let Some(trimmed) = action.strip_prefix('-') {
            before = before.trim_end();
            action = trimmed;
        }
        pieces.push(Piece::Text(before));
        rest = &rest[end + 2..];
        if let Some(trimmed) = action.strip_suffix('-') {
            action = trimmed;
            rest = rest.trim_start();
        }
        pieces.push(Piece::Action(action.trim()));
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

fn render_text(text: &str, context: &Context) -> Result<String, String> {
    let mut out = String::new();
    // Whether each enclosing `if` branch is being written.
    let mut writing: Vec<(bool, bool)> = Vec::new(); // (this branch, any branch taken)
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(on, _)| *on);
    for piece in pieces(text)? {
        match piece {
            Piece::Text(text) => {
                if active(&writing) {
                    out.push_str(text)
                }
            }
            Piece::Action(action) => {
                if let Some(condition) = action.strip_prefix("if ") {
                    let on = truthy(&lookup(condition.trim(), context)?);
                    writing.push((on, on));
                } else if action == "else" {
                    let (_, taken) = writing.pop().ok_or("else without if")?;
                    writing.push((!taken, true));
                } else if action == "end" {
                    writing.pop().ok_or("end without if")?;
                } else if active(&writing) {
                    out.push_str(&pipeline(action, context)?);
                }
            }
        }
    }
    if !writing.is_empty() {
        return Err("if without end".into());
    }
    Ok(out)
}

/// `EXPR`, `EXPR | quote`, `toYaml EXPR | nindent N`.
fn pipeline(action: &str, context: &Context) -> Result<String, String> {
    let stages: Vec<&str> = action.split('|').map(str::trim).collect();
    let mut text = match stages[0].strip_prefix("toYaml ") {
        Some(expr) => to_yaml(&lookup(expr.trim(), context)?)?,
        None => scalar(&lookup(stages[0], context)?)?,
    };
    for stage in &stages[1..] {
        text = if *stage == "quote" {
            format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
        } else if let Some(n) = stage.strip_prefix("nindent ") {
            let n: usize = n.trim().parse().map_err(|_| format!("nindent {n}"))?;
            let pad = " ".repeat(n);
            format!("\n{}", text.lines().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n"))
        } else {
            return Err(format!("unsupported function {stage:?}"));
        };
    }
    Ok(text)
}

fn lookup(expr: &str, context: &Context) -> Result<Value, String> {
    let path: Vec<&str> =
        expr.strip_prefix('.').ok_or_else(|| format!("unsupported expression {expr:?}"))?.split('.').collect();
    let (root, rest) = match path.as_slice() {
        ["Release", "Name"] => return Ok(Value::String(context.release.name.into())),
        ["Release", "Namespace"] => return Ok(Value::String(context.release.namespace.into())),
        ["Chart", rest @ ..] => (context.chart, rest.iter().map(|s| lower_first(s)).collect::<Vec<_>>()),
        ["Values", rest @ ..] => (context.values, rest.iter().map(|s| s.to_string()).collect()),
        _ => return Err(format!("unsupported expression {expr:?}")),
    };
    let mut value = root;
    for key in &rest {
        value = value.get(key.as_str()).ok_or_else(|| format!("{expr}: no {key}"))?;
    }
    Ok(value.clone())
}

/// `.Chart.AppVersion` is Chart.yaml's `appVersion`.
fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("not a scalar: {other:?}")),
    }
}

fn to_yaml(value: &Value) -> Result<String, String> {
    Ok(serde_yaml::to_string(value).map_err(|e| e.to_string())?.trim_end().to_string())
}
