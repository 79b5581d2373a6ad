//! The in-process state store and outbox (the default): fast, and lost on restart.
//!
//! States live in shards (`std` mutexes: nothing awaits while one is held), the outbox in one
//! ordered queue. An account's transition runs with its shard locked and appends to the
//! outbox before the lock is let go, so the state and its events change together and two
//! requests for one account are serialized (one transition per accepted snapshot).

use super::{EventStore, Filter, Page, Retention, StoreError, Stored, now_ms, store_form};
use crate::engine::transition::{
    self, AccountInput, AccountState, AlertRule, BookInput, BookState, Event, Level,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

const SHARDS: usize = 16;

pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Option<AccountState>>>>,
    books: Mutex<HashMap<String, BookState>>,
    outbox: Mutex<Outbox>,
    hasher: RandomState,
    retention: Retention,
    appended: tokio::sync::watch::Sender<u64>,
}

struct Outbox {
    /// The next seq to give out (seqs start at 1).
    next: u64,
    events: VecDeque<Stored>,
}

fn key(policy: &str, level: Level, subject: &str) -> String {
    let mut k = String::with_capacity(policy.len() + subject.len() + 12);
    k.push_str(policy);
    k.push('\0');
    k.push_str(level.as_str());
    k.push('\0');
    k.push_str(subject);
    k
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            books: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Outbox { next: 1, events: VecDeque::new() }),
            hasher: RandomState::new(),
            retention,
            appended: tokio::sync::watch::channel(0).0,
        }
    }

    fn shard(&self, k: &str) -> &Mutex<HashMap<String, Option<AccountState>>> {
        let i = (self.hasher.hash_one(k) as usize) % SHARDS;
        // `i < SHARDS` by construction.
        &self.shards[i]
    }

    /// Appends (called with the account's shard locked).
    fn append(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let now = now_ms();
        let mut ob = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            let seq = ob.next;
            ob.next += 1;
            ob.events.push_back(store_form(e, seq, now));
        }
        let oldest = now - self.retention.max_age.as_millis() as i64;
        while ob.events.len() > self.retention.max_len
            || ob.events.front().is_some_and(|e| e.time_ms < oldest)
        {
            ob.events.pop_front();
        }
        let last = ob.next - 1;
        drop(ob);
        self.appended.send_replace(last);
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    async fn apply(
        &self,
        items: &[AccountInput<'_>],
        rules: &[AlertRule],
    ) -> Result<Vec<Vec<Event>>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Some(d) = item.outcome.decision() else {
                out.push(Vec::new());
                continue;
            };
            let k = key(&d.policy.name, item.level, &d.id);
            let mut shard = self.shard(&k).lock().unwrap_or_else(|p| p.into_inner());
            let mut events = Vec::new();
            match shard.get_mut(&k) {
                Some(cur) => {
                    transition::step(cur, *item, rules, &mut events);
                }
                None => {
                    let mut cur = None;
                    transition::step(&mut cur, *item, rules, &mut events);
                    if cur.is_some() {
                        shard.insert(k, cur);
                    }
                }
            }
            self.append(&events);
            drop(shard);
            out.push(events);
        }
        Ok(out)
    }

    async fn apply_book(
        &self,
        input: BookInput<'_>,
        rules: &[AlertRule],
    ) -> Result<Vec<Event>, StoreError> {
        let k = key(&input.policy.name, Level::Portfolio, input.book);
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        let mut cur = books.remove(&k);
        let mut events = Vec::new();
        transition::book_step(&mut cur, input, rules, &mut events);
        if let Some(cur) = cur {
            books.insert(k, cur);
        }
        self.append(&events);
        Ok(events)
    }

    async fn states(
        &self,
        policy: &str,
        level: Level,
        ids: &[&str],
    ) -> Result<Vec<Option<AccountState>>, StoreError> {
        Ok(ids
            .iter()
            .map(|id| {
                let k = key(policy, level, id);
                self.shard(&k).lock().unwrap_or_else(|p| p.into_inner()).get(&k).cloned().flatten()
            })
            .collect())
    }

    async fn book_state(&self, policy: &str, book: &str) -> Result<Option<BookState>, StoreError> {
        let k = key(policy, Level::Portfolio, book);
        Ok(self.books.lock().unwrap_or_else(|p| p.into_inner()).get(&k).cloned())
    }

    async fn page(&self, after: u64, limit: usize, filter: &Filter) -> Result<Page, StoreError> {
        let ob = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let first = ob.events.front().map_or(ob.next, |e| e.seq);
        // seqs are contiguous in the queue: jump to the first one past the cursor.
        let start = usize::try_from(after.saturating_add(1).saturating_sub(first)).unwrap_or(0);
        let mut events = Vec::new();
        let mut next = after;
        for e in ob.events.iter().skip(start) {
            next = e.seq;
            if filter.matches(e) {
                events.push(e.clone());
                if events.len() >= limit {
                    break;
                }
            }
        }
        Ok(Page { events, next, first })
    }

    async fn wait_after(&self, seq: u64) {
        let mut rx = self.appended.subscribe();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            rx.wait_for(|&last| last > seq),
        )
        .await;
    }

    fn depth(&self) -> (usize, u64) {
        let ob = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        (ob.events.len(), ob.next - 1)
    }
}
