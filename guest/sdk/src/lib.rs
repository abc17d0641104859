//! The spool guest SDK: everything a job handler needs besides its own rules.
//!
//! It owns the one generation of the WIT bindings (world `handler` of
//! `spool:handler`, from `wit/` in the spool checkout) and the glue every
//! handler used to write by hand. It must not hold the rules of any one
//! handler: what a payload means, how a prompt is shaped or an answer split
//! belongs to the handler crate.
//!
//! A handler implements [`Guest`] and exports it:
//!
//! ```
//! use serde::Deserialize;
//! use spool_sdk::chat::{Message, Request};
//! use spool_sdk::{ChatMessage, ContentBlock, Guest, Job, JobError, JobOutput, ModelRequest};
//! use spool_sdk::{PriorityDecision, model, priority};
//!
//! #[derive(Deserialize)]
//! struct Ask {
//!     prompt: String,
//! }
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn admit(job: Job) -> Result<PriorityDecision, String> {
//!         let _: Ask = job.parse_payload()?;
//!         Ok(priority::decide(job.priority, &job.user_tier).into())
//!     }
//!
//!     fn shape_prompt(job: Job, _history: Vec<ChatMessage>) -> ModelRequest {
//!         Request::new(vec![Message::user(job.payload)]).into()
//!     }
//!
//!     fn parse_content(text: String) -> Vec<ContentBlock> {
//!         vec![ContentBlock::Text(text)]
//!     }
//!
//!     fn handle(job: Job) -> Result<JobOutput, JobError> {
//!         let ask: Ask = job.parse_payload()?;
//!         let reply = model::chat(&Request::new(vec![Message::user(ask.prompt)]).into())?;
//!         Ok(JobOutput::new(serde_json::json!({ "response": reply.text }), Self::parse_content(reply.text)))
//!     }
//! }
//!
//! spool_sdk::export!(Echo);
//! ```
//!
//! What is here:
//! - the generated types ([`Job`], [`JobOutput`], [`JobError`], [`ModelRequest`],
//!   [`ContentBlock`], [`EmitError`], ...), the host's interfaces ([`model`], [`events`],
//!   [`logging`], [`state`], [`messages`], [`jobs`]), the [`Guest`] trait and
//!   [`export!`], which also declares what `admit` reads ([`AdmitInputs`]);
//! - [`priority`]: the default priority rule, in plain Rust;
//! - [`chat`] and [`content`]: plain, testable chat messages, requests and
//!   content blocks that convert into the generated ones;
//! - [`payload`]: reading a job's JSON payload, with refusals that name the
//!   field at fault;
//! - [`outcome`]: building a job's output and turning model errors into job
//!   errors.
//!
//! Rules written against the plain types are unit-tested on the host target
//! (`cargo test --target x86_64-unknown-linux-gnu`); the bindings compile there
//! too, but calling the host's imports outside a component panics.

pub mod chat;
pub mod content;
pub mod outcome;
pub mod payload;
pub mod priority;

/// The bindings exactly as `wit_bindgen` generates them. Handlers use the
/// re-exports at the crate root; this module is public because [`export!`]
/// refers to it from the handler's crate.
pub mod bindings {
    wit_bindgen::generate!({
        // `handler` plus the `admission` declaration: see [`export!`](crate::export).
        world: "handler-with-admission",
        path: "../../wit",
        // Lets handlers and tests compare what the hooks return.
        additional_derives: [PartialEq],
        // `spool_sdk::export!(MyHandler)` from any crate that depends on this one.
        pub_export_macro: true,
        // The SDK's own `export!` wraps it, adding the admission declaration.
        export_macro_name: "export_bindings",
        default_bindings_module: "spool_sdk::bindings",
    });
}

pub use bindings::exports::spool::handler::admission::AdmitInputs;
pub use bindings::exports::spool::handler::hooks::Guest;
pub use bindings::spool::handler::events::EmitError;
pub use bindings::spool::handler::types::*;
pub use bindings::spool::handler::{events, jobs, logging, messages, model, state};
pub use payload::PayloadError;

/// Exports a handler: its [`Guest`] hooks, and the declaration of what its
/// `admit` reads (WIT interface `admission`), which lets the host reuse
/// `admit`'s decisions for jobs that agree on those inputs.
///
/// - `spool_sdk::export!(MyHandler)` declares that `admit` may read anything
///   (the payload included): it is called for every submission.
/// - `spool_sdk::export!(MyHandler, admit_reads: AdmitInputs::PRIORITY | AdmitInputs::USER_TIER)`
///   declares that `admit` decides on those inputs only (see
///   [`priority::READS`] for [`priority::decide`]). Declare an input exactly
///   when the rule may answer differently for jobs that differ only in it; a
///   rule that reads the payload must not declare less than
///   [`AdmitInputs::all`], or the host will give it decisions made for
///   another payload.
#[macro_export]
macro_rules! export {
    ($handler:ident) => {
        $crate::export!($handler, admit_reads: $crate::AdmitInputs::all());
    };
    ($handler:ident, admit_reads: $reads:expr) => {
        impl $crate::bindings::exports::spool::handler::admission::Guest for $handler {
            fn admit_reads() -> $crate::AdmitInputs {
                $reads
            }
        }
        $crate::bindings::export_bindings!($handler);
    };
}
