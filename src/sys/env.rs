//! What a child inherits of warden's environment.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// The variables that filled a secret setting of the registry in force
/// (`Registry::secret_vars`), set when a registry is adopted (at start and
/// at each reload).
static WITHHELD: RwLock<Option<Arc<BTreeSet<String>>>> = RwLock::new(None);

/// Adopts the secret variables of the registry in force: children started
/// from now on do not inherit them.
pub fn withhold(names: &BTreeSet<String>) {
    let mut w = WITHHELD.write().unwrap_or_else(|e| e.into_inner());
    *w = Some(Arc::new(names.clone()));
}

/// Whether a child inherits warden's variable `name` by default: not
/// warden's own (`WARDEN_*`: the API token, its URL, its log filter), not
/// one that filled a secret setting (a child running as another user would
/// read it from its own environment and use it against the API or a
/// database), not warden's systemd channel.
fn inherited(name: &str, withheld: &BTreeSet<String>) -> bool {
    !(name.starts_with("WARDEN_")
        || withheld.contains(name)
        || matches!(
            name,
            "NOTIFY_SOCKET" | "WATCHDOG_USEC" | "WATCHDOG_PID" | "LISTEN_FDS" | "LISTEN_PID"
        ))
}

/// Sets what `cmd` inherits of warden's environment: exactly the variables
/// `named` (`inherit_env`), or, without a list, all of them but those
/// [`inherited`] refuses.
pub fn scrub(cmd: &mut std::process::Command, named: Option<&[String]>) {
    match named {
        Some(names) => {
            cmd.env_clear();
            for name in names {
                if let Some(v) = std::env::var_os(name) {
                    cmd.env(name, v);
                }
            }
        }
        None => {
            let withheld = WITHHELD
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            for (name, _) in std::env::vars_os() {
                if !inherited(&name.to_string_lossy(), &withheld) {
                    cmd.env_remove(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withheld_variable_is_removed_and_a_named_one_kept() {
        // PATH is set in every test process.
        withhold(&["PATH".to_string()].into());
        let mut cmd = std::process::Command::new("true");
        scrub(&mut cmd, None);
        assert!(
            cmd.get_envs().any(|(k, v)| k == "PATH" && v.is_none()),
            "PATH withheld"
        );
        let mut named = std::process::Command::new("true");
        scrub(&mut named, Some(&["PATH".to_string()]));
        assert!(
            named.get_envs().any(|(k, v)| k == "PATH" && v.is_some()),
            "named, inherited though withheld"
        );
        withhold(&BTreeSet::new());
        let mut cmd = std::process::Command::new("true");
        scrub(&mut cmd, None);
        assert!(
            !cmd.get_envs().any(|(k, _)| k == "PATH"),
            "no longer withheld"
        );
    }

    #[test]
    fn warden_s_own_secret_and_systemd_variables_are_not_inherited() {
        let withheld: BTreeSet<String> = ["API_KEY".to_string()].into();
        for name in [
            "WARDEN_API_TOKEN",
            "WARDEN_URL",
            "API_KEY",
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
        ] {
            assert!(!inherited(name, &withheld), "{name}");
        }
        for name in ["PATH", "HOME", "API_KEY2", "MY_WARDEN_X", "LANG"] {
            assert!(inherited(name, &withheld), "{name}");
        }
    }
}
