//! Route templates: an application's routing table read from its memory (read-only), and the
//! route that serves each request, so its server span says `GET /users/<int:uid>` as an
//! in-process tracer would. Flask (werkzeug's rules), Django (URL patterns), FastAPI and
//! Starlette (their routes).

pub mod django;
pub mod flask;
pub mod starlette;
pub mod werkzeug_rule;

use std::sync::Arc;

use crate::{
    core::ContextData,
    interpreters::python::{
        modules,
        objects::{FunctionSource, PythonObjects},
    },
};

/// What dd-trace-py's code origin for spans says of an entry span: where its handler is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeOrigin {
    pub file: String,
    pub line: Option<u32>,
    pub module: Option<Arc<str>>,
    pub method: Arc<str>,
}

impl CodeOrigin {
    /// The origin of a handler of process `pid` written at `source`.
    pub fn of_function(pid: u32, source: &FunctionSource, main_script: Option<&std::path::Path>) -> Self {
        let file = modules::absolute(pid, std::path::Path::new(&*source.file)).display().to_string();
        let module = modules::module_name(pid, &source.file, main_script).map(Into::into);
        Self { file, line: source.first_line, module, method: source.qualname.clone() }
    }

    pub fn tag(&self, data: &mut ContextData) {
        data.meta.insert("_dd.code_origin.type".into(), "entry".into());
        data.meta.insert("_dd.code_origin.frames.0.file".into(), self.file.clone());
        if let Some(line) = self.line {
            data.meta.insert("_dd.code_origin.frames.0.line".into(), line.to_string());
        }
        if let Some(module) = &self.module {
            data.meta.insert("_dd.code_origin.frames.0.type".into(), module.to_string());
        }
        data.meta.insert("_dd.code_origin.frames.0.method".into(), self.method.to_string());
    }
}

/// The route that serves a request, and its handler's origin when the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: String,
    pub origin: Option<Arc<CodeOrigin>>,
}

/// A framework's routing table.
#[derive(Debug, Clone)]
pub enum RouteTable {
    Werkzeug(werkzeug_rule::RuleTable),
    Django(django::UrlPatterns),
    Starlette(starlette::Routes),
}

impl RouteTable {
    /// The route serving `method` `path`, as the framework writes it; `None` when none does or
    /// which one does cannot be told for sure.
    pub fn route(&self, method: &str, path: &str) -> Option<RouteMatch> {
        let bare = |route: String| RouteMatch { route, origin: None };
        match self {
            Self::Werkzeug(rules) => rules.template(method, path).map(|t| bare(t.to_owned())),
            Self::Django(patterns) => patterns.route(path).map(bare),
            Self::Starlette(routes) => routes.route(method, path),
        }
    }

    /// How many routes the table holds.
    pub fn route_count(&self) -> usize {
        match self {
            Self::Werkzeug(rules) => rules.route_count(),
            Self::Django(patterns) => patterns.route_count(),
            Self::Starlette(routes) => routes.route_count(),
        }
    }
}

/// Reads a framework's routing table from the application's memory, given the view's module.
pub type RouteReader = fn(&PythonObjects<'_>, Option<&str>) -> Option<RouteTable>;

/// Flask's table, for [`RouteReader`].
pub fn flask_routes(objects: &PythonObjects<'_>, view_module: Option<&str>) -> Option<RouteTable> {
    flask::read_rules(objects, view_module).map(RouteTable::Werkzeug)
}

/// Django's table, for [`RouteReader`] (the project's, whatever the view's module).
pub fn django_routes(objects: &PythonObjects<'_>, _view_module: Option<&str>) -> Option<RouteTable> {
    django::read_patterns(objects).map(RouteTable::Django)
}

/// FastAPI's (or Starlette's) table, for [`RouteReader`].
pub fn starlette_routes(objects: &PythonObjects<'_>, view_module: Option<&str>) -> Option<RouteTable> {
    starlette::read_routes(objects, view_module).map(RouteTable::Starlette)
}

/// A route object's `methods`: `None` for any method (the attribute is `None`), else the set's
/// names; the outer `None` when it cannot be read.
fn methods(objects: &PythonObjects<'_>, route: u64) -> Option<Option<Vec<String>>> {
    let methods = objects.attribute(route, "methods")?;
    Some(match objects.type_name(methods)?.as_str() {
        "NoneType" => None,
        _ => Some(objects.set_items(methods)?.into_iter().filter_map(|m| objects.str(m)).collect()),
    })
}

/// The one instance of a class named in `types` in `view_module`'s namespace, else in
/// `__main__`'s; `None` when there is none, or two (which one served the request is unknown).
fn single_instance(objects: &PythonObjects<'_>, view_module: Option<&str>, types: &[&str]) -> Option<u64> {
    let modules = objects.modules()?;
    let mut found: Vec<u64> = Vec::new();
    for name in view_module.into_iter().chain(["__main__"]) {
        let Some(namespace) = objects.dict_get(modules, name).and_then(|m| objects.module_dict(m)) else { continue };
        for (_, value) in objects.dict_items(namespace)? {
            if !found.contains(&value) && objects.type_name(value).is_some_and(|t| types.contains(&t.as_str())) {
                found.push(value);
            }
        }
        if !found.is_empty() {
            break;
        }
    }
    match found[..] {
        [one] => Some(one),
        _ => None,
    }
}
