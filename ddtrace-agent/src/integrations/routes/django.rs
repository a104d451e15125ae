//! A Django project's URL patterns, read from the interpreter's objects (`settings.ROOT_URLCONF`'s
//! `urlpatterns`, through `include`s), and the route Django resolves a path to: the patterns
//! joined as `request.resolver_match.route` joins them (`users/<int:uid>`, and for a regex child
//! under a prefix, the regex without its `^`), which dd-trace-py puts in the resource and
//! `http.route`. Django takes the first pattern that matches, in order.

use regex::Regex;

use crate::interpreters::python::objects::PythonObjects;

/// `include` depth followed at most.
const MAX_DEPTH: usize = 8;

/// One entry of a `urlpatterns` list.
#[derive(Debug, Clone)]
enum Entry {
    /// A view's pattern (`path`, `re_path`).
    Pattern { route: String, regex: Regex },
    /// An `include`: a prefix and the patterns under it.
    Resolver { route: String, regex: Regex, children: Vec<Entry> },
    /// A pattern we cannot match (a custom converter, a regex Rust's engine does not take, a
    /// locale prefix): a path it might serve gets no route.
    Unreadable,
}

/// A project's URL patterns.
#[derive(Debug, Clone, Default)]
pub struct UrlPatterns {
    entries: Vec<Entry>,
}

impl UrlPatterns {
    pub fn route_count(&self) -> usize {
        fn count(entries: &[Entry]) -> usize {
            entries
                .iter()
                .map(|e| match e {
                    Entry::Resolver { children, .. } => count(children),
                    _ => 1,
                })
                .sum()
        }
        count(&self.entries)
    }

    /// The route Django resolves `path` (with its leading `/`) to.
    pub fn route(&self, path: &str) -> Option<String> {
        resolve(&self.entries, path.strip_prefix('/')?)?
    }
}

/// `Some(Some(route))` matched, `Some(None)` nothing matched for sure, `None` unsure.
fn resolve(entries: &[Entry], path: &str) -> Option<Option<String>> {
    for entry in entries {
        match entry {
            Entry::Unreadable => return None,
            Entry::Pattern { route, regex } => {
                if regex.is_match(path) {
                    return Some(Some(route.clone()));
                }
            }
            Entry::Resolver { route, regex, children } => {
                let Some(prefix) = regex.find(path) else { continue };
                if let Some(child) = resolve(children, &path[prefix.end()..])? {
                    return Some(Some(join(route, &child)));
                }
            }
        }
    }
    Some(None)
}

/// Django's `URLResolver._join_route`.
fn join(prefix: &str, child: &str) -> String {
    if prefix.is_empty() {
        return child.to_owned();
    }
    format!("{prefix}{}", child.strip_prefix('^').unwrap_or(child))
}

/// A `path()` route's regex, as Django's `_route_to_regex` builds it; `None` with a converter it
/// does not ship.
fn route_regex(route: &str, endpoint: bool) -> Option<Regex> {
    let mut pattern = String::from("^");
    let mut rest = route;
    while let Some(open) = rest.find('<') {
        pattern.push_str(&regex::escape(&rest[..open]));
        let close = open + rest[open..].find('>')?;
        let (converter, _name) = rest[open + 1..close].split_once(':').unwrap_or(("str", ""));
        pattern.push_str(match converter {
            "str" => "([^/]+)",
            "int" => "([0-9]+)",
            "slug" => "([-a-zA-Z0-9_]+)",
            "uuid" => "([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
            "path" => "(.+)",
            _ => return None,
        });
        rest = &rest[close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    if endpoint {
        pattern.push('$');
    }
    Regex::new(&pattern).ok()
}

/// The patterns of `settings.ROOT_URLCONF`.
pub fn read_patterns(objects: &PythonObjects<'_>) -> Option<UrlPatterns> {
    let modules = objects.modules()?;
    let conf = objects.module_dict(objects.dict_get(modules, "django.conf")?)?;
    let settings = objects.attribute(objects.dict_get(conf, "settings")?, "_wrapped")?;
    let root = objects.str(objects.attribute(settings, "ROOT_URLCONF")?)?;
    let root = objects.module_dict(objects.dict_get(modules, &root)?)?;
    let entries = read_list(objects, modules, objects.dict_get(root, "urlpatterns")?, 0)?;
    Some(UrlPatterns { entries })
}

fn read_list(objects: &PythonObjects<'_>, modules: u64, list: u64, depth: usize) -> Option<Vec<Entry>> {
    let items = objects.list_items(list)?;
    Some(items.into_iter().map(|item| read_entry(objects, modules, item, depth).unwrap_or(Entry::Unreadable)).collect())
}

fn read_entry(objects: &PythonObjects<'_>, modules: u64, item: u64, depth: usize) -> Option<Entry> {
    let kind = objects.type_name(item)?;
    let pattern = objects.attribute(item, "pattern")?;
    let (route, regex) = match objects.type_name(pattern)?.as_str() {
        "RoutePattern" => {
            let route = objects.str(objects.attribute(pattern, "_route")?)?;
            let regex = route_regex(&route, kind == "URLPattern")?;
            (route, regex)
        }
        "RegexPattern" => {
            let route = objects.str(objects.attribute(pattern, "_regex")?)?;
            // Django searches a regex, or (endpoints ending in `$`, recent versions) full-matches
            // it: the same answer only when the regex is anchored at its start.
            if !route.starts_with('^') {
                return None;
            }
            let regex = Regex::new(&route).ok()?;
            (route, regex)
        }
        _ => return None,
    };
    match kind.as_str() {
        "URLPattern" => Some(Entry::Pattern { route, regex }),
        "URLResolver" if depth < MAX_DEPTH => {
            let children = resolver_patterns(objects, modules, item, depth)?;
            Some(Entry::Resolver { route, regex, children })
        }
        _ => None,
    }
}

/// An `include`'s patterns: its `urlconf_name` is the list itself, the included module, or its
/// dotted name.
fn resolver_patterns(objects: &PythonObjects<'_>, modules: u64, resolver: u64, depth: usize) -> Option<Vec<Entry>> {
    let conf = objects.attribute(resolver, "urlconf_name")?;
    let list = match objects.type_name(conf)?.as_str() {
        "list" | "tuple" => conf,
        "module" => objects.dict_get(objects.module_dict(conf)?, "urlpatterns")?,
        "str" => {
            let module = objects.dict_get(modules, &objects.str(conf)?)?;
            objects.dict_get(objects.module_dict(module)?, "urlpatterns")?
        }
        _ => return None,
    };
    read_list(objects, modules, list, depth + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(route: &str) -> Entry {
        Entry::Pattern { route: route.to_owned(), regex: route_regex(route, true).unwrap() }
    }

    fn regex_pattern(route: &str) -> Entry {
        Entry::Pattern { route: route.to_owned(), regex: Regex::new(route).unwrap() }
    }

    #[test]
    fn paths_resolve_to_the_first_matching_route_joined_as_django_joins_them() {
        let api = Entry::Resolver {
            route: "api/".into(),
            regex: route_regex("api/", false).unwrap(),
            children: vec![regex_pattern(r"^orders/(?P<oid>[0-9]+)$"), pattern("users/<slug:name>")],
        };
        let patterns =
            UrlPatterns { entries: vec![pattern("users/<int:uid>"), pattern("users/<str:name>"), api, pattern("")] };
        assert_eq!(patterns.route_count(), 5);
        assert_eq!(patterns.route("/users/42").as_deref(), Some("users/<int:uid>"));
        assert_eq!(patterns.route("/users/bob").as_deref(), Some("users/<str:name>"));
        assert_eq!(patterns.route("/api/orders/7").as_deref(), Some("api/orders/(?P<oid>[0-9]+)$"));
        assert_eq!(patterns.route("/api/users/a-b").as_deref(), Some("api/users/<slug:name>"));
        assert_eq!(patterns.route("/").as_deref(), Some(""));
        assert_eq!(patterns.route("/api/orders/x"), None);
        assert_eq!(patterns.route("/nowhere"), None);
    }

    #[test]
    fn an_unreadable_pattern_before_the_match_leaves_the_route_unknown() {
        assert!(route_regex("items/<custom:x>", true).is_none());
        let patterns = UrlPatterns { entries: vec![pattern("a"), Entry::Unreadable, pattern("b/<int:n>")] };
        assert_eq!(patterns.route("/a").as_deref(), Some("a"));
        assert_eq!(patterns.route("/b/1"), None);
    }
}
