//! Per-address connection caps in a bounded, lock-free table.
//!
//! [`PerIpLimit`] counts the connections each peer address holds and
//! refuses one that would take an address past its cap. IPv4 addresses are
//! counted one by one; IPv6 addresses are grouped by their /64 prefix, since
//! one host can usually pick any address in its /64.
//!
//! # Implementation notes
//!
//! The table is a fixed array of slots, each a 64-bit key and a 32-bit
//! count, sized once when it is built: a flood of distinct addresses can
//! never grow it. Keys are placed by open addressing (linear probing inside
//! a window of [`PROBE_WINDOW`] slots from a keyed hash of the address, so a
//! remote peer cannot aim collisions).
//!
//! * A slot goes from empty to keyed once and never back. A slot whose count
//!   has fallen to 0 keeps its key (the same address reuses it) and may be
//!   taken over by another key: the taker first moves the count from 0 to a
//!   `RESERVED` marker with a CAS, so nobody can join the slot while its key
//!   changes, then stores the new key and finally the count 1.
//! * Joining a slot is a CAS on its count that refuses at the cap and
//!   refuses `RESERVED`. Because a slot can be taken over between reading
//!   its key and incrementing its count (the count could go 0 -> RESERVED ->
//!   1 under a new key, an ABA), the joiner reads the key again after a
//!   successful increment and undoes the increment if the key changed.
//! * Since slots never become empty again, an address is never stored
//!   beyond the first empty slot of its window, so a lookup stops there.
//! * Releasing is one `fetch_sub` by the [`PerIpGuard`] that did the
//!   increment, so the count cannot underflow.
//!
//! **When the window of an address is full** (every slot in it holds a live
//! address), the connection is refused and counted as `per_ip`: the table
//! never admits a connection it cannot account for. [`PerIpLimit::for_connections`]
//! (what [`Builder::per_ip`](crate::Builder::per_ip) uses) sizes the table
//! at twice the most connections the limiter can hold or queue, rounded up to
//! a power of two; live entries then fill at most half of it and a full
//! window does not happen in practice. The refusals are counted
//! ([`PerIpLimit::table_full_total`]) so an undersized table shows.
//!
//! One accept loop inserts at a time, which makes the count exact. Several
//! listeners sharing one table could, at the very same instant, each place
//! the first connection of the same new address in a different slot; that
//! address could then exceed its cap by one per listener until those
//! connections close.

use crate::refuse::DEFAULT_MAX_REFUSALS;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// How many slots from its hash position an address may be stored in.
pub const PROBE_WINDOW: usize = 64;

const EMPTY: u64 = 0;
const RESERVED: u32 = u32::MAX;
/// Gives up (and refuses) after this many lost races in one acquire.
const MAX_RETRIES: usize = 64;

/// Why [`PerIpLimit::try_acquire`] refused an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PerIpError {
    /// The address (IPv6: its /64) already holds its cap of connections.
    #[error("this address already holds its share of connections; close one first")]
    Limit,
    /// The table has no room for another address near this one's slot.
    #[error("the per-address table is full; build it with more slots")]
    TableFull,
}

struct Slot {
    key: AtomicU64,
    count: AtomicU32,
}

struct Table {
    slots: Box<[Slot]>,
    mask: usize,
    max_per_ip: u32,
    hasher: RandomState,
    table_full: AtomicU64,
}

/// A cap on concurrent connections per peer address. Cheap to clone: clones
/// share one table, so one cap can cover several listeners.
///
/// IPv4 addresses are counted one by one, IPv6 addresses by /64. The table
/// is a fixed array of atomics (16 bytes a slot, no lock), so a flood of
/// distinct addresses cannot grow memory; a slot whose count falls to zero
/// is reused by the next address.
///
/// # When the table is full
///
/// An address whose probe window ([`PROBE_WINDOW`] slots) is taken by other
/// live addresses is **refused**, as [`PerIpError::TableFull`] (the listener
/// counts it as `per_ip`, and [`table_full_total`](Self::table_full_total)
/// counts it here): the table never admits a connection it cannot account
/// for. [`for_connections`](Self::for_connections), which
/// [`Builder::per_ip`](crate::Builder::per_ip) uses, makes the table twice
/// as large as the most connections the limiter can hold or queue, so live
/// addresses fill at most half of it and a full window does not happen in
/// practice; a watched `table_full_total` says when a hand-sized table is too
/// small.
///
/// ```
/// use admit_tcp::PerIpLimit;
/// use std::net::IpAddr;
///
/// let limit = PerIpLimit::new(2);
/// let a: IpAddr = "192.0.2.1".parse().unwrap();
/// let first = limit.try_acquire(a).unwrap();
/// let _second = limit.try_acquire(a).unwrap();
/// assert!(limit.try_acquire(a).is_err()); // a third from the same address
/// assert!(limit.try_acquire("192.0.2.2".parse().unwrap()).is_ok());
/// drop(first);
/// assert!(limit.try_acquire(a).is_ok()); // released on drop
///
/// // IPv6 addresses count per /64.
/// let x: IpAddr = "2001:db8::1".parse().unwrap();
/// let y: IpAddr = "2001:db8::2".parse().unwrap();
/// let _x = limit.try_acquire(x).unwrap();
/// let _y = limit.try_acquire(y).unwrap();
/// assert_eq!(limit.count(x), 2);
/// ```
#[derive(Clone)]
pub struct PerIpLimit {
    table: Arc<Table>,
}

impl std::fmt::Debug for PerIpLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerIpLimit")
            .field("max_per_ip", &self.table.max_per_ip)
            .field("slots", &self.table.slots.len())
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl PerIpLimit {
    /// A cap of `max_per_ip` connections per address, with a table of 4096
    /// slots (enough for about 2000 addresses holding connections at once).
    pub fn new(max_per_ip: u32) -> PerIpLimit {
        PerIpLimit::with_slots(max_per_ip, 4096)
    }

    /// A cap sized for at most `max_connections` connections held or
    /// waiting at once: twice that many slots (rounded up to a power of two,
    /// at least [`PROBE_WINDOW`]), so the table cannot fill in practice.
    ///
    /// ```
    /// let limit = admit_tcp::PerIpLimit::for_connections(8, 10_000);
    /// assert_eq!(limit.slots(), 32_768);
    /// ```
    pub fn for_connections(max_per_ip: u32, max_connections: usize) -> PerIpLimit {
        PerIpLimit::with_slots(max_per_ip, max_connections.saturating_mul(2))
    }

    /// A cap sized for the connections that can hold a share at once
    /// through listeners of `limiter`: its permits (`max_capacity`), its
    /// wait queue (`queue_limit`), and up to [`DEFAULT_MAX_REFUSALS`]
    /// refused connections being answered. This is the size
    /// [`Builder::per_ip`](crate::Builder::per_ip) uses; build one table with
    /// it to share a per-address budget between listeners of one limiter.
    ///
    /// ```
    /// let limiter = admit::Limiter::builder().capacity(1000).queue_limit(24).build().unwrap();
    /// let limit = admit_tcp::PerIpLimit::for_limiter(8, &limiter);
    /// assert_eq!(limit.slots(), 4096); // 2 x (1000 + 24 + 1024), rounded up
    /// ```
    pub fn for_limiter(max_per_ip: u32, limiter: &admit::Limiter) -> PerIpLimit {
        PerIpLimit::for_limiter_with(max_per_ip, limiter, DEFAULT_MAX_REFUSALS)
    }

    /// [`for_limiter`](Self::for_limiter) with room for `answering`
    /// refusals in progress instead of the default.
    pub(crate) fn for_limiter_with(
        max_per_ip: u32,
        limiter: &admit::Limiter,
        answering: usize,
    ) -> PerIpLimit {
        let most = limiter.max_capacity() as usize + limiter.queue_limit() as usize + answering;
        PerIpLimit::for_connections(max_per_ip, most)
    }

    /// A cap with a table of `slots` slots (rounded up to a power of two, at
    /// least [`PROBE_WINDOW`]). Memory is 16 bytes a slot, fixed here.
    pub fn with_slots(max_per_ip: u32, slots: usize) -> PerIpLimit {
        let n = slots.max(PROBE_WINDOW).next_power_of_two();
        let slots = (0..n)
            .map(|_| Slot {
                key: AtomicU64::new(EMPTY),
                count: AtomicU32::new(0),
            })
            .collect();
        PerIpLimit {
            table: Arc::new(Table {
                slots,
                mask: n - 1,
                max_per_ip: max_per_ip.min(RESERVED - 1),
                hasher: RandomState::new(),
                table_full: AtomicU64::new(0),
            }),
        }
    }

    /// The cap per address.
    pub fn max_per_ip(&self) -> u32 {
        self.table.max_per_ip
    }

    /// The number of slots in the table (fixed).
    pub fn slots(&self) -> usize {
        self.table.slots.len()
    }

    /// Counts one more connection for `ip`, or refuses it. The returned
    /// guard gives the count back when dropped.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<PerIpGuard, PerIpError> {
        let t = &*self.table;
        if t.max_per_ip == 0 {
            return Err(PerIpError::Limit);
        }
        let key = group_key(ip);
        let home = t.hasher.hash_one(key) as usize;
        let window = PROBE_WINDOW.min(t.slots.len());
        'retry: for _ in 0..MAX_RETRIES {
            let mut candidate = None;
            for i in 0..window {
                let index = (home + i) & t.mask;
                let slot = &t.slots[index];
                // Acquire: pairs with the Release store of a new key, so a
                // key seen here comes with the count its taker stored before.
                let k = slot.key.load(Ordering::Acquire);
                if k == key {
                    match self.join(index, key) {
                        Join::Joined => return Ok(self.guard(index)),
                        Join::AtLimit => return Err(PerIpError::Limit),
                        Join::Moved => continue 'retry,
                    }
                }
                if k == EMPTY {
                    candidate.get_or_insert(index);
                    break;
                }
                // Relaxed: only a hint; the takeover below is a CAS.
                if candidate.is_none() && slot.count.load(Ordering::Relaxed) == 0 {
                    candidate = Some(index);
                }
            }
            let Some(index) = candidate else {
                t.table_full.fetch_add(1, Ordering::Relaxed);
                return Err(PerIpError::TableFull);
            };
            let slot = &t.slots[index];
            // AcqRel on the claims: they order the key write with the count
            // writes around it for every later reader of this slot.
            if slot
                .key
                .compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                match self.join(index, key) {
                    Join::Joined => return Ok(self.guard(index)),
                    Join::AtLimit => return Err(PerIpError::Limit),
                    Join::Moved => continue 'retry,
                }
            }
            if slot
                .count
                .compare_exchange(0, RESERVED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Nobody can join while the count is RESERVED; the Release
                // stores publish the new key before the slot opens again.
                slot.key.store(key, Ordering::Release);
                slot.count.store(1, Ordering::Release);
                return Ok(self.guard(index));
            }
        }
        t.table_full.fetch_add(1, Ordering::Relaxed);
        Err(PerIpError::TableFull)
    }

    /// Increments the count of slot `index`, which was seen holding `key`.
    fn join(&self, index: usize, key: u64) -> Join {
        let t = &*self.table;
        let slot = &t.slots[index];
        let mut count = slot.count.load(Ordering::Relaxed);
        loop {
            if count == RESERVED {
                return Join::Moved;
            }
            if count >= t.max_per_ip {
                // The count may belong to a new key by now; check before
                // calling it this address's limit.
                return if slot.key.load(Ordering::Acquire) == key {
                    Join::AtLimit
                } else {
                    Join::Moved
                };
            }
            match slot.count.compare_exchange_weak(
                count,
                count + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => count = actual,
            }
        }
        // The slot may have been taken over between our key load and the
        // increment (0 -> RESERVED -> 1 under another key). Acquire pairs
        // with the taker's Release store of its key.
        if slot.key.load(Ordering::Acquire) == key {
            Join::Joined
        } else {
            slot.count.fetch_sub(1, Ordering::Release);
            Join::Moved
        }
    }

    fn guard(&self, index: usize) -> PerIpGuard {
        PerIpGuard {
            table: self.table.clone(),
            slot: index as u32,
        }
    }

    /// Connections `ip` (IPv6: its /64) holds right now.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let t = &*self.table;
        let key = group_key(ip);
        let home = t.hasher.hash_one(key) as usize;
        for i in 0..PROBE_WINDOW.min(t.slots.len()) {
            let slot = &t.slots[(home + i) & t.mask];
            let k = slot.key.load(Ordering::Acquire);
            if k == key {
                let c = slot.count.load(Ordering::Acquire);
                return if c == RESERVED { 0 } else { c };
            }
            if k == EMPTY {
                break;
            }
        }
        0
    }

    /// Addresses holding at least one connection right now.
    pub fn tracked(&self) -> usize {
        self.table
            .slots
            .iter()
            .filter(|s| {
                let c = s.count.load(Ordering::Relaxed);
                c != 0 && c != RESERVED
            })
            .count()
    }

    /// Connections refused because the table had no room for their address.
    pub fn table_full_total(&self) -> u64 {
        self.table.table_full.load(Ordering::Relaxed)
    }
}

enum Join {
    Joined,
    AtLimit,
    /// The slot changed hands under us: scan again.
    Moved,
}

/// One connection counted against its address; dropping it gives the count
/// back. Held by [`Admitted`](crate::Admitted).
pub struct PerIpGuard {
    table: Arc<Table>,
    slot: u32,
}

impl std::fmt::Debug for PerIpGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerIpGuard")
            .field("slot", &self.slot)
            .finish()
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        // Release: the connection's use of the slot happens before another
        // acquirer (AcqRel CAS) sees the lower count.
        self.table.slots[self.slot as usize]
            .count
            .fetch_sub(1, Ordering::Release);
    }
}

/// The table key of an address: an IPv4 address, or an IPv6 /64 prefix.
///
/// IPv4 (and IPv4-mapped IPv6) addresses map into `0000:ffff::/32`, and the
/// all-zero prefix of `::1` maps to the multicast prefix `ffff:…`; both lie
/// in ranges no TCP peer uses, so no two real groups share a key, and no
/// key is the empty marker 0.
fn group_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => 0x0000_ffff_0000_0000 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match (u128::from(v6) >> 64) as u64 {
            0 => u64::MAX,
            prefix => prefix,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn keys_group_ipv6_by_64_and_keep_ipv4_apart() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(group_key(a), group_key(b));
        assert_ne!(group_key(a), group_key(c));
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(group_key(v4), group_key(mapped));
        assert_ne!(group_key(v4), group_key("127.0.0.3".parse().unwrap()));
        assert_ne!(group_key(IpAddr::V6(Ipv6Addr::LOCALHOST)), EMPTY);
        assert_ne!(group_key(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), EMPTY);
    }

    #[test]
    fn a_flood_of_distinct_addresses_does_not_grow_the_table() {
        let limit = PerIpLimit::with_slots(1, 128);
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            match limit.try_acquire(ip) {
                Ok(g) => held.push(g),
                Err(PerIpError::TableFull) => refused += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(limit.slots(), 128);
        assert!(held.len() <= 128);
        assert_eq!(held.len() + refused, 10_000);
        assert_eq!(limit.table_full_total(), refused as u64);
        assert_eq!(limit.tracked(), held.len());
        // Once released, the same slots serve new addresses.
        held.clear();
        assert_eq!(limit.tracked(), 0);
        for i in 0..100u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            held.push(limit.try_acquire(ip).unwrap());
        }
        assert_eq!(limit.tracked(), 100);
    }

    #[test]
    fn released_counts_come_back_and_slots_are_reused() {
        let limit = PerIpLimit::with_slots(3, 64);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..1000 {
            let a = limit.try_acquire(ip).unwrap();
            let b = limit.try_acquire(ip).unwrap();
            let c = limit.try_acquire(ip).unwrap();
            assert_eq!(limit.try_acquire(ip).unwrap_err(), PerIpError::Limit);
            assert_eq!(limit.count(ip), 3);
            drop((a, b, c));
            assert_eq!(limit.count(ip), 0);
        }
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn concurrent_acquire_and_release_never_exceed_the_cap() {
        let limit = PerIpLimit::with_slots(4, 64);
        let ips: Vec<IpAddr> = (1..=8u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let limit = limit.clone();
                let ips = ips.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for n in 0..20_000usize {
                        let ip = ips[(n * 7 + t) % ips.len()];
                        if let Ok(g) = limit.try_acquire(ip) {
                            assert!(limit.count(ip) <= 4);
                            held.push(g);
                        }
                        if held.len() > 3 {
                            held.remove(n % held.len());
                        }
                    }
                });
            }
        });
        assert_eq!(limit.tracked(), 0);
        for ip in ips {
            assert_eq!(limit.count(ip), 0);
        }
    }
}
