//! Throttling of secret guesses (login and break-glass re-authentication), keyed so that an
//! attacker on the LAN can neither guess freely nor lock a crew member out.
//!
//! Every attempt is reserved *before* the secret is verified and settled after, so parallel
//! guesses cannot slip through one back-off window. Three independent limits apply:
//! - **pair** (account, source address): after `backoff_after` failures in a row, a doubling
//!   back-off capped at `backoff_max_secs`; only one attempt of a pair is in flight at a time.
//!   Failures from one source never delay the same account on another source.
//! - **account**: failures from sources where this account has *not* signed in successfully in
//!   the last [`TRUST_MS`] share a budget of `failures_per_day` per rolling 24 h; each trusted
//!   source has its own budget of `trusted_failures_per_day`. So at most
//!   `failures_per_day + trusted_failures_per_day × (trusted sources)` guesses per account per
//!   day, and a crew member on their own tablet is not refused because of guesses elsewhere.
//! - **source**: at most `source_failures_per_hour` failures per source across all accounts,
//!   which bounds spraying and the audit rows a source can cause.
//!
//! Unknown accounts are throttled exactly like real ones (keys are the submitted ids), so a
//! `429` does not tell whether an account exists. State is in memory (bounded, see
//! [`MAX_ENTRIES`]); a daemon restart starts fresh budgets (docs/decisions).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A source counts as the account's own once it signed in as that account; for this long.
pub const TRUST_MS: i64 = 30 * 24 * 3600 * 1000;
const DAY_MS: i64 = 24 * 3600 * 1000;
const HOUR_MS: i64 = 3600 * 1000;
/// Entries kept per map before idle ones are dropped.
pub const MAX_ENTRIES: usize = 50_000;

/// Limits (from `[api]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub backoff_after: u32,
    pub backoff_max_secs: u64,
    pub failures_per_day: u32,
    pub trusted_failures_per_day: u32,
    pub source_failures_per_hour: u32,
}

/// Why an attempt may not be made now, and for how long (seconds, for `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub u64);

/// A reserved attempt: settle it with [`Attempt::succeeded`] or [`Attempt::failed`]; dropped
/// unsettled (an internal error, a cancelled request) it counts nothing and frees the pair.
#[must_use = "an attempt must be settled"]
pub struct Attempt {
    throttle: Arc<Throttle>,
    key: Option<Key>,
}

struct Key {
    account: String,
    source: IpAddr,
    trusted: bool,
}

impl Attempt {
    /// The secret was right.
    pub fn succeeded(mut self, now: i64) {
        let k = self.key.take().expect("unsettled");
        self.throttle.succeeded(k, now);
    }

    /// The secret was wrong (or the account unknown or disabled).
    pub fn failed(mut self, now: i64) {
        let k = self.key.take().expect("unsettled");
        self.throttle.failed(k, now);
    }
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attempt")
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.throttle.abandoned(k);
        }
    }
}

#[derive(Default)]
struct Pair {
    failures: u32,
    until_ms: i64,
    in_flight: bool,
    /// Failures of this pair in the last day (trusted pairs have their own budget).
    day: VecDeque<i64>,
    /// Last successful sign-in of the account from this source.
    trusted_at: Option<i64>,
    touched: i64,
}

#[derive(Default)]
struct Account {
    /// Failures (and in-flight attempts) from untrusted sources in the last day.
    day: VecDeque<i64>,
    in_flight: u32,
}

/// The throttle shared by the login and break-glass handlers.
pub struct Throttle {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pairs: HashMap<(String, IpAddr), Pair>,
    accounts: HashMap<String, Account>,
    sources: HashMap<IpAddr, VecDeque<i64>>,
}

fn prune(q: &mut VecDeque<i64>, since: i64) {
    while q.front().is_some_and(|t| *t <= since) {
        q.pop_front();
    }
}

/// Seconds until the oldest entry of `q` leaves a window of `window_ms` (at least 1).
fn wait_for_slot(q: &VecDeque<i64>, now: i64, window_ms: i64) -> Wait {
    let oldest = q.front().copied().unwrap_or(now);
    Wait((((oldest + window_ms - now).max(1000)) as u64).div_ceil(1000))
}

impl Throttle {
    pub fn new(limits: Limits) -> Throttle {
        Throttle {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Reserves an attempt for `account` from `source`, or says how long to wait.
    pub fn begin(
        self: &Arc<Self>,
        account: &str,
        source: IpAddr,
        now: i64,
    ) -> Result<Attempt, Wait> {
        let l = self.limits;
        let mut g = self.inner.lock().expect("throttle lock");
        let inner = &mut *g;
        inner.evict(now);
        let src = inner.sources.entry(source).or_default();
        prune(src, now - HOUR_MS);
        if src.len() >= l.source_failures_per_hour as usize {
            return Err(wait_for_slot(src, now, HOUR_MS));
        }
        let pair = inner
            .pairs
            .entry((account.to_string(), source))
            .or_default();
        pair.touched = now;
        if pair.in_flight {
            return Err(Wait(1));
        }
        if pair.until_ms > now {
            return Err(Wait(((pair.until_ms - now) as u64).div_ceil(1000)));
        }
        let trusted = pair.trusted_at.is_some_and(|t| now - t < TRUST_MS);
        if trusted {
            prune(&mut pair.day, now - DAY_MS);
            if pair.day.len() >= l.trusted_failures_per_day as usize {
                return Err(wait_for_slot(&pair.day, now, DAY_MS));
            }
        } else {
            let acc = inner.accounts.entry(account.to_string()).or_default();
            prune(&mut acc.day, now - DAY_MS);
            if acc.day.len() + acc.in_flight as usize >= l.failures_per_day as usize {
                return Err(wait_for_slot(&acc.day, now, DAY_MS));
            }
            acc.in_flight += 1;
        }
        let pair = inner
            .pairs
            .get_mut(&(account.to_string(), source))
            .expect("inserted above");
        pair.in_flight = true;
        Ok(Attempt {
            throttle: self.clone(),
            key: Some(Key {
                account: account.to_string(),
                source,
                trusted,
            }),
        })
    }

    /// The pair's failures are forgiven and the source becomes trusted for the account.
    fn succeeded(&self, a: Key, now: i64) {
        let mut g = self.inner.lock().expect("throttle lock");
        let inner = &mut *g;
        if !a.trusted
            && let Some(acc) = inner.accounts.get_mut(&a.account)
        {
            acc.in_flight = acc.in_flight.saturating_sub(1);
        }
        let pair = inner.pairs.entry((a.account, a.source)).or_default();
        pair.in_flight = false;
        pair.failures = 0;
        pair.until_ms = 0;
        pair.trusted_at = Some(now);
        pair.touched = now;
    }

    fn failed(&self, a: Key, now: i64) {
        let l = self.limits;
        let mut g = self.inner.lock().expect("throttle lock");
        let inner = &mut *g;
        inner.sources.entry(a.source).or_default().push_back(now);
        if !a.trusted {
            let acc = inner.accounts.entry(a.account.clone()).or_default();
            acc.in_flight = acc.in_flight.saturating_sub(1);
            acc.day.push_back(now);
        }
        let pair = inner.pairs.entry((a.account, a.source)).or_default();
        pair.in_flight = false;
        pair.failures += 1;
        if a.trusted {
            pair.day.push_back(now);
        }
        if pair.failures >= l.backoff_after {
            let exp = (pair.failures - l.backoff_after).min(20);
            let secs = (1u64 << exp).min(l.backoff_max_secs);
            pair.until_ms = now + secs as i64 * 1000;
        }
    }

    /// The attempt ended without a verdict: nothing is counted.
    fn abandoned(&self, a: Key) {
        let mut g = self.inner.lock().expect("throttle lock");
        let inner = &mut *g;
        if !a.trusted
            && let Some(acc) = inner.accounts.get_mut(&a.account)
        {
            acc.in_flight = acc.in_flight.saturating_sub(1);
        }
        if let Some(p) = inner.pairs.get_mut(&(a.account, a.source)) {
            p.in_flight = false;
        }
    }
}

impl Inner {
    /// Keeps memory bounded under a spray of random ids: drops entries that hold no state that
    /// still matters (no back-off, no failures in the window, no trust, nothing in flight).
    fn evict(&mut self, now: i64) {
        if self.pairs.len() > MAX_ENTRIES {
            self.pairs.retain(|_, p| {
                p.in_flight
                    || p.until_ms > now
                    || p.trusted_at.is_some_and(|t| now - t < TRUST_MS)
                    || now - p.touched < HOUR_MS
            });
        }
        if self.accounts.len() > MAX_ENTRIES {
            self.accounts
                .retain(|_, a| a.in_flight > 0 || a.day.back().is_some_and(|t| now - t < DAY_MS));
        }
        if self.sources.len() > MAX_ENTRIES {
            self.sources
                .retain(|_, q| q.back().is_some_and(|t| now - t < HOUR_MS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        backoff_after: 3,
        backoff_max_secs: 300,
        failures_per_day: 10,
        trusted_failures_per_day: 20,
        source_failures_per_hour: 60,
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 168, 1, n])
    }

    #[test]
    fn guesses_from_one_source_never_delay_the_account_on_its_own_tablet() {
        let t = Arc::new(Throttle::new(L));
        let (tablet, attacker) = (ip(10), ip(66));
        let a = t.begin("medic", tablet, 0).unwrap();
        a.succeeded(0);
        let mut now = 1000;
        for _ in 0..500 {
            match t.begin("medic", attacker, now) {
                Ok(a) => a.failed(now),
                Err(Wait(s)) => now += s as i64 * 1000,
            }
            let a = t
                .begin("medic", tablet, now)
                .expect("crew never locked out");
            a.succeeded(now);
        }
    }

    #[test]
    fn an_account_takes_a_stated_number_of_guesses_per_day_from_anywhere_else() {
        let t = Arc::new(Throttle::new(L));
        let mut failures = 0;
        let mut now = 0;
        // Many sources (spoofed addresses), each trying once per minute for a day.
        while now < DAY_MS {
            for n in 1..=50u8 {
                if let Ok(a) = t.begin("medic", ip(n), now) {
                    a.failed(now);
                    failures += 1;
                }
            }
            now += 60_000;
        }
        assert_eq!(failures, L.failures_per_day);
    }

    #[test]
    fn parallel_attempts_of_one_pair_are_serialised() {
        let t = Arc::new(Throttle::new(L));
        let a = t.begin("medic", ip(1), 0).unwrap();
        assert_eq!(t.begin("medic", ip(1), 0).unwrap_err(), Wait(1));
        a.failed(0);
        // Back-off starts at the third failure in a row, doubling.
        let a = t.begin("medic", ip(1), 0).unwrap();
        a.failed(0);
        let a = t.begin("medic", ip(1), 0).unwrap();
        a.failed(0);
        assert_eq!(t.begin("medic", ip(1), 0).unwrap_err(), Wait(1));
        let a = t.begin("medic", ip(1), 1000).unwrap();
        a.failed(1000);
        assert_eq!(t.begin("medic", ip(1), 1000).unwrap_err(), Wait(2));
    }

    #[test]
    fn unknown_and_real_accounts_are_throttled_alike() {
        let t = Arc::new(Throttle::new(L));
        let run = |id: &str| {
            let mut waits = Vec::new();
            for i in 0..6 {
                let now = i * 100;
                match t.begin(id, ip(9), now) {
                    Ok(a) => a.failed(now),
                    Err(w) => waits.push((i, w)),
                }
            }
            waits
        };
        assert_eq!(run("medic"), run("no-such-user"));
    }

    #[test]
    fn a_source_spraying_accounts_is_stopped() {
        let t = Arc::new(Throttle::new(L));
        let mut ok = 0;
        for i in 0..200 {
            if let Ok(a) = t.begin(&format!("u{i}"), ip(7), 0) {
                a.failed(0);
                ok += 1;
            }
        }
        assert_eq!(ok, L.source_failures_per_hour);
        assert!(t.begin("u0", ip(8), 0).is_ok(), "other sources unaffected");
        assert!(t.begin("x", ip(7), HOUR_MS + 1).is_ok(), "window passes");
    }

    #[test]
    fn abandoned_attempts_count_nothing() {
        let t = Arc::new(Throttle::new(L));
        for _ in 0..50 {
            let a = t.begin("medic", ip(1), 0).unwrap();
            drop(a);
        }
        assert!(t.begin("medic", ip(1), 0).is_ok());
    }
}
