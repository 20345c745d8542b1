//! Taking relayed requests on: the owner's event loop asks for work, and only then are the
//! requests that came claimed and handed over.
//!
//! One task (`take`) waits on the inbox. When requests come it takes the oldest asker, then
//! claims every request that came meanwhile (up to what the asker wants) and delivers them
//! to it. Asking stores the asker and sends a permit, with no wake-up of the I/O thread
//! unless requests were already waiting: the loop asks again right after each delivery, and
//! a thread hop for every ask would cost more than the requests' own work here.
//!
//! A node whose event loop does not ask (frozen, overloaded) claims nothing, so its relaying
//! nodes time out and may take over; a request whose claim is lost (its sender gave up
//! first) is never delivered. Requests delivered to a caller who stopped waiting are given
//! back and go to the next asker first, as they are (claimed).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::frame::{kind, Frame, Incoming};
use super::outbox::Unheard;
use super::serve::claim_all;
use super::{Relay, Shared};
use crate::keys::reply_channel;

/// How many requests the taker holds from the inbox at once, waiting for an asker.
const HOLD: usize = 64;

/// What is delivered to an asker: the requests claimed for it, or `None` once the relay
/// is closed.
pub type Delivery = Option<Vec<Incoming>>;

/// A caller waiting for relayed requests (`Relay::ask`).
pub(super) struct Asker {
    max: usize,
    /// Whether the caller still waits: nothing is claimed for one that stopped.
    waiting: Box<dyn Fn() -> bool + Send>,
    deliver: Box<dyn FnOnce(Delivery) + Send>,
}

/// The callers waiting, and requests given back (claimed already) for the next of them.
#[derive(Default)]
pub(super) struct Askers {
    waiting: VecDeque<Asker>,
    returned: VecDeque<Incoming>,
    closed: bool,
}

impl Shared {
    /// The oldest caller still waiting, once there is one.
    async fn asker(&self) -> Asker {
        loop {
            {
                let mut askers = self.askers.lock().unwrap();
                while let Some(asker) = askers.waiting.pop_front() {
                    if (asker.waiting)() {
                        return asker;
                    }
                }
            }
            // `ask` stores its asker before it notifies: a permit stored in between wakes
            // this at once.
            self.asked.notified().await;
        }
    }

    /// Delivers `None` to every caller, now and from now on.
    fn close_askers(&self) {
        let waiting = {
            let mut askers = self.askers.lock().unwrap();
            askers.closed = true;
            std::mem::take(&mut askers.waiting)
        };
        for asker in waiting {
            (asker.deliver)(None);
        }
    }
}

/// Refuses a request while the node drains (it never runs here); `None` then.
fn unless_draining(shared: &Shared, incoming: Incoming) -> Option<Incoming> {
    if !shared.draining.load(Ordering::SeqCst) {
        return Some(incoming);
    }
    let refusal = Frame { kind: kind::REFUSED, id: incoming.id, seq: 0, payload: b"draining".to_vec() };
    shared.publish(reply_channel(&shared.prefix, &incoming.from), refusal, Unheard::Ignore);
    None
}

/// Takes the requests relayed to this node on as callers ask for them (see the module).
pub(super) async fn take(shared: Arc<Shared>, mut inbox: mpsc::Receiver<Incoming>) {
    let mut held: VecDeque<Incoming> = VecDeque::new();
    loop {
        if held.is_empty() {
            let mut fresh = Vec::new();
            if inbox.recv_many(&mut fresh, HOLD).await == 0 {
                shared.close_askers();
                return;
            }
            held.extend(fresh);
        }
        let asker = shared.asker().await;
        let mut taken = Vec::new();
        while taken.len() < asker.max {
            let Some(incoming) = held.pop_front().or_else(|| inbox.try_recv().ok()) else { break };
            shared.unclaimed.fetch_sub(1, Ordering::Relaxed);
            taken.extend(unless_draining(&shared, incoming));
        }
        let claimed = if taken.is_empty() { taken } else { claim_all(&shared, taken).await };
        if claimed.is_empty() {
            shared.askers.lock().unwrap().waiting.push_front(asker);
            shared.asked.notify_one();
            continue;
        }
        (asker.deliver)(Some(claimed));
    }
}

impl Relay {
    /// Asks for the next requests relayed to this node (at most `max`: all that have come,
    /// once one has). `deliver` gets them, each claimed by this node already, or `None` once
    /// the relay is closed; it runs on the relay's thread, or on this one if requests given
    /// back are waiting. A request is claimed only once asked for, and only while `waiting`
    /// says the caller still waits.
    pub fn ask(&self, max: usize, waiting: Box<dyn Fn() -> bool + Send>, deliver: Box<dyn FnOnce(Delivery) + Send>) {
        let max = max.max(1);
        let mut askers = self.shared.askers.lock().unwrap();
        if askers.closed {
            drop(askers);
            deliver(None);
        } else if !askers.returned.is_empty() {
            if !waiting() {
                return; // stopped waiting already: the requests stay for the next caller
            }
            let n = max.min(askers.returned.len());
            let again: Vec<Incoming> = askers.returned.drain(..n).collect();
            drop(askers);
            deliver(Some(again));
        } else {
            askers.waiting.push_back(Asker { max, waiting, deliver });
            drop(askers);
            self.shared.asked.notify_one();
        }
    }

    /// [`Relay::ask`] as a future; dropping it before it resolves stops the wait (requests
    /// claimed for it meanwhile go to the next caller).
    pub async fn next_requests(&self, max: usize) -> Delivery {
        let (tx, rx) = oneshot::channel();
        let sender = Arc::new(std::sync::Mutex::new(Some(tx)));
        let still = sender.clone();
        let relay = self.clone();
        let deliver = Box::new(move |delivery: Delivery| {
            let Some(tx) = sender.lock().unwrap().take() else { return };
            if let Err(Some(claimed)) = tx.send(delivery) {
                for incoming in claimed {
                    relay.give_back(incoming);
                }
            }
        });
        let waiting = Box::new(move || still.lock().unwrap().as_ref().is_some_and(|tx| !tx.is_closed()));
        self.ask(max, waiting, deliver);
        rx.await.unwrap_or(None)
    }

    /// Hands requests back that were delivered to a caller who stopped waiting: the next
    /// caller gets them first, as they are (registered and claimed).
    pub fn give_back(&self, incoming: Incoming) {
        let asker = {
            let mut askers = self.shared.askers.lock().unwrap();
            if askers.closed {
                return; // the request ends with the relay
            }
            askers.returned.push_back(incoming);
            askers.waiting.pop_front()
        };
        // A caller already waiting gets them now (or, if it stopped too, asks again).
        if let Some(asker) = asker {
            let Asker { max, waiting, deliver } = asker;
            self.ask(max, waiting, deliver);
        }
    }
}
