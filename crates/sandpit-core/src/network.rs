//! A create request's `network` and `allow` turned into the [`NetworkPolicy`] the runtime
//! enforces: modes checked against what this server can do, hostnames resolved (on the host,
//! once, at create time) to the addresses they name then.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use sandpit_runtime::{NetworkPolicy, Runtime};

use crate::CoreError;

/// At most this many allow-list entries (each becomes a route).
const MAX_ALLOW: usize = 64;

pub(crate) async fn policy(
    runtime: &dyn Runtime,
    mode: Option<&str>,
    allow: &[String],
) -> Result<NetworkPolicy, CoreError> {
    match mode.unwrap_or("none") {
        "none" if allow.is_empty() => Ok(NetworkPolicy::default()),
        "none" => Err(CoreError::BadRequest(
            "allow needs network \"egress\"".into(),
        )),
        "egress" => {
            if let Some(why) = runtime.egress_unsupported() {
                return Err(CoreError::NotSupported(why));
            }
            if allow.len() > MAX_ALLOW {
                return Err(CoreError::BadRequest(format!(
                    "allow has {} entries; at most {MAX_ALLOW}",
                    allow.len()
                )));
            }
            let mut nets = Vec::new();
            for entry in allow {
                for net in resolve(entry).await? {
                    sandpit_runtime::net::check_allowed(&net).map_err(|e| {
                        CoreError::BadRequest(format!("allow entry '{entry}': {e}"))
                    })?;
                    if !nets.contains(&net) {
                        nets.push(net);
                    }
                }
            }
            Ok(NetworkPolicy {
                egress: true,
                allow: nets,
            })
        }
        other => Err(CoreError::BadRequest(format!(
            "network must be \"none\" or \"egress\", not \"{other}\""
        ))),
    }
}

/// One allow-list entry: an IPv4 address, an IPv4 CIDR or a hostname.
async fn resolve(entry: &str) -> Result<Vec<Ipv4Net>, CoreError> {
    let bad = |why: &str| CoreError::BadRequest(format!("allow entry '{entry}': {why}"));
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<Ipv4Net>() {
        return Ok(vec![net.trunc()]);
    }
    if let Ok(addr) = entry.parse::<Ipv4Addr>() {
        return Ok(vec![Ipv4Net::from(addr)]);
    }
    if entry.parse::<IpAddr>().is_ok() || entry.parse::<ipnet::IpNet>().is_ok() {
        return Err(bad(
            "IPv6 is not supported (sandboxes have IPv4 egress only)",
        ));
    }
    let hostname = !entry.is_empty()
        && entry.len() <= 253
        && entry.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !hostname {
        return Err(bad("not an IPv4 address, IPv4 CIDR or hostname"));
    }
    let addrs = tokio::net::lookup_host((entry, 0))
        .await
        .map_err(|e| bad(&format!("cannot resolve: {e}")))?;
    let nets: Vec<Ipv4Net> = addrs
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(Ipv4Net::from(v4)),
            IpAddr::V6(_) => None,
        })
        .collect();
    if nets.is_empty() {
        return Err(bad("resolves to no IPv4 address"));
    }
    Ok(nets)
}
