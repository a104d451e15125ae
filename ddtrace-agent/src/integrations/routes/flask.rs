//! A Flask application's routing table, read from the interpreter's objects: the `Flask`
//! instance in the view's module (or `__main__`), its `url_map` (a werkzeug `Map`), and each
//! `Rule`'s `rule` and `methods`, as `app.url_map.iter_rules()` gives them.

use super::werkzeug_rule::{Rule, RuleTable};
use crate::interpreters::python::objects::PythonObjects;

/// The rules of the one Flask application found in `view_module`'s namespace, else in
/// `__main__`'s. `None` when none is found, or two (which one served the request is unknown).
pub fn read_rules(objects: &PythonObjects<'_>, view_module: Option<&str>) -> Option<RuleTable> {
    // Apps mounted under prefixes see a part of the path: which table serves which is not read.
    if objects.dict_get(objects.modules()?, "werkzeug.middleware.dispatcher").is_some() {
        return None;
    }
    let app = super::single_instance(objects, view_module, &["Flask"])?;
    let url_map = objects.attribute(app, "url_map")?;
    let rules = map_rules(objects, url_map)?;
    let (mut parsed, mut unreadable) = (Vec::with_capacity(rules.len()), 0);
    for rule in rules {
        match read_rule(objects, rule) {
            Some(rule) => parsed.push(rule),
            None => unreadable += 1,
        }
    }
    Some(RuleTable::new(parsed, unreadable))
}

/// A werkzeug `Map`'s rules: `_rules_by_endpoint` (endpoint -> rules, werkzeug 2.2+) or the
/// `_rules` list before it.
fn map_rules(objects: &PythonObjects<'_>, url_map: u64) -> Option<Vec<u64>> {
    if let Some(by_endpoint) = objects.attribute(url_map, "_rules_by_endpoint") {
        let lists = objects.dict_items(by_endpoint)?;
        let mut rules = Vec::new();
        for (_, list) in lists {
            rules.extend(objects.list_items(list)?);
        }
        return Some(rules);
    }
    objects.list_items(objects.attribute(url_map, "_rules")?)
}

fn read_rule(objects: &PythonObjects<'_>, rule: u64) -> Option<Rule> {
    // A rule that only builds URLs, redirects, serves websockets or another host or subdomain
    // matches differently: unreadable.
    for flag in ["build_only", "websocket"] {
        if objects.is_true(objects.attribute(rule, flag)?) {
            return None;
        }
    }
    for setting in ["redirect_to", "host", "subdomain"] {
        let value = objects.attribute(rule, setting)?;
        let unset = match objects.type_name(value)?.as_str() {
            "NoneType" => true,
            "str" => objects.str(value)?.is_empty(),
            _ => false,
        };
        if !unset {
            return None;
        }
    }
    let template = objects.str(objects.attribute(rule, "rule")?)?;
    let methods = super::methods(objects, rule)?;
    Rule::parse(&template, methods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpreters::python::PythonRuntime;
    use ddtrace_tests::target_app::{python_executable, ScriptChild};

    #[test]
    fn a_running_flask_apps_rules_are_read_and_matched() {
        let script = r#"
import sys
from flask import Flask
app = Flask(__name__)
@app.route("/users/<int:uid>")
def user(uid): return "u"
@app.route("/users/me", methods=["POST"])
def me(): return "m"
@app.get("/files/<path:name>")
def files(name): return "f"
print("ready", flush=True)
sys.stdin.readline()
"#;
        let child = ScriptChild::run(std::path::Path::new(&python_executable()), script);
        let runtime = PythonRuntime::find(child.pid()).unwrap().expect("an interpreter");
        let objects = PythonObjects::new(&runtime).expect("3.11+");
        let table = read_rules(&objects, Some("__main__")).expect("the app's rules");
        // Flask's own static rule and ours.
        assert_eq!(table.route_count(), 4, "{table:?}");
        assert_eq!(table.template("GET", "/users/42"), Some("/users/<int:uid>"));
        assert_eq!(table.template("POST", "/users/me"), Some("/users/me"));
        assert_eq!(table.template("GET", "/users/me"), None);
        assert_eq!(table.template("GET", "/files/a/b.txt"), Some("/files/<path:name>"));
        assert_eq!(table.template("GET", "/static/app.js"), Some("/static/<path:filename>"));
        // Not an application module: nothing.
        assert!(read_rules(&objects, Some("flask")).is_some(), "falls back to __main__");
    }
}
