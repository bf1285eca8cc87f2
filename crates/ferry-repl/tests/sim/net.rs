//! The network: control messages that may be lost, duplicated and delayed
//! past each other, and stream connections that carry bytes in order until
//! they break. Losses stop with the other faults; duplicates and delays
//! do not. A partition drops everything sent while it lasts; a stream
//! piece sent into it breaks its connection. A break loses the bytes not
//! yet delivered; the replica hears of it later (a reset, a keepalive).

use std::collections::BTreeMap;

use super::{Ev, Ms, World};

#[derive(Default)]
pub struct Net {
    pub conns: BTreeMap<u64, Conn>,
    /// Nothing gets through before this.
    pub partition_until: Ms,
}

pub struct Conn {
    pub broken: bool,
    /// When its last piece arrives (pieces arrive in order).
    pub last_at: Ms,
}

impl World {
    pub fn partitioned(&self) -> bool {
        self.now < self.net.partition_until
    }

    /// Whether a message or piece arriving now gets through.
    pub fn arrives(&self, ev: &Ev) -> bool {
        let conn_ok = |c: &u64| self.net.conns.get(c).is_some_and(|c| !c.broken);
        match ev {
            Ev::Query { .. } | Ev::State { .. } => !self.partitioned(),
            // answers on the stream's connection
            Ev::Ack { conn, .. } | Ev::Refused { conn, .. } => !self.partitioned() && conn_ok(conn),
            Ev::Piece { conn, .. } => conn_ok(conn),
            _ => true,
        }
    }

    /// Sends a control message: maybe lost, maybe twice, each copy delayed
    /// on its own.
    pub fn send_msg(&mut self, ev: Ev) {
        let loss = if self.faults { self.cfg.loss } else { 0 };
        if self.partitioned() || self.rng.percent(loss) {
            self.log(|| format!("lost: {}", super::short(&ev)));
            self.stats.lost_msgs += 1;
            return;
        }
        if self.rng.percent(self.cfg.dup) {
            self.log(|| format!("duplicated: {}", super::short(&ev)));
            self.stats.dup_msgs += 1;
            let t = self.now + self.latency();
            self.at(t, ev.clone());
        }
        let t = self.now + self.latency();
        self.at(t, ev);
    }

    fn latency(&mut self) -> Ms {
        let j = self.cfg.jitter;
        self.rng.range(1, 20) + self.rng.range(0, j)
    }

    pub fn open_conn(&mut self) -> u64 {
        let id = self.id();
        self.net.conns.insert(
            id,
            Conn {
                broken: false,
                last_at: self.now,
            },
        );
        id
    }

    /// Sends stream bytes; false when the connection is gone (the sender
    /// sees a reset or a refused connection).
    pub fn send_piece(&mut self, conn: u64, bytes: Vec<u8>) -> bool {
        match self.net.conns.get(&conn) {
            Some(c) if !c.broken => {}
            _ => return false,
        }
        if !self.rep.up {
            self.break_conn(conn, 0);
            return false;
        }
        if self.partitioned() {
            // Lost, and the connection with it; the replica notices later.
            let after = self.net.partition_until - self.now + self.rng.range(0, 5_000);
            self.log(|| format!("conn {conn}: broken by the partition"));
            self.break_conn(conn, after);
            return true;
        }
        let lat = self.rng.range(1, 20);
        let c = self.net.conns.get_mut(&conn).expect("checked above");
        let t = c.last_at.max(self.now + lat);
        c.last_at = t;
        self.at(t, Ev::Piece { conn, bytes });
        true
    }

    /// Breaks a connection: what is still on the way is lost; the replica
    /// hears of it `notify_after` from now.
    pub fn break_conn(&mut self, conn: u64, notify_after: Ms) {
        match self.net.conns.get_mut(&conn) {
            Some(c) if !c.broken => c.broken = true,
            _ => return,
        }
        let t = self.now + notify_after;
        self.at(t, Ev::Broken { conn });
    }

    /// A fault: the connection being sent on is reset.
    pub fn reset_a_connection(&mut self) {
        let Some(conn) = self.src.conn() else {
            return;
        };
        self.stats.resets += 1;
        self.log(|| format!("FAULT conn {conn} reset"));
        let after = self.rng.range(0, 3_000);
        self.break_conn(conn, after);
    }
}
