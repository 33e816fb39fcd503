//! Runtime support shared by Nimbus guest components, which are `no_std`: the host creates a
//! fresh instance for every call and drops it afterwards, so a guest needs no allocator that
//! frees (an arena that only grows is enough and is the cheapest to start) and no std (which
//! would import WASI interfaces the host deliberately does not offer).
#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// An arena allocator over the instance's linear memory. Memory is returned to the host when the
/// instance is dropped at the end of the call; growth is bounded by the host's memory limit.
pub struct Arena {
    next: UnsafeCell<usize>,
    end: UnsafeCell<usize>,
}

// SAFETY: a component instance is single-threaded.
unsafe impl Sync for Arena {}

impl Arena {
    pub const fn new() -> Self {
        Arena {
            next: UnsafeCell::new(0),
            end: UnsafeCell::new(0),
        }
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

/// Least the arena grows linear memory by, in bytes: one host page. Each `memory.grow` asks the
/// host's limiter, but the host resets every page a call touched, so a call that needs a little
/// more than the initial heap pays for one more page, not for 64 KiB. A call that fits in the
/// initial heap never grows at all.
#[cfg(target_arch = "wasm32")]
const GROW_CHUNK: usize = 4 << 10;

#[cfg(target_arch = "wasm32")]
extern "C" {
    /// Set by the linker: the first byte after static data and the stack.
    static __heap_base: u8;
    /// Set by the linker: the end of the first page, i.e. the page size. The guests are linked
    /// with 1-byte pages (custom-page-sizes), so that a fresh instance's memory is only as large
    /// as its stack, data and initial heap, not a whole 64 KiB page; this keeps the arena
    /// correct whatever the page size.
    static __wasm_first_page_end: u8;
}

#[cfg(target_arch = "wasm32")]
fn page_size() -> usize {
    core::ptr::addr_of!(__wasm_first_page_end) as usize
}

#[cfg(target_arch = "wasm32")]
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let next = &mut *self.next.get();
        let end = &mut *self.end.get();
        if *end == 0 {
            *next = core::ptr::addr_of!(__heap_base) as usize;
            *end = core::arch::wasm32::memory_size(0) * page_size();
        }
        let align = layout.align();
        let start = match next.checked_add(align - 1) {
            Some(v) => v & !(align - 1),
            None => return core::ptr::null_mut(),
        };
        let new_next = match start.checked_add(layout.size()) {
            Some(v) => v,
            None => return core::ptr::null_mut(),
        };
        if new_next > *end {
            let page = page_size();
            let pages = (new_next - *end).max(GROW_CHUNK).div_ceil(page);
            if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                return core::ptr::null_mut();
            }
            *end += pages * page;
        }
        *next = new_next;
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Grow the most recent allocation in place: lists built by push land here.
        let next = *self.next.get();
        if ptr as usize + layout.size() == next && new_size >= layout.size() {
            let extra = new_size - layout.size();
            let grown = self.alloc(Layout::from_size_align_unchecked(extra, 1));
            if !grown.is_null() && grown as usize == next {
                return ptr;
            }
            if grown.is_null() {
                return core::ptr::null_mut();
            }
        }
        let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
        }
        new
    }
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: Arena = Arena::new();

/// The canonical ABI's allocation entry point, through which the host copies call arguments
/// (strings, lists) into the instance. wit-bindgen leaves it to libc on wasm32-wasip2, and these
/// guests link no libc allocator, so it is defined here over the arena.
///
/// # Safety
///
/// Called by the component's canonical-ABI glue only, with `old_ptr`/`old_len` from a previous
/// call (or 0) and a power-of-two `align`.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let Ok(new_layout) = Layout::from_size_align(new_len, align) else {
        core::arch::wasm32::unreachable()
    };
    let ptr = if old_len == 0 {
        ALLOCATOR.alloc(new_layout)
    } else {
        let old_layout = Layout::from_size_align_unchecked(old_len, align);
        ALLOCATOR.realloc(old_ptr, old_layout, new_len)
    };
    if ptr.is_null() {
        // Out of memory inside the host's limit: trap rather than hand back null.
        core::arch::wasm32::unreachable()
    }
    ptr
}

/// A panic is a trap: the host reports it as `plugin.failed` (and an authorization policy that
/// traps denies). There is no std to print the message with.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// Copies a string into a fixed-size array at compile time (for [`plugin_metadata!`]).
pub const fn bytes<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// Embeds a `nimbus-plugin` custom section (`id=<crate name>` and `version=<crate version>`,
/// one per line) that `nimbus plugin install` reads to name the plugin.
#[macro_export]
macro_rules! plugin_metadata {
    () => {
        const __NIMBUS_PLUGIN_META: &str = concat!(
            "id=",
            env!("CARGO_PKG_NAME"),
            "\nversion=",
            env!("CARGO_PKG_VERSION"),
            "\n"
        );
        #[used]
        #[link_section = "nimbus-plugin"]
        static __NIMBUS_PLUGIN_META_SECTION: [u8; __NIMBUS_PLUGIN_META.len()] =
            $crate::bytes(__NIMBUS_PLUGIN_META);
    };
}
