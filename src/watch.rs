//! Hot reload: watch the policies folder and ask the service to reload when it changes.
//!
//! Policies arrive in many ways: an editor writes in place or renames a temp file over the
//! old one (and leaves `.swp` files); a `git checkout` changes many files at once; a folder
//! is replaced whole; a Kubernetes ConfigMap swaps its `..data` link to a new timestamped
//! folder; a sync sidecar (git-sync) swaps a link to a new checkout and deletes the old one.
//! Rather than interpret events, the watcher only uses them as a signal: after the first
//! event it waits until things have been quiet for `debounce` (at most `max_wait` in all),
//! then runs one full [`Service::reload`], which compares content hashes and recompiles only
//! what changed.
//!
//! What is watched (re-armed whenever it no longer matches the disk):
//! - the policies root's real folder (the root with every link on its way resolved),
//!   recursively: edits, renames, new and removed files and folders, a `..data` swap inside;
//! - non-recursively, the folder holding each link on the way to the root, and the folder
//!   holding the root itself: a link swapped (git-sync's `current`) or the root folder
//!   replaced shows there, and only there, since the recursive watch stays on the old
//!   folder's inode;
//! - as a safety net, every [`RECHECK`] the root's identity (its resolved path and inode) is
//!   compared with the armed one: a change re-arms and reloads, even if no event came.

use crate::service::{ReloadOutcome, Service};
use notify::{RecursiveMode, Watcher as _};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How often the root's identity is checked when no event comes.
pub const RECHECK: Duration = Duration::from_millis(500);

/// Keeps the watch alive; dropping it stops the watcher thread (within [`RECHECK`]).
pub struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Starts watching `service.root()`. `on_reload` sees what each reload did (for logs).
pub fn spawn(
    service: Arc<Service>,
    debounce: Duration,
    on_reload: impl Fn(&[ReloadOutcome]) + Send + 'static,
) -> notify::Result<Watcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut inner = notify::recommended_watcher(tx)?;
    let root = service.root().to_path_buf();
    let mut armed = Armed::arm(&mut inner, &root, None);
    if armed.resolved.is_none() {
        return Err(notify::Error::path_not_found().add_path(root));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let max_wait = debounce * 10;
    std::thread::Builder::new()
        .name("tierwise-watch".into())
        .spawn(move || {
            while !stopped.load(Relaxed) {
                let first = match rx.recv_timeout(RECHECK) {
                    Ok(ev) => ev,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if armed.stale(&root) {
                            armed = Armed::arm(&mut inner, &root, Some(armed));
                            on_reload(&service.reload());
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                if !armed.relevant(&first) {
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
                if armed.stale(&root) {
                    armed = Armed::arm(&mut inner, &root, Some(armed));
                }
                on_reload(&service.reload());
            }
        })
        .map_err(notify::Error::io)?;
    Ok(Watcher { stop })
}

/// What is watched now, and the root as it was when armed.
struct Armed {
    /// The root's real folder (watched recursively); `None` while it does not exist.
    resolved: Option<PathBuf>,
    /// Its (device, inode): a folder replaced under the same path has another.
    identity: Option<(u64, u64)>,
    /// Folders watched on their own (non-recursively): the ones holding a link on the way,
    /// and the one holding the root.
    parents: Vec<PathBuf>,
    /// Paths whose events in a parent folder matter: each link on the way, and the root.
    names: Vec<PathBuf>,
}

impl Armed {
    /// Drops the previous watches and watches the root as it is now. Failures are tolerated
    /// (a folder caught mid-swap): the next check re-arms.
    fn arm(w: &mut notify::RecommendedWatcher, root: &Path, prev: Option<Armed>) -> Armed {
        if let Some(prev) = prev {
            if let Some(r) = &prev.resolved {
                let _ = w.unwatch(r);
            }
            for p in &prev.parents {
                let _ = w.unwatch(p);
            }
        }
        let resolved = root.canonicalize().ok();
        let identity = resolved.as_deref().and_then(identity);
        if let Some(r) = &resolved
            && w.watch(r, RecursiveMode::Recursive).is_err()
        {
            // Vanished between the two calls: try again at the next check.
            return Armed {
                resolved: None,
                identity: None,
                parents: Vec::new(),
                names: Vec::new(),
            };
        }
        let (links, mut parents) = links_on_the_way(root);
        let mut names = links;
        let absolute = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        names.push(absolute.clone());
        if let Some(r) = &resolved {
            names.push(r.clone());
            parents.extend(r.parent().map(Path::to_path_buf));
        }
        parents.extend(absolute.parent().and_then(|p| p.canonicalize().ok()));
        parents.sort();
        parents.dedup();
        // Inside the recursive watch already.
        parents.retain(|p| resolved.as_ref().is_none_or(|r| !p.starts_with(r)));
        parents.retain(|p| w.watch(p, RecursiveMode::NonRecursive).is_ok());
        Armed { resolved, identity, parents, names }
    }

    /// Whether the root now resolves elsewhere, or is another folder than the one watched.
    fn stale(&self, root: &Path) -> bool {
        let now = root.canonicalize().ok();
        now != self.resolved || now.as_deref().and_then(identity) != self.identity
    }

    /// Reads and opens change nothing; events in a parent folder matter only for the links
    /// and the root (not for the root's siblings).
    fn relevant(&self, e: &notify::Result<notify::Event>) -> bool {
        let ev = match e {
            Ok(ev) => ev,
            // A lost event or an overflowed queue: reload to be safe.
            Err(_) => return true,
        };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return false;
        }
        ev.paths.is_empty()
            || ev.paths.iter().any(|p| {
                self.resolved.as_ref().is_some_and(|r| p.starts_with(r))
                    || self.names.iter().any(|n| n == p)
                    || !self.parents.iter().any(|d| p.parent() == Some(d.as_path()))
            })
    }
}

fn identity(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Every symlink met while resolving `path` (as the path it was met at) and the real folder
/// holding each one, the way the kernel walks it: a link's target continues the walk, so a
/// link to a link (git-sync's `current` inside a ConfigMap-like folder) is found too.
fn links_on_the_way(path: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut links, mut dirs) = (Vec::new(), Vec::new());
    let Ok(abs) = std::path::absolute(path) else { return (links, dirs) };
    let mut todo: std::collections::VecDeque<PathBuf> =
        abs.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        match part.components().next() {
            Some(Component::RootDir | Component::Prefix(_)) => cur = part,
            Some(Component::CurDir) | None => {}
            Some(Component::ParentDir) => {
                cur.pop();
            }
            Some(Component::Normal(_)) => {
                let next = cur.join(&part);
                let is_link =
                    std::fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
                if !is_link {
                    cur = next;
                    continue;
                }
                hops += 1;
                let Ok(target) = std::fs::read_link(&next) else { return (links, dirs) };
                if hops > 40 {
                    return (links, dirs);
                }
                links.push(next);
                dirs.push(cur.clone());
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for c in target.components().rev() {
                    todo.push_front(PathBuf::from(c.as_os_str()));
                }
            }
        }
    }
    (links, dirs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_on_the_way_are_found_through_links_to_links() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("worktrees/abc/policies")).unwrap();
        symlink("worktrees/abc", base.join("rev")).unwrap();
        symlink(base.join("rev"), base.join("current")).unwrap();
        let (links, dirs) = links_on_the_way(&base.join("current/policies"));
        assert_eq!(links, vec![base.join("current"), base.join("rev")]);
        assert_eq!(dirs, vec![base.clone(), base.clone()]);
        let (links, _) = links_on_the_way(&base.join("worktrees/abc/policies"));
        assert!(links.is_empty());
    }
}
