//! The module a Python source file runs as in a process, as `__module__` names it: `__main__`
//! for the script the interpreter was started with, otherwise the file's name under the package
//! folders above it (each holding an `__init__.py`): `shop/views/users.py` is `shop.views.users`.
//! Read through `/proc/<pid>/root` (the process's own file system, a container's included) and
//! `/proc/<pid>/cwd` (a relative script path, as Python 3.8 keeps it).

use std::path::{Path, PathBuf};

/// Python's options that take a value as the next argument (`-X dev`, `-W ignore`).
const OPTIONS_WITH_VALUE: &[&str] = &["-X", "-W", "-Q"];

/// The script `pid`'s interpreter runs (`python3 app.py`), absolute, as the process sees it;
/// `None` for `-m`, `-c`, an interactive interpreter, or a program that embeds Python (gunicorn's
/// workers are `gunicorn`, or `python -m gunicorn`: their application is imported by name).
pub fn main_script(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned());
    let interpreter = args.next()?;
    let program = Path::new(&interpreter).file_name()?.to_string_lossy().into_owned();
    if !program.starts_with("python") {
        return None;
    }
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-" => return None,
            // `-m module`, `-c code`, and their attached forms (`-mflask`).
            run if run.starts_with("-m") || run.starts_with("-c") => return None,
            option if OPTIONS_WITH_VALUE.contains(&option) => {
                args.next();
            }
            option if option.starts_with('-') => {}
            script => return Some(absolute(pid, Path::new(script))),
        }
    }
    None
}

/// `path` as the process names it, made absolute against its working directory.
pub fn absolute(pid: u32, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => cwd.join(path),
        Err(_) => path.to_path_buf(),
    }
}

/// The module `file` (a code object's file name) runs as in `pid`, whose main script is
/// `main_script`. `None` for what is not a source file (`<frozen ...>`, `<string>`).
pub fn module_name(pid: u32, file: &str, main_script: Option<&Path>) -> Option<String> {
    if file.starts_with('<') {
        return None;
    }
    let file = absolute(pid, Path::new(file));
    if main_script == Some(file.as_path()) {
        return Some("__main__".to_owned());
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let in_process = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let stem = file.file_stem()?.to_string_lossy().into_owned();
    let mut parts = if stem == "__init__" { Vec::new() } else { vec![stem] };
    let mut folder = file.parent();
    while let Some(package) = folder.filter(|f| in_process(&f.join("__init__.py")).is_file()) {
        parts.push(package.file_name()?.to_string_lossy().into_owned());
        folder = package.parent();
    }
    parts.reverse();
    (!parts.is_empty()).then(|| parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_named_by_its_packages_and_the_script_is_main() {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("ddtrace-modules-{pid}"));
        let package = dir.join("shop").join("views");
        std::fs::create_dir_all(&package).unwrap();
        std::fs::write(dir.join("shop").join("__init__.py"), "").unwrap();
        std::fs::write(package.join("__init__.py"), "").unwrap();
        let users = package.join("users.py");
        std::fs::write(&users, "").unwrap();
        let script = dir.join("app.py");
        std::fs::write(&script, "").unwrap();

        let name = |file: &Path, main: Option<&Path>| module_name(pid, file.to_str().unwrap(), main);
        assert_eq!(name(&users, None).as_deref(), Some("shop.views.users"));
        assert_eq!(name(&package.join("__init__.py"), None).as_deref(), Some("shop.views"));
        assert_eq!(name(&script, Some(&script)).as_deref(), Some("__main__"));
        assert_eq!(name(&script, None).as_deref(), Some("app"));
        assert_eq!(module_name(pid, "<frozen runpy>", None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
