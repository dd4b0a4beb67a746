//! The command line. Each command parses its arguments,
//! calls the library, prints, and maps the outcome to a documented exit
//! code.

/// `println!` that ignores a closed pipe (`warden check | head`) instead
/// of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that ignores a closed pipe.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `eprint!` that ignores a closed stderr.
macro_rules! err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

mod check;
mod client;
mod manual;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::services::Kinds;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Exit codes, stable and documented in the README.
pub mod exit {
    /// Clean stop, valid registry.
    pub const OK: u8 = 0;
    /// Invalid configuration.
    pub const INVALID: u8 = 1;
    /// Usage error (bad flags, unknown `--only` names).
    pub const USAGE: u8 = 2;
    /// A critical service failed for good.
    pub const CRITICAL_FAILED: u8 = 3;
    /// A client command could not reach the daemon.
    pub const UNREACHABLE: u8 = 4;
}

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Supervisor of processes and data-plane workers",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry: start every service and supervise it until stopped.
    Run(RunArgs),
    /// Validate the registry and print the startup plan (dry run).
    Check(CheckArgs),
    /// Print the dependency graph.
    Graph(GraphArgs),
    /// Print the JSON Schema of services.toml.
    Schema,
    /// Show every service of a running daemon.
    Status {
        #[command(flatten)]
        client: client::ClientArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
        /// Keep the table on screen, redrawn as states change.
        #[arg(long, conflicts_with = "format")]
        watch: bool,
    },
    /// Print a service's captured output.
    Logs {
        name: String,
        /// Keep printing new lines as they come, like `tail -f`.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to print first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Print the lines as the service wrote them, control characters
        /// included (on a terminal they are shown escaped, `\x1b`, `\r`).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Exit 0 when the daemon is ready (`/readyz` is 200): for Docker's HEALTHCHECK.
    Health {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Start a stopped, failed or completed service.
    Start {
        name: String,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Stop a service.
    Stop {
        name: String,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Restart a service.
    Restart {
        name: String,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Run a kind-specific action of a service, with JSON arguments.
    Action {
        name: String,
        action: String,
        /// Arguments as a JSON object.
        args: Option<String>,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Reload the daemon's registry.
    Reload {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff): warden's own, or the page of one COMMAND.
    Man {
        /// The command whose page to print (`warden-COMMAND(1)`).
        command: Option<String>,
    },
}

impl Command {
    /// The client's arguments, for the commands that talk to a daemon.
    fn client_mut(&mut self) -> Option<&mut client::ClientArgs> {
        match self {
            Command::Status { client, .. }
            | Command::Logs { client, .. }
            | Command::Health { client }
            | Command::Start { client, .. }
            | Command::Stop { client, .. }
            | Command::Restart { client, .. }
            | Command::Action { client, .. }
            | Command::Reload { client } => Some(client),
            Command::Run(_)
            | Command::Check(_)
            | Command::Graph(_)
            | Command::Schema
            | Command::Completions { .. }
            | Command::Man { .. } => None,
        }
    }
}

/// Which registry to read.
#[derive(Debug, Args, Clone)]
pub struct RegistryArgs {
    /// Registry file.
    #[arg(
        short = 'c',
        long = "config",
        env = "WARDEN_CONFIG",
        default_value = "services.toml"
    )]
    pub config: PathBuf,
    /// Profile to apply (overrides WARDEN_PROFILE and [warden] profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// Only these services and their dependencies (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Log format (default: text on a terminal, JSON otherwise).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
    /// Also probe each external endpoint once (PostgreSQL, Redis, HTTP, TCP).
    #[arg(long)]
    pub connect: bool,
    /// Include each service's resolved settings (profile, defaults and
    /// variables applied; secrets masked) in the JSON output.
    #[arg(long)]
    pub resolved: bool,
    /// Time each `--connect` probe may take.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    main_with(Kinds::new())
}

/// The kinds of a run of the registry at `config`: the built-in ones, then
/// `extra` (which win on the same name).
fn kinds_for(config: &std::path::Path, extra: &Kinds) -> Kinds {
    let mut kinds = crate::services::builtin(crate::services::process::base_dir_of(config));
    kinds.extend(extra);
    kinds
}

/// The command line with extra kinds: a crate that uses warden as a library
/// registers its kinds and calls this from its own `main`.
pub fn main_with(extra: Kinds) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let mut cli = cli;
    if let Some(client) = cli.command.client_mut()
        && let Err(e) = client.load_token_file()
    {
        errln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    ExitCode::from(match cli.command {
        Command::Run(a) => run::run(&a, kinds_for(&a.registry.config, &extra)),
        Command::Check(a) => check::check(&a, &kinds_for(&a.registry.config, &extra)),
        Command::Graph(a) => check::graph(&a, &kinds_for(&a.registry.config, &extra)),
        Command::Status {
            client,
            watch: true,
            ..
        } => client::watch(&client),
        Command::Status { client, format, .. } => {
            client::status(&client, format == CheckFormat::Json)
        }
        Command::Logs {
            name,
            follow,
            tail,
            raw,
            client,
        } => client::logs(&client, &name, tail, follow, raw),
        Command::Health { client } => client::health(&client),
        Command::Start { name, client } => {
            client::control(&client, &format!("/v1/services/{name}/start"), None)
        }
        Command::Stop { name, client } => {
            client::control(&client, &format!("/v1/services/{name}/stop"), None)
        }
        Command::Restart { name, client } => {
            client::control(&client, &format!("/v1/services/{name}/restart"), None)
        }
        Command::Action {
            name,
            action,
            args,
            client,
        } => client::control(
            &client,
            &format!("/v1/services/{name}/actions/{action}"),
            Some(args.as_deref().unwrap_or("{}")),
        ),
        Command::Reload { client } => client::control(&client, "/v1/reload", None),
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "warden", &mut out);
            exit::OK
        }
        Command::Man { command } => match manual::page(command.as_deref()) {
            Ok(page) => {
                use std::io::Write as _;
                let _ = std::io::stdout().write_all(&page);
                exit::OK
            }
            Err(known) => {
                errln!(
                    "error: no command {:?}; known: {}",
                    command.unwrap_or_default(),
                    known.join(", ")
                );
                exit::USAGE
            }
        },
        Command::Schema => {
            let kinds = kinds_for(std::path::Path::new("."), &extra);
            outln!(
                "{}",
                pretty(&crate::config::schema::registry_schema(&kinds.table()))
            );
            exit::OK
        }
    })
}

pub(crate) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
