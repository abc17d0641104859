//! spool, the service: an HTTP API, a WebSocket channel and a command line in
//! front of `spool-core`, plus the stub model server and the benchmarks. The
//! binary (`main.rs`) is a thin CLI over these modules.
//!
//! - [`app`]: wires one instance together (Redis, handlers, workers, HTTP).
//! - [`http`]: the API routes, SSE and WebSocket.
//! - [`cli`]: the operator and guest-author commands (deploy, dead letters, guest test/new).
//! - [`stub`]: a model server speaking the Ollama and OpenAI protocols, for offline use and tests.
//! - [`bench`]: commands that print measured figures against a baseline of the same run.
//! - [`local_cluster`]: a real Redis Cluster on loopback, for tests and benchmarks.
//!
//! Built-in handlers are the components built from `guest/` by `build.rs`.

pub mod admin_token;
pub mod app;
pub mod bench;
pub mod cli;
pub mod http;
pub mod local_cluster;
pub mod stub;

/// Handler components built from `guest/` and embedded by `build.rs`; seeded
/// into the Redis registry as each handler's first version when it has none.
pub const BUILT_IN: &[(&str, &[u8])] = &[
    (
        "chat",
        include_bytes!(concat!(env!("OUT_DIR"), "/chat.wasm")),
    ),
    (
        "embed",
        include_bytes!(concat!(env!("OUT_DIR"), "/embed.wasm")),
    ),
    (
        "pipeline",
        include_bytes!(concat!(env!("OUT_DIR"), "/pipeline.wasm")),
    ),
];
