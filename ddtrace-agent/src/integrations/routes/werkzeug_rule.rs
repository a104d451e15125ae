//! Werkzeug's rule syntax (`/users/<int:uid>`, `/files/<path:name>`), matched against a
//! request's path the way werkzeug's router would choose among rules: literal segments before
//! variable ones, plain variables before `path`. Where that leaves two rules equal, the match is
//! refused: no template is better than a wrong one.

use regex::Regex;

/// One rule of an application's routing table.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As the application wrote it: the span's `http.route`.
    pub template: String,
    /// `None`: any method.
    methods: Option<Vec<String>>,
    pattern: Regex,
    /// Per path segment: 0 literal, else the heaviest converter in it, weighed as werkzeug's
    /// router orders them (numbers 50, strings and the rest 100, `path` 200: lighter first).
    weights: Vec<u16>,
}

impl Rule {
    /// `None` when `template` is not a rule werkzeug would accept as we understand it.
    pub fn parse(template: &str, methods: Option<Vec<String>>) -> Option<Self> {
        if !template.starts_with('/') {
            return None;
        }
        let mut pattern = String::from("^");
        let mut weights = Vec::new();
        for segment in template.split('/').skip(1) {
            pattern.push('/');
            let mut weight = 0;
            let mut rest = segment;
            while let Some(open) = rest.find('<') {
                pattern.push_str(&regex::escape(&rest[..open]));
                let close = open + rest[open..].find('>')?;
                let (converter_regex, converter_weight) = converter(&rest[open + 1..close])?;
                pattern.push('(');
                pattern.push_str(&converter_regex);
                pattern.push(')');
                weight = weight.max(converter_weight);
                rest = &rest[close + 1..];
            }
            pattern.push_str(&regex::escape(rest));
            weights.push(weight);
        }
        pattern.push('$');
        let methods = methods.map(|m| m.into_iter().map(|m| m.to_ascii_uppercase()).collect());
        Some(Self { template: template.to_owned(), methods, pattern: Regex::new(&pattern).ok()?, weights })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        let allowed = self.methods.as_ref().is_none_or(|methods| methods.iter().any(|m| m == method));
        allowed && self.pattern.is_match(path)
    }
}

/// The regex of a `converter(arguments):name` (or bare `name`), and its weight.
fn converter(variable: &str) -> Option<(String, u16)> {
    let Some((converter, name)) = variable.rsplit_once(':') else {
        return valid_name(variable).then(|| ("[^/]+".to_owned(), 100));
    };
    valid_name(name).then_some(())?;
    let (kind, arguments) = match converter.split_once('(') {
        Some((kind, arguments)) => (kind.trim(), arguments.strip_suffix(')')?),
        None => (converter.trim(), ""),
    };
    let argument = |key: &str| {
        arguments.split(',').find_map(|a| a.trim().strip_prefix(key)?.trim_start().strip_prefix('=').map(str::trim))
    };
    let regex = match kind {
        "default" | "string" => match argument("length").and_then(|n| n.parse::<u32>().ok()) {
            Some(length) => format!("[^/]{{{length}}}"),
            None => "[^/]+".to_owned(),
        },
        "int" => {
            let digits = if argument("signed") == Some("True") { r"-?\d+" } else { r"\d+" };
            return Some((digits.to_owned(), 50));
        }
        "float" => {
            let number = if argument("signed") == Some("True") { r"-?\d+\.\d+" } else { r"\d+\.\d+" };
            return Some((number.to_owned(), 50));
        }
        "path" => return Some(("[^/].*?".to_owned(), 200)),
        "uuid" => "[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12}".to_owned(),
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
    Some((regex, 100))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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

    /// The template of the rule that serves `method` `path`, when exactly one would.
    pub fn template(&self, method: &str, path: &str) -> Option<&str> {
        let mut candidates = self.rules.iter().filter(|rule| rule.matches(method, path));
        let mut best = candidates.next()?;
        let mut tied = false;
        for rule in candidates {
            match rule.weights.cmp(&best.weights) {
                std::cmp::Ordering::Less => (best, tied) = (rule, false),
                std::cmp::Ordering::Equal => tied = true,
                std::cmp::Ordering::Greater => {}
            }
        }
        // An unreadable rule (a custom converter) might be the one werkzeug picks over a rule
        // with variables; a literal rule beats any of them.
        let maybe_beaten = self.unreadable > 0 && best.weights.iter().any(|&w| w > 0);
        (!tied && !maybe_beaten).then_some(best.template.as_str())
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
    fn a_path_is_matched_to_its_rule_as_werkzeug_would() {
        let get: Option<&[&str]> = Some(&["GET", "HEAD", "OPTIONS"]);
        let t = table(&[
            ("/", get),
            ("/users/<int:uid>", get),
            ("/users/me", get),
            ("/users/<name>", get),
            ("/static/<path:filename>", get),
            ("/files/<path:rest>/raw", get),
            ("/report.<any(csv, json):fmt>", get),
            ("/items/<uuid:id>", Some(&["POST"])),
            ("/anything", None),
        ]);
        assert_eq!(t.template("GET", "/"), Some("/"));
        assert_eq!(t.template("GET", "/users/42"), Some("/users/<int:uid>"));
        // A literal segment wins over a variable one; a name that is not digits is not an int.
        assert_eq!(t.template("GET", "/users/me"), Some("/users/me"));
        assert_eq!(t.template("GET", "/users/bob"), Some("/users/<name>"));
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
    }

    #[test]
    fn equal_candidates_or_an_unknown_converter_give_no_template() {
        let t = table(&[("/a/<x>", None), ("/a/<string:y>", None)]);
        assert_eq!(t.template("GET", "/a/b"), None);
        assert!(Rule::parse("/a/<custom:x>", None).is_none());
        assert!(Rule::parse("users", None).is_none());
        assert!(Rule::parse("/a/<unclosed", None).is_none());
        let with_unknown = RuleTable::new(vec![Rule::parse("/a/<x>", None).unwrap(), Rule::parse("/b", None).unwrap()], 1);
        assert_eq!(with_unknown.template("GET", "/a/1"), None);
        // A literal rule is still certain: no variable part could lose to the unknown one.
        assert_eq!(with_unknown.template("GET", "/b"), Some("/b"));
        // Converter arguments.
        let t = table(&[("/c/<string(length=2):code>", None), ("/n/<int(signed=True):n>", None)]);
        assert_eq!(t.template("GET", "/c/fr"), Some("/c/<string(length=2):code>"));
        assert_eq!(t.template("GET", "/c/fra"), None);
        assert_eq!(t.template("GET", "/n/-3"), Some("/n/<int(signed=True):n>"));
    }
}
