//! The operator's and the guest author's commands. Each talks to a running
//! instance over HTTP or works on local files; none opens Redis itself.

pub mod admin;
pub mod dead;
pub mod guest;
