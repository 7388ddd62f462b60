//! The server-side session table and the API's clock.
//!
//! Sessions live in memory (authoritative while the daemon runs) and in the `sessions` table
//! (so a restart does not log the crew out); last-seen times are persisted in batches by the
//! session sweeper (`guard::SessionSweeper`), so after a restart a session can only look idler
//! than it was, never fresher. This file owns only the in-memory table: no IO.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::crypto::password;
use crate::storage::{SessionRow, UserInfo};

/// Time source of the API, injectable for session tests.
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::model::now_ms()
    }
}

/// A clock that moves only when told (tests).
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);
impl ManualClock {
    pub fn at(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
struct Session {
    row: SessionRow,
    user: UserInfo,
    /// Last-seen time not yet persisted.
    dirty: bool,
}

/// Why a token is not (or no longer) valid.
pub(super) enum Invalid {
    Unknown,
    Idle(SessionRow),
    Expired(SessionRow),
}

/// A session that ended and why (`idle`, `expired`).
pub(super) type EndedSession = (SessionRow, &'static str);

/// The in-memory session table.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn restore(rows: Vec<(SessionRow, UserInfo)>) -> Self {
        let map = rows
            .into_iter()
            .map(|(row, user)| {
                (
                    row.token_hash,
                    Session {
                        row,
                        user,
                        dirty: false,
                    },
                )
            })
            .collect();
        Sessions {
            map: Mutex::new(map),
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a session with this token still exists server-side (tests and diagnostics).
    pub fn contains_token(&self, token: &str) -> bool {
        self.map
            .lock()
            .expect("sessions lock")
            .contains_key(&password::token_hash(token))
    }

    pub(super) fn insert(&self, row: SessionRow, user: UserInfo) {
        self.map.lock().expect("sessions lock").insert(
            row.token_hash,
            Session {
                row,
                user,
                dirty: false,
            },
        );
    }

    /// Validates a token at `now`; `touch` records activity (idle timer restarts).
    pub(super) fn check(
        &self,
        hash: &[u8; 32],
        now: i64,
        idle_ms: i64,
        touch: bool,
    ) -> Result<(SessionRow, UserInfo), Invalid> {
        let mut map = self.map.lock().expect("sessions lock");
        let Some(s) = map.get_mut(hash) else {
            return Err(Invalid::Unknown);
        };
        if now >= s.row.expires_at_ms {
            let s = map.remove(hash).expect("present");
            return Err(Invalid::Expired(s.row));
        }
        if now - s.row.last_seen_ms > idle_ms {
            let s = map.remove(hash).expect("present");
            return Err(Invalid::Idle(s.row));
        }
        if touch && now > s.row.last_seen_ms {
            s.row.last_seen_ms = now;
            s.dirty = true;
        }
        if s.row
            .break_glass
            .as_ref()
            .is_some_and(|g| now >= g.until_ms)
        {
            s.row.break_glass = None;
        }
        Ok((s.row.clone(), s.user.clone()))
    }

    pub(super) fn remove(&self, hash: &[u8; 32]) -> Option<SessionRow> {
        self.map
            .lock()
            .expect("sessions lock")
            .remove(hash)
            .map(|s| s.row)
    }

    pub(super) fn remove_user(&self, user: &str) {
        self.map
            .lock()
            .expect("sessions lock")
            .retain(|_, s| s.user.id != user);
    }

    pub(super) fn set_break_glass(&self, hash: &[u8; 32], grant: crate::storage::Grant) {
        if let Some(s) = self.map.lock().expect("sessions lock").get_mut(hash) {
            s.row.break_glass = Some(grant);
        }
    }

    /// Removes expired sessions and returns them, plus the last-seen times to persist.
    pub(super) fn sweep(
        &self,
        now: i64,
        idle_ms: i64,
    ) -> (Vec<EndedSession>, Vec<([u8; 32], i64)>) {
        let mut map = self.map.lock().expect("sessions lock");
        let mut ended = Vec::new();
        map.retain(|_, s| {
            let why = if now >= s.row.expires_at_ms {
                Some("expired")
            } else if now - s.row.last_seen_ms > idle_ms {
                Some("idle")
            } else {
                None
            };
            match why {
                Some(w) => {
                    ended.push((s.row.clone(), w));
                    false
                }
                None => true,
            }
        });
        let seen = map
            .values_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                (s.row.token_hash, s.row.last_seen_ms)
            })
            .collect();
        (ended, seen)
    }
}

/// The clock the API runs on.
pub type SharedClock = Arc<dyn Clock>;
