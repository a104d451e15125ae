//! A FastAPI (or Starlette) application's routes, read from the interpreter's objects: the
//! `FastAPI`/`Starlette` instance in the view's module (or `__main__`), its `router.routes`, each
//! route's `path` (`/items/{item_id}`, `/files/{rest:path}`) and `methods`. Starlette serves a
//! request with the first route whose path and method both match, in order.

use std::sync::Arc;

use regex::Regex;

use super::{CodeOrigin, RouteMatch};
use crate::interpreters::python::{modules, objects::PythonObjects};

#[derive(Debug, Clone)]
enum Entry {
    Route {
        path: String,
        methods: Option<Vec<String>>,
        regex: Regex,
        /// Where its endpoint is written: dd-trace-py's entry code origin for the request.
        origin: Option<Arc<CodeOrigin>>,
    },
    /// A mount, a websocket route, a path with a converter of the application's own: a request
    /// it might serve gets no route.
    Unreadable,
}

/// An application's routes.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    entries: Vec<Entry>,
}

impl Routes {
    pub fn route_count(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e, Entry::Route { .. })).count()
    }

    /// The path template of the route that serves `method` `path`, with its endpoint's origin.
    pub fn route(&self, method: &str, path: &str) -> Option<RouteMatch> {
        for entry in &self.entries {
            match entry {
                Entry::Unreadable => return None,
                Entry::Route { path: template, methods, regex, origin } => {
                    let allowed = methods.as_ref().is_none_or(|m| m.iter().any(|m| m == method));
                    if allowed && regex.is_match(path) {
                        return Some(RouteMatch { route: template.clone(), origin: origin.clone() });
                    }
                }
            }
        }
        None
    }
}

/// A route path's regex, as Starlette's `compile_path` builds it; `None` with a converter it does
/// not ship.
fn path_regex(path: &str) -> Option<Regex> {
    let mut pattern = String::from("^");
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let close = open + rest[open..].find('}')?;
        let convertor = rest[open + 1..close].split_once(':').map_or("str", |(_, c)| c.trim());
        pattern.push_str(match convertor {
            "str" => "([^/]+)",
            "path" => "(.*)",
            "int" => "([0-9]+)",
            "float" => r"([0-9]+(?:\.[0-9]+)?)",
            "uuid" => "([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
            _ => return None,
        });
        rest = &rest[close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    Regex::new(&pattern).ok()
}

/// The routes of the one FastAPI or Starlette application in `view_module`'s namespace, else in
/// `__main__`'s.
pub fn read_routes(objects: &PythonObjects<'_>, view_module: Option<&str>) -> Option<Routes> {
    let app = super::single_instance(objects, view_module, &["FastAPI", "Starlette"])?;
    let router = objects.attribute(app, "router")?;
    let items = objects.list_items(objects.attribute(router, "routes")?)?;
    let main_script = modules::main_script(objects.pid());
    let entries = items
        .into_iter()
        .map(|item| read_entry(objects, item, main_script.as_deref()).unwrap_or(Entry::Unreadable))
        .collect();
    Some(Routes { entries })
}

fn read_entry(objects: &PythonObjects<'_>, item: u64, main_script: Option<&std::path::Path>) -> Option<Entry> {
    if !matches!(objects.type_name(item)?.as_str(), "APIRoute" | "Route") {
        return None;
    }
    let path = objects.str(objects.attribute(item, "path")?)?;
    let methods = super::methods(objects, item)?;
    let regex = path_regex(&path)?;
    let origin = objects
        .attribute(item, "endpoint")
        .and_then(|endpoint| objects.function_source(endpoint))
        .map(|source| Arc::new(CodeOrigin::of_function(objects.pid(), &source, main_script)));
    Some(Entry::Route { path, methods, regex, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, methods: &[&str]) -> Entry {
        let methods = Some(methods.iter().map(|m| m.to_string()).collect());
        Entry::Route { path: path.to_owned(), methods, regex: path_regex(path).unwrap(), origin: None }
    }

    #[test]
    fn the_first_route_matching_path_and_method_serves_the_request() {
        let routes = Routes {
            entries: vec![
                route("/items/{item_id:int}", &["GET", "HEAD"]),
                route("/items/{name}", &["GET", "HEAD"]),
                route("/items/{name}", &["POST"]),
                route("/files/{rest:path}", &["GET"]),
                route("/", &["GET"]),
            ],
        };
        assert_eq!(routes.route_count(), 5);
        assert_eq!(routes.route("GET", "/items/3").map(|m| m.route).as_deref(), Some("/items/{item_id:int}"));
        assert_eq!(routes.route("GET", "/items/bob").map(|m| m.route).as_deref(), Some("/items/{name}"));
        assert_eq!(routes.route("POST", "/items/3").map(|m| m.route).as_deref(), Some("/items/{name}"));
        assert_eq!(routes.route("GET", "/files/a/b.txt").map(|m| m.route).as_deref(), Some("/files/{rest:path}"));
        assert_eq!(routes.route("GET", "/").map(|m| m.route).as_deref(), Some("/"));
        assert_eq!(routes.route("DELETE", "/items/3"), None);
        assert_eq!(routes.route("GET", "/nowhere/x"), None);
        // Something unreadable before the match: unsure.
        let routes = Routes { entries: vec![Entry::Unreadable, route("/a", &["GET"])] };
        assert_eq!(routes.route("GET", "/a"), None);
        assert!(path_regex("/x/{y:custom}").is_none());
    }
}
