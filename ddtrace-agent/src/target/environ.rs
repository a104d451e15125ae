use std::{collections::HashMap, fs};

/// The target's own environment (`/proc/<pid>/environ`), so a process started with
/// `DD_SERVICE=checkout` is reported as `checkout` without any flag. Empty when unreadable.
pub fn read_environ(pid: u32) -> HashMap<String, String> {
    let Ok(bytes) = fs::read(format!("/proc/{pid}/environ")) else {
        return HashMap::new();
    };
    parse_environ(&bytes)
}

fn parse_environ(bytes: &[u8]) -> HashMap<String, String> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_on_nul_and_first_equals() {
        let env = super::parse_environ(b"DD_SERVICE=checkout\0DD_TAGS=a:b,c=d\0junk\0");
        assert_eq!(env["DD_SERVICE"], "checkout");
        assert_eq!(env["DD_TAGS"], "a:b,c=d");
        assert_eq!(env.len(), 2);
    }
}
