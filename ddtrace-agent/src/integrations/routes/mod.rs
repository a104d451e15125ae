//! Route templates: an application's routing table read from its memory (read-only), and the
//! route that serves each request, so its server span says `GET /users/<int:uid>` as an
//! in-process tracer would. Flask (werkzeug's rules) and Django (URL patterns); Starlette and
//! FastAPI keep the quantized resource.

pub mod django;
pub mod flask;
pub mod werkzeug_rule;

use crate::interpreters::python::objects::PythonObjects;

/// A framework's routing table.
#[derive(Debug, Clone)]
pub enum RouteTable {
    Werkzeug(werkzeug_rule::RuleTable),
    Django(django::UrlPatterns),
}

impl RouteTable {
    /// The route serving `method` `path`, as the framework writes it; `None` when none does or
    /// which one does cannot be told for sure.
    pub fn route(&self, method: &str, path: &str) -> Option<String> {
        match self {
            Self::Werkzeug(rules) => rules.template(method, path).map(str::to_owned),
            Self::Django(patterns) => patterns.route(path),
        }
    }

    /// How many routes the table holds.
    pub fn route_count(&self) -> usize {
        match self {
            Self::Werkzeug(rules) => rules.route_count(),
            Self::Django(patterns) => patterns.route_count(),
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
