//! Test guest: an authorization policy that allows everything, and whose linear memory starts
//! at 4 MiB: a zeroed static array counts in the memory's initial size without adding to the
//! component's bytes. A slot whose memory limit is under that cannot start it, and must refuse
//! it rather than swap it in and deny every request.
#![no_std]

extern crate alloc;

wit_bindgen::generate!({
    path: "../../../wit/authz/0.1.0",
    world: "authz-policy",
    generate_all,
    disable_custom_section_link_helpers: true,
});

nimbus_guest_rt::plugin_metadata!();

struct Plugin;

export!(Plugin);

use exports::nimbus::authz::policy::Guest;
use nimbus::authz::types::{Decision, Error, Request};

use alloc::string::String;
use alloc::vec;

// Mutable and zeroed, so the linker places it in .bss: memory, but no bytes in the component.
static mut BALLAST: [u8; 4 << 20] = [0; 4 << 20];

impl Guest for Plugin {
    fn decide(_request: Request) -> Result<Decision, Error> {
        // Read so that the array stays in the binary.
        let at = core::hint::black_box(12345);
        // SAFETY: a plain read of a byte inside the array; the guest is single-threaded.
        let byte = unsafe { core::ptr::addr_of!(BALLAST).cast::<u8>().add(at).read_volatile() };
        Ok(Decision {
            allow: byte == 0,
            policy_ids: vec![String::from("ballast-policy")],
            reasons: vec![String::from("the ballast policy allows everything")],
        })
    }
}
