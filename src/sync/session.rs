//! The forwarder's bookkeeping for one connection: which bundles are in flight since when,
//! which packet id carries which bundle until its PUBACK, which PUBACKs still have to be
//! recorded, and which committed receipts still have to be acknowledged. Pure: no IO, time is
//! passed in.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::link::LinkClient;

/// Per-connection state of the forwarder. `A` is a receipt's ack handle.
pub struct Session<A> {
    window: usize,
    /// Bundle ids published and not yet receipted, with when they were (re)published.
    in_flight: HashMap<String, Instant>,
    /// Publish requests in the order the connection will assign packet ids to them.
    requested: VecDeque<String>,
    /// Packet id → bundle id, until PUBACK.
    pkids: HashMap<u16, String>,
    /// PUBACKed bundles not yet recorded as `sent`.
    to_mark_sent: Vec<String>,
    /// Receipt messages received and not yet verified and committed.
    receipts: Vec<(Vec<u8>, A)>,
    /// Receipts committed and waiting for room in the request queue to be acknowledged.
    acks: VecDeque<A>,
    /// SUBACK of the receipts topic seen (it follows our subscribe on CONNACK): publishing may
    /// start.
    pub subscribed: bool,
    /// The last fill found more queued than the window had room for.
    pub backlog: bool,
}

impl<A> Session<A> {
    pub fn new(window: usize) -> Self {
        Session {
            window,
            in_flight: HashMap::new(),
            requested: VecDeque::new(),
            pkids: HashMap::new(),
            to_mark_sent: Vec::new(),
            receipts: Vec::new(),
            acks: VecDeque::new(),
            subscribed: false,
            backlog: false,
        }
    }

    /// How many more envelopes may be published now.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.in_flight.len())
    }

    /// Envelopes published and not yet receipted.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The bundle ids in flight (not to be picked again by the next fill).
    pub fn in_flight_ids(&self) -> impl Iterator<Item = &String> {
        self.in_flight.keys()
    }

    /// A publish request for `bundle_id` was queued at `now`.
    pub fn published(&mut self, bundle_id: String, now: Instant) {
        self.requested.push_back(bundle_id.clone());
        self.in_flight.insert(bundle_id, now);
    }

    /// The connection assigned `pkid` to the oldest request without one.
    pub fn assigned(&mut self, pkid: u16) {
        if let Some(bid) = self.requested.pop_front() {
            self.pkids.insert(pkid, bid);
        }
    }

    /// A PUBACK: returns the bundle it was for and whether the broker took it. A bundle the
    /// broker took is recorded as `sent` at the next flush; a refused one stays in flight until
    /// the receipt timeout republishes it.
    pub fn puback(&mut self, pkid: u16, ok: bool) -> Option<(String, bool)> {
        let bid = self.pkids.remove(&pkid)?;
        if ok {
            self.to_mark_sent.push(bid.clone());
        }
        Some((bid, ok))
    }

    /// PUBACKed bundles to record as `sent` now.
    pub fn take_sent(&mut self) -> Vec<String> {
        std::mem::take(&mut self.to_mark_sent)
    }

    /// A receipt message arrived.
    pub fn receipt(&mut self, payload: Vec<u8>, ack: A) {
        self.receipts.push((payload, ack));
    }

    /// The receipt messages to verify and commit now.
    pub fn take_receipts(&mut self) -> Vec<(Vec<u8>, A)> {
        std::mem::take(&mut self.receipts)
    }

    /// A bundle left custody (receipted): it no longer counts against the window.
    pub fn receipted(&mut self, bundle_id: &str) {
        self.in_flight.remove(bundle_id);
    }

    /// Forgets bundles in flight longer than `timeout` so that the next fill republishes them.
    /// Returns how many.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> usize {
        let before = self.in_flight.len();
        self.in_flight
            .retain(|_, t| now.saturating_duration_since(*t) < timeout);
        before - self.in_flight.len()
    }

    /// Queues the acks of committed receipts.
    pub fn committed(&mut self, acks: impl IntoIterator<Item = A>) {
        self.acks.extend(acks);
    }

    /// Hands queued acks to the client without waiting; what does not fit waits for the next
    /// round.
    pub fn flush_acks<C: LinkClient<Ack = A>>(&mut self, client: &C) {
        while let Some(a) = self.acks.front() {
            if client.try_ack(a).is_err() {
                return;
            }
            self.acks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_packet_ids_and_pubacks() {
        let t0 = Instant::now();
        let mut s: Session<()> = Session::new(2);
        assert_eq!(s.room(), 2);
        s.published("a".into(), t0);
        s.published("b".into(), t0);
        assert_eq!(s.room(), 0);
        s.assigned(7);
        s.assigned(8);
        assert_eq!(s.puback(8, true), Some(("b".into(), true)));
        assert_eq!(s.puback(7, false), Some(("a".into(), false)));
        assert_eq!(s.puback(7, true), None, "a PUBACK counts once");
        assert_eq!(s.take_sent(), vec!["b".to_string()]);
        assert!(s.take_sent().is_empty());
        s.receipted("b");
        assert_eq!(s.room(), 1);
    }

    #[test]
    fn expiry_frees_the_window_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut s: Session<()> = Session::new(4);
        s.published("a".into(), t0);
        s.published("b".into(), t0 + Duration::from_secs(5));
        let timeout = Duration::from_secs(10);
        assert_eq!(s.expire(t0 + Duration::from_millis(9_999), timeout), 0);
        assert_eq!(s.expire(t0 + Duration::from_secs(10), timeout), 1);
        assert_eq!(s.in_flight_ids().collect::<Vec<_>>(), vec!["b"]);
    }
}
