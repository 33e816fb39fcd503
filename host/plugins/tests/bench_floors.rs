//! The components `cargo bench --bench authz` measures its floors with: each must instantiate
//! and run under the plugin call setup, or the bench's ratios would compare against nothing.

mod common;

#[path = "../benches/floors.rs"]
mod floors;

use common::request;
use nimbus_core::authz::{actions, ResourceKind};
use nimbus_plugins::bench::Floor;

#[test]
fn the_empty_floors_instantiate_and_run() {
    for (name, wat) in [
        ("empty", floors::EMPTY_COMPONENT),
        ("64 KiB memory", floors::EMPTY_COMPONENT_WITH_MEMORY),
        ("16 KiB memory", floors::EMPTY_COMPONENT_WITH_SMALL_MEMORY),
    ] {
        let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("{name}: {e}"));
        let floor = Floor::new(&bytes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        for _ in 0..3 {
            floor.run_once().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}

#[test]
fn the_request_floor_receives_a_request_in_each_fresh_instance_and_traps_past_its_memory() {
    let bytes = wat::parse_str(floors::REQUEST_FLOOR_COMPONENT).expect("request floor");
    let floor = Floor::new(&bytes).expect("request floor loads");
    let mut req = request(
        &["tenant:read", "service:web:session"],
        actions::SESSIONS_OPEN,
        ResourceKind::Session,
        None,
    );
    req.context = vec![
        ("targetKind".into(), "service".into()),
        ("targetName".into(), "web".into()),
    ];
    // Its bump allocator never frees: many calls succeed only because each gets a fresh instance.
    for _ in 0..20 {
        floor
            .run_request_once(&req)
            .expect("the request fits in 1 KiB");
    }
    let huge = request(
        &[&"g".repeat(2048)],
        actions::SESSIONS_OPEN,
        ResourceKind::Session,
        None,
    );
    let err = floor
        .run_request_once(&huge)
        .expect_err("a request larger than the floor's memory traps");
    assert!(
        format!("{err:#}").contains("unreachable"),
        "unexpected error: {err:#}"
    );
}

#[test]
fn the_decide_floor_answers_its_constant_decision() {
    let bytes = wat::parse_str(floors::DECIDE_FLOOR_COMPONENT).expect("decide floor");
    let floor = Floor::new(&bytes).expect("decide floor loads");
    let req = request(
        &["tenant:read"],
        actions::SERVICES_GET,
        ResourceKind::Service,
        Some("web"),
    );
    for _ in 0..20 {
        let d = floor.run_decide_once(&req).expect("a decision");
        assert!(d.allow);
        assert_eq!(d.policy_ids, ["floor"]);
        assert_eq!(d.reasons, ["floor"]);
    }
}
