//! Which addresses a worker may connect to on a Job's behalf: never loopback,
//! link-local (the metadata server lives there), unspecified or multicast
//! addresses, nor the cluster's own Pod and Service ranges, unless the fleet
//! allows a range by name (`spec.egress.allowedCidrs`). Pure: the worker
//! applies it to every resolved address, the operator to literal IPs in a
//! Job's URLs before anything is queued.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP range such as `10.96.0.0/12` or `fe80::/10`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a range could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IP range such as 10.96.0.0/12 or fd00::/8: {why}")]
pub struct BadCidr {
    pub text: String,
    pub why: &'static str,
}

impl Cidr {
    /// The range of `prefix` leading bits of `network`.
    pub fn new(network: IpAddr, prefix: u8) -> Result<Self, &'static str> {
        let bits = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err("the prefix length is longer than the address");
        }
        Ok(Self { network, prefix })
    }

    /// Whether `ip` lies in this range (an IPv4 range never holds an IPv6
    /// address; callers unwrap IPv4-mapped addresses first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                leading_bits_equal(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                leading_bits_equal(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn leading_bits_equal(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let whole = usize::from(prefix / 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = prefix % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why| BadCidr {
            text: text.to_owned(),
            why,
        };
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad("not an IP address"))?;
        let full = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse()
                .map_err(|_| bad("the prefix length is not a number"))?,
            None => full,
        };
        Cidr::new(network, prefix).map_err(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Reads a comma-separated list of ranges (`10.0.0.0/8,fd00::/8`); blanks are skipped.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, BadCidr> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect()
}

/// Where Pod and Service IPs come from when the operator is told nothing:
/// the private ranges every distribution allocates them from (RFC 1918,
/// the shared address space of RFC 6598, and IPv6 unique-local addresses).
pub const DEFAULT_CLUSTER_CIDRS: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7";

/// The class of address a refusal names, for a message a person reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Loopback,
    /// 169.254.0.0/16 and fe80::/10, where cloud metadata servers answer.
    LinkLocal,
    Unspecified,
    Multicast,
    /// The cluster's Pod or Service ranges (or another private range).
    Cluster(Cidr),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Loopback => f.write_str("a loopback address"),
            Refused::LinkLocal => {
                f.write_str("a link-local address (where the cloud metadata server answers)")
            }
            Refused::Unspecified => f.write_str("an unspecified address"),
            Refused::Multicast => f.write_str("a multicast or broadcast address"),
            Refused::Cluster(range) => write!(f, "a cluster-internal address (in {range})"),
        }
    }
}

/// The addresses one fleet's workers may not reach for Jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Pod, Service and other private ranges of the cluster.
    pub cluster: Vec<Cidr>,
    /// Ranges the fleet allows even though they would be refused.
    pub allowed: Vec<Cidr>,
}

impl AddressPolicy {
    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refuses(&self, ip: IpAddr) -> Option<Refused> {
        let ip = unmapped(ip);
        if self.allowed.iter().any(|range| range.contains(ip)) {
            return None;
        }
        if ip.is_loopback() {
            return Some(Refused::Loopback);
        }
        if ip.is_unspecified() || in_this_network(ip) {
            return Some(Refused::Unspecified);
        }
        if is_link_local(ip) {
            return Some(Refused::LinkLocal);
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Some(Refused::Multicast);
        }
        self.cluster
            .iter()
            .find(|range| range.contains(ip))
            .map(|range| Refused::Cluster(*range))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:169.254.169.254`) is judged as
/// the IPv4 address it reaches.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// 0.0.0.0/8 reaches the local host on Linux.
fn in_this_network(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0)
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6,
    }
}

/// The metadata server's IPv6 address on AWS Nitro instances.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AddressPolicy {
        AddressPolicy {
            cluster: parse_list(DEFAULT_CLUSTER_CIDRS).unwrap(),
            allowed: Vec::new(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn metadata_loopback_and_cluster_addresses_are_refused() {
        let p = policy();
        assert_eq!(p.refuses(ip("169.254.169.254")), Some(Refused::LinkLocal));
        assert_eq!(p.refuses(ip("fe80::1")), Some(Refused::LinkLocal));
        assert_eq!(p.refuses(ip("fd00:ec2::254")), Some(Refused::LinkLocal));
        assert_eq!(p.refuses(ip("127.0.0.1")), Some(Refused::Loopback));
        assert_eq!(p.refuses(ip("127.8.9.10")), Some(Refused::Loopback));
        assert_eq!(p.refuses(ip("::1")), Some(Refused::Loopback));
        assert_eq!(p.refuses(ip("0.0.0.0")), Some(Refused::Unspecified));
        assert_eq!(p.refuses(ip("0.1.2.3")), Some(Refused::Unspecified));
        assert_eq!(p.refuses(ip("224.0.0.1")), Some(Refused::Multicast));
        assert!(matches!(
            p.refuses(ip("10.96.0.1")),
            Some(Refused::Cluster(_))
        ));
        assert!(matches!(
            p.refuses(ip("172.31.255.255")),
            Some(Refused::Cluster(_))
        ));
        assert!(matches!(
            p.refuses(ip("fd12::1")),
            Some(Refused::Cluster(_))
        ));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_judged_as_ipv4() {
        let p = policy();
        assert_eq!(
            p.refuses(ip("::ffff:169.254.169.254")),
            Some(Refused::LinkLocal)
        );
        assert_eq!(p.refuses(ip("::ffff:127.0.0.1")), Some(Refused::Loopback));
    }

    #[test]
    fn public_addresses_and_range_edges_pass() {
        let p = policy();
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "2001:db8::1",
        ] {
            assert_eq!(p.refuses(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn a_fleet_allowance_opens_exactly_its_range() {
        let mut p = policy();
        p.allowed = parse_list("127.0.0.1/32, 10.1.0.0/16").unwrap();
        assert_eq!(p.refuses(ip("127.0.0.1")), None);
        assert_eq!(p.refuses(ip("127.0.0.2")), Some(Refused::Loopback));
        assert_eq!(p.refuses(ip("10.1.200.3")), None);
        assert!(p.refuses(ip("10.2.0.1")).is_some());
    }

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "10.96.0.0/12".parse::<Cidr>().unwrap().to_string(),
            "10.96.0.0/12"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("fe80::/x".parse::<Cidr>().is_err());
        let range: Cidr = "10.96.0.0/12".parse().unwrap();
        assert!(range.contains(ip("10.111.255.255")));
        assert!(!range.contains(ip("10.112.0.0")));
        assert!(
            !range.contains(ip("::ffff:10.96.0.1")),
            "callers unmap first"
        );
    }
}
