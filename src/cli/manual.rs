//! `warden man [COMMAND]`: the manual pages, rendered from the command-line
//! definition itself (clap_mangen), so that they never drift from it. The
//! Debian package ships `warden(1)` and one `warden-COMMAND(1)` page per
//! command, each made by this module at packaging time.

use clap::CommandFactory;

use super::Cli;

/// What the generated sections cannot say: the exit codes, the
/// environment and the files, in roff.
const TRAILER: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Clean stop; for \fBcheck\fR, the registry is valid and every \fB--connect\fR probe passed.
.TP
\fB1\fR
Invalid registry, or an endpoint failed its \fB--connect\fR probe; for client commands, warden answered with an error (or, for \fBhealth\fR, is not ready).
.TP
\fB2\fR
Usage error.
.TP
\fB3\fR
A critical service failed for good, or a critical (or the main) service can never run; also when warden cannot set itself up.
.TP
\fB4\fR
A client command could not reach the daemon.
.TP
\fBN\fR
With a \fBmain\fR service: its own exit status, when its end stopped warden.
.SH ENVIRONMENT
.TP
\fBWARDEN_CONFIG\fR
The registry file (default \fIservices.toml\fR).
.TP
\fBWARDEN_PROFILE\fR
The profile to apply, unless \fB--profile\fR is given.
.TP
\fBWARDEN_LOG\fR
The log filter (default \fIinfo\fR).
.TP
\fBWARDEN_URL\fR, \fBWARDEN_API_TOKEN\fR
The API and its bearer token, for the client commands.
.SH FILES
.TP
\fI/etc/warden/services.toml\fR
The registry of the packaged systemd unit.
.TP
\fI/etc/warden/env\fR
Variables for the unit (DSNs, the API token), read by systemd.
.TP
\fI/var/lib/warden\fR
The unit's state and working directory.
"#;

/// The page of `command` (`None`: the page of `warden` itself), or the
/// names of the known commands when there is no such command.
pub fn page(command: Option<&str>) -> Result<Vec<u8>, Vec<String>> {
    let mut cli = Cli::command();
    cli.build();
    let mut out = Vec::new();
    match command {
        None => {
            // Rendering into memory cannot fail.
            let _ = clap_mangen::Man::new(cli).render(&mut out);
            out.extend_from_slice(TRAILER.as_bytes());
        }
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name) else {
                return Err(commands());
            };
            let _ = clap_mangen::Man::new(sub.clone()).render(&mut out);
        }
    }
    Ok(out)
}

/// The commands that have a page of their own.
pub fn commands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(command: Option<&str>) -> String {
        String::from_utf8(page(command).expect("a page")).unwrap()
    }

    #[test]
    fn the_main_page_lists_every_command_and_the_exit_codes() {
        let t = text(None);
        assert!(t.starts_with(".ie"), "roff: {}", &t[..40]);
        for c in commands() {
            assert!(t.contains(&format!("warden\\-{c}(1)")), "{c} in\n{t}");
        }
        assert!(t.contains(r#".SH "EXIT STATUS""#), "{t}");
        assert!(t.contains("\\fB3\\fR\nA critical service failed"), "{t}");
    }

    #[test]
    fn a_command_page_names_its_own_options() {
        let t = text(Some("check"));
        assert!(t.contains(".TH warden-check 1"), "{t}");
        assert!(t.contains("\\-\\-connect"), "{t}");
        assert!(!t.contains("EXIT STATUS"), "{t}");
    }

    #[test]
    fn an_unknown_command_lists_the_known_ones() {
        let known = page(Some("frobnicate")).unwrap_err();
        assert!(known.contains(&"run".to_string()), "{known:?}");
        assert!(known.contains(&"completions".to_string()), "{known:?}");
        assert!(!known.contains(&"frobnicate".to_string()));
    }
}
