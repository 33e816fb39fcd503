//! nimbus-runtime: the container backend for Nimbus sandboxes.
//!
//! Images (OCI distribution client, content-addressed store, buildah builds), per-sandbox
//! overlay root filesystems, OCI configs generated with `oci-spec` and the hardened defaults,
//! network namespaces with nftables egress policy, crun through its CLI, and a per-sandbox
//! monitor process that outlives the server. It knows nothing about HTTP or the store: the
//! server's sandbox controller calls [`Runtime`] and records what it reports.
//!
//! See docs/runtime.md for the contract and docs/security.md for what every sandbox gets.

pub mod attach;
mod batch;
pub mod build;
pub mod bundle;
mod cmd;
pub mod config;
pub mod disk_reserve;
pub mod disks;
pub mod doctor;
pub mod files;
pub mod images;
mod leases;
mod logs;
mod loop_device;
pub mod monitor;
pub mod network;
pub mod orphans;
mod overlay;
pub mod pool;
mod ready;
pub mod reference;
pub mod registry;
mod sandbox;
mod sealed_exec;
pub mod seccomp;
mod standby;
mod tar_guard;
mod upload_journal;
pub mod userns;
mod zstd;

pub use config::RuntimeConfig;
pub use doctor::HostUnfit;
pub use logs::LogStream;
pub use sandbox::{layers_in_use, Endpoint, ExitReason, Launched, Observed, Runtime};

/// Progress of a launch, in order; feeds the sandbox's conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Downloading image blobs: bytes so far out of the image's total.
    Pulling {
        reference: String,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// Unpacking layer `index` of `count` (1-based).
    Unpacking {
        layer: String,
        index: usize,
        count: usize,
    },
    /// Building the image from a Dockerfile with buildah.
    Building { context: String },
    /// Root filesystem, network and OCI config are being prepared and the container created.
    Creating,
    /// The container process was started.
    Started { pid: i32 },
}

/// Why a launch failed. Each variant is a condition the controller reports; messages say what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    ImageNotFound(String),
    #[error("{0}")]
    AuthFailed(String),
    #[error("{0}")]
    RegistryUnreachable(String),
    /// The registry (or something between it and this host) answered with something no pull
    /// can use: a blob whose digest does not match, a malformed manifest, an unexpected status.
    #[error("{0} (the registry, or a proxy between it and this host, is at fault rather than the reference: try again, or tell the registry's operator)")]
    RegistryFailed(String),
    /// The image build (Dockerfile) failed; the message carries buildah's output tail.
    #[error("image build failed: {0}")]
    BuildFailed(String),
    /// argv[0] cannot be executed in the root filesystem.
    #[error("the process cannot start: {0}")]
    BadArgv(String),
    /// Another part of the spec is unusable for this image (user, working dir, root path).
    #[error("{field}: {reason}")]
    BadSpec { field: String, reason: String },
    #[error("{0}")]
    HostUnfit(#[from] HostUnfit),
    /// The backend cannot run this spec (krun process execution).
    #[error("{0}")]
    NotSupported(String),
    #[error("sandbox {0} already exists in the runtime; delete it first")]
    AlreadyExists(String),
    /// The caller withdrew the launch before the process started (its record never committed).
    #[error("the launch of sandbox {0} was withdrawn before its process started")]
    Withdrawn(String),
    #[error("internal runtime error: {0}")]
    Internal(String),
}

impl From<registry::RegistryError> for LaunchError {
    fn from(e: registry::RegistryError) -> Self {
        use registry::RegistryError as R;
        match e {
            R::NotFound { .. } | R::NoPlatform { .. } => LaunchError::ImageNotFound(e.to_string()),
            R::AuthFailed { .. } => LaunchError::AuthFailed(e.to_string()),
            R::Unreachable { .. } | R::Unavailable { .. } => {
                LaunchError::RegistryUnreachable(e.to_string())
            }
            // The disk's free-space reserve: the host's to fix, not an internal fault.
            R::Io(ref io) if io.kind() == std::io::ErrorKind::StorageFull => {
                LaunchError::HostUnfit(HostUnfit {
                    problems: vec![e.to_string()],
                })
            }
            R::Protocol { .. } => LaunchError::RegistryFailed(e.to_string()),
            R::Unsupported { .. } => LaunchError::BadSpec {
                field: "spec.root.source.reference".into(),
                reason: e.to_string(),
            },
            R::Io(_) => LaunchError::Internal(e.to_string()),
        }
    }
}

/// Errors of the operations on an existing sandbox.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("sandbox {0} is not known to the runtime")]
    NotFound(String),
    #[error("the process of sandbox {0} is not running (it has exited, or has not started yet)")]
    NotRunning(String),
    #[error("internal runtime error: {0}")]
    Internal(String),
}
