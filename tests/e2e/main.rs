//! End-to-end tests: real redis-server, real guest components, real `spool`
//! processes, the stub model server over loopback.

mod browser;
mod support;

mod admission;
mod bad_input;
mod batching;
mod bulk;
mod cancel;
mod chat_support;
mod cluster_bench;
mod cluster_nodes;
mod console;
mod contract;
mod conversations;
mod deltas;
mod design_c;
mod design_d;
mod design_e;
mod embeddings;
mod fencing;
mod foundation;
mod guest_chat;
mod guest_cli;
mod guest_pipeline;
mod guests;
mod hot_swap;
mod limits;
mod metrics;
mod model_clients;
mod openai_compat;
mod openapi;
mod operating;
mod promote;
mod quotas;
mod races;
mod reliability;
mod replicas;
mod sandbox;
mod secrets;
mod sessions;
mod state;
mod trust;
mod watch_scale;
mod watchers;
