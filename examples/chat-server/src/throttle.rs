//! Failed-login limits: at most [`ACCOUNT_FAILURES`] failures for one
//! account and [`ADDRESS_FAILURES`] from one address within [`WINDOW`];
//! past either, logins are refused with `rate_limited` *before* any
//! password is hashed, so guessing costs the guesser time and the server
//! nothing.
//!
//! Each key keeps the times of its last few failures (never more than its
//! limit), so a key costs a few dozen bytes; the table is pruned of keys
//! whose failures have all aged out whenever it grows past
//! [`MAX_KEYS`], and past that the oldest-looking keys go first, so a
//! flood of distinct names or addresses cannot grow memory without bound.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures counted per account and per address.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Failed logins for one account within [`WINDOW`] before it is refused.
pub const ACCOUNT_FAILURES: usize = 10;
/// Failed logins from one address (IPv6: one /64) within [`WINDOW`].
pub const ADDRESS_FAILURES: usize = 30;
/// Keys kept per table before pruning.
pub const MAX_KEYS: usize = 100_000;

/// One table of failure times by key.
#[derive(Debug)]
struct Table<K> {
    limit: usize,
    keys: HashMap<K, VecDeque<Instant>>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new(limit: usize) -> Self {
        Table {
            limit,
            keys: HashMap::new(),
        }
    }

    /// How long `key` must wait before its next attempt, if it must.
    fn wait(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let times = self.keys.get_mut(key)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.is_empty() {
            self.keys.remove(key);
            return None;
        }
        (times.len() >= self.limit).then(|| WINDOW - now.duration_since(times[0]))
    }

    /// Takes back one failure recorded at `at`.
    fn forget(&mut self, key: &K, at: Instant) {
        if let Some(times) = self.keys.get_mut(key) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    fn record(&mut self, key: K, now: Instant) {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&key) {
            self.prune(now);
        }
        let times = self.keys.entry(key).or_default();
        if times.len() >= self.limit {
            times.pop_front();
        }
        times.push_back(now);
    }

    /// Drops keys whose failures aged out; if that frees too little, drops
    /// the keys whose last failure is oldest until a quarter is free.
    fn prune(&mut self, now: Instant) {
        self.keys
            .retain(|_, t| t.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        if self.keys.len() >= MAX_KEYS {
            let mut last: Vec<Instant> = self
                .keys
                .values()
                .filter_map(|t| t.back().copied())
                .collect();
            last.sort_unstable();
            let cut = last[MAX_KEYS / 4];
            self.keys.retain(|_, t| t.back().is_some_and(|t| *t > cut));
        }
    }
}

/// The failed-login tables for accounts and addresses.
#[derive(Debug)]
pub struct FailedLogins {
    inner: Mutex<(Table<String>, Table<IpAddr>)>,
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins {
            inner: Mutex::new((Table::new(ACCOUNT_FAILURES), Table::new(ADDRESS_FAILURES))),
        }
    }
}

/// Names are one name whatever their case, and so are their counters.
fn account_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// IPv6 clients usually hold a whole /64: count it as one address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A login attempt under way, counted as a failure until
/// [`forgive`](Attempt::forgive)n.
#[derive(Debug)]
#[must_use = "an attempt is a failure unless forgiven"]
pub struct Attempt<'a> {
    logins: &'a FailedLogins,
    account: String,
    address: IpAddr,
    at: Instant,
}

impl Attempt<'_> {
    /// The attempt succeeded (or was never judged): it is not a failure.
    pub fn forgive(self) {
        let mut t = self.logins.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.0.forget(&self.account, self.at);
        t.1.forget(&self.address, self.at);
    }
}

impl FailedLogins {
    /// Starts a login for `name` from `ip`, counted as a failure until
    /// forgiven; or how long to wait if either limit is reached.
    pub fn attempt(&self, name: &str, ip: IpAddr) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let (account, address) = (account_key(name), address_key(ip));
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let wait = t.0.wait(&account, now).max(t.1.wait(&address, now));
        if let Some(wait) = wait {
            return Err(wait);
        }
        t.0.record(account.clone(), now);
        t.1.record(address, now);
        Ok(Attempt {
            logins: self,
            account,
            address,
            at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_limit_then_window() {
        let mut t = Table::new(3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.wait(&"a", now), None);
            t.record("a", now);
        }
        let wait = t.wait(&"a", now).expect("limited");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(1));
        assert_eq!(t.wait(&"b", now), None);
        assert_eq!(t.wait(&"a", now + WINDOW), None);
        assert!(t.keys.is_empty(), "aged-out keys are dropped");
    }

    #[test]
    fn prune_bounds_the_table() {
        let mut t = Table::new(1);
        let now = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            t.record(i, now + Duration::from_nanos(i as u64));
        }
        assert!(t.keys.len() <= MAX_KEYS);
        // The newest failures are kept.
        assert!(t.keys.contains_key(&(MAX_KEYS + 9)));
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let logins = FailedLogins::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..ACCOUNT_FAILURES * 2 {
            logins.attempt("Alice", ip).unwrap().forgive();
        }
        for _ in 0..ACCOUNT_FAILURES {
            let _failed = logins.attempt("alice", ip).unwrap();
        }
        assert!(
            logins.attempt("ALICE", ip).is_err(),
            "any case is one account"
        );
        assert!(logins.attempt("bob", ip).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let m: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(address_key(m), "127.0.0.9".parse::<IpAddr>().unwrap());
    }
}
