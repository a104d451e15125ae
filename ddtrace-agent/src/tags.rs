//! A span's tags: a handful of entries, looked up by name, built once per span and read once
//! (by the exporter). A vector with a linear search does that with one allocation, where a
//! `BTreeMap` took a node per few entries, and a profile of the daemon under load showed its
//! inserts, lookups and drops among the top costs per span.

use std::{borrow::Cow, fmt};

/// A tag's name: nearly always a literal (`span.kind`, `db.system`), so a span's tags allocate
/// for their values only. Looked up with a plain `&str`.
pub type TagName = Cow<'static, str>;

/// Tags by name, each name once (inserting a name again replaces its value), in the order they
/// were first inserted.
#[derive(Clone, PartialEq)]
pub struct TagMap<V> {
    entries: Vec<(TagName, V)>,
}

impl<V> Default for TagMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TagMap<V> {
    pub const fn new() -> Self {
        Self { entries: Vec::new() }
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: Vec::with_capacity(capacity) }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries.iter().position(|(name, _)| name == key)
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: TagName, value: V) -> Option<V> {
        match self.position(&key) {
            Some(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// The value of `key`, inserted with `value()` first when absent.
    pub fn get_or_insert_with(&mut self, key: TagName, value: impl FnOnce() -> V) -> &mut V {
        let at = match self.position(&key) {
            Some(at) => at,
            None => {
                self.entries.push((key, value()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[at].1
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.iter().find(|(name, _)| name == key).map(|(_, value)| value)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.position(key).map(|at| self.entries.remove(at).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TagName, &V)> {
        self.entries.iter().map(|(name, value)| (name, value))
    }
}

impl<V> Extend<(TagName, V)> for TagMap<V> {
    fn extend<I: IntoIterator<Item = (TagName, V)>>(&mut self, entries: I) {
        for (name, value) in entries {
            self.insert(name, value);
        }
    }
}

impl<V> FromIterator<(TagName, V)> for TagMap<V> {
    fn from_iter<I: IntoIterator<Item = (TagName, V)>>(entries: I) -> Self {
        let mut map = Self::new();
        map.extend(entries);
        map
    }
}

impl<V> IntoIterator for TagMap<V> {
    type Item = (TagName, V);
    type IntoIter = std::vec::IntoIter<(TagName, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, V> IntoIterator for &'a TagMap<V> {
    type Item = (&'a TagName, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (TagName, V)>, fn(&'a (TagName, V)) -> (&'a TagName, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(name, value)| (name, value))
    }
}

impl<V> std::ops::Index<&str> for TagMap<V> {
    type Output = V;

    fn index(&self, key: &str) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no tag {key:?}"))
    }
}

impl<V: fmt::Debug> fmt::Debug for TagMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_kept_once_with_its_last_value_in_first_insertion_order() {
        let mut tags: TagMap<String> = TagMap::new();
        assert_eq!(tags.insert("b".into(), "1".into()), None);
        tags.insert("a".into(), "2".into());
        assert_eq!(tags.insert("b".into(), "3".into()).as_deref(), Some("1"));
        tags.extend([("c".into(), "4".into()), ("a".into(), "5".into())]);
        let seen: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
        assert_eq!(seen, [("b", "3"), ("a", "5"), ("c", "4")]);
        assert_eq!((tags["a"].as_str(), tags.get("z"), tags.len()), ("5", None, 3));
        assert_eq!(tags.remove("a").as_deref(), Some("5"));
        assert!(!tags.contains_key("a"));
        *tags.get_or_insert_with("d".into(), || "6".into()) += "!";
        assert_eq!(tags.get_or_insert_with("d".into(), || unreachable!()).as_str(), "6!");
    }
}
