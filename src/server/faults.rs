//! Fault injection: the ways a real push server misbehaves, switchable from tests.
//!
//! A [`Faults`] handle exists only when `ServerOptions::fault_injection` is set; connection
//! tasks consult the shared state at the points named by [`Step`]. The lock is a std
//! `Mutex` held for a few field reads, never across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::registry::{Command, Registry};

/// Where `drop_connection_at` cuts the TCP stream (without a close frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Right after a `hello` is received, before it is answered.
    Hello,
    /// Right after a `register` is received, before it is answered or applied.
    Register,
    /// Right after the next notification frame is sent.
    Notification,
    /// Right after the next `ack` is received, before it is applied, so the message stays
    /// stored and comes back after the reconnect.
    Ack,
}

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub drop_at: Option<Step>,
    pub reply_delay: Option<Duration>,
    pub omit_replies: bool,
    pub register_status: Option<u16>,
    pub force_new_uaid: bool,
    pub ignore_pings: bool,
    pub refuse_connections: bool,
    pub endpoint_status: Option<u16>,
    pub connection_attempts: Vec<Instant>,
}

/// A cheap, clonable handle on the server's injected faults.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
    clients: Arc<Registry>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("state", &*self.lock())
            .finish()
    }
}

impl Faults {
    pub(crate) fn new(clients: Arc<Registry>) -> Self {
        Faults {
            state: Arc::new(Mutex::new(FaultState::default())),
            clients,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding this lock cannot leave the plain fields inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut the next connection that reaches `step` (once).
    pub fn drop_connection_at(&self, step: Step) {
        self.lock().drop_at = Some(step);
    }

    /// Delay every hello, register and unregister reply by this much (`None` clears).
    pub fn set_reply_delay(&self, delay: Option<Duration>) {
        self.lock().reply_delay = delay;
    }

    /// Never send register and unregister replies (the requests still take effect).
    pub fn set_omit_replies(&self, omit: bool) {
        self.lock().omit_replies = omit;
    }

    /// Answer every register with this status and no endpoint (`None` clears).
    pub fn set_register_status(&self, status: Option<u16>) {
        self.lock().register_status = status;
    }

    /// The next hello gets a fresh uaid even if its uaid is valid, and the old user record
    /// is dropped, as after the real server expired it (once).
    pub fn force_new_uaid(&self) {
        self.lock().force_new_uaid = true;
    }

    /// Close every connected client with this code and reason (e.g. 4774).
    pub fn close_all(&self, code: u16, reason: &str) {
        self.clients.send_all(&Command::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Leave client pings unanswered: `{}` gets no reply, and a WebSocket ping frame stops
    /// the connection from being read (so no pong goes out) until the client gives up.
    pub fn set_ignore_pings(&self, ignore: bool) {
        self.lock().ignore_pings = ignore;
    }

    /// Send this exact text frame to every connected client.
    pub fn send_raw(&self, text: &str) {
        self.clients.send_all(&Command::Raw(text.to_owned()));
    }

    /// Accept TCP connections and drop them at once (to watch a client back off).
    pub fn set_refuse_connections(&self, refuse: bool) {
        self.lock().refuse_connections = refuse;
    }

    /// Answer every push to an endpoint with this status and an empty body, as a broken or
    /// misconfigured endpoint would (`None` clears).
    pub fn set_endpoint_status(&self, status: Option<u16>) {
        self.lock().endpoint_status = status;
    }

    /// When each TCP connection was accepted, oldest first.
    pub fn connection_attempts(&self) -> Vec<Instant> {
        self.lock().connection_attempts.clone()
    }

    // What the connection tasks ask.

    /// Records an accepted TCP connection; true if it should be dropped at once.
    pub(crate) fn on_accept(&self) -> bool {
        let mut state = self.lock();
        state.connection_attempts.push(Instant::now());
        state.refuse_connections
    }

    /// True (once) if the connection should be dropped at `step`.
    pub(crate) fn take_drop(&self, step: Step) -> bool {
        let mut state = self.lock();
        if state.drop_at == Some(step) {
            state.drop_at = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn reply_delay(&self) -> Option<Duration> {
        self.lock().reply_delay
    }

    pub(crate) fn omit_replies(&self) -> bool {
        self.lock().omit_replies
    }

    pub(crate) fn endpoint_status(&self) -> Option<u16> {
        self.lock().endpoint_status
    }

    pub(crate) fn register_status(&self) -> Option<u16> {
        self.lock().register_status
    }

    pub(crate) fn take_force_new_uaid(&self) -> bool {
        std::mem::take(&mut self.lock().force_new_uaid)
    }

    pub(crate) fn ignore_pings(&self) -> bool {
        self.lock().ignore_pings
    }
}
