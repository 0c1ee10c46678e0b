//! The control bus: how commands reach the control plane and acks come back. The in-memory
//! bus is the in-process handle embedding hosts use; the HTTP facade sits on top of it.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::dispatcher::SharedTable;
use crate::schema::control::{Ack, ControlCommand};

/// A command on its way to the control plane.
#[derive(Debug)]
pub struct ControlRequest {
    pub command: ControlCommand,
    pub reply: Sender<Ack>,
    /// When the command entered meltica (the SLA clock starts here).
    pub received: Instant,
}

/// Submits control commands; every facade (in-process, HTTP, NATS) offers the same.
pub trait ControlBus: Send + Sync {
    /// Submits a command; the ack arrives once the change is effective (or refused).
    fn submit(&self, command: ControlCommand) -> Receiver<Ack>;

    /// Submits and waits up to `timeout` for the ack.
    fn execute(&self, command: ControlCommand, timeout: Duration) -> Ack {
        let t = command.event_type.as_str().to_owned();
        match self.submit(command).recv_timeout(timeout) {
            Ok(a) => a,
            Err(_) => Ack::error(
                Some(t),
                self.dispatch_version(),
                format!("no acknowledgement within {timeout:?}"),
            ),
        }
    }

    /// The current `dispatchVersion`.
    fn dispatch_version(&self) -> u64;

    /// The dispatch table as JSON (`GET /control/routes`).
    fn routes_json(&self) -> String;
}

/// The in-memory control bus: a channel into the `meltica-control` thread.
#[derive(Clone)]
pub struct MemoryControlBus {
    tx: Sender<ControlRequest>,
    table: SharedTable,
}

impl MemoryControlBus {
    pub fn new(tx: Sender<ControlRequest>, table: SharedTable) -> Self {
        MemoryControlBus { tx, table }
    }
}

impl ControlBus for MemoryControlBus {
    fn submit(&self, command: ControlCommand) -> Receiver<Ack> {
        let (reply, rx) = bounded(1);
        let t = command.event_type.as_str().to_owned();
        let req = ControlRequest {
            command,
            reply: reply.clone(),
            received: Instant::now(),
        };
        if self.tx.send(req).is_err() {
            let _ = reply.send(Ack::error(
                Some(t),
                self.dispatch_version(),
                "engine is shutting down",
            ));
        }
        rx
    }

    fn dispatch_version(&self) -> u64 {
        self.table.load().version
    }

    fn routes_json(&self) -> String {
        self.table.load().to_json()
    }
}
