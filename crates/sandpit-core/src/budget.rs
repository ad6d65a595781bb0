//! The server's memory for buffered command output, bounded as a whole.
//!
//! A buffered exec (or code run) holds its output until it has ended and then the answer's
//! JSON, in which a control byte takes six (`\u0001`). Each collection charges the budget
//! for the raw bytes as they arrive and, once the run ends, for the encoded answer; a run
//! that does not fit ends `busy` (503) with a message pointing at the streaming form, and
//! nothing else notices. The charge is held until the HTTP answer has been sent: the API
//! opens a [`HELD`] slot per request and keeps it with the response body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::CoreError;

/// Bytes of buffered output the whole server may hold at once.
#[derive(Debug)]
pub struct OutputBudget {
    limit: u64,
    used: AtomicU64,
}

/// Bytes taken from the budget; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<OutputBudget>,
    bytes: u64,
}

/// Charges held for one request until its response has been sent.
pub type Slot = Arc<Mutex<Vec<Charge>>>;

tokio::task_local! {
    /// The slot of the request being handled (set by the API around each handler).
    pub static HELD: Slot;
}

impl OutputBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An empty charge to grow with [`Charge::add`].
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

impl Charge {
    /// Takes `n` more bytes, or fails when the budget has not got them.
    pub fn add(&mut self, n: u64) -> Result<(), CoreError> {
        let b = &self.budget;
        let mut used = b.used.load(Ordering::SeqCst);
        loop {
            let want = used.saturating_add(n);
            if want > b.limit {
                metrics::counter!("sandpit_output_budget_refusals_total").increment(1);
                return Err(CoreError::Busy(format!(
                    "the server holds {} MiB of buffered command output for other calls and \
                     may hold at most {} MiB ([defaults] max_buffered_output_mb): retry later, \
                     or stream the output (Accept: text/event-stream)",
                    used / (1024 * 1024),
                    b.limit / (1024 * 1024)
                )));
            }
            match b
                .used
                .compare_exchange(used, want, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.bytes += n;
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    /// Keeps the charge until the current request's answer is sent (dropped at once outside
    /// a request).
    pub fn hold(self) {
        let _ = HELD.try_with(|slot| {
            slot.lock().unwrap_or_else(|p| p.into_inner()).push(self);
        });
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Bytes `data` takes as a JSON string (quotes included), after a lossy UTF-8 conversion.
pub fn json_len(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let mut n = 2u64;
    for c in text.chars() {
        n += match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8() as u64,
        };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_given_back() {
        let b = OutputBudget::new(100);
        let mut a = b.charge();
        a.add(60).unwrap();
        let mut c = b.charge();
        assert!(c.add(50).is_err());
        c.add(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn json_lengths() {
        assert_eq!(json_len(b"hi"), 4);
        assert_eq!(json_len(b"\x01"), 8);
        assert_eq!(json_len(b"a\"b\n"), 8);
        assert_eq!(json_len(&[0xff]), 5);
        let v = String::from_utf8_lossy(b"\x01\x1fz\"\\\n\xff").into_owned();
        assert_eq!(
            json_len(b"\x01\x1fz\"\\\n\xff"),
            serde_json::to_string(&v).unwrap().len() as u64
        );
    }
}
