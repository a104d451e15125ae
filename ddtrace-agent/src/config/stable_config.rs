//! Datadog's stable configuration files, as the Datadog agent's fleet automation and its users
//! write them: `/etc/datadog-agent/application_monitoring.yaml` (local) and
//! `/etc/datadog-agent/managed/datadog-agent/stable/application_monitoring.yaml` (fleet-managed),
//! each a default configuration plus rules whose selectors match a process's arguments,
//! environment variables or language. Evaluated per process with libdatadog's library-config
//! crate, as in-process tracers evaluate them for themselves at start.
//!
//! Precedence, as for Datadog's tracers: the fleet file over the process's environment over the
//! local file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use libdd_library_config::{Configurator, LibraryConfigSource, ProcessInfo};

/// Where the two files are, under a directory (`/etc/datadog-agent` on a host).
pub struct StableConfiguration {
    local: PathBuf,
    fleet: PathBuf,
    configurator: Configurator,
    /// A broken file is said once, not at every process.
    warned: AtomicBool,
}

/// What the files say for one process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StableSettings {
    pub local: HashMap<String, String>,
    pub fleet: HashMap<String, String>,
}

impl StableConfiguration {
    pub fn under(directory: &Path) -> Self {
        Self {
            local: directory.join("application_monitoring.yaml"),
            fleet: directory.join("managed/datadog-agent/stable/application_monitoring.yaml"),
            configurator: Configurator::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether either file is there (checked when node mode starts: a file written later is
    /// read for processes judged then, but the kernel reports every exec only if one was there).
    pub fn files_exist(&self) -> bool {
        self.local.exists() || self.fleet.exists()
    }

    /// The settings the files give a process with these arguments, environment and language.
    /// Missing files give nothing; a file that does not parse gives nothing, said once.
    pub fn for_process(&self, args: &[String], environ: &HashMap<String, String>, language: &str) -> StableSettings {
        let info = ProcessInfo {
            args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            envp: environ.iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect(),
            language: language.as_bytes().to_vec(),
        };
        let mut settings = StableSettings::default();
        match self.configurator.get_config_from_file(&self.local, &self.fleet, &info).data() {
            Ok(configs) => {
                for config in configs {
                    let side = match config.source {
                        LibraryConfigSource::FleetStableConfig => &mut settings.fleet,
                        _ => &mut settings.local,
                    };
                    side.insert(config.name, config.value);
                }
            }
            Err(error) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, local = %self.local.display(), fleet = %self.fleet.display(), "stable configuration unreadable; ignored");
                }
            }
        }
        settings
    }
}

impl StableSettings {
    /// The process's environment as its tracer would see its configuration: the local file's
    /// values under it, the fleet file's over it.
    pub fn over(&self, environ: &HashMap<String, String>) -> HashMap<String, String> {
        let mut effective = self.local.clone();
        effective.extend(environ.iter().map(|(k, v)| (k.clone(), v.clone())));
        effective.extend(self.fleet.iter().map(|(k, v)| (k.clone(), v.clone())));
        effective
    }
}

/// The language a process runs, for the files' `language` selectors, by its executable's name.
pub fn runtime_language(executable: &str) -> &'static str {
    let name = executable.rsplit('/').next().unwrap_or(executable);
    match name {
        n if n.starts_with("python") => "python",
        "java" => "java",
        "node" | "nodejs" => "nodejs",
        n if n.starts_with("ruby") => "ruby",
        n if n.starts_with("php") => "php",
        "dotnet" => "dotnet",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_select_by_arguments_and_the_fleet_file_wins_over_the_environment() {
        let dir = std::env::temp_dir().join(format!("ddtrace-stable-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("managed/datadog-agent/stable")).unwrap();
        std::fs::write(
            dir.join("application_monitoring.yaml"),
            "rules:\n  - selectors:\n      - origin: process_arguments\n        operator: equals\n        matches: [\"worker.py\"]\n    configuration:\n      DD_SERVICE: billing\n      DD_ENV: local-env\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("managed/datadog-agent/stable/application_monitoring.yaml"),
            "apm_configuration_default:\n  DD_VERSION: \"9.9\"\n",
        )
        .unwrap();
        let stable = StableConfiguration::under(&dir);
        let environ: HashMap<String, String> =
            [("DD_ENV".to_string(), "from-env".to_string()), ("DD_VERSION".to_string(), "1.0".to_string())].into();
        let settings = stable.for_process(&["python3".into(), "worker.py".into()], &environ, "python");
        let effective = settings.over(&environ);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(effective["DD_SERVICE"], "billing");
        assert_eq!(effective["DD_ENV"], "from-env", "the environment over the local file");
        assert_eq!(effective["DD_VERSION"], "9.9", "the fleet file over the environment");
        // Another process: only the fleet default.
        let other = stable.for_process(&["python3".into(), "other.py".into()], &environ, "python");
        assert!(other.local.is_empty() && other.fleet.is_empty(), "files gone: {other:?}");
    }

    #[test]
    fn missing_files_give_nothing() {
        let stable = StableConfiguration::under(Path::new("/nonexistent/datadog-agent"));
        assert_eq!(stable.for_process(&["x".into()], &HashMap::new(), ""), StableSettings::default());
    }

    #[test]
    fn languages_by_executable() {
        assert_eq!(runtime_language("/usr/bin/python3.11"), "python");
        assert_eq!(runtime_language("/usr/lib/jvm/bin/java"), "java");
        assert_eq!(runtime_language("/usr/bin/node"), "nodejs");
        assert_eq!(runtime_language("/usr/sbin/nginx"), "");
    }
}
