//! Egress networking of a sandbox: the policy (which IPv4 networks it may reach), the
//! slirp4netns process that gives its network namespace a `tap0` to the outside, and the
//! routes that block the host, private ranges and the cloud metadata address.
//!
//! The namespace is made by host root before the sandbox's user namespace (see `jail`), so it
//! belongs to the initial user namespace: root inside the sandbox has no CAP_NET_ADMIN over
//! it and cannot change its routes, addresses or links. slirp4netns makes every connection
//! from the host's network namespace, so the routes inside decide what it is asked to reach;
//! `--disable-host-loopback` keeps the gateway address (10.0.2.2) off the host's loopback.

use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::Helper;

/// How a sandbox reaches the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// `false`: loopback only.
    #[serde(default)]
    pub egress: bool,
    /// With egress, the only networks the sandbox may reach; empty: any address outside the
    /// blocked ranges. Blocked host and metadata addresses stay blocked whatever it says.
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
}

/// Ranges no egress sandbox reaches unless its allow-list names them (loopback, private,
/// carrier-grade NAT, link-local, multicast, reserved).
pub const BLOCKED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The cloud metadata address: blocked even when an allow-list names its range.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// slirp4netns's network inside the sandbox: the sandbox is 10.0.2.100, the gateway 10.0.2.2
/// and the DNS forwarder 10.0.2.3.
pub const SLIRP_NET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 0, 2, 0), 24) {
    Ok(n) => n,
    Err(_) => panic!("10.0.2.0/24 is a network"),
};
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const TAP: &str = "tap0";

/// Checks one allow-list entry: it must not take over the sandbox's own slirp network.
pub fn check_allowed(net: &Ipv4Net) -> Result<(), String> {
    if SLIRP_NET.contains(net) {
        return Err(format!(
            "{net} is inside the sandbox's own network {SLIRP_NET}"
        ));
    }
    Ok(())
}

type Fallible<T> = Result<T, String>;

/// What the host's network namespace treats as itself: the `local` routes of its `local`
/// table (every interface address, and whole ranges bound with `ip route add local`).
pub fn host_addresses() -> Fallible<Vec<Ipv4Net>> {
    let out = Command::new("ip")
        .args([
            "-4", "-o", "route", "show", "table", "local", "type", "local",
        ])
        .output()
        .map_err(|e| format!("running ip route: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip route show table local: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_local_routes(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_local_routes(text: &str) -> Vec<Ipv4Net> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "local" {
                return None;
            }
            let dst = words.next()?;
            dst.parse::<Ipv4Net>()
                .ok()
                .or_else(|| dst.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .collect()
}

/// The `ip -batch` script that makes the sandbox's routing table: blocked ranges, the allow
/// list (which may reopen parts of them; entries inside a pinned network are left out), then
/// the host's own networks and the metadata address, which no allow entry can beat.
pub fn route_script(policy: &NetworkPolicy, host: &[Ipv4Net]) -> String {
    let mut s = String::new();
    for range in BLOCKED_RANGES {
        s.push_str(&format!("route add prohibit {range}\n"));
    }
    if !policy.allow.is_empty() {
        s.push_str("route replace prohibit default\n");
    }
    let pins = pinned(host);
    for net in routed_allows(policy, &pins) {
        s.push_str(&format!("route replace {net} via {GATEWAY} dev {TAP}\n"));
    }
    for net in &pins {
        s.push_str(&format!("route replace prohibit {net}\n"));
    }
    s
}

/// Networks blocked whatever the allow-list says: the host's own (but loopback, which is the
/// sandbox's own `lo` inside) and the metadata address.
fn pinned(host: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let loopback: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default();
    let mut v: Vec<Ipv4Net> = host
        .iter()
        .map(|n| n.trunc())
        .filter(|n| !loopback.contains(n))
        .chain([Ipv4Net::from(METADATA)])
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Allow entries that get a route: one inside a pinned network would be more specific than
/// the pin and reopen it.
fn routed_allows<'a>(
    policy: &'a NetworkPolicy,
    pins: &'a [Ipv4Net],
) -> impl Iterator<Item = &'a Ipv4Net> {
    policy
        .allow
        .iter()
        .filter(move |a| !pins.iter().any(|p| p.contains(*a)))
}

/// Checks that `ip -4 -o route show` output has every route [`route_script`] makes.
pub fn verify_routes(policy: &NetworkPolicy, host: &[Ipv4Net], shown: &str) -> Fallible<()> {
    let mut prohibited = Vec::new();
    let mut via = Vec::new();
    for line in shown.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let dst = |s: &str| -> Option<Ipv4Net> {
            if s == "default" {
                return "0.0.0.0/0".parse().ok();
            }
            s.parse()
                .ok()
                .or_else(|| s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        };
        match w.as_slice() {
            ["prohibit", d, ..] => prohibited.extend(dst(d)),
            [d, "via", g, ..] if *g == GATEWAY.to_string() => via.extend(dst(d)),
            _ => {}
        }
    }
    let want_blocked = BLOCKED_RANGES
        .iter()
        .filter_map(|r| r.parse::<Ipv4Net>().ok())
        .filter(|r| !policy.allow.contains(r))
        .chain(pinned(host))
        .chain(
            (!policy.allow.is_empty() && !policy.allow.iter().any(|n| n.prefix_len() == 0))
                .then(Ipv4Net::default),
        );
    for net in want_blocked {
        if !prohibited.contains(&net) {
            return Err(format!("route 'prohibit {net}' is missing"));
        }
    }
    for net in routed_allows(policy, &pinned(host)) {
        if !via.contains(net) {
            return Err(format!("route '{net} via {GATEWAY}' is missing"));
        }
    }
    Ok(())
}

/// Runs `ip` inside the network namespace of `pid` (as host root), with `stdin` as its input.
fn ip_in(pid: i32, args: &[&str], stdin: &str) -> Fallible<String> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nsenter ip: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("writing to ip: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// File in the sandbox dir naming the sandbox's slirp4netns, so clean-up finds it even when
/// the store lost the handle.
pub fn helper_file(sandbox_dir: &Path) -> std::path::PathBuf {
    sandbox_dir.join("slirp4netns.json")
}

/// Gives the network namespace of `pid` its egress: starts slirp4netns (detached, so it
/// outlives the jail and the server like the sandbox does), waits until it has configured
/// `tap0`, writes and verifies the routes. On failure nothing is left running.
pub fn attach(policy: &NetworkPolicy, pid: i32, sandbox_dir: &Path) -> Fallible<Helper> {
    let host = host_addresses()?;
    let helper = spawn_slirp(pid, sandbox_dir)?;
    let routes = || -> Fallible<()> {
        ip_in(pid, &["-batch", "-"], &route_script(policy, &host))?;
        let shown = ip_in(pid, &["-4", "-o", "route", "show"], "")?;
        verify_routes(policy, &host, &shown)
    };
    if let Err(e) = routes() {
        kill(&helper);
        return Err(format!("network of the sandbox: {e}"));
    }
    let json = serde_json::to_string(&helper).map_err(|e| e.to_string())?;
    if let Err(e) = fs::write(helper_file(sandbox_dir), json) {
        kill(&helper);
        return Err(format!("recording slirp4netns: {e}"));
    }
    Ok(helper)
}

/// Largest size of `slirp4netns.log` (RLIMIT_FSIZE of slirp4netns).
const SLIRP_LOG_MAX: libc::rlim_t = 1024 * 1024;

fn spawn_slirp(pid: i32, sandbox_dir: &Path) -> Fallible<Helper> {
    let log_path = sandbox_dir.join("slirp4netns.log");
    // Written by slirp4netns for as long as the sandbox lives: started afresh each time and
    // capped below (what the sandbox's traffic makes it log cannot grow a host file).
    let log = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    // The write end is inherited by slirp4netns (no close-on-exec); the read end is not.
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    nix::fcntl::fcntl(
        ready_r.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("fcntl: {e}"))?;
    use std::os::unix::process::CommandExt;
    // In a private mount namespace of its own: --enable-sandbox pivots and unmounts, and
    // in the host's mount namespace those unmounts would propagate to shared host mounts
    // (e.g. every `ip netns` bind under /run/netns). `unshare` execs slirp4netns in place,
    // so the pid is slirp4netns's.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "slirp4netns"])
        .args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
        ])
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        // By path, not pid: given a pid, slirp4netns would also join the sandbox's user
        // namespace, which has no rights over this network namespace.
        .arg("--netns-type=path")
        .arg(format!("/proc/{pid}/ns/net"))
        .arg(TAP)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: SLIRP_LOG_MAX,
                rlim_max: SLIRP_LOG_MAX,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Past the cap a write fails with EFBIG instead of killing slirp4netns.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting slirp4netns: {e}"))?;
    drop(ready_w);
    let spid = child.id() as i32;
    // Not waited for: when the jail exits, slirp4netns is re-parented like the sandbox.
    drop(child);
    let helper = Helper {
        pid: spid,
        start_time: crate::jail::start_time(spid).unwrap_or_default(),
    };
    let mut ready = fs::File::from(ready_r);
    let mut pfd = [nix::poll::PollFd::new(
        ready.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let polled = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(10_000u16));
    let mut byte = [0u8; 1];
    let ok = matches!(polled, Ok(n) if n > 0) && matches!(ready.read(&mut byte), Ok(1));
    if !ok || byte[0] != b'1' {
        kill(&helper);
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!(
            "slirp4netns did not come up: {}",
            log.lines().last().unwrap_or("no output")
        ));
    }
    Ok(helper)
}

/// Whether the helper is still the process that was started, and not a zombie: once it has
/// exited, its `tap0` is gone even if nobody has reaped it yet.
pub fn is_alive(helper: &Helper) -> bool {
    crate::jail::live_start_time(helper.pid) == Some(helper.start_time)
}

/// Kills the helper if it is still the process that was started.
pub fn kill(helper: &Helper) {
    if is_alive(helper) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(helper.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills the helper recorded in the sandbox dir, if any, and forgets it.
pub fn kill_recorded(sandbox_dir: &Path) {
    let file = helper_file(sandbox_dir);
    if let Ok(text) = fs::read_to_string(&file) {
        if let Ok(helper) = serde_json::from_str::<Helper>(&text) {
            kill(&helper);
        }
        let _ = fs::remove_file(file);
    }
}

/// Settings of a fresh network namespace made for an egress sandbox, applied by host root
/// from inside it: `lo` up is done by the caller; root inside may bind low ports and ping,
/// which would otherwise need capabilities over a namespace it does not own; interfaces made
/// later (`tap0`) get no IPv6, as egress is IPv4 only (`lo` keeps `::1`).
pub fn namespace_sysctls() -> Fallible<()> {
    for (key, value) in [
        ("net/ipv4/ip_unprivileged_port_start", "0"),
        ("net/ipv4/ping_group_range", "0 2147483647"),
        ("net/ipv6/conf/default/disable_ipv6", "1"),
    ] {
        let path = Path::new("/proc/sys").join(key);
        match fs::write(&path, value) {
            Ok(()) => {}
            // A kernel without IPv6 has nothing to turn off.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && key.starts_with("net/ipv6") => {}
            Err(e) => return Err(format!("setting {key}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn host_networks_from_the_local_table() {
        let text = "local 127.0.0.0/8 dev lo proto kernel scope host src 127.0.0.1 \n\
                    local 192.0.2.2 dev eth0 proto kernel scope host src 192.0.2.2 \n\
                    local 198.51.100.0/24 dev lo scope host \n";
        assert_eq!(
            parse_local_routes(text),
            vec![
                net("127.0.0.0/8"),
                net("192.0.2.2/32"),
                net("198.51.100.0/24")
            ]
        );
    }

    #[test]
    fn script_blocks_host_after_allows() {
        let policy = NetworkPolicy {
            egress: true,
            allow: vec![net("10.213.0.0/30")],
        };
        let host = [net("10.213.0.1/32"), net("127.0.0.0/8")];
        let s = route_script(&policy, &host);
        let allow = s.find("route replace 10.213.0.0/30 via 10.0.2.2").unwrap();
        let pin = s.find("route replace prohibit 10.213.0.1/32").unwrap();
        assert!(allow < pin, "{s}");
        assert!(s.contains("route replace prohibit default"));
        assert!(s.contains("route replace prohibit 169.254.169.254/32"));
        assert!(!s.contains("replace prohibit 127."), "{s}");
        // An allow entry inside a host network is never routed.
        let inside = NetworkPolicy {
            egress: true,
            allow: vec![net("198.51.100.7/32"), net("198.51.0.0/16")],
        };
        let s = route_script(&inside, &[net("198.51.100.0/24")]);
        assert!(!s.contains("198.51.100.7"), "{s}");
        assert!(s.contains("route replace 198.51.0.0/16 via"), "{s}");
        assert!(s.contains("route replace prohibit 198.51.100.0/24"), "{s}");
    }

    #[test]
    fn verification_finds_missing_routes() {
        let policy = NetworkPolicy {
            egress: true,
            allow: vec![net("10.213.0.0/30")],
        };
        let host = [net("192.0.2.2/32")];
        let mut shown: String = BLOCKED_RANGES
            .iter()
            .map(|r| format!("prohibit {r} \n"))
            .collect();
        shown.push_str("prohibit default \n10.213.0.0/30 via 10.0.2.2 dev tap0 \n");
        shown.push_str("prohibit 169.254.169.254 \n");
        assert!(verify_routes(&policy, &host, &shown).is_err());
        shown.push_str("prohibit 192.0.2.2 \n");
        assert_eq!(verify_routes(&policy, &host, &shown), Ok(()));
        let open = NetworkPolicy {
            egress: true,
            allow: vec![],
        };
        assert_eq!(verify_routes(&open, &host, &shown), Ok(()));
    }

    #[test]
    fn slirp_network_is_not_allowable() {
        assert!(check_allowed(&net("10.0.2.0/24")).is_err());
        assert!(check_allowed(&net("10.0.2.3/32")).is_err());
        assert!(check_allowed(&net("10.0.0.0/8")).is_ok());
    }
}
