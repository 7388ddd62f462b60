//! Live case events for the tablet stream (SSE): vitals committed, triage recorded, alarms,
//! case state. A broadcast channel: producers never wait, a slow tablet loses events and
//! resynchronises (the stream then sends a full refresh).
//!
//! Events carry ids and non-PHI state only; the stream reads PHI through the store under the
//! access it audited when it opened. Triage events carry the stored result so that the tablet
//! shows a new triage without another round trip (the SYSTEM.md §8 stream latency).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::StoredTriage;

/// What changed on a case.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// New readings were committed for the case.
    Vitals { case_id: String },
    /// A triage result was recorded.
    Triage {
        case_id: String,
        triage: Arc<StoredTriage>,
    },
    /// An alarm was raised (with it) or cleared (without) on the case.
    Alarm {
        case_id: String,
        alarm: Option<crate::storage::Alarm>,
    },
    /// The case changed state (closed, bundle sent or receipted).
    Case { case_id: String },
}

impl LiveEvent {
    pub fn case_id(&self) -> &str {
        match self {
            LiveEvent::Vitals { case_id }
            | LiveEvent::Triage { case_id, .. }
            | LiveEvent::Alarm { case_id, .. }
            | LiveEvent::Case { case_id } => case_id,
        }
    }
}

/// The appliance's event bus. Cloning is cheap; sending never blocks.
#[derive(Clone)]
pub struct Bus(broadcast::Sender<LiveEvent>);

/// Events buffered per subscriber before it lags.
const CAPACITY: usize = 1024;

impl Default for Bus {
    fn default() -> Self {
        Bus(broadcast::channel(CAPACITY).0)
    }
}

impl Bus {
    pub fn send(&self, e: LiveEvent) {
        // No subscriber is fine: nobody is watching.
        let _ = self.0.send(e);
    }
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.0.subscribe()
    }
}
