//! Test guest: an authorization policy whose `decide` export is written against the raw
//! canonical ABI and returns a result whose discriminant is neither `ok` (0) nor `err` (1). The
//! host must fail to lift it and deny.
#![no_std]

extern crate alloc;

// Only the world's type information is used (wit-bindgen embeds it for componentization); the
// export itself is hand-written below instead of going through `export!`.
wit_bindgen::generate!({
    path: "../../../wit/authz/0.1.0",
    world: "authz-policy",
    generate_all,
});

nimbus_guest_rt::plugin_metadata!();

/// The return area: discriminant 7, then zeros.
static mut RETURN_AREA: [u8; 64] = {
    let mut a = [0u8; 64];
    a[0] = 7;
    a
};

/// `decide(request) -> result<decision, error>`: the request's flattened form exceeds 16 values,
/// so it arrives as one pointer; the result is returned through a pointer to its bytes.
///
/// # Safety
///
/// Called by the component's canonical-ABI glue only.
#[export_name = "nimbus:authz/policy@0.1.0#decide"]
pub unsafe extern "C" fn decide(_request: *mut u8) -> *mut u8 {
    // Keep the generated bindings (and so the world's type section) linked.
    __link_custom_section_describing_imports();
    core::ptr::addr_of_mut!(RETURN_AREA) as *mut u8
}
