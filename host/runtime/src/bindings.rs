//! Rust bindings for the `spool:handler` world, generated from `wit/`.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../../wit",
    imports: { default: async },
    exports: { default: async },
});

// `self::`: the generated `spool` module must not be confused with a crate of that name.
pub use self::exports::spool::handler::hooks;
pub use self::spool::handler::types;
