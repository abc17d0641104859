//! Rust bindings for the `spool:handler` world, generated from `wit/`.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use exports::spool::handler::hooks;
// `self::`: under rustdoc the crate itself (also `spool`) is in scope too.
pub use self::spool::handler::types;
