//! The seccomp filter every sandbox gets: moby's default profile converted to OCI
//! `linux.seccomp` for x86_64 and Nimbus's capability set, with `io_uring_*` removed (a large
//! kernel attack surface most workloads never need), and sockets confined to the address
//! families a sandbox's network policy governs (see [`SOCKET_FAMILIES`]). The converted profile lives in the tree
//! (`seccomp/default.json`) so a reviewer sees exactly what is enforced; a test regenerates it
//! from the Debian copy of moby's profile and fails if the two disagree.

use serde_json::{json, Value};

/// Capabilities a sandbox process keeps (bounding, effective, permitted). Everything else —
/// notably NET_RAW, SYS_ADMIN, SYS_PTRACE, MKNOD, SYS_CHROOT — is dropped.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
];

/// The in-tree converted profile.
pub const PROFILE_JSON: &str = include_str!("../seccomp/default.json");

/// Where Debian's `golang-github-docker-docker-dev` puts moby's profile.
pub const MOBY_PROFILE_PATH: &str =
    "/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json";

const ARCH_NAMES: &[&str] = &["amd64", "x86_64"];

/// The address families `socket(2)` may create inside a sandbox: `AF_UNIX` (1), `AF_INET` (2),
/// `AF_INET6` (10), `AF_NETLINK` (16; the sandbox's own namespace, used by `ip` and by name
/// lookups). Every other family fails with EPERM: those nftables and the network namespace do
/// not govern — notably `AF_VSOCK` (40), which reaches the hypervisor and host services on a
/// VM whatever the egress policy says — and rarely used kernel surface (`AF_ALG`, `AF_KEY`, …).
/// Moby allows every family but `AF_VSOCK`. `socketcall(2)`, the 32-bit multiplexer whose
/// arguments a filter cannot see, is not allowed, and the i386 ABI is left out of the filter
/// altogether (see `convert_moby`).
pub const SOCKET_FAMILIES: &[u64] = &[1, 2, 10, 16];

/// Converts a moby profile to OCI `linux.seccomp` JSON: keeps the rules whose `includes`
/// (arches, caps) match x86_64 and `caps`, drops those whose `excludes` match, removes
/// `io_uring_*`, and carries `args` and `errnoRet` over.
pub fn convert_moby(moby: &Value, caps: &[&str]) -> Result<Value, String> {
    let default_action = moby["defaultAction"]
        .as_str()
        .ok_or("defaultAction missing")?;
    // x86_64 alone, without moby's sub-architectures (i386 and x32): any x86_64 process can
    // make i386 system calls (`int $0x80`), and there libseccomp turns the `socket` rules into
    // `socketcall(2)` sub-calls whose arguments it cannot see, so the family filter below would
    // let `AF_VSOCK` through. A system call of an ABI not listed meets libseccomp's bad-arch
    // action, not the default one: it kills the caller (SIGSYS), as the socket probe checks.
    if !moby["archMap"]
        .as_array()
        .ok_or("archMap missing")?
        .iter()
        .any(|a| a["architecture"] == "SCMP_ARCH_X86_64")
    {
        return Err("archMap has no SCMP_ARCH_X86_64".into());
    }
    let architectures = vec![json!("SCMP_ARCH_X86_64")];
    let arch_match = |v: &Value| {
        v.as_array().is_some_and(|l| {
            l.iter()
                .any(|a| a.as_str().is_some_and(|a| ARCH_NAMES.contains(&a)))
        })
    };
    let caps_all = |v: &Value| {
        v.as_array().is_some_and(|l| {
            l.iter()
                .all(|c| c.as_str().is_some_and(|c| caps.contains(&c)))
        })
    };
    let caps_any = |v: &Value| {
        v.as_array().is_some_and(|l| {
            l.iter()
                .any(|c| c.as_str().is_some_and(|c| caps.contains(&c)))
        })
    };
    let mut syscalls = Vec::new();
    for rule in moby["syscalls"].as_array().ok_or("syscalls missing")? {
        let inc = &rule["includes"];
        let exc = &rule["excludes"];
        if !inc["arches"].is_null() && !arch_match(&inc["arches"]) {
            continue;
        }
        if !inc["caps"].is_null() && !caps_all(&inc["caps"]) {
            continue;
        }
        if !exc["arches"].is_null() && arch_match(&exc["arches"]) {
            continue;
        }
        if !exc["caps"].is_null() && caps_any(&exc["caps"]) {
            continue;
        }
        let names: Vec<Value> = rule["names"]
            .as_array()
            .ok_or("rule without names")?
            .iter()
            .filter(|n| {
                n.as_str().is_some_and(|n| {
                    !n.starts_with("io_uring") && n != "socket" && n != "socketcall"
                })
            })
            .cloned()
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut out = json!({ "names": names, "action": rule["action"] });
        if let Some(args) = rule["args"].as_array().filter(|a| !a.is_empty()) {
            let args: Vec<Value> = args
                .iter()
                .map(|a| {
                    let mut m = json!({ "index": a["index"], "value": a["value"], "op": a["op"] });
                    if !a["valueTwo"].is_null() {
                        m["valueTwo"] = a["valueTwo"].clone();
                    }
                    m
                })
                .collect();
            out["args"] = Value::Array(args);
        }
        if let Some(e) = rule["errnoRet"].as_u64() {
            out["errnoRet"] = json!(e);
        }
        syscalls.push(out);
    }
    for family in SOCKET_FAMILIES {
        syscalls.push(json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": family, "op": "SCMP_CMP_EQ" }],
        }));
    }
    let mut profile = json!({
        "defaultAction": default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    // The runtime's default errno for SCMP_ACT_ERRNO is EPERM; say so explicitly.
    profile["defaultErrnoRet"] = moby
        .get("defaultErrnoRet")
        .cloned()
        .filter(|v| !v.is_null())
        .unwrap_or(json!(1));
    Ok(profile)
}

/// The in-tree profile as the OCI type. Parsed once: every launch's config carries it, and
/// parsing its few hundred syscall names took longer than the rest of the config together.
pub fn profile() -> Result<oci_spec::runtime::LinuxSeccomp, String> {
    static PARSED: std::sync::OnceLock<Result<oci_spec::runtime::LinuxSeccomp, String>> =
        std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            serde_json::from_str(PROFILE_JSON)
                .map_err(|e| format!("the built-in seccomp profile does not parse: {e}"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_tree_profile_parses_and_has_no_io_uring() {
        let p = profile().unwrap();
        let names: Vec<&String> = p
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names())
            .collect();
        assert!(names.iter().any(|n| *n == "read"));
        assert!(!names.iter().any(|n| n.starts_with("io_uring")));
        assert!(!names.iter().any(|n| *n == "socketcall"));
        // socket(2) only with an allowed family as its first argument, never unconditionally.
        let socket_rules: Vec<_> = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names().iter().any(|n| n == "socket"))
            .collect();
        let mut families: Vec<u64> = socket_rules
            .iter()
            .map(|r| {
                let args = r
                    .args()
                    .as_ref()
                    .expect("socket allowed without a condition");
                assert_eq!(args.len(), 1);
                assert_eq!(args[0].index(), 0);
                assert_eq!(
                    args[0].op(),
                    oci_spec::runtime::LinuxSeccompOperator::ScmpCmpEq
                );
                args[0].value()
            })
            .collect();
        families.sort();
        assert_eq!(families, SOCKET_FAMILIES);
        // Capability-gated syscalls for capabilities sandboxes do not hold stay forbidden.
        for forbidden in ["unshare", "mount", "pivot_root", "setns", "bpf"] {
            assert!(
                !names.iter().any(|n| *n == forbidden),
                "{forbidden} must not be allowed"
            );
        }
    }

    #[test]
    fn in_tree_profile_matches_moby_default_converted() {
        let text = std::fs::read_to_string(MOBY_PROFILE_PATH).unwrap_or_else(|e| {
            panic!("cannot read {MOBY_PROFILE_PATH} ({e}); install golang-github-docker-docker-dev (tests/setup-host.sh)")
        });
        let moby: Value = serde_json::from_str(&text).unwrap();
        let converted = convert_moby(&moby, CAPABILITIES).unwrap();
        let rendered = serde_json::to_string_pretty(&converted).unwrap() + "\n";
        if std::env::var_os("NIMBUS_REGENERATE_SECCOMP").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp/default.json"),
                &rendered,
            )
            .unwrap();
        }
        assert_eq!(
            serde_json::from_str::<Value>(PROFILE_JSON).unwrap(),
            converted,
            "seccomp/default.json is stale: rerun with NIMBUS_REGENERATE_SECCOMP=1"
        );
    }
}
