//! The components the authz bench measures wasmtime's floors with. Shared with
//! `tests/bench_floors.rs`, which checks that each one instantiates and runs.

/// The bare floor: one core instance, no memory, a function with no arguments and no result.
pub const EMPTY_COMPONENT: &str = r#"(component
    (core module $m (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

/// The same, with one 64 KiB page of linear memory (what the grants-policy guest starts with):
/// shows the part of the cost that is resetting memory between instances.
pub const EMPTY_COMPONENT_WITH_MEMORY: &str = r#"(component
    (core module $m (memory (export "memory") 1) (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

/// The same, with 16 KiB of memory in 1-byte pages: about what the bundled guests start with.
pub const EMPTY_COMPONENT_WITH_SMALL_MEMORY: &str = r#"(component
    (core module $m (memory (export "memory") 16384 (pagesize 1)) (func (export "run")))
    (core instance $i (instantiate $m))
    (func (export "run") (canon lift (core func $i "run"))))"#;

/// The types of `nimbus:authz@0.1.0` as a component declares them, for the two floors below.
macro_rules! authz_types {
    () => {
        r#"
    (type $principal-kind' (enum "token" "api-key" "workload"))
    (export $principal-kind "principal-kind" (type $principal-kind'))
    (type $principal' (record (field "id" string) (field "kind" $principal-kind)
        (field "tenant-id" string) (field "grants" (list string))))
    (export $principal "principal" (type $principal'))
    (type $resource-kind' (enum "tenant" "service" "sandbox" "session" "credential" "audit"))
    (export $resource-kind "resource-kind" (type $resource-kind'))
    (type $resource-ref' (record (field "tenant-id" string) (field "kind" $resource-kind)
        (field "name" (option string))))
    (export $resource-ref "resource-ref" (type $resource-ref'))
    (type $request' (record (field "principal" $principal) (field "action" string)
        (field "resource" $resource-ref) (field "context" (list (tuple string string)))))
    (export $request "request" (type $request'))
    (type $decision' (record (field "allow" bool) (field "policy-ids" (list string))
        (field "reasons" (list string))))
    (export $decision "decision" (type $decision'))
    (type $error' (variant (case "invalid-config" string) (case "invalid-request" string)
        (case "other" string)))
    (export $error "error" (type $error'))
"#
    };
}

/// A bump `realloc` over the 1 KiB memory (1-byte pages), starting at byte `$next`'s initial
/// value; it traps past the end.
macro_rules! bump_realloc {
    () => {
        r#"
        (memory (export "memory") 1024 (pagesize 1))
        (func (export "realloc") (param i32 i32 i32 i32) (result i32)
            (local $p i32)
            (local.set $p (i32.and
                (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                (i32.sub (i32.const 0) (local.get 2))))
            (global.set $next (i32.add (local.get $p) (local.get 3)))
            (if (i32.gt_u (global.get $next) (i32.const 1024)) (then unreachable))
            (local.get $p))
"#
    };
}

/// The cheapest component that can receive an authorization request: the `request` type of
/// `nimbus:authz@0.1.0`, a bump `realloc` over 1 KiB of memory for the host to lower it into, and
/// a `decide` that ignores it and answers nothing. It shows what the request's lowering and a
/// linear memory add to the bare floor.
pub const REQUEST_FLOOR_COMPONENT: &str = concat!(
    "(component",
    authz_types!(),
    r#"
    (core module $m
        (global $next (mut i32) (i32.const 0))"#,
    bump_realloc!(),
    r#"
        (func (export "decide") (param i32)))
    (core instance $i (instantiate $m))
    (alias core export $i "memory" (core memory $mem))
    (alias core export $i "realloc" (core func $realloc))
    (func (export "decide") (param "request" $request)
        (canon lift (core func $i "decide") (memory $mem) (realloc $realloc))))"#
);

/// wasmtime's floor for an authorization decision: an empty component with `decide` exactly as
/// `nimbus:authz/policy` types it, which receives the request like [`REQUEST_FLOOR_COMPONENT`]
/// and answers a constant decision (allow, policy id and reason "floor") from its data segment,
/// with no logic, no post-return and no table. Any policy pays this per call before its logic.
///
/// The answer is a `result<decision, error>` returned through a pointer (byte 64): discriminant
/// 0 (ok) at 64, `allow` at 68, `policy-ids` as (pointer 128, length 1) at 72, `reasons` as
/// (136, 1) at 80; the lists' one string each is (160, 5) and (168, 5), both "floor". The bump
/// allocator starts after them, at 256.
pub const DECIDE_FLOOR_COMPONENT: &str = concat!(
    "(component",
    authz_types!(),
    r#"
    (core module $m
        (global $next (mut i32) (i32.const 256))"#,
    bump_realloc!(),
    r#"
        (data (i32.const 64) "\00\00\00\00\01\00\00\00\80\00\00\00\01\00\00\00\88\00\00\00\01\00\00\00")
        (data (i32.const 128) "\a0\00\00\00\05\00\00\00\a8\00\00\00\05\00\00\00")
        (data (i32.const 160) "floor\00\00\00floor")
        (func (export "decide") (param i32) (result i32) (i32.const 64)))
    (core instance $i (instantiate $m))
    (alias core export $i "memory" (core memory $mem))
    (alias core export $i "realloc" (core func $realloc))
    (func (export "decide") (param "request" $request) (result (result $decision (error $error)))
        (canon lift (core func $i "decide") (memory $mem) (realloc $realloc))))"#
);
