//! The process's one wasmtime engine: pooling allocator, epoch interruption and fuel, with an
//! epoch ticker thread that runs while plugin calls do. Also the precompiled-code cache key.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

use anyhow::anyhow;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::config::MAX_MEMORY_MIB;

/// How often the epoch advances; a call's deadline is rounded up to whole ticks. Each tick
/// wakes a thread, which costs about 35 µs of CPU on a VM (timer exits, a context switch):
/// at 10 ms that is 0.35% of a core while calls run, against 1.7% at 2 ms.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instance slots in the pool. Each concurrent plugin call holds one component instance and a
/// few core instances (a Rust guest: its module plus the canonical-ABI shims); a call that finds
/// the pool full fails (and an authorization then denies).
const POOL_COMPONENTS: u32 = 1000;
const POOL_CORE_INSTANCES: u32 = 4000;
const POOL_MEMORIES: u32 = 1000;
const POOL_TABLES: u32 = 4000;

/// What one component instance may take of the pool. The pool is shared by every slot, so
/// without a cap one component (say a health check with hundreds of memories, several checks
/// in flight) could take every slot and make each authorization fail to instantiate, and so
/// deny. The bundled guests fit well within these (the policies are one core module; the
/// health checks, Rust guests with WASI adapters, a handful); a component over a cap is
/// refused at install.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
const MAX_TABLES_PER_COMPONENT: u32 = 8;

/// Bytes of each memory and table slot kept resident between instances: covers the bundled
/// guests (a few KiB of 1-byte pages) and guests with ordinary 64 KiB pages with room to spare,
/// and bounds the pool's resident memory to 256 KiB per slot used.
const KEEP_RESIDENT: usize = 256 << 10;

/// Ticks without a plugin call (250 ms) after which the ticker parks until the next call: an
/// idle server does not wake up for nothing.
const IDLE_TICKS_BEFORE_PARKING: u32 = 25;

static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// Plugin calls whose store is alive, calls started so far, whether the ticker is parked, and
/// the ticker's thread (to wake it). See [`Ticking`].
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static PARKED: AtomicBool = AtomicBool::new(false);
static TICKER: OnceLock<Thread> = OnceLock::new();

/// Held by every plugin call (in its store's data) for as long as the call can run: the epoch
/// advances while any is held, so every call's deadline can fire, and the ticker rests when
/// none has been for a while.
pub(crate) struct Ticking(());

impl Ticking {
    pub(crate) fn start() -> Ticking {
        IN_FLIGHT.fetch_add(1, SeqCst);
        STARTED.fetch_add(1, SeqCst);
        // Paired with the ticker's store of PARKED and load of IN_FLIGHT (all SeqCst): either
        // the ticker sees this call and stays up, or this sees it parked and wakes it.
        if PARKED.load(SeqCst) {
            if let Some(t) = TICKER.get() {
                t.unpark();
            }
        }
        Ticking(())
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, SeqCst);
    }
}

/// Advances the epoch every tick while plugin calls run, and parks once none has run for
/// [`IDLE_TICKS_BEFORE_PARKING`] ticks. A call that starts meanwhile wakes it; its deadline
/// counts from the epoch it finds, so a pause never shortens a deadline.
fn tick(engine: Engine) {
    let mut idle = 0;
    let mut seen = STARTED.load(SeqCst);
    loop {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        let started = STARTED.load(SeqCst);
        if IN_FLIGHT.load(SeqCst) > 0 || started != seen {
            seen = started;
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS_BEFORE_PARKING {
            continue;
        }
        PARKED.store(true, SeqCst);
        if IN_FLIGHT.load(SeqCst) == 0 {
            // Returns at once if a call unparked us since the store above.
            std::thread::park();
        }
        PARKED.store(false, SeqCst);
        idle = 0;
        seen = STARTED.load(SeqCst);
    }
}

/// The engine shared by every plugin host in this process.
pub(crate) fn engine() -> anyhow::Result<&'static Engine> {
    let slot = ENGINE.get_or_init(|| match build() {
        Ok(engine) => {
            let ticker = engine.clone();
            let spawned = std::thread::Builder::new()
                .name("nimbus-plugin-epoch".into())
                .spawn(move || tick(ticker));
            match spawned {
                Ok(handle) => {
                    let _ = TICKER.set(handle.thread().clone());
                    Ok(engine)
                }
                Err(e) => Err(format!("cannot start the plugin epoch thread: {e}")),
            }
        }
        Err(e) => Err(format!("{e:#}")),
    });
    slot.as_ref()
        .map_err(|e| anyhow!("cannot create the WebAssembly engine for plugins: {e}"))
}

fn build() -> anyhow::Result<Engine> {
    let max_memory = (MAX_MEMORY_MIB as usize) << 20;
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(true)
        .cranelift_opt_level(OptLevel::Speed)
        // Memories with 1-byte pages: the bundled guests are linked that way so that a fresh
        // instance's memory (reset after every call) is a few KiB instead of a 64 KiB page.
        .wasm_custom_page_sizes(true)
        // Plugins' memories are small: reserve their ceiling, not the 4 GiB default, so that the
        // pool's address space stays modest. Bounds checks are explicit as a consequence.
        .memory_reservation(max_memory as u64)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0)
        // Initialise memories by copying instead of mapping a copy-on-write image: with the
        // resident pool slots below, no virtual-memory operation happens per call.
        .memory_init_cow(false);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_COMPONENTS)
        .total_core_instances(POOL_CORE_INSTANCES)
        .total_memories(POOL_MEMORIES)
        .total_tables(POOL_TABLES)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memory_size(max_memory)
        // Reset the low part of a memory or table by rewriting it instead of unmapping it, so
        // that the next instance finds its pages resident: no page faults, no TLB shootdowns.
        // Plugin instances are small (the bundled policy's memory is 4 064 bytes).
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| anyhow!("{e:#}"))
}

/// Names the directory of precompiled code valid for this engine (wasmtime version, target and
/// settings); code compiled by another engine is never looked at.
pub(crate) fn compatibility_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Epoch ticks covering `timeout`, rounded up, plus one so a deadline is never shorter than asked.
pub(crate) fn ticks_for(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    (timeout.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}
