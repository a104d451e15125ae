//! Werkzeug's rule syntax (`/users/<int:uid>`, `/files/<path:name>`), matched against a
//! request's path. Werkzeug's router ranks rules part by part (static first, converters by
//! weight, backtracking); rather than port it, a path is named only when the answer does not
//! depend on that ranking: one rule matches, or one fully static rule does (werkzeug always
//! prefers an exact static match). Anything else gets no template: none is better than a wrong
//! one.

use regex::Regex;

/// One rule of an application's routing table.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As the application wrote it: the span's `http.route`.
    pub template: String,
    /// `None`: any method.
    methods: Option<Vec<String>>,
    pattern: Regex,
    /// No converter in it.
    is_static: bool,
}

impl Rule {
    /// `None` when `template` is not a rule werkzeug would accept as we understand it.
    pub fn parse(template: &str, methods: Option<Vec<String>>) -> Option<Self> {
        if !template.starts_with('/') {
            return None;
        }
        let mut pattern = String::from("^");
        let mut rest = template;
        while let Some(open) = rest.find('<') {
            pattern.push_str(&regex::escape(&rest[..open]));
            let close = open + rest[open..].find('>')?;
            pattern.push('(');
            pattern.push_str(&converter(&rest[open + 1..close])?);
            pattern.push(')');
            rest = &rest[close + 1..];
        }
        pattern.push_str(&regex::escape(rest));
        pattern.push('$');
        let is_static = !template.contains('<');
        let methods = methods.map(|m| m.into_iter().map(|m| m.to_ascii_uppercase()).collect());
        Some(Self { template: template.to_owned(), methods, pattern: Regex::new(&pattern).ok()?, is_static })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        let allowed = self.methods.as_ref().is_none_or(|methods| methods.iter().any(|m| m == method));
        allowed && self.pattern.is_match(path)
    }
}

/// The regex of a `converter(arguments):name` (or bare `name`); `None` for a converter or an
/// argument whose effect we do not reproduce (`minlength`, `fixed_digits`, `min`...).
fn converter(variable: &str) -> Option<String> {
    let Some((converter, name)) = variable.rsplit_once(':') else {
        return valid_name(variable).then(|| "[^/]+".to_owned());
    };
    valid_name(name).then_some(())?;
    let (kind, arguments) = match converter.split_once('(') {
        Some((kind, arguments)) => (kind.trim(), arguments.strip_suffix(')')?),
        None => (converter.trim(), ""),
    };
    // `key=value` arguments, all of which must be understood.
    let keyed: Option<Vec<(&str, &str)>> = arguments
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.split_once('=').map(|(k, v)| (k.trim(), v.trim())))
        .collect();
    let only = |allowed: &[&str]| keyed.as_ref().filter(|args| args.iter().all(|(k, _)| allowed.contains(k)));
    let argument = |key: &str| keyed.as_ref()?.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let regex = match kind {
        "default" | "string" => {
            only(&["length"])?;
            match argument("length") {
                Some(length) => format!("[^/]{{{}}}", length.parse::<u32>().ok()?),
                None => "[^/]+".to_owned(),
            }
        }
        "int" | "float" => {
            only(&["signed"])?;
            let sign = if argument("signed") == Some("True") { "-?" } else { "" };
            let number = if kind == "int" { r"\d+" } else { r"\d+\.\d+" };
            format!("{sign}{number}")
        }
        "path" => {
            only(&[])?;
            "[^/].*?".to_owned()
        }
        "uuid" => {
            only(&[])?;
            "[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12}".to_owned()
        }
        "any" => {
            let items: Vec<String> = arguments
                .split(',')
                .map(|item| regex::escape(item.trim().trim_matches(|c| c == '"' || c == '\'')))
                .filter(|item| !item.is_empty())
                .collect();
            (!items.is_empty()).then_some(())?;
            items.join("|")
        }
        // An application's own converter: its pattern is unknown, so is any match through it.
        _ => return None,
    };
    Some(regex)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An application's rules.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    rules: Vec<Rule>,
    /// Rules that could not be understood: a request one of them might serve gets no template.
    unreadable: usize,
}

impl RuleTable {
    pub fn new(rules: Vec<Rule>, unreadable: usize) -> Self {
        Self { rules, unreadable }
    }

    pub fn route_count(&self) -> usize {
        self.rules.len()
    }

    /// The template of the rule that serves `method` `path`, when it does not depend on
    /// werkzeug's ranking: the only rule that matches, or the only static one among them.
    pub fn template(&self, method: &str, path: &str) -> Option<&str> {
        // `strict_slashes`: werkzeug redirects `/about` when a rule is `/about/`.
        if !path.ends_with('/') {
            let slashed = format!("{path}/");
            if self.rules.iter().any(|r| r.template.ends_with('/') && r.pattern.is_match(&slashed)) {
                return None;
            }
        }
        let candidates: Vec<&Rule> = self.rules.iter().filter(|rule| rule.matches(method, path)).collect();
        let statics: Vec<&&Rule> = candidates.iter().filter(|r| r.is_static).collect();
        let chosen = match (&candidates[..], &statics[..]) {
            (_, [one]) => one,
            // A rule we could not read might be the one werkzeug picks over a dynamic rule.
            ([one], []) if self.unreadable == 0 => one,
            _ => return None,
        };
        Some(chosen.template.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rules: &[(&str, Option<&[&str]>)]) -> RuleTable {
        let rules = rules
            .iter()
            .map(|(t, m)| Rule::parse(t, m.map(|m| m.iter().map(|s| s.to_string()).collect())).unwrap())
            .collect();
        RuleTable::new(rules, 0)
    }

    #[test]
    fn a_path_is_named_when_werkzeugs_ranking_does_not_decide() {
        let get: Option<&[&str]> = Some(&["GET", "HEAD", "OPTIONS"]);
        let t = table(&[
            ("/", get),
            ("/users/<int:uid>", get),
            ("/users/me", get),
            ("/orders/<int:oid>", get),
            ("/orders/<name>", get),
            ("/static/<path:filename>", get),
            ("/files/<path:rest>/raw", get),
            ("/report.<any(csv, json):fmt>", get),
            ("/items/<uuid:id>", Some(&["POST"])),
            ("/about/", get),
            ("/pages/<page>", get),
            ("/anything", None),
        ]);
        assert_eq!(t.template("GET", "/"), Some("/"));
        assert_eq!(t.template("GET", "/users/42"), Some("/users/<int:uid>"));
        // An exact static rule always wins.
        assert_eq!(t.template("GET", "/users/me"), Some("/users/me"));
        // Two dynamic rules match: which one werkzeug ranks first is not ours to guess.
        assert_eq!(t.template("GET", "/orders/7"), None);
        assert_eq!(t.template("GET", "/orders/bob"), Some("/orders/<name>"));
        assert_eq!(t.template("GET", "/static/css/site.css"), Some("/static/<path:filename>"));
        assert_eq!(t.template("GET", "/files/a/b/raw"), Some("/files/<path:rest>/raw"));
        assert_eq!(t.template("GET", "/report.json"), Some("/report.<any(csv, json):fmt>"));
        assert_eq!(t.template("GET", "/report.xml"), None);
        assert_eq!(t.template("POST", "/items/0b6f3b2e-4a47-4f5e-9d4e-2c8f3c1f9a10"), Some("/items/<uuid:id>"));
        // Not the rule's method (werkzeug answers 405), no rule, a trailing slash: no template.
        assert_eq!(t.template("GET", "/items/0b6f3b2e-4a47-4f5e-9d4e-2c8f3c1f9a10"), None);
        assert_eq!(t.template("DELETE", "/users/42"), None);
        assert_eq!(t.template("GET", "/nowhere/at/all"), None);
        assert_eq!(t.template("GET", "/users/42/"), None);
        assert_eq!(t.template("PATCH", "/anything"), Some("/anything"));
        // `/about` is redirected to `/about/` (strict slashes), whatever else could match it.
        assert_eq!(t.template("GET", "/about/"), Some("/about/"));
        let catch_all = table(&[("/about/", get), ("/<page>", get)]);
        assert_eq!(catch_all.template("GET", "/about"), None);
        assert_eq!(catch_all.template("GET", "/contact"), Some("/<page>"));
    }

    #[test]
    fn equal_candidates_or_an_unknown_converter_give_no_template() {
        let t = table(&[("/a/<x>", None), ("/a/<string:y>", None)]);
        assert_eq!(t.template("GET", "/a/b"), None);
        assert!(Rule::parse("/a/<custom:x>", None).is_none());
        assert!(Rule::parse("users", None).is_none());
        assert!(Rule::parse("/a/<unclosed", None).is_none());
        // Arguments whose effect is not reproduced make the rule unreadable.
        for rule in
            ["/s/<string(minlength=2):s>", "/s/<string(2):s>", "/n/<int(fixed_digits=4):n>", "/n/<int(min=1):n>"]
        {
            assert!(Rule::parse(rule, None).is_none(), "{rule}");
        }
        let with_unknown =
            RuleTable::new(vec![Rule::parse("/a/<x>", None).unwrap(), Rule::parse("/b", None).unwrap()], 1);
        assert_eq!(with_unknown.template("GET", "/a/1"), None);
        // A static rule is still certain: werkzeug prefers an exact static match.
        assert_eq!(with_unknown.template("GET", "/b"), Some("/b"));
        // Converter arguments.
        let t = table(&[("/c/<string(length=2):code>", None), ("/n/<int(signed=True):n>", None)]);
        assert_eq!(t.template("GET", "/c/fr"), Some("/c/<string(length=2):code>"));
        assert_eq!(t.template("GET", "/c/fra"), None);
        assert_eq!(t.template("GET", "/n/-3"), Some("/n/<int(signed=True):n>"));
    }
}
