//! Rust bindings for the `spool:handler` world, generated from `wit/`.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

// `self::`: under rustdoc the crate itself (also named `spool`) is in scope too.
pub use self::exports::spool::handler::hooks;
pub use self::spool::handler::types;
