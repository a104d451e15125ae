use std::path::Path;

/// A service name for a target that has none set: the Python script or module it runs, else its
/// executable's name.
pub fn infer_service(cmdline: &[String], comm: Option<&str>) -> String {
    let base = |s: &str| Path::new(s).file_name().and_then(|n| n.to_str()).unwrap_or(s).to_string();
    if let Some(program) = cmdline.first() {
        let program_name = base(program);
        if program_name.starts_with("python") {
            let mut args = cmdline[1..].iter();
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "-m" => return args.next().map(|m| m.to_string()).unwrap_or(program_name),
                    "-c" => return program_name,
                    flag if flag.starts_with('-') => continue,
                    script => return base(script).trim_end_matches(".py").to_string(),
                }
            }
        }
        return program_name;
    }
    comm.map(str::to_string).unwrap_or_else(|| "unnamed-service".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn infers_from_script_module_or_executable() {
        assert_eq!(infer_service(&args(&["/usr/bin/python3.11", "-u", "app/main.py"]), None), "main");
        assert_eq!(infer_service(&args(&["python3", "-m", "gunicorn", "app:app"]), None), "gunicorn");
        assert_eq!(infer_service(&args(&["/usr/sbin/nginx", "-g", "daemon off;"]), None), "nginx");
        assert_eq!(infer_service(&[], Some("kworker")), "kworker");
    }
}
