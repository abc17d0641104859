//! spool-runtime: the host side of the `spool:handler` WIT contract.
//!
//! Compiles handler components and runs their hooks, each call in a fresh
//! instance under the sandbox's limits (deadline, memory, call caps, output
//! size). It owns no I/O beyond wasmtime: a job's side effects go through the
//! [`JobHost`] the caller hands in (the worker in `spool-core`, or the scripted
//! host of [`guest_test`]), so this crate depends on no Redis, HTTP or model
//! client.
//!
//! - [`engine`]: the `Engine`, instance pool and epoch ticker; [`Runtime`] runs hooks.
//! - [`admission`]: what a rule declares it reads, and the decisions reused from it.
//! - `bindings`, `imports`, `output`, `sandbox`: the generated world, the
//!   imports a guest may call (with their budgets), captured stdout/stderr, limits.
//! - [`model`]: protocol-neutral model request/reply/error types.
//! - [`content`]: content blocks as their stored JSON form.
//! - [`validate`], [`cache`]: checks an upload before it may serve; compiled artifacts on disk.
//! - [`guest_test`]: runs one hook against a fixture, for `spool guest test`.

pub mod admission;
mod bindings;
pub mod cache;
pub mod content;
pub mod engine;
pub mod event_type;
pub mod failure;
pub mod guest_test;
mod imports;
pub mod model;
mod output;
mod sandbox;
pub mod validate;

pub use engine::*;
pub use event_type::EventType;
pub use failure::FailureKind;
