//! warden as a library: a crate of your own implements [`Service`] for a
//! new kind, registers a factory for it, and hands the command line to
//! warden. Everything else (the registry, `check`, the supervisor, restart
//! policies, signals) works for the new kind as for the built-in ones.
//!
//! ```toml
//! [services.greeter]
//! kind = "greeter"            # the kind this example registers
//! greeting = "hello"          # its own settings, read by its factory
//! every = "1s"
//! ```
//!
//! Run it with `cargo run --example custom_service -- run -c greeter.toml`.

use std::process::ExitCode;
use std::time::Duration;

use warden::config::{KindSpec, ServiceSpec};
use warden::services::{BoxFuture, Context, Factories, Factory, Service, ServiceError};

/// The settings of `kind = "greeter"`, from the service's table.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GreeterSettings {
    greeting: String,
    #[serde(default = "one_second", with = "humantime_serde_lite")]
    every: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// Durations as humantime strings ("1s"), like the rest of the registry.
mod humantime_serde_lite {
    use std::time::Duration;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

struct GreeterFactory;

impl Factory for GreeterFactory {
    fn kind(&self) -> &str {
        "greeter"
    }

    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        let KindSpec::Custom { settings, .. } = &spec.kind else {
            return Err(ServiceError("not a greeter".into()));
        };
        let settings: GreeterSettings = serde_json::from_value(settings.clone())
            .map_err(|e| ServiceError(format!("services.{}: {e}", spec.name)))?;
        Ok(Box::new(Greeter { settings }))
    }
}

struct Greeter {
    settings: GreeterSettings,
}

impl Service for Greeter {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            ctx.ready();
            let mut count = 0u64;
            loop {
                count += 1;
                // warden wraps the run in a span carrying `service = NAME`.
                tracing::info!(count, "{}", self.settings.greeting);
                ctx.details().set("greetings", count);
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.every) => {}
                    _ = ctx.cancelled() => return Ok(()),
                }
            }
        })
    }
}

fn main() -> ExitCode {
    let mut kinds = Factories::new();
    kinds.register(GreeterFactory);
    warden::cli::main_with(kinds)
}
