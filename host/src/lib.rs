//! spool: AI jobs from Redis Streams, run by WebAssembly handlers and paced for
//! rate-limited model APIs. The binary (`main.rs`) is a thin CLI over these modules.
//!
//! A job's path: `http` validates a submission and runs the handler's priority rule
//! (`runtime`, in Wasm); `queue` stores it in its priority's stream; a `worker`
//! claims it, runs the handler with access to `models` and `events`, and `queue`
//! records the outcome. `app` wires one instance together.
//!
//! Which handler version runs is `handlers`' business: versions live in Redis, are
//! validated before activation, and every instance switches to the active one; a
//! worker resolves it from the local `registry` once per job.

pub mod admin_cli;
pub mod app;
pub mod bench;
pub mod bench_sessions;
pub mod config;
pub mod content;
pub mod dead_cli;
pub mod embedded_redis;
pub mod events;
pub mod gateway;
pub mod guest_cli;
pub mod guest_test;
pub mod handlers;
pub mod http;
pub mod intake;
pub mod limiter;
pub mod models;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod stub;
pub mod worker;
