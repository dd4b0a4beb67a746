//! warden as a library: a crate of your own adds a kind, registers it the
//! way warden registers its built-in ones, and hands the command line to
//! warden. The kind's settings are typed: `warden check` reports a wrong
//! key with its line and a caret, `warden schema` describes them, and the
//! kind's action is listed in `/openapi.json` and runs over the API.
//!
//! ```toml
//! [services.greeter]
//! kind = "greeter"            # the kind this example registers
//! greeting = "hello"          # its own settings, typed below
//! every = "1s"
//! ```
//!
//! Run it with `cargo run --example custom_service -- run -c greeter.toml`,
//! then `warden action greeter greet '{"name": "you"}'`.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value as Json, json};
use warden::config::{Action, Runs, ServiceSpec, Settings};
use warden::services::{
    ActionError, BoxFuture, Context, Details, Factory, Kinds, Registration, Service, ServiceError,
    settings_of,
};

warden::config_table! {
    /// `kind = "greeter"`: logs a greeting now and then.
    pub struct GreeterSettings {
        /// What to say.
        pub greeting: String,
        /// Time between greetings.
        pub every: Duration = Duration::from_secs(1),
    }
}

/// What only the kind knows: nothing to probe, no database.
impl Settings for GreeterSettings {}

struct GreeterFactory;

impl Factory for GreeterFactory {
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        Ok(Box::new(Greeter {
            settings: settings_of::<GreeterSettings>(spec)?.clone(),
        }))
    }

    /// `greet`: answers the greeting addressed to `name`.
    fn action(
        &self,
        spec: &ServiceSpec,
        _action: &str,
        args: Json,
        details: Details,
    ) -> BoxFuture<Result<Json, ActionError>> {
        let greeting = settings_of::<GreeterSettings>(spec).map(|s| s.greeting.clone());
        Box::pin(async move {
            let name = match args.get("name") {
                None => "world",
                Some(n) => n
                    .as_str()
                    .ok_or_else(|| ActionError::BadRequest("name must be a string".into()))?,
            };
            let greetings = details.snapshot().get("greetings").cloned();
            Ok(json!({"said": format!("{}, {name}", greeting?), "greetings": greetings}))
        })
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

/// The kind's one registration: its name, how it runs, its settings type,
/// its action with the shapes of its body and answer.
fn greeter() -> Registration {
    Registration::new::<GreeterSettings>("greeter", Runs::InProcess, GreeterFactory).action(
        Action::new("greet", "Answers the greeting, addressed to `name`.")
            .request(json!({"type": "object", "properties": {"name": {"type": "string"}}}))
            .response(json!({
                "type": "object",
                "properties": {"said": {"type": "string"}, "greetings": {"type": "integer", "nullable": true}},
                "required": ["said"]
            })),
    )
}

fn main() -> ExitCode {
    let mut kinds = Kinds::new();
    kinds.register(greeter());
    warden::cli::main_with(kinds)
}
