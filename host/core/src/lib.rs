//! spool-core: the engine behind the service. AI jobs queued in Redis Streams by
//! priority, run by workers through WebAssembly handlers (`spool-runtime`), paced
//! for rate-limited model APIs, with their progress in per-job event streams.
//! No HTTP server lives here: the `spool` crate puts an API and a CLI in front.
//!
//! A job's path: [`intake`] runs the handler's priority rule and hands the job
//! to [`queue`], which stores it in its priority's stream; a [`worker`] claims
//! it, runs the handler with access to [`gateway`] (model calls through the
//! shared [`limiter`] and the [`models`] clients) and [`events`], and [`queue`]
//! records the outcome. Session messages a job drives live in [`store`]; clients
//! follow job and message streams live through the instance's [`hub`] ([`follow`]).
//!
//! Which handler version runs is [`handlers`]' business: versions live in Redis,
//! are validated before activation, and every instance switches to the active
//! one; a worker resolves it from the local [`registry`] once per job.

pub mod access;
pub mod chat;
pub mod config;
pub mod connection;
pub mod embedded_redis;
pub mod events;
pub mod follow;
pub mod gateway;
pub mod handlers;
pub mod hub;
pub mod intake;
pub mod limiter;
pub mod metrics;
pub mod models;
pub mod queue;
pub mod redact;
pub mod registry;
pub mod server_check;
pub mod store;
pub mod worker;
