//! The faults a proxy injects, as one plain value ([`Faults`]). The
//! partition is not in it: it is switched on and off on its own
//! ([`crate::FaultProxy::partition`]), so changing faults never heals or
//! cuts the link by accident.

use crate::units::{ByteSize, MAX_DELAY, Rate, fmt_duration};
use std::fmt;
use std::time::Duration;

/// What the proxy does to the bytes it forwards. `Faults::default()` is a
/// perfect wire. The crate documentation gives the exact semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// One-way delay added in each direction. Values above
    /// [`MAX_DELAY`] count as `MAX_DELAY`.
    pub delay: Duration,
    /// Extra one-way delay, uniform in `[0, jitter]` per chunk; order is
    /// kept. Values above [`MAX_DELAY`] count as `MAX_DELAY`.
    pub jitter: Duration,
    /// Cap on each direction, shared by all connections; `None` is uncapped.
    pub rate: Option<Rate>,
    /// Reset a connection once this many bytes (both directions together)
    /// have crossed it; `None` never resets.
    pub reset_every: Option<ByteSize>,
}

impl Faults {
    /// The delay, capped at [`MAX_DELAY`].
    pub(crate) fn delay(&self) -> Duration {
        self.delay.min(MAX_DELAY)
    }

    /// The jitter, capped at [`MAX_DELAY`].
    pub(crate) fn jitter(&self) -> Duration {
        self.jitter.min(MAX_DELAY)
    }
}

/// `delay=50ms jitter=0 rate=10mbit reset_every=off`: the form the control
/// port's `stats` answer ends with; each value is in the form its control
/// command takes.
impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={} jitter={} rate=",
            fmt_duration(self.delay()),
            fmt_duration(self.jitter())
        )?;
        match self.rate {
            Some(r) => write!(f, "{r}")?,
            None => f.write_str("off")?,
        }
        f.write_str(" reset_every=")?;
        match self.reset_every {
            Some(s) => write!(f, "{s}"),
            None => f.write_str("off"),
        }
    }
}
