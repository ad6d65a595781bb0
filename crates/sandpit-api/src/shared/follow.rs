//! Log following shared by the native process routes and the dialects: a gauge of live
//! followers and the pause between looks that ends as soon as the client is gone.

use std::time::Duration;

/// A running log follower (native or a dialect's), counted in the `sandpit_log_followers`
/// gauge for as long as its task lives.
pub struct Follower(());

impl Follower {
    pub fn new() -> Self {
        metrics::gauge!("sandpit_log_followers").increment(1.0);
        Self(())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        metrics::gauge!("sandpit_log_followers").decrement(1.0);
    }
}

/// Waits `every` before a follower looks at a silent log again; `false` as soon as its
/// client went away (the response's receiver is gone), so the follower ends then and not
/// at its next write.
pub async fn pause_follow<T>(tx: &tokio::sync::mpsc::Sender<T>, every: Duration) -> bool {
    tokio::select! {
        _ = tx.closed() => false,
        _ = tokio::time::sleep(every) => true,
    }
}
