//! The token bucket that caps one direction of a proxy: no I/O, no clock of
//! its own (every call is given `now`), so its arithmetic is tested
//! directly.
//!
//! Invariant: between any two instants `t0 <= t1`, the bytes granted are at
//! most `burst + rate × (t1 - t0)`, whatever the calls and their sizes.
//! Grants are at most one burst each, so a writer sends a chunk as a run of
//! pieces; the burst is [`BURST_TIME`] of the rate but never less than
//! [`MIN_BURST`] bytes (one Ethernet frame), so low rates still move whole
//! frames. The bucket is full when the rate is switched on.

use crate::units::Rate;
use std::time::{Duration, Instant};

/// How much of the rate may leave at once.
pub const BURST_TIME: Duration = Duration::from_millis(10);
/// The smallest burst, in bytes.
pub const MIN_BURST: u64 = 1500;

/// The bucket of one direction.
#[derive(Debug)]
pub struct TokenBucket {
    rate: Option<Rate>,
    /// Bytes that may leave now, at most `burst`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `rate` (`None`: uncapped).
    pub fn new(rate: Option<Rate>, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate.map_or(0.0, burst),
            last: now,
        }
    }

    /// The largest grant at the current rate, or `None` when uncapped.
    #[cfg(test)]
    pub fn burst(&self) -> Option<u64> {
        self.rate.map(|r| burst(r) as u64)
    }

    /// Changes the rate from `now` on; tokens earned before `now` were
    /// earned at the old rate. Switching a cap on starts with a full bucket.
    pub fn set_rate(&mut self, rate: Option<Rate>, now: Instant) {
        self.refill(now);
        self.tokens = match (self.rate, rate) {
            (_, None) => 0.0,
            (None, Some(new)) => burst(new),
            (Some(_), Some(new)) => self.tokens.min(burst(new)),
        };
        self.rate = rate;
    }

    /// Grants up to `want` bytes (at most one burst; all of `want` when
    /// uncapped), or says how long to wait before a grant of
    /// `min(want, burst)` is possible. `want == 0` is granted at once.
    pub fn take(&mut self, want: u64, now: Instant) -> Result<u64, Duration> {
        let Some(rate) = self.rate else {
            return Ok(want);
        };
        self.refill(now);
        let piece = want.min(burst(rate) as u64);
        let need = piece as f64;
        if self.tokens >= need {
            self.tokens -= need;
            Ok(piece)
        } else {
            let wait = Duration::from_secs_f64((need - self.tokens) / rate.bytes_per_sec());
            Err(wait.max(Duration::from_micros(1)))
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        if let Some(rate) = self.rate {
            self.tokens =
                (self.tokens + elapsed.as_secs_f64() * rate.bytes_per_sec()).min(burst(rate));
        }
    }
}

/// The burst at `rate`, in bytes.
fn burst(rate: Rate) -> f64 {
    (rate.bytes_per_sec() * BURST_TIME.as_secs_f64())
        .floor()
        .max(MIN_BURST as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbit(n: u64) -> Option<Rate> {
        Rate::from_bits_per_sec(n * 1_000_000)
    }

    /// Greedy takers at a fake clock: after every grant or wait, the bytes
    /// granted since the start never exceed burst + rate × elapsed, and the
    /// long-run rate reaches the cap.
    #[test]
    fn long_run_rate_never_exceeds_the_cap() {
        let t0 = Instant::now();
        let rate = mbit(10); // 1.25 MB/s, burst 12,500 bytes
        let mut b = TokenBucket::new(rate, t0);
        let burst = b.burst().unwrap() as f64;
        assert_eq!(burst, 12_500.0);
        let mut now = t0;
        let mut granted = 0u64;
        for i in 0..20_000u64 {
            let want = 1 + (i * 7919) % 70_000;
            match b.take(want, now) {
                Ok(n) => {
                    assert!(n <= want && n as f64 <= burst);
                    granted += n;
                }
                Err(wait) => now += wait,
            }
            let limit = burst + 1_250_000.0 * now.duration_since(t0).as_secs_f64();
            assert!(granted as f64 <= limit + 1.0, "granted {granted} > {limit}");
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!(
            granted as f64 >= 0.99 * 1_250_000.0 * secs,
            "{granted} bytes in {secs} s"
        );
    }

    #[test]
    fn uncapped_grants_everything_and_changes_apply() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(None, t0);
        assert_eq!(b.take(1 << 30, t0), Ok(1 << 30));
        b.set_rate(mbit(8), t0); // 1 MB/s, burst 10,000
        assert_eq!(b.take(1 << 20, t0), Ok(10_000));
        let wait = b.take(10_000, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.010).abs() < 1e-6, "{wait:?}");
        // Slower: the wait grows; tokens earned before the change count at the old rate.
        b.set_rate(
            Rate::from_bits_per_sec(8_000),
            t0 + Duration::from_millis(5),
        );
        assert_eq!(b.burst(), Some(MIN_BURST));
        let t5 = t0 + Duration::from_millis(5);
        assert_eq!(
            b.take(1 << 20, t5),
            Ok(1500),
            "5 ms at 1 MB/s, capped at the new burst"
        );
        let wait = b.take(1500, t5).unwrap_err();
        assert!((wait.as_secs_f64() - 1.5).abs() < 1e-6, "{wait:?}");
        b.set_rate(None, t0 + Duration::from_millis(6));
        assert_eq!(b.take(5, t0 + Duration::from_millis(6)), Ok(5));
    }
}
