//! spool: AI jobs from Redis Streams, run by WebAssembly handlers and paced for
//! rate-limited model APIs. The binary (`main.rs`) is a thin CLI over these modules.
//!
//! A job's path: `http` validates a submission and runs the handler's priority rule
//! (`runtime`, in Wasm); `queue` stores it in its priority's stream; a `worker`
//! claims it, runs the handler with access to `models` and `events`, and `queue`
//! records the outcome. `app` wires one instance together.

pub mod app;
pub mod bench;
pub mod bench_sessions;
pub mod config;
pub mod content;
pub mod embedded_redis;
pub mod events;
pub mod http;
pub mod models;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod stub;
pub mod worker;
