//! Hot reload: watch the policies folder and ask the service to reload when it changes.
//!
//! Editors save in many ways (write in place, write a temp file and rename it over the old
//! one, touch several files, leave `.swp` files); a `git checkout` changes many files at once;
//! a folder may appear or vanish. Rather than interpret events, the watcher only uses them as
//! a signal: after the first event it waits until the folder has been quiet for `debounce`
//! (at most `max_wait` in all), then runs one full [`Service::reload`], which compares
//! content hashes and recompiles only what changed. A recursive watch on the root sees new
//! and renamed files and folders.

use crate::service::{ReloadOutcome, Service};
use notify::{RecursiveMode, Watcher as _};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Keeps the watch alive; dropping it stops the watcher thread.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

/// Starts watching `service.root()`. `on_reload` sees what each reload did (for logs).
pub fn spawn(
    service: Arc<Service>,
    debounce: Duration,
    on_reload: impl Fn(&[ReloadOutcome]) + Send + 'static,
) -> notify::Result<Watcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut inner = notify::recommended_watcher(tx)?;
    inner.watch(service.root(), RecursiveMode::Recursive)?;
    let max_wait = debounce * 10;
    std::thread::Builder::new()
        .name("tierwise-watch".into())
        .spawn(move || {
            // Ends when the watcher (the sender) is dropped.
            while let Ok(first) = rx.recv() {
                if !relevant(&first) {
                    continue;
                }
                let start = Instant::now();
                loop {
                    match rx.recv_timeout(debounce) {
                        Ok(_) if start.elapsed() < max_wait => continue,
                        Ok(_) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                let outcomes = service.reload();
                on_reload(&outcomes);
            }
        })
        .map_err(notify::Error::io)?;
    Ok(Watcher { _inner: inner })
}

/// Reads and opens (inotify reports them too) change nothing.
fn relevant(e: &notify::Result<notify::Event>) -> bool {
    match e {
        Ok(ev) => !matches!(ev.kind, notify::EventKind::Access(_)),
        // A lost event or an overflowed queue: reload to be safe.
        Err(_) => true,
    }
}
