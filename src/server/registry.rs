//! Who is connected: one entry per WebSocket, and which one currently owns each uaid.
//!
//! Connection tasks own their sockets; everyone else (the HTTP side, `deliver`, faults)
//! reaches them only by sending a [`Command`] on the connection's channel.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::store::Notification;

/// What other parts of the server ask a connection task to do.
#[derive(Clone, Debug)]
pub(crate) enum Command {
    /// Send this notification unless it is already in flight on this connection.
    Notify(Notification),
    /// A TTL 0 notification: sent, but (as in autopush) not waited for: its ack is
    /// ignored and it does not hold back the next batch from storage.
    NotifyUntracked(Notification),
    /// Send a close frame with this code and reason, then end the connection.
    Close { code: u16, reason: String },
    /// Send this exact text frame (fault injection).
    Raw(String),
    /// A server-side broadcast changed; tell the client if it subscribed to it.
    Broadcast { id: String, version: String },
}

struct Conn {
    tx: mpsc::UnboundedSender<Command>,
    uaid: Option<String>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Conn>,
    by_uaid: HashMap<String, u64>,
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a WebSocket that has not said hello yet.
    pub fn add(&self) -> (u64, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.conns.insert(id, Conn { tx, uaid: None });
        (id, rx)
    }

    /// Makes connection `id` the owner of `uaid`. A connection that owned it before is
    /// told to close with 1011 "SM", as autopush does when a uaid connects twice.
    pub fn bind(&self, id: u64, uaid: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_uaid.insert(uaid.to_owned(), id) {
            if old != id {
                if let Some(conn) = inner.conns.get_mut(&old) {
                    conn.uaid = None;
                    let _ = conn.tx.send(Command::Close {
                        code: 1011,
                        reason: "SM".to_owned(),
                    });
                }
            }
        }
        if let Some(conn) = inner.conns.get_mut(&id) {
            conn.uaid = Some(uaid.to_owned());
        }
    }

    pub fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(Conn {
            uaid: Some(uaid), ..
        }) = inner.conns.remove(&id)
        {
            if inner.by_uaid.get(&uaid) == Some(&id) {
                inner.by_uaid.remove(&uaid);
            }
        }
    }

    /// Sends to the connection owning `uaid`; false if there is none (or it just went).
    pub fn send_to(&self, uaid: &str, cmd: Command) -> bool {
        let inner = self.lock();
        inner
            .by_uaid
            .get(uaid)
            .and_then(|id| inner.conns.get(id))
            .is_some_and(|conn| conn.tx.send(cmd).is_ok())
    }

    pub fn is_connected(&self, uaid: &str) -> bool {
        self.lock().by_uaid.contains_key(uaid)
    }

    /// Sends to every WebSocket, identified or not.
    pub fn send_all(&self, cmd: &Command) {
        for conn in self.lock().conns.values() {
            let _ = conn.tx.send(cmd.clone());
        }
    }

    /// Connections that have completed hello.
    pub fn connected(&self) -> usize {
        self.lock().by_uaid.len()
    }
}
