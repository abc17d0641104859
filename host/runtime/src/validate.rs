//! Checks an uploaded handler before it may serve: it is WebAssembly, it is a
//! component (not a core module), it implements the `spool:handler` world with
//! the contract's exact types, and a smoke run of the pure hooks succeeds.
//!
//! Owns the rules and the wording of every rejection (each names what is wrong).
//! It does not compile (the cache does), store or activate anything.

use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Type};

use crate::{HandlerComponent, Job, Runtime};

/// The world every handler implements (wit/world.wit).
pub const WORLD: &str = "spool:handler/handler@0.2.0";
/// The interface the host calls into.
pub const HOOKS_EXPORT: &str = "spool:handler/hooks@0.2.0";
const HOOKS: [&str; 4] = ["admit", "shape-prompt", "parse-content", "handle"];
/// Interfaces the host provides besides WASI.
const PROVIDED_PREFIXES: [&str; 2] = ["spool:handler/", "wasi:"];
/// A smoke run is three pure calls; a guest that needs longer is broken.
const SMOKE_DEADLINE: Duration = Duration::from_secs(5);

/// Why an upload was refused. `code` is stable for clients; `message` tells a
/// person what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Bytes that cannot be a component are refused before any compiling.
pub fn check_header(bytes: &[u8], max_bytes: usize) -> Result<(), Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(
            "empty_upload",
            "the upload is empty; send the component's bytes as the request body",
        ));
    }
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            "too_large",
            format!(
                "the component is {} bytes; the limit is {max_bytes}",
                bytes.len()
            ),
        ));
    }
    if wasmparser::Parser::is_component(bytes) {
        return Ok(());
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(Rejection::new(
            "core_module",
            format!(
                "this is a core WebAssembly module, not a component: spool runs components of the `{WORLD}` world. \
                 Build the guest for wasm32-wasip2 (cargo build --target wasm32-wasip2), or wrap the module with `wasm-tools component new`"
            ),
        ));
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(Rejection::new(
        "not_wasm",
        format!(
            "the upload is not WebAssembly: a component starts with 00 61 73 6d 0d 00 01 00 (\"\\0asm\", component layer), this one with {}",
            head.join(" ")
        ),
    ))
}

/// The hook signatures of the contract, taken from a component built from the
/// same WIT files as the host (a built-in handler).
pub struct Contract {
    hooks: Vec<(&'static str, ComponentFunc)>,
}

impl Contract {
    pub fn from_component(engine: &Engine, reference: &Component) -> anyhow::Result<Self> {
        let hooks = hook_functions(engine, reference)
            .map_err(|rejection| anyhow::anyhow!("the reference handler: {rejection}"))?;
        Ok(Self { hooks })
    }
}

/// Checks exports and imports against the handler world, naming the first
/// missing or mismatched item.
pub fn check_world(
    engine: &Engine,
    component: &Component,
    contract: &Contract,
) -> Result<(), Rejection> {
    let component_type = component.component_type();
    for (name, _) in component_type.imports(engine) {
        if !PROVIDED_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            return Err(Rejection::new(
                "wrong_world",
                format!(
                    "the component imports `{name}`, which spool does not provide: a `{WORLD}` handler may import only \
                     spool:handler/{{model,events,logging,state}} and WASI"
                ),
            ));
        }
    }
    let found = hook_functions(engine, component)?;
    for ((hook, expected), (_, actual)) in contract.hooks.iter().zip(&found) {
        if let Some(difference) = signature_difference(expected, actual) {
            return Err(Rejection::new(
                "wrong_world",
                format!(
                    "`{HOOKS_EXPORT}` function `{hook}` does not match the contract of `{WORLD}`: {difference}"
                ),
            ));
        }
    }
    Ok(())
}

fn hook_functions(
    engine: &Engine,
    component: &Component,
) -> Result<Vec<(&'static str, ComponentFunc)>, Rejection> {
    let component_type = component.component_type();
    let Some(export) = component_type.get_export(engine, HOOKS_EXPORT) else {
        let exports: Vec<String> = component_type
            .exports(engine)
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        let exports = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(Rejection::new(
            "wrong_world",
            format!(
                "the component does not export `{HOOKS_EXPORT}`, so it is not a `{WORLD}` handler (it exports {exports})"
            ),
        ));
    };
    let ComponentItem::ComponentInstance(hooks) = export.ty else {
        return Err(Rejection::new(
            "wrong_world",
            format!("`{HOOKS_EXPORT}` must be an exported interface instance, not a single item"),
        ));
    };
    HOOKS
        .iter()
        .map(|&hook| match hooks.get_export(engine, hook).map(|e| e.ty) {
            Some(ComponentItem::ComponentFunc(func)) => Ok((hook, func)),
            Some(_) => Err(Rejection::new(
                "wrong_world",
                format!("`{HOOKS_EXPORT}` exports `{hook}`, but not as a function"),
            )),
            None => Err(Rejection::new(
                "wrong_world",
                format!(
                    "`{HOOKS_EXPORT}` lacks the function `{hook}` (a handler exports {})",
                    HOOKS.join(", ")
                ),
            )),
        })
        .collect()
}

fn signature_difference(expected: &ComponentFunc, actual: &ComponentFunc) -> Option<String> {
    let expected_params: Vec<(&str, Type)> = expected.params().collect();
    let actual_params: Vec<(&str, Type)> = actual.params().collect();
    if expected_params.len() != actual_params.len() {
        let names = |params: &[(&str, Type)]| {
            params
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!(
            "it takes {} parameter(s) ({}), the contract {} ({})",
            actual_params.len(),
            names(&actual_params),
            expected_params.len(),
            names(&expected_params)
        ));
    }
    for ((name, want), (_, got)) in expected_params.iter().zip(&actual_params) {
        if let Some(difference) = type_difference(want, got) {
            return Some(format!("parameter `{name}`: {difference}"));
        }
    }
    let expected_results: Vec<Type> = expected.results().collect();
    let actual_results: Vec<Type> = actual.results().collect();
    if expected_results.len() != actual_results.len() {
        return Some(format!(
            "it returns {} value(s), the contract {}",
            actual_results.len(),
            expected_results.len()
        ));
    }
    expected_results
        .iter()
        .zip(&actual_results)
        .find_map(|(want, got)| type_difference(want, got).map(|d| format!("result: {d}")))
}

/// The first place where two types differ, as a path and both sides.
fn type_difference(expected: &Type, found: &Type) -> Option<String> {
    if expected == found {
        return None;
    }
    let nested = |what: String, inner: Option<String>| inner.map(|d| format!("{what}: {d}"));
    let mismatch = || {
        Some(format!(
            "expected {}, found {}",
            describe(expected),
            describe(found)
        ))
    };
    match (expected, found) {
        (Type::Record(want), Type::Record(got)) => {
            let want: Vec<_> = want.fields().map(|f| (f.name.to_owned(), f.ty)).collect();
            let got: Vec<_> = got.fields().map(|f| (f.name.to_owned(), f.ty)).collect();
            for (index, (name, ty)) in want.iter().enumerate() {
                match got.get(index) {
                    Some((got_name, got_ty)) if got_name == name => {
                        if let Some(d) =
                            nested(format!("field `{name}`"), type_difference(ty, got_ty))
                        {
                            return Some(d);
                        }
                    }
                    Some((got_name, _)) => {
                        return Some(format!(
                            "field {} is `{got_name}`, expected `{name}`",
                            index + 1
                        ));
                    }
                    None => return Some(format!("record lacks field `{name}`")),
                }
            }
            got.get(want.len())
                .map(|(extra, _)| format!("record has an extra field `{extra}`"))
        }
        (Type::Variant(want), Type::Variant(got)) => {
            let want: Vec<_> = want.cases().map(|c| (c.name.to_owned(), c.ty)).collect();
            let got: Vec<_> = got.cases().map(|c| (c.name.to_owned(), c.ty)).collect();
            let names = |cases: &[(String, Option<Type>)]| {
                cases
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if want.len() != got.len() || want.iter().zip(&got).any(|(a, b)| a.0 != b.0) {
                return Some(format!(
                    "variant cases are ({}), expected ({})",
                    names(&got),
                    names(&want)
                ));
            }
            want.iter()
                .zip(&got)
                .find_map(|((name, a), (_, b))| match (a, b) {
                    (Some(a), Some(b)) => nested(format!("case `{name}`"), type_difference(a, b)),
                    (None, None) => None,
                    _ => Some(format!("case `{name}`: payloads differ")),
                })
        }
        (Type::List(want), Type::List(got)) => nested(
            "list element".into(),
            type_difference(&want.ty(), &got.ty()),
        ),
        (Type::Option(want), Type::Option(got)) => {
            nested("option".into(), type_difference(&want.ty(), &got.ty()))
        }
        (Type::Result(want), Type::Result(got)) => {
            match ((want.ok(), got.ok()), (want.err(), got.err())) {
                ((Some(a), Some(b)), _) if a != b => nested("ok".into(), type_difference(&a, &b)),
                (_, (Some(a), Some(b))) if a != b => {
                    nested("error".into(), type_difference(&a, &b))
                }
                _ => mismatch(),
            }
        }
        _ => mismatch(),
    }
}

/// A short WIT-like rendering of a type for messages.
fn describe(ty: &Type) -> String {
    match ty {
        Type::Record(record) => format!(
            "record {{{}}}",
            record
                .fields()
                .map(|f| f.name.to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Variant(variant) => format!(
            "variant {{{}}}",
            variant
                .cases()
                .map(|c| c.name.to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Type::Enum(e) => format!("enum {{{}}}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Flags(f) => format!("flags {{{}}}", f.names().collect::<Vec<_>>().join(", ")),
        Type::List(list) => format!("list<{}>", describe(&list.ty())),
        Type::Option(option) => format!("option<{}>", describe(&option.ty())),
        Type::Result(result) => {
            let side = |t: Option<Type>| t.map(|t| describe(&t)).unwrap_or_else(|| "_".into());
            format!("result<{}, {}>", side(result.ok()), side(result.err()))
        }
        Type::Tuple(tuple) => format!(
            "tuple<{}>",
            tuple
                .types()
                .map(|t| describe(&t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Calls the three pure hooks once with a dummy job. Instantiating checks the
/// export types; the calls prove the guest starts and returns. Refusing the
/// dummy job is a fine answer for `admit`; trapping or hanging is not. (The
/// payload carries the fields the example guests read, so they run their
/// normal path instead of logging a warning on every deploy.)
pub async fn smoke_run(runtime: &Runtime, handler: &HandlerComponent) -> Result<(), Rejection> {
    let job = Job {
        id: "smoke-test".into(),
        queue: "smoke-test".into(),
        user_id: String::new(),
        user_tier: String::new(),
        priority: 5,
        payload: r#"{"prompt": "smoke test", "topic": "smoke test"}"#.into(),
        attempt: 0,
    };
    let failed = |hook: &str, why: String| {
        Rejection::new(
            "smoke_failed",
            format!(
                "the smoke run failed in `{hook}`: {}",
                without_backtrace(&why)
            ),
        )
    };
    let timed_out = |hook: &str| failed(hook, format!("no answer within {SMOKE_DEADLINE:?}"));
    match tokio::time::timeout(SMOKE_DEADLINE, runtime.admit(handler, &job)).await {
        Err(_) => return Err(timed_out("admit")),
        Ok(Err(failure)) => return Err(failed("admit", failure.to_string())),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout(SMOKE_DEADLINE, runtime.shape_prompt(handler, &job, &[])).await {
        Err(_) => return Err(timed_out("shape-prompt")),
        Ok(Err(failure)) => return Err(failed("shape-prompt", failure.to_string())),
        Ok(Ok(_)) => {}
    }
    match tokio::time::timeout(
        SMOKE_DEADLINE,
        runtime.parse_content(handler, &job, "smoke test"),
    )
    .await
    {
        Err(_) => Err(timed_out("parse-content")),
        Ok(Err(failure)) => Err(failed("parse-content", failure.to_string())),
        Ok(Ok(_)) => Ok(()),
    }
}

/// A trap's message minus wasmtime's frame-by-frame backtrace (anonymous
/// function indices say nothing to the person deploying).
fn without_backtrace(message: &str) -> String {
    let is_frame = |line: &str| {
        let line = line.trim_start();
        line.split_once(':').is_some_and(|(index, rest)| {
            index.bytes().all(|b| b.is_ascii_digit()) && rest.trim_start().starts_with("0x")
        })
    };
    // The next cause of the chain follows the last frame on its line.
    let rest_of_frame = |line: &str| line.split_once(">: ").map(|(_, rest)| rest.to_owned());
    let kept: Vec<String> = message
        .lines()
        .filter_map(|line| {
            if is_frame(line) {
                rest_of_frame(line)
            } else {
                Some(line.to_owned())
            }
        })
        .collect();
    kept.join(" ")
        .replace("error while executing at wasm backtrace: ", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_tells_components_from_modules_and_from_other_bytes() {
        let component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        assert!(check_header(&component, 1024).is_ok());
        assert_eq!(
            check_header(&module, 1024).map_err(|r| r.code),
            Err("core_module")
        );
        assert_eq!(
            check_header(b"PK\x03\x04 a zip file", 1024).map_err(|r| r.code),
            Err("not_wasm")
        );
        assert_eq!(
            check_header(&[], 1024).map_err(|r| r.code),
            Err("empty_upload")
        );
        assert_eq!(
            check_header(&component, 4).map_err(|r| r.code),
            Err("too_large")
        );
    }

    #[test]
    fn a_trap_message_loses_its_frames_but_keeps_the_cause() {
        let message = "handler trapped: error while executing at wasm backtrace:\n    0:   0xfee0 - <unknown>!<wasm function 204>\n    1:   0x3968 - <unknown>!<wasm function 55>: wasm trap: unreachable (guest said: boom)";
        assert_eq!(
            without_backtrace(message),
            "handler trapped: wasm trap: unreachable (guest said: boom)"
        );
    }
}
