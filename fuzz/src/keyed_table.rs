//! `keyed_table`: `admit_tcp::PerIpLimit` under arbitrary acquire and
//! release sequences, floods of distinct addresses included, against a
//! `HashMap` of counts per address group.
//!
//! Checked after every operation: the per-address cap, IPv6 grouping by
//! /64 (and IPv4-mapped IPv6 counted as IPv4), that counts come back on
//! release, that the table never grows (`slots()` is fixed and `tracked()`
//! never passes it) and that a refusal for a full table happens only when the
//! table really has no room: with a 64-slot table (one probe window, so the
//! outcome does not depend on the hash seed) exactly when 64 other addresses
//! hold connections; with larger tables never while fewer than 64 do.

use admit_tcp::{PerIpError, PerIpGuard, PerIpLimit, PROBE_WINDOW};
use arbitrary::{Arbitrary, Unstructured};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address group: what one cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

fn group(ip: IpAddr) -> Group {
    match ip {
        IpAddr::V4(v4) => Group::V4(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Group::V4(u32::from(v4)),
            None => Group::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

/// An address to use.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Addr {
    /// One of 16 IPv4 addresses, so addresses repeat.
    Pool(u8),
    V4(u32),
    /// `::ffff:a.b.c.d`: must count as the IPv4 address.
    Mapped(u32),
    /// One of 8 /64 prefixes with any interface id: must share a count.
    Prefix(u8, u64),
    V6(u128),
}

impl Addr {
    fn ip(self) -> IpAddr {
        match self {
            Addr::Pool(i) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, i % 16)),
            Addr::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
            Addr::Mapped(a) => IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()),
            Addr::Prefix(p, low) => {
                let prefix = 0x2001_0db8_0000_0000u64 | u64::from(p % 8);
                IpAddr::V6(Ipv6Addr::from((u128::from(prefix) << 64) | u128::from(low)))
            }
            Addr::V6(a) => IpAddr::V6(Ipv6Addr::from(outside_aliased_ranges(a))),
        }
    }
}

/// The table keys `0:ffff::/32` like IPv4 and `::/64` like `ffff:ffff:ffff:ffff::/64`
/// (documented: ranges no TCP peer uses); addresses there are moved out.
fn outside_aliased_ranges(a: u128) -> u128 {
    let prefix = (a >> 64) as u64;
    if prefix >> 32 == 0x0000_ffff || prefix == u64::MAX {
        a ^ (0x2000u128 << 112)
    } else {
        a
    }
}

#[derive(Debug, Arbitrary)]
struct Config {
    max_per_ip: u8,
    size: u8,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    Acquire(Addr),
    Release(u8),
    Count(Addr),
    /// `8 * (n % 32 + 1)` distinct addresses from `base`, each acquired once
    /// and either kept or dropped at once (a few floods fill any table).
    Flood {
        base: u32,
        n: u8,
        keep: bool,
        v6: bool,
    },
    ReleaseAll,
}

struct Sut {
    limit: PerIpLimit,
    slots: usize,
    max: u32,
    counts: HashMap<Group, u32>,
    guards: Vec<(PerIpGuard, Group)>,
    table_full: u64,
}

impl Sut {
    fn acquire(&mut self, ip: IpAddr, keep: bool) {
        let g = group(ip);
        let held = self.counts.get(&g).copied().unwrap_or(0);
        let live = self.counts.len();
        let result = self.limit.try_acquire(ip);
        if self.slots == PROBE_WINDOW && held == 0 && live < PROBE_WINDOW && self.max > 0 {
            // One probe window covers the whole table: room means admission.
            assert!(result.is_ok(), "{ip} refused with room left: {result:?}");
        }
        match result {
            Ok(guard) => {
                assert!(
                    held < self.max,
                    "{ip} admitted with {held} held, cap {}",
                    self.max
                );
                assert!(
                    held > 0 || live < self.slots,
                    "{ip} admitted into a table of {} slots that already tracks {live} addresses",
                    self.slots
                );
                *self.counts.entry(g).or_insert(0) += 1;
                if keep {
                    self.guards.push((guard, g));
                } else {
                    drop(guard);
                    self.release(g);
                }
            }
            Err(PerIpError::Limit) => {
                assert!(
                    held >= self.max,
                    "{ip} refused at its limit with {held} held, cap {}",
                    self.max
                );
            }
            Err(PerIpError::TableFull) => {
                self.table_full += 1;
                assert_eq!(held, 0, "{ip} holds {held} but was refused as table full");
                assert!(
                    live >= PROBE_WINDOW,
                    "{ip} refused as table full with only {live} addresses tracked"
                );
                if self.slots == PROBE_WINDOW {
                    assert_eq!(live, PROBE_WINDOW);
                }
            }
            Err(e) => panic!("unknown refusal {e:?}"),
        }
    }

    fn release(&mut self, g: Group) {
        let c = self.counts.get_mut(&g).expect("released a group not held");
        *c -= 1;
        if *c == 0 {
            self.counts.remove(&g);
        }
    }

    fn check_count(&self, ip: IpAddr) {
        let expect = self.counts.get(&group(ip)).copied().unwrap_or(0);
        assert_eq!(self.limit.count(ip), expect, "count({ip})");
    }

    fn check(&self) {
        // The memory bound: the table never grows, whatever was inserted.
        assert_eq!(self.limit.slots(), self.slots, "the table changed size");
        assert_eq!(self.limit.tracked(), self.counts.len(), "tracked()");
        assert!(self.limit.tracked() <= self.slots);
        assert_eq!(self.limit.table_full_total(), self.table_full);
        assert_eq!(
            self.guards.len(),
            self.counts.values().map(|&c| c as usize).sum::<usize>()
        );
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::arbitrary(&mut u) else {
        return;
    };
    let max = match config.max_per_ip {
        0xf0..=0xff => u32::MAX,
        m => u32::from(m % 5),
    };
    let limit = match config.size % 8 {
        6 => PerIpLimit::with_slots(max, 128),
        7 => PerIpLimit::new(max),
        _ => PerIpLimit::with_slots(max, 0),
    };
    let slots = limit.slots();
    assert!(slots >= PROBE_WINDOW && slots.is_power_of_two());
    let max = limit.max_per_ip();
    assert!(
        max < u32::MAX,
        "the cap must leave room for the reserved marker"
    );
    let _ = format!("{limit:?}");
    let mut sut = Sut {
        limit,
        slots,
        max,
        counts: HashMap::new(),
        guards: Vec::new(),
        table_full: 0,
    };
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Acquire(a) => {
                sut.acquire(a.ip(), true);
                sut.check_count(a.ip());
            }
            Op::Release(i) if !sut.guards.is_empty() => {
                let (guard, g) = sut.guards.swap_remove(usize::from(i) % sut.guards.len());
                drop(guard);
                sut.release(g);
            }
            Op::Count(a) => sut.check_count(a.ip()),
            Op::Flood { base, n, keep, v6 } => {
                for i in 0..(u32::from(n % 32) + 1) * 8 {
                    let ip = if v6 {
                        let prefix = 0x2001_0db8_0000_0000u64 ^ (u64::from(base) << 16);
                        IpAddr::V6(Ipv6Addr::from(u128::from(prefix + u64::from(i)) << 64 | 1))
                    } else {
                        IpAddr::V4(Ipv4Addr::from(base.wrapping_add(i)))
                    };
                    sut.acquire(ip, keep);
                }
            }
            Op::ReleaseAll => {
                for (guard, g) in std::mem::take(&mut sut.guards) {
                    drop(guard);
                    sut.release(g);
                }
            }
            _ => {}
        }
        sut.check();
    }
    sut.guards.clear();
    assert_eq!(
        sut.limit.tracked(),
        0,
        "counts left after every guard was dropped"
    );
}
