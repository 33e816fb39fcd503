//! Egress policy with real nftables: deny by default, the always-blocked destinations (host
//! addresses, the bridge gateway, 169.254.0.0/16), an allow-listed "internet" host in a netns
//! this test creates, tenant isolation, and host → sandbox endpoints. Every destination is
//! first shown reachable natively from the host, so a probe that cannot connect anywhere is
//! caught. Only loopback, the test's own netns and the sandbox bridge are used.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use common::*;
use nimbus_core::names::SandboxId;
use nimbus_core::spec::{EgressPolicy, EgressRule, NetworkPolicy};
use nimbus_runtime::{Observed, Runtime};

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "`{cmd}` failed");
}

/// A TCP server answering "hi" on every connection, bound to `addr:port`.
fn serve(addr: &str, port: u16) {
    let l = TcpListener::bind((addr, port)).unwrap_or_else(|e| panic!("bind {addr}:{port}: {e}"));
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hi\n");
        }
    });
}

/// A peer netns behind a veth pair: `host_cidr` on the host side, `peer_cidr` inside, with a
/// default route back through the host; serves "hi" on ports 8080 and 8081 (busybox nc).
struct FakeInternet {
    ns: String,
    host_if: String,
    servers: Vec<std::process::Child>,
}

impl FakeInternet {
    fn create(tag: &str, host_cidr: &str, peer_cidr: &str) -> FakeInternet {
        let ns = format!("nbt-{tag}");
        let host_if = format!("nbt{tag}");
        let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        let _ = Command::new("ip")
            .args(["link", "delete", &host_if])
            .status();
        let gw = host_cidr.split('/').next().unwrap();
        sh(&format!("ip netns add {ns}"));
        sh(&format!(
            "ip link add {host_if} type veth peer name eth0 netns {ns}"
        ));
        sh(&format!(
            "ip addr add {host_cidr} dev {host_if} && ip link set {host_if} up"
        ));
        sh(&format!(
            "ip -n {ns} addr add {peer_cidr} dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up && ip -n {ns} route add default via {gw}"
        ));
        let mut servers = Vec::new();
        for port in [8080, 8081] {
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    BUSYBOX,
                    "sh",
                    "-c",
                    &format!("while true; do echo hi | {BUSYBOX} nc -l -p {port}; done"),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            servers.push(child);
        }
        std::thread::sleep(Duration::from_millis(200));
        FakeInternet {
            ns,
            host_if,
            servers,
        }
    }
}

impl FakeInternet {
    /// Test `n`'s fake internet: the host side at 198.51.`n`.1/24 and the internet host at
    /// 198.51.`n`.2, returned with it.
    fn numbered(n: u8) -> (FakeInternet, String) {
        let net = FakeInternet::create(
            &format!("i{n}"),
            &format!("198.51.{n}.1/24"),
            &format!("198.51.{n}.2/24"),
        );
        (net, format!("198.51.{n}.2"))
    }
}

/// A registry serving the busybox image, and that image's reference (keep the registry).
async fn busybox_image() -> (Registry, String) {
    let registry = Registry::start(None);
    registry.push_busybox("tools/busybox", "v1").await;
    let image = format!("{}/tools/busybox:v1", registry.host);
    (registry, image)
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_if])
            .status();
    }
}

fn native_connect(addr: &str, port: u16) -> bool {
    Command::new(BUSYBOX)
        .args([
            "sh",
            "-c",
            &format!("echo | {BUSYBOX} nc -w 2 {addr} {port} | grep -q hi"),
        ])
        .status()
        .unwrap()
        .success()
}

/// Runs `nc` to each target inside one sandbox; returns which ones answered.
async fn reach_from_sandbox(
    rt: &Runtime,
    image: &str,
    tenant: &str,
    policy: NetworkPolicy,
    targets: &[(String, u16)],
) -> Vec<bool> {
    // The client's stdin stays open for the whole 2 s: busybox nc exits as soon as its stdin
    // ends, so `echo | nc` missed the answer of a server slow to write it (a loaded machine).
    let script: String = targets
        .iter()
        .map(|(a, p)| {
            format!(
                "got=$(sleep 2 | nc -w 2 {a} {p}; echo \" nc exit $?\"); echo \"{a}:{p} said [$got]\"; case \"$got\" in hi*) echo {a}:{p}=ok;; *) echo {a}:{p}=fail;; esac\n"
            )
        })
        .collect();
    let mut s = spec(image, &["sh", "-c", &script]);
    s.network = policy;
    let id = new_id();
    rt.launch(&id, tenant, &s, |_| {}).await.unwrap();
    let exited = wait_exited(rt, &id, Duration::from_secs(60)).await;
    let logs = all_logs(rt, &id).await;
    // Shown when the test fails: which probe said what, and how the sandbox ended.
    eprintln!(
        "probe sandbox {id} ({tenant}, {:?}) ended {exited:?}; logs:\n{logs}",
        s.network
    );
    rt.delete(&id).await.unwrap();
    targets
        .iter()
        .map(|(a, p)| logs.contains(&format!("{a}:{p}=ok")))
        .collect()
}

fn allow(cidr: &str, ports: &[u16]) -> NetworkPolicy {
    NetworkPolicy {
        egress: EgressPolicy {
            allow: vec![EgressRule {
                cidr: cidr.into(),
                ports: ports.to_vec(),
            }],
            ..Default::default()
        },
    }
}

fn host_address() -> String {
    // The host's first global IPv4 address (not loopback, not a Nimbus bridge).
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" nbt") && !l.contains(" nimbus"))
        .find_map(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|a| a.split('/').next())
                .map(str::to_string)
        })
        .expect("the host has no global IPv4 address to probe")
}

#[tokio::test]
async fn egress_is_denied_by_default_and_allowed_only_by_policy() {
    require_host();
    let n = 30;
    let (net, inet) = FakeInternet::numbered(n);
    assert!(
        native_connect(&inet, 8080),
        "the fake internet host is reachable natively"
    );
    let (_registry, image) = busybox_image().await;
    let data = tempfile::tempdir().unwrap();
    // The warm pool on: launches take prepared namespaces, as on a server.
    let rt = runtime(n, data.path(), |c| c.warm_pool = 2);
    rt.warm_up().await.unwrap();

    let t = |p: u16| vec![(inet.clone(), p)];
    assert_eq!(
        reach_from_sandbox(&rt, &image, "demo", NetworkPolicy::default(), &t(8080)).await,
        vec![false],
        "default deny"
    );
    assert_eq!(
        reach_from_sandbox(
            &rt,
            &image,
            "demo",
            allow(&format!("{inet}/32"), &[8080]),
            &[(inet.clone(), 8080), (inet.clone(), 8081)]
        )
        .await,
        vec![true, false],
        "port-scoped allow"
    );
    assert_eq!(
        reach_from_sandbox(
            &rt,
            &image,
            "demo",
            allow(&format!("198.51.{n}.0/24"), &[]),
            &[(inet.clone(), 8080), (inet.clone(), 8081)]
        )
        .await,
        vec![true, true],
        "all-ports allow"
    );
    rt.drain_pool().await;
    drop(net);
}

#[tokio::test]
async fn host_gateway_and_metadata_addresses_stay_blocked_even_when_everything_is_allowed() {
    require_host();
    let n = 31;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(n, data.path(), |_| {});
    let (_registry, image) = busybox_image().await;
    // Bring the bridge up (first launch) so the gateway address exists, then listen on it.
    let _ = reach_from_sandbox(&rt, &image, "demo", NetworkPolicy::default(), &[]).await;
    let gateway = format!("10.{}.0.1", 100 + u16::from(n));
    let host = host_address();
    // A fake metadata service at 169.254.169.254, routed through the host like a cloud's.
    let meta = FakeInternet::create(&format!("m{n}"), "169.254.1.1/16", "169.254.169.254/16");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    serve("0.0.0.0", port);
    let targets = vec![
        (gateway.clone(), port),
        (host.clone(), port),
        ("169.254.169.254".to_string(), 8080),
        ("127.0.0.1".to_string(), port),
    ];
    for (a, p) in &targets {
        assert!(native_connect(a, *p), "{a}:{p} is reachable natively");
    }
    let got = reach_from_sandbox(&rt, &image, "demo", allow("0.0.0.0/0", &[]), &targets).await;
    drop(meta);
    assert_eq!(got, vec![false; targets.len()], "targets {targets:?}");
}

#[tokio::test]
async fn tenants_cannot_reach_each_other_and_the_host_reaches_endpoints() {
    require_host();
    let n = 32;
    let data = tempfile::tempdir().unwrap();
    // The warm pool on: launches take prepared namespaces, as on a server.
    let rt = runtime(n, data.path(), |c| c.warm_pool = 2);
    rt.warm_up().await.unwrap();
    let (_registry, image) = busybox_image().await;
    let server = new_id();
    let launched = rt
        .launch(
            &server,
            "tenant-a",
            &spec(
                &image,
                &["sh", "-c", "while true; do echo hi | nc -l -p 8080; done"],
            ),
            |_| {},
        )
        .await
        .unwrap();
    let addr = launched.endpoint.address;
    assert_ne!(addr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(launched.endpoint.ports, vec![8080]);
    let Observed::Running { endpoint, .. } = rt.observe(&server) else {
        panic!("server not running")
    };
    assert_eq!(endpoint, launched.endpoint);
    // The host reaches the endpoint directly.
    let mut ok = false;
    for _ in 0..100 {
        if native_connect(&addr.to_string(), 8080) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "host cannot reach the sandbox endpoint {addr}:8080");
    let subnet = format!("10.{}.0.0/16", 100 + u16::from(n));
    let target = vec![(addr.to_string(), 8080)];
    assert_eq!(
        reach_from_sandbox(&rt, &image, "tenant-b", allow(&subnet, &[]), &target).await,
        vec![false],
        "other tenant, even when allowed"
    );
    assert_eq!(
        reach_from_sandbox(&rt, &image, "tenant-a", NetworkPolicy::default(), &target).await,
        vec![false],
        "same tenant, default deny"
    );
    assert_eq!(
        reach_from_sandbox(&rt, &image, "tenant-a", allow(&subnet, &[8080]), &target).await,
        vec![true],
        "same tenant, allowed"
    );
    rt.delete(&server).await.unwrap();
    rt.drain_pool().await;
    assert!(rt.leftovers(server.as_str()).await.is_empty());
}

/// The bridge's MAC address is every sandbox's gateway address in its ARP cache, so it must
/// not move when ports come and go (an unpinned bridge takes its lowest port's address, and
/// running sandboxes then send to an address nobody answers for).
#[tokio::test]
async fn the_gateway_keeps_its_mac_address_as_ports_come_and_go() {
    require_host();
    let n = 33;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(n, data.path(), |_| {});
    // A bridge as an earlier version left it: created, address never set.
    let br = format!("nbt{n}");
    sh(&format!("ip link add {br} type bridge"));
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{br}/{f}"))
            .unwrap()
            .trim()
            .to_string()
    };
    let before = read("address");
    rt.warm_up().await.unwrap();
    assert_eq!(read("address"), before, "the existing address is kept");
    // A port with the lowest possible address: an unpinned bridge would take it.
    struct Veth(String);
    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["link", "delete", &self.0])
                .status();
        }
    }
    let port = Veth(format!("nbt{n}low"));
    sh(&format!(
        "ip link add {} address 00:00:00:00:00:01 type veth peer name {}p && ip link set {} master {br} up",
        port.0, port.0, port.0
    ));
    assert_eq!(read("address"), before, "a new port does not move it");
    drop(port);
    assert_eq!(read("address"), before, "a port leaving does not move it");
}

/// Connection tracking is keyed by address, and a deleted sandbox's address goes to the next
/// sandbox launched: an entry left behind would pass that sandbox's packets as part of an
/// established flow (a UDP "reply" needs nothing more than the right ports), whatever its own
/// policy says.
#[tokio::test]
async fn a_deleted_sandbox_leaves_no_tracked_connections_to_the_next_holder_of_its_address() {
    require_host();
    let n = 34;
    let (mut net, inet) = FakeInternet::numbered(n);
    // A server in the fake internet that keeps its connection open for a minute.
    let held = Command::new("ip")
        .args(["netns", "exec", &net.ns, BUSYBOX, "sh", "-c"])
        .arg(format!("sleep 60 | {BUSYBOX} nc -l -p 8090"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    net.servers.push(held);
    let (_registry, image) = busybox_image().await;
    let data = tempfile::tempdir().unwrap();
    // No warm pool: the next launch takes the lowest free address, the one just freed.
    let rt = runtime(n, data.path(), |_| {});

    let mut s = spec(&image, &["sh", "-c", &format!("sleep 60 | nc {inet} 8090")]);
    s.network = allow(&format!("{inet}/32"), &[8090]);
    let first = new_id();
    let address = rt
        .launch(&first, "tenant-a", &s, |_| {})
        .await
        .unwrap()
        .endpoint
        .address;
    let tracked = || {
        let out = Command::new("conntrack").arg("-L").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("={address} ")))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !tracked().iter().any(|l| l.contains("ESTABLISHED")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection to {inet}:8090 was never tracked: {:?}",
            tracked()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rt.delete(&first).await.unwrap();
    assert_eq!(
        tracked(),
        Vec::<String>::new(),
        "tracked connections of the deleted sandbox"
    );

    let next = new_id();
    let launched = rt
        .launch(&next, "tenant-b", &spec(&image, &["sleep", "30"]), |_| {})
        .await
        .unwrap();
    assert_eq!(
        launched.endpoint.address, address,
        "the next sandbox holds the freed address"
    );
    rt.delete(&next).await.unwrap();
    drop(net);
}

/// A sandbox's bridge port is bound to its address: a sandbox that forges a sibling's address
/// (here: the test, as root, does it in the sandbox's namespace, which the sandbox itself
/// cannot) gets nothing through, neither under the sibling's policy nor by ARP.
#[tokio::test]
async fn a_sandbox_that_forges_a_siblings_address_gets_nothing_through() {
    require_host();
    let n = 35;
    let (net, inet) = FakeInternet::numbered(n);
    // Datagrams to port 9999 are counted where they arrive, in the fake internet.
    sh(&format!(
        "ip netns exec {ns} nft add table inet count && ip netns exec {ns} nft add chain inet count pre '{{ type filter hook prerouting priority -300; }}' && ip netns exec {ns} nft add rule inet count pre udp dport 9999 counter",
        ns = net.ns
    ));
    let arrived = || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &net.ns, "nft", "list", "chain", "inet", "count", "pre",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("counter packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no counter in {text}"))
    };
    let (_registry, image) = busybox_image().await;
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(n, data.path(), |c| c.warm_pool = 2);
    rt.warm_up().await.unwrap();
    let running = |id: &SandboxId| match rt.observe(id) {
        Observed::Running { pid, endpoint } => (pid, endpoint.address),
        other => panic!("sandbox {id} is not running: {other:?}"),
    };
    // The sibling may send to the fake internet; the forger may send nowhere.
    let mut allowed = spec(&image, &["sleep", "300"]);
    allowed.network = allow(&format!("{inet}/32"), &[]);
    let sibling = new_id();
    rt.launch(&sibling, "demo", &allowed, |_| {}).await.unwrap();
    let forger = new_id();
    rt.launch(&forger, "demo", &spec(&image, &["sleep", "300"]), |_| {})
        .await
        .unwrap();
    let (sibling_pid, sibling_addr) = running(&sibling);
    let (forger_pid, forger_addr) = running(&forger);
    let in_netns = |pid: i32, script: &str| {
        let st = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "bash", "-c", script])
            .status()
            .unwrap();
        assert!(st.success(), "`{script}` in the namespace of {pid} failed");
    };
    let send = format!("echo x > /dev/udp/{inet}/9999");
    let settle = || std::thread::sleep(Duration::from_millis(500));

    // The path works: the sibling, as itself, gets through.
    in_netns(sibling_pid, &send);
    settle();
    assert_eq!(arrived(), 1, "the sibling's own datagram");

    // The forger takes the sibling's address as its source, with the gateway's MAC address
    // known (so no ARP is needed): dropped at its bridge port.
    let gateway = format!("10.{}.0.1", 100 + u16::from(n));
    let bridge_mac = std::fs::read_to_string(format!("/sys/class/net/nbt{n}/address")).unwrap();
    in_netns(
        forger_pid,
        &format!(
            "ip addr add {sibling_addr}/32 dev eth0 && ip neigh replace {gateway} lladdr {mac} dev eth0 nud permanent && ip route replace default via {gateway} dev eth0 src {sibling_addr} && {send}",
            mac = bridge_mac.trim()
        ),
    );
    settle();
    assert_eq!(arrived(), 1, "a datagram with a forged source got through");

    // A forged ARP sender does not make the host send the sibling's traffic to the forger.
    // Read over netlink: sysfs would show the host's own interfaces.
    let mac_of = |pid: i32| {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "-o",
                "link",
                "show",
                "eth0",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no MAC address in {text}"))
    };
    let (sibling_mac, forger_mac) = (mac_of(sibling_pid), mac_of(forger_pid));
    assert_ne!(sibling_mac, forger_mac);
    in_netns(
        forger_pid,
        &format!("ip neigh del {gateway} dev eth0; ip route replace default via {gateway} dev eth0 src {sibling_addr}; {send}; sleep 1; true"),
    );
    let host_view = Command::new("ip")
        .args([
            "neigh",
            "show",
            &sibling_addr.to_string(),
            "dev",
            &format!("nbt{n}"),
        ])
        .output()
        .unwrap();
    let host_view = String::from_utf8_lossy(&host_view.stdout);
    assert!(
        !host_view.contains(&forger_mac),
        "the host maps {sibling_addr} to the forger ({forger_mac}, sibling {sibling_mac}): {host_view}"
    );
    assert_eq!(arrived(), 1, "a datagram with a forged source got through");
    assert_ne!(forger_addr, sibling_addr);

    rt.delete(&sibling).await.unwrap();
    rt.delete(&forger).await.unwrap();
    rt.drain_pool().await;
    drop(net);
}

#[tokio::test]
async fn a_bridge_setting_that_names_another_interface_or_a_busy_bridge_is_refused_untouched() {
    require_host();
    let out = |cmd: &str| {
        let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // An interface that is not a bridge (as `lo` or `eth0` would be).
    let dummy = "nbtveth36";
    let _ = Command::new("ip").args(["link", "delete", dummy]).status();
    sh(&format!("ip link add {dummy} type veth peer name {dummy}p"));
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(36, data.path(), |c| c.bridge = dummy.into());
    let refused = rt.warm_up().await.err().map(|e| e.to_string());
    let addresses = out(&format!("ip -4 -o addr show dev {dummy}"));
    let tables = out("nft list tables");
    sh(&format!("ip link delete {dummy}"));
    let refused = refused.expect("a veth was taken for the bridge");
    assert!(refused.contains("not a bridge"), "{refused}");
    assert!(addresses.is_empty(), "{addresses}");
    assert!(!tables.contains(&format!("nimbus_{dummy}")), "{tables}");

    // A bridge another server's subnet is on.
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(37, data.path(), |_| {});
    sh("ip link add nbt37 type bridge && ip addr add 10.250.37.1/24 dev nbt37");
    let refused = rt.warm_up().await.err().map(|e| e.to_string());
    let addresses = out("ip -4 -o addr show dev nbt37");
    sh("ip link delete nbt37");
    let refused = refused.expect("a bridge carrying another subnet was shared");
    assert!(refused.contains("carries 10.250.37.1/24"), "{refused}");
    assert!(!addresses.contains("10.137.0.1"), "{addresses}");
}
