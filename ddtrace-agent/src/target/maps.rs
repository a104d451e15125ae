use std::path::PathBuf;

/// One file-backed object mapped by the process (several map lines collapse into one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedObject {
    /// The path as the target sees it.
    pub path: PathBuf,
    /// Device and inode: the identity of the file, stable across paths and mount namespaces.
    pub dev: String,
    pub inode: u64,
    /// Lowest mapped address.
    pub start: u64,
}

/// Parses `/proc/<pid>/maps`, keeping file-backed mappings, one entry per (device, inode).
pub fn parse_maps(text: &str) -> Vec<MappedObject> {
    let mut objects: Vec<MappedObject> = Vec::new();
    for line in text.lines() {
        // address perms offset dev inode path
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(_perms), Some(_offset), Some(dev), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = fields.next().unwrap_or("").trim_start();
        let Ok(inode) = inode.parse::<u64>() else { continue };
        if inode == 0 || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let start = range.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok()).unwrap_or(0);
        if let Some(existing) = objects.iter_mut().find(|o| o.inode == inode && o.dev == dev) {
            existing.start = existing.start.min(start);
            continue;
        }
        objects.push(MappedObject { path: PathBuf::from(path), dev: dev.to_string(), inode, start });
    }
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_mappings_and_skips_anonymous() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/bin/python3.11
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234 /usr/bin/python3.11
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000001000-7f0000002000 r-xp 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6
7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0                          [stack]
7f0000003000-7f0000004000 r-xp 00000000 fe:01 77 /tmp/gone.so (deleted)
";
        let objects = parse_maps(text);
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].path, PathBuf::from("/usr/bin/python3.11"));
        assert_eq!(objects[0].start, 0x55d0c0a00000);
        assert_eq!(objects[1].inode, 99);
    }

    #[test]
    fn paths_with_spaces_survive() {
        let text = "7f0000001000-7f0000002000 r-xp 00000000 fe:01 5 /opt/my app/lib.so\n";
        assert_eq!(parse_maps(text)[0].path, PathBuf::from("/opt/my app/lib.so"));
    }
}
