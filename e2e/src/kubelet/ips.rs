//! Pod IPs on the loopback network.
//!
//! Every process shares the host's network namespace, so two replicas listening on
//! the same container port would collide on one address. Linux routes all of
//! 127.0.0.0/8 to `lo`, so giving each pod its own 127.1.x.y lets every replica
//! bind `$(POD_IP):8080` exactly as it would in a cluster.
//!
//! The allocator is process-wide: tests in one binary run their own kubelets in
//! parallel and must never hand out the same address twice.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{LazyLock, Mutex, MutexGuard};

/// 127.1.0.1 – 127.1.255.254, skipping .0 and .255 in the last octet (valid on
/// `lo`, but confusing to read).
const HOSTS_PER_OCTET: u32 = 254;
const POOL_SIZE: u32 = 256 * HOSTS_PER_OCTET;

struct Pool {
    in_use: BTreeSet<u32>,
    /// Where the next search starts. Addresses are handed out round-robin so a
    /// released address is not reused at once, while a client may still hold a
    /// connection (or a stale Endpoint) to the pod that had it.
    cursor: u32,
}

fn pool() -> MutexGuard<'static, Pool> {
    static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
        Mutex::new(Pool {
            in_use: BTreeSet::new(),
            // Start somewhere that depends on the pid, so that two test processes
            // on one machine (a sandbox and a test run, say) are unlikely to collide.
            cursor: std::process::id().wrapping_mul(7919) % POOL_SIZE,
        })
    });
    // The pool is consistent after every statement, so a poisoned lock is fine.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pod IP, returned to the pool when dropped.
#[derive(Debug)]
pub(crate) struct LeasedIp {
    index: u32,
    address: Ipv4Addr,
}

impl LeasedIp {
    /// The next free address, or `None` if all 65,024 are taken.
    pub(crate) fn allocate() -> Option<Self> {
        let mut pool = pool();
        let start = pool.cursor;
        for offset in 0..POOL_SIZE {
            let index = (start + offset) % POOL_SIZE;
            if pool.in_use.insert(index) {
                pool.cursor = (index + 1) % POOL_SIZE;
                return Some(Self {
                    index,
                    address: address(index),
                });
            }
        }
        None
    }

    pub(crate) fn address(&self) -> Ipv4Addr {
        self.address
    }
}

impl Drop for LeasedIp {
    fn drop(&mut self) {
        pool().in_use.remove(&self.index);
    }
}

fn address(index: u32) -> Ipv4Addr {
    let third = index / HOSTS_PER_OCTET;
    let fourth = index % HOSTS_PER_OCTET + 1;
    // Both fit a u8 by construction (index < 256 * 254).
    Ipv4Addr::new(127, 1, third as u8, fourth as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_127_1_and_avoid_0_and_255() {
        assert_eq!(address(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(address(253), Ipv4Addr::new(127, 1, 0, 254));
        assert_eq!(address(254), Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(address(POOL_SIZE - 1), Ipv4Addr::new(127, 1, 255, 254));
    }

    #[test]
    fn leases_are_unique_until_released() {
        let a = LeasedIp::allocate().expect("address");
        let b = LeasedIp::allocate().expect("address");
        assert_ne!(a.address(), b.address());
        let released = a.address();
        drop(a);
        // Round-robin: the address just released is not the next one handed out.
        let c = LeasedIp::allocate().expect("address");
        assert_ne!(c.address(), released);
        assert_ne!(c.address(), b.address());
    }
}
