//! Sandbox networking: one network namespace per sandbox, a veth pair to a host bridge, a /32
//! address from the configured range with the bridge as gateway, and nftables rules in the
//! `inet nimbus_<bridge>` table.
//!
//! Every sandbox's bridge port is isolated (no L2 path between sandboxes), so all traffic leaves
//! through the host's IP layer where the rules apply:
//! - `forward`: replies pass; traffic from the bridge jumps to the sandbox's own chain through a
//!   verdict map keyed by source address (unknown sources are dropped); new connections into the
//!   bridge from other interfaces are dropped.
//! - per-sandbox chain: loopback and 169.254.0.0/16 dropped, other tenants' sandboxes dropped,
//!   then the spec's allow-list, then drop. A sandbox allowed nothing has no chain (and no map
//!   entry): as an unknown source all it sends is dropped. Every sandbox's address is in its
//!   tenant's set, which the chains of its allowed siblings consult.
//! - `input`: nothing from the bridge reaches the host itself except replies.
//! - `postrouting`: allowed traffic leaving the host is masqueraded.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nimbus_core::spec::{parse_cidr, NetworkPolicy};
use sha2::{Digest as _, Sha256};

use crate::batch::ScriptBatcher;
use crate::cmd::run_cmd;
use crate::leases::Leases;
use crate::userns::{IdRanges, UserNs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let c = parse_cidr(s).map_err(|e| format!("runtime.subnet {s:?}: {e}"))?;
        let std::net::IpAddr::V4(a) = c.addr else {
            return Err(format!("runtime.subnet {s:?} must be an IPv4 range"));
        };
        if !(8..=28).contains(&c.prefix) {
            return Err(format!(
                "runtime.subnet {s:?} must have a prefix from /8 to /28"
            ));
        }
        let mask = u32::MAX << (32 - c.prefix);
        let base = Ipv4Addr::from(u32::from(a) & mask);
        if base != a {
            // Most likely a typo in the base or the prefix: say which range it would mean.
            return Err(format!(
                "runtime.subnet {s:?} has bits set past its /{} prefix; the range is \"{base}/{}\"",
                c.prefix, c.prefix
            ));
        }
        Ok(Subnet {
            base,
            prefix: c.prefix,
        })
    }
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.base)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// What a sandbox's network looks like once set up (persisted in its state dir).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SandboxNet {
    pub netns: String,
    pub netns_path: PathBuf,
    pub host_if: String,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub chain: String,
    pub tenant_set: String,
    /// The user namespace that owns the network namespace (absent when sandboxes run without
    /// user namespaces, and in state written before they had them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserNs>,
}

pub struct Network {
    pub bridge: String,
    /// nftables table (`inet nimbus_<bridge>`): one per bridge, so several runtimes on one host
    /// (tests, or operators running two servers) never rewrite each other's rules.
    pub table: String,
    pub subnet: Subnet,
    leases: Leases,
    /// Id ranges for sandboxes' user namespaces, with their leases (one per slot).
    ids: Option<(IdRanges, Leases)>,
    /// Sandbox rules go through one batcher, so a burst of launches shares `nft` runs.
    rules_batcher: ScriptBatcher,
}

/// Lease owner prefix of addresses held by warm-pool namespaces.
pub const POOL_OWNER: &str = "warm-pool:";

fn short_hash(s: &str, n: usize) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..n].to_string()
}

/// The first IPv4 address in `ip -4 -o addr show` output that is not `ours` (`a.b.c.d/p`).
fn foreign_address(listing: &str, ours: &str) -> Option<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()
        })
        .find(|addr| *addr != ours)
        .map(str::to_string)
}

/// A bridge name the kernel takes (an interface name) and nftables can use in a table's name.
pub(crate) fn check_bridge_name(bridge: &str) -> Result<(), String> {
    if bridge.is_empty()
        || bridge.len() > 15
        || !bridge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "runtime.bridge {bridge:?} must be 1-15 characters of [A-Za-z0-9_-]"
        ));
    }
    Ok(())
}

impl Network {
    /// `ids`: give each sandbox a user namespace with a range from these (see [`crate::userns`]).
    pub fn new(
        bridge: &str,
        subnet: &str,
        state: &Path,
        ids: Option<IdRanges>,
    ) -> Result<Self, String> {
        check_bridge_name(bridge)?;
        let subnet = Subnet::parse(subnet)?;
        let leases = Leases::open(state.join("leases"))?;
        let ids = match ids {
            Some(r) => Some((r, Leases::open(state.join("id-leases"))?)),
            None => None,
        };
        Ok(Self {
            bridge: bridge.to_string(),
            table: format!("nimbus_{}", bridge.replace('-', "_")),
            subnet,
            leases,
            ids,
            rules_batcher: ScriptBatcher::new(|script: String| {
                Box::pin(async move {
                    run_cmd("nft", &["-f", "-"], Some(script.as_bytes()))
                        .await
                        .map(|_| ())
                })
            }),
        })
    }

    /// Creates the bridge and the base nftables table if they are missing. Idempotent, and it
    /// leaves existing per-sandbox chains alone (sandboxes survive a server restart).
    ///
    /// The verdict map is rebuilt from `known` (the sandboxes this data dir has state for):
    /// entries left by sandboxes that no longer exist here are dropped, so a reused address
    /// never meets a stale entry.
    pub async fn ensure_host(&self, known: &[SandboxNet]) -> Result<(), String> {
        let br = &self.bridge;
        let gw = self.subnet.gateway();
        let sys = Path::new("/sys/class/net").join(br);
        if !sys.exists() {
            run_cmd("ip", &["link", "add", br, "type", "bridge"], None).await?;
        } else if !sys.join("bridge").is_dir() {
            // `lo` or `eth0`: an address and a firewall that drops new connections would be
            // put on the host's own interface.
            return Err(format!(
                "runtime.bridge {br:?} names an existing network interface that is not a bridge; \
                 Nimbus would take it over (an address, rules that drop new connections). Name a \
                 bridge of Nimbus's own: it is created if missing"
            ));
        }
        let addrs = run_cmd("ip", &["-4", "-o", "addr", "show", "dev", br], None).await?;
        let ours = format!("{gw}/{}", self.subnet.prefix);
        if let Some(other) = foreign_address(&addrs, &ours) {
            return Err(format!(
                "bridge {br} carries {other}, not this server's gateway {ours} (runtime.subnet): \
                 another Nimbus server with another subnet, or something else, uses it, and two \
                 servers on one bridge rewrite each other's sandbox rules. Give each server a \
                 bridge of its own (runtime.bridge); if the address is left from an earlier \
                 subnet, remove it (ip addr del {other} dev {br})"
            ));
        }
        pin_bridge_address(br).await?;
        if !addrs.contains(&format!("inet {gw}/")) {
            run_cmd(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{gw}/{}", self.subnet.prefix),
                    "dev",
                    br,
                ],
                None,
            )
            .await?;
        }
        run_cmd("ip", &["link", "set", br, "up"], None).await?;
        // Forwarding is what lets allow-listed traffic out at all; redirects would teach
        // sandboxes a direct path to each other that port isolation then breaks.
        write_sysctl("net/ipv4/ip_forward", "1")?;
        write_sysctl(&format!("net/ipv4/conf/{br}/send_redirects"), "0")?;
        let table = &self.table;
        let mut script = host_rules(table, br, self.subnet);
        let chains = run_cmd("nft", &["list", "table", "inet", table], None)
            .await
            .unwrap_or_default();
        for n in known {
            script.push_str(&bind_port(table, n));
            if chains.contains(&format!("chain {} ", n.chain))
                || chains.contains(&format!("chain {} {{", n.chain))
            {
                script.push_str(&format!(
                    "add element inet {table} sandboxes {{ {} : jump {} }}\n",
                    n.address, n.chain
                ));
            }
        }
        run_cmd("nft", &["-f", "-"], Some(script.as_bytes())).await?;
        Ok(())
    }

    /// Reserves an address for `id` (a lease file per address, so restarts see what is taken).
    pub fn allocate(&self, id: &str) -> Result<Ipv4Addr, String> {
        let base = u32::from(self.subnet.base);
        let addresses =
            (2..self.subnet.size() - 1).map(|off| Ipv4Addr::from(base + off).to_string());
        match self.leases.take_first_free(addresses, id)? {
            Some(ip) => ip.parse().map_err(|e| format!("lease name {ip:?}: {e}")),
            None => Err(format!(
                "no free address left in {}; widen runtime.subnet or delete sandboxes",
                self.subnet
            )),
        }
    }

    /// Gives up `owner`'s leases on `net`'s address and id range.
    pub fn release(&self, net: &SandboxNet, owner: &str) {
        self.leases.release(&net.address.to_string(), owner);
        if let (Some((_, ids)), Some(user)) = (&self.ids, &net.user) {
            ids.release(&user.slot.to_string(), owner);
        }
    }

    /// Gives up `owner`'s lease on `net`'s address only (its id range stays held).
    pub fn release_address(&self, net: &SandboxNet, owner: &str) {
        self.leases.release(&net.address.to_string(), owner);
    }

    pub fn has_user_namespaces(&self) -> bool {
        self.ids.is_some()
    }

    /// Gives up every address and id range `owner` holds (found by scanning the leases).
    pub fn release_all_of(&self, owner: &str) {
        for ip in self.leases.held_by(owner) {
            self.leases.release(&ip, owner);
        }
        if let Some((_, ids)) = &self.ids {
            for slot in ids.held_by(owner) {
                ids.release(&slot, owner);
            }
        }
    }

    /// Reserves an id range for `owner`'s user namespace, which will own network namespace
    /// `netns`; `None` when sandboxes run without user namespaces.
    pub fn allocate_user(&self, owner: &str, netns: &str) -> Result<Option<UserNs>, String> {
        let Some((ranges, ids)) = &self.ids else {
            return Ok(None);
        };
        let slot = ids
            .take_first_free((0..ranges.slots).map(|n| n.to_string()), owner)?
            .ok_or_else(|| {
                format!(
                    "all {} user-namespace id ranges are in use; raise runtime.id_range_slots or delete sandboxes",
                    ranges.slots
                )
            })?;
        Ok(Some(self.user_ns(netns, &slot)?))
    }

    fn user_ns(&self, netns: &str, slot: &str) -> Result<UserNs, String> {
        let (ranges, _) = self.ids.as_ref().ok_or("user namespaces are off")?;
        let n: u32 = slot
            .parse()
            .map_err(|e| format!("id lease name {slot:?}: {e}"))?;
        Ok(UserNs {
            path: crate::userns::path_for(netns),
            slot: n,
            map: ranges.slot(n),
        })
    }

    /// The user namespace `owner` holds an id range for, if any.
    fn user_held_by(&self, owner: &str, netns: &str) -> Option<UserNs> {
        let (_, ids) = self.ids.as_ref()?;
        let slot = ids.held_by(owner).into_iter().next()?;
        self.user_ns(netns, &slot).ok()
    }

    pub fn plan(&self, id: &str, tenant: &str, address: Ipv4Addr) -> SandboxNet {
        let h = short_hash(id, 11);
        SandboxNet {
            netns: format!("nimbus-{id}"),
            netns_path: PathBuf::from(format!("/run/netns/nimbus-{id}")),
            host_if: format!("nbv{h}"),
            address,
            gateway: self.subnet.gateway(),
            chain: format!("sb_{h}"),
            tenant_set: format!("tenant_{}", short_hash(tenant, 16)),
            user: None,
        }
    }

    /// Creates the sandbox's network namespace (empty), inside its user namespace if it has one.
    pub async fn create_netns(&self, net: &SandboxNet) -> Result<(), String> {
        let net_path = net.netns_path.clone();
        let user = net.user.as_ref().map(|u| (u.path.clone(), u.map));
        tokio::task::spawn_blocking(move || {
            crate::userns::create(&net_path, user.as_ref().map(|(p, m)| (p.as_path(), *m)))
        })
        .await
        .map_err(|e| format!("creating the namespaces: {e}"))?
    }

    /// A namespace wired to the bridge but not yet anyone's: the warm pool keeps a few so a
    /// launch does not pay for namespace creation and wiring. Its address has no verdict-map
    /// entry, so until [`Network::apply_rules`] runs for its sandbox, all its traffic is dropped.
    pub async fn prepare_unassigned(&self, token: &str) -> Result<SandboxNet, String> {
        let owner = format!("{POOL_OWNER}{token}");
        let address = self.allocate(&owner)?;
        let mut net = self.pool_net(token, address);
        let made = match self.allocate_user(&owner, &net.netns) {
            Ok(user) => {
                net.user = user;
                match self.create_netns(&net).await {
                    Ok(()) => self.link(&net).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match made {
            Ok(()) => Ok(net),
            Err(e) => {
                let _ = self.teardown(&net).await;
                self.release_all_of(&owner);
                Err(e)
            }
        }
    }

    /// The names of the prepared namespace `token` at `address` (derived, so the leases alone
    /// are enough to find and remove it).
    pub fn unassigned(&self, token: &str, address: Ipv4Addr) -> SandboxNet {
        let mut net = self.pool_net(token, address);
        net.user = self.user_held_by(&format!("{POOL_OWNER}{token}"), &net.netns);
        net
    }

    /// The names of warm-pool namespace `token` at `address`, without its user namespace.
    fn pool_net(&self, token: &str, address: Ipv4Addr) -> SandboxNet {
        let h = short_hash(token, 11);
        let netns = format!("nimbus-{}-w{h}", self.bridge);
        SandboxNet {
            netns_path: PathBuf::from(format!("/run/netns/{netns}")),
            user: None,
            netns,
            host_if: format!("nbv{h}"),
            address,
            gateway: self.subnet.gateway(),
            chain: String::new(),
            tenant_set: String::new(),
        }
    }

    /// Addresses leased to warm-pool namespaces, with their tokens.
    pub fn pool_leases(&self) -> Vec<(Ipv4Addr, String)> {
        self.leases
            .all()
            .into_iter()
            .filter_map(|(ip, owner)| {
                Some((
                    ip.parse().ok()?,
                    owner.strip_prefix(POOL_OWNER)?.to_string(),
                ))
            })
            .collect()
    }

    /// Hands a prepared namespace to sandbox `id` of `tenant`: the lease changes owner and the
    /// chain and tenant set are the sandbox's own (installed by [`Network::apply_rules`]).
    /// The prepared namespace's network as sandbox `id` of `tenant` will have it. Record it in
    /// the sandbox's state before [`Network::transfer_lease`], so a crash in between leaves
    /// something a restart finds either way.
    pub fn assigned(&self, prepared: SandboxNet, id: &str, tenant: &str) -> SandboxNet {
        let plan = self.plan(id, tenant, prepared.address);
        SandboxNet {
            chain: plan.chain,
            tenant_set: plan.tenant_set,
            ..prepared
        }
    }

    /// Moves a prepared namespace's address lease and id range from the warm pool to sandbox
    /// `id`.
    pub fn transfer_lease(&self, net: &SandboxNet, token: &str, id: &str) -> Result<(), String> {
        let pool = format!("{POOL_OWNER}{token}");
        self.leases.transfer(&net.address.to_string(), &pool, id)?;
        if let (Some((_, ids)), Some(user)) = (&self.ids, &net.user) {
            ids.transfer(&user.slot.to_string(), &pool, id)?;
        }
        Ok(())
    }

    /// The id range leases `owner` holds (for leak checks).
    pub fn id_leases_of(&self, owner: &str) -> Vec<String> {
        self.ids
            .as_ref()
            .map(|(_, ids)| ids.held_by(owner))
            .unwrap_or_default()
    }

    /// Installs the sandbox's chain, its verdict-map entry and its tenant-set membership (in
    /// one `nft` run with those of launches happening at the same time).
    pub async fn apply_rules(
        &self,
        net: &SandboxNet,
        policy: &NetworkPolicy,
    ) -> Result<(), String> {
        let rules = self.rules(net, policy)?;
        self.rules_batcher.apply(rules).await
    }

    /// The veth pair into the namespace, the isolated bridge port, the address and the routes.
    pub async fn link(&self, net: &SandboxNet) -> Result<(), String> {
        let host = format!(
            "link add {h} type veth peer name eth0 netns {ns}\nlink set {h} master {br}\nlink set dev {h} type bridge_slave isolated on\nlink set {h} up\n",
            h = net.host_if,
            ns = net.netns,
            br = self.bridge
        );
        let inner = format!(
            "link set lo up\naddr add {a}/32 dev eth0\nlink set eth0 up\nroute add {g} dev eth0 scope link\nroute add default via {g} dev eth0\n",
            a = net.address,
            g = net.gateway
        );
        let ip_args = ["-n", net.netns.as_str(), "-b", "-"];
        run_cmd("ip", &["-b", "-"], Some(host.as_bytes())).await?;
        run_cmd("ip", &ip_args, Some(inner.as_bytes()))
            .await
            .map(|_| ())
    }

    fn rules(&self, net: &SandboxNet, policy: &NetworkPolicy) -> Result<String, String> {
        let c = &net.chain;
        let table = &self.table;
        let set = &net.tenant_set;
        if policy.egress.allow.is_empty() {
            // Allowed nothing: with no verdict-map entry the `egress` chain drops all it sends,
            // which is what a chain of its own would end in. Only its tenant-set membership is
            // needed (siblings allowed to reach the subnet may reach it). Fewer chains also
            // keep every later `nft` call quicker: nft reads the whole table first.
            return Ok(format!(
                "add set inet {table} {set} {{ type ipv4_addr; }}\nadd element inet {table} {set} {{ {a} }}\n{port}",
                a = net.address,
                port = bind_port(table, net)
            ));
        }
        let mut s = bind_port(table, net);
        s.push_str(&format!(
            "add set inet {table} {set} {{ type ipv4_addr; }}\nadd element inet {table} {set} {{ {a} }}\nadd chain inet {table} {c}\nflush chain inet {table} {c}\n\
             add rule inet {table} {c} ip daddr {{ 127.0.0.0/8, 169.254.0.0/16, 0.0.0.0/8, 224.0.0.0/4 }} drop\n\
             add rule inet {table} {c} ip daddr {sub} ip daddr != @{set} drop\n\
             add rule inet {table} {c} ip daddr {gw} drop\n",
            a = net.address,
            sub = self.subnet,
            gw = net.gateway,
        ));
        for rule in &policy.egress.allow {
            let cidr = parse_cidr(&rule.cidr)?;
            // Sandboxes have IPv4 only, so an IPv6 rule can never match; it is skipped.
            let std::net::IpAddr::V4(addr) = cidr.addr else {
                continue;
            };
            let dst = format!("{addr}/{}", cidr.prefix);
            if rule.ports.is_empty() {
                s.push_str(&format!(
                    "add rule inet {table} {c} ip daddr {dst} accept\n"
                ));
            } else {
                let ports = rule
                    .ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                s.push_str(&format!(
                    "add rule inet {table} {c} ip daddr {dst} tcp dport {{ {ports} }} accept\n"
                ));
                s.push_str(&format!(
                    "add rule inet {table} {c} ip daddr {dst} udp dport {{ {ports} }} accept\n"
                ));
            }
        }
        s.push_str(&format!("add rule inet {table} {c} drop\nadd element inet {table} sandboxes {{ {} : jump {c} }}\n", net.address));
        Ok(s)
    }

    /// Removes a sandbox's (or a warm-pool) namespace, interface and rules; parts already gone are
    /// not an error.
    pub async fn teardown(&self, net: &SandboxNet) -> Result<(), String> {
        let c = &net.chain;
        let table = &self.table;
        let a = net.address;
        let mut errors = Vec::new();
        // An unassigned (warm pool) namespace has no rules yet.
        if !c.is_empty() {
            // One transaction whatever the sandbox had (a sandbox allowed nothing has no chain
            // or verdict-map entry): each part is added first, which is a no-op where it
            // exists, so every delete has something to delete. If it fails (e.g. the address
            // maps to another chain), each statement runs on its own and the chain is checked.
            let set = &net.tenant_set;
            let script = format!(
                "add set inet {table} {set} {{ type ipv4_addr; }}\nadd element inet {table} {set} {{ {a} }}\ndelete element inet {table} {set} {{ {a} }}\n\
                 add chain inet {table} {c}\nadd element inet {table} sandboxes {{ {a} : jump {c} }}\ndelete element inet {table} sandboxes {{ {a} }}\ndelete chain inet {table} {c}\n{port}",
                port = bind_port(table, net) + &unbind_port(table, net)
            );
            if self.rules_batcher.apply(script).await.is_err() {
                // Each statement separately: a missing element must not stop the rest.
                let unbind = unbind_port(table, net);
                for stmt in [
                    format!("delete element inet {table} sandboxes {{ {a} }}"),
                    format!("delete element inet {table} {set} {{ {a} }}"),
                    format!("delete chain inet {table} {c}"),
                ]
                .into_iter()
                .chain(unbind.lines().map(str::to_string))
                {
                    let _ = run_cmd("nft", &[&stmt], None).await;
                }
                if self.chain_exists(c).await {
                    errors.push(format!("nftables chain {c} is still present"));
                }
            }
        }
        if net.netns_path.exists() {
            if let Err(e) = run_cmd("ip", &["netns", "delete", &net.netns], None).await {
                errors.push(e);
            }
        }
        // After the namespace, so that nothing can open a flow again. A warm-pool namespace
        // (no chain) never had traffic forwarded, so it has nothing tracked.
        if !c.is_empty() {
            if let Err(e) = forget_connections(a).await {
                errors.push(e);
            }
        }
        if Path::new("/sys/class/net").join(&net.host_if).exists() {
            let _ = run_cmd("ip", &["link", "delete", &net.host_if], None).await;
        }
        // The user namespace goes after the network namespace it owns.
        let user_path = crate::userns::path_for(&net.netns);
        crate::userns::remove_kept(&user_path);
        if net.netns_path.exists() {
            errors.push(format!("network namespace {} is still present", net.netns));
        }
        if user_path.exists() {
            errors.push(format!(
                "user namespace {} is still present",
                user_path.display()
            ));
        }
        if Path::new("/sys/class/net").join(&net.host_if).exists() {
            errors.push(format!("interface {} is still present", net.host_if));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    pub async fn chain_exists(&self, chain: &str) -> bool {
        run_cmd("nft", &["list", "chain", "inet", &self.table, chain], None)
            .await
            .is_ok()
    }
}

/// The host's base ruleset for bridge `br`, in table `table`, without any sandbox's entries:
/// the `inet` table (forwarding through each sandbox's verdict-map chain, no traffic to the host,
/// masquerade on the way out) and the `bridge` table that binds ports to addresses. Loading it
/// flushes its chains, map and sets. `nimbus doctor` checks it (`nft --check`) under a probe
/// name, so a kernel without these nftables features is caught before the first launch.
pub(crate) fn host_rules(table: &str, br: &str, subnet: Subnet) -> String {
    format!(
        r#"add table inet {table}
add map inet {table} sandboxes {{ type ipv4_addr : verdict; }}
add chain inet {table} forward {{ type filter hook forward priority 0; policy accept; }}
add chain inet {table} input {{ type filter hook input priority 0; policy accept; }}
add chain inet {table} postrouting {{ type nat hook postrouting priority 100; policy accept; }}
add chain inet {table} egress
flush chain inet {table} forward
flush chain inet {table} input
flush chain inet {table} postrouting
flush chain inet {table} egress
add rule inet {table} forward ct state established,related accept
add rule inet {table} forward ct state invalid iifname "{br}" drop
add rule inet {table} forward iifname "{br}" jump egress
add rule inet {table} forward oifname "{br}" drop
add rule inet {table} egress ip saddr vmap @sandboxes
add rule inet {table} egress drop
add rule inet {table} input iifname "{br}" ct state established,related accept
add rule inet {table} input iifname "{br}" drop
add rule inet {table} postrouting ip saddr {subnet} oifname != "{br}" masquerade
flush map inet {table} sandboxes
{ports}"#,
        ports = port_binding_base(table)
    )
}

/// The `bridge` family table (same name as the `inet` one) that binds each sandbox's bridge port
/// to its address. A frame from a bound port passes only with the port's own address as IPv4 or
/// ARP sender; anything else (another sandbox's address, IPv6, other protocols) is dropped
/// before the IP layer sees it. Without this the verdict map, keyed by source address, would
/// give a sandbox that forged a sibling's address that sibling's egress policy, and a forged
/// ARP sender would redirect the host's traffic for the sibling. Sandboxes cannot forge today
/// (no `CAP_NET_RAW`, no `CAP_NET_ADMIN`); this holds even for a guest that can (a microVM's
/// kernel). Ports not yet bound (a warm-pool namespace, which runs nothing) are not filtered.
fn port_binding_base(table: &str) -> String {
    format!(
        "add table bridge {table}
add set bridge {table} ports {{ type ifname . ipv4_addr; }}
add set bridge {table} port_names {{ type ifname; }}
add chain bridge {table} from_sandboxes {{ type filter hook input priority -200; policy accept; }}
flush chain bridge {table} from_sandboxes
add rule bridge {table} from_sandboxes iifname != @port_names accept
add rule bridge {table} from_sandboxes iifname . ip saddr @ports accept
add rule bridge {table} from_sandboxes iifname . arp saddr ip @ports accept
add rule bridge {table} from_sandboxes drop
flush set bridge {table} ports
flush set bridge {table} port_names
"
    )
}

/// Binds `net`'s bridge port to its address (see [`port_binding_base`]); a no-op if bound.
fn bind_port(table: &str, net: &SandboxNet) -> String {
    format!(
        "add element bridge {table} ports {{ \"{i}\" . {a} }}\nadd element bridge {table} port_names {{ \"{i}\" }}\n",
        i = net.host_if,
        a = net.address
    )
}

/// Unbinds `net`'s bridge port; an error where it is not bound.
fn unbind_port(table: &str, net: &SandboxNet) -> String {
    format!(
        "delete element bridge {table} port_names {{ \"{i}\" }}\ndelete element bridge {table} ports {{ \"{i}\" . {a} }}\n",
        i = net.host_if,
        a = net.address
    )
}

/// Deletes the connection-tracking entries of flows from and to `address`. Tracking is keyed
/// by address, and a deleted sandbox's address goes to the next sandbox launched: an entry
/// left behind would let that sandbox's packets through as part of an established flow (for
/// UDP the right ports are enough), whatever its own policy says.
async fn forget_connections(address: Ipv4Addr) -> Result<(), String> {
    let address = address.to_string();
    let delete = |side: &'static str| {
        let address = address.clone();
        async move {
            match run_cmd("conntrack", &["-D", side, &address], None).await {
                Ok(_) => Ok(()),
                // conntrack fails when nothing matched.
                Err(e) if e.contains(" 0 flow entries have been deleted") => Ok(()),
                Err(e) => Err(format!(
                    "the tracked connections of {address} could not be deleted: {e}"
                )),
            }
        }
    };
    // Side by side: each walks the kernel's whole table (16 ms with 262 144 buckets).
    let (from, to) = tokio::join!(delete("--orig-src"), delete("--orig-dst"));
    from.and(to)
}

/// Fixes the bridge's MAC address at the one it has now. A bridge whose address nobody set
/// takes the lowest of its ports' addresses, so it changed whenever a sandbox's veth came or
/// went; running sandboxes kept the gateway's old address in their ARP cache and their
/// traffic went nowhere until it expired. Pinning the current address (rather than a new
/// one) keeps the caches of sandboxes that survived a server restart valid.
async fn pin_bridge_address(br: &str) -> Result<(), String> {
    let dev = Path::new("/sys/class/net").join(br);
    let read = |f: &str| {
        std::fs::read_to_string(dev.join(f))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", dev.join(f).display()))
    };
    // NET_ADDR_SET: an address was set explicitly and the bridge keeps it.
    const NET_ADDR_SET: &str = "3";
    if read("addr_assign_type")? == NET_ADDR_SET {
        return Ok(());
    }
    let address = read("address")?;
    run_cmd("ip", &["link", "set", br, "address", &address], None)
        .await
        .map(|_| ())
}

fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    let p = Path::new("/proc/sys").join(key);
    std::fs::write(&p, value).map_err(|e| format!("cannot set {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::spec::{EgressPolicy, EgressRule};

    #[test]
    fn another_address_on_the_bridge_is_found() {
        let listing = "5: nbt0    inet 10.88.0.1/16 brd 10.88.255.255 scope global nbt0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(foreign_address(listing, "10.88.0.1/16"), None);
        assert_eq!(foreign_address("", "10.88.0.1/16"), None);
        let two =
            format!("{listing}5: nbt0    inet 10.99.0.1/16 brd 10.99.255.255 scope global nbt0\n");
        assert_eq!(
            foreign_address(&two, "10.88.0.1/16").as_deref(),
            Some("10.99.0.1/16")
        );
    }

    #[test]
    fn subnets_parse_and_give_the_first_address_to_the_gateway() {
        let s = Subnet::parse("10.88.0.0/16").unwrap();
        assert_eq!(s.to_string(), "10.88.0.0/16");
        let typo = Subnet::parse("10.88.3.7/16").unwrap_err();
        assert!(typo.contains("the range is \"10.88.0.0/16\""), "{typo}");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert!(s.contains(Ipv4Addr::new(10, 88, 200, 1)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert!(Subnet::parse("fd00::/64").is_err());
    }

    #[test]
    fn rules_block_metadata_and_other_tenants_before_the_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new("nb-test", "10.99.0.0/16", dir.path(), None).unwrap();
        let net = n.plan("sbx_x", "demo", Ipv4Addr::new(10, 99, 0, 2));
        let policy = NetworkPolicy {
            egress: EgressPolicy {
                allow: vec![EgressRule {
                    cidr: "198.51.100.0/24".into(),
                    ports: vec![80, 443],
                }],
                ..Default::default()
            },
        };
        let r = n.rules(&net, &policy).unwrap();
        // Allowed nothing: only the tenant-set entry, no chain and no verdict-map entry (so
        // the base `egress` chain drops everything it sends).
        let deny_all = n.rules(&net, &NetworkPolicy::default()).unwrap();
        assert!(deny_all.contains("add element") && deny_all.contains("tenant_"));
        assert!(
            !deny_all.contains("chain") && !deny_all.contains("sandboxes"),
            "{deny_all}"
        );
        let meta = r.find("169.254.0.0/16").unwrap();
        let tenant = r.find("ip daddr != @tenant_").unwrap();
        let allow = r
            .find("198.51.100.0/24 tcp dport { 80, 443 } accept")
            .unwrap();
        assert!(meta < allow && tenant < allow);
        // Both bind the sandbox's bridge port to its address.
        let binding = format!("ports {{ \"{}\" . 10.99.0.2 }}", net.host_if);
        assert!(r.contains(&binding) && deny_all.contains(&binding), "{r}");
        assert!(r
            .trim_end()
            .ends_with(&format!("10.99.0.2 : jump {} }}", net.chain)));
        assert!(net.host_if.len() <= 15);
    }

    #[test]
    fn addresses_are_leased_once() {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new("nb-test", "10.99.0.0/28", dir.path(), None).unwrap();
        let a = n.allocate("a").unwrap();
        let b = n.allocate("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Ipv4Addr::new(10, 99, 0, 2));
        n.release(&n.plan("a", "t", a), "a");
        assert_eq!(n.allocate("c").unwrap(), a);
    }
}
