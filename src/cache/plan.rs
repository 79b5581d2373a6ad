//! The cache in front of the engine, for one request: which accounts to look up, which to
//! evaluate, and how cached and fresh answers are spliced back into input order.
//!
//! Split in synchronous steps around the two cache calls, so the service can run the CPU
//! parts (digests, evaluation, serialization) wherever it runs evaluation (inline for small
//! bodies, on the blocking pool for big ones):
//! ```text
//! let plan = AccountPlan::new(&policy_id, &records);     // digests: sync
//! let found = cache.get_many(plan.keys()).await;         // one MGET
//! let (answer, writes) = plan.finish(&records, found, |misses| engine::evaluate(&policy, misses))?; // sync
//! cache.put_many(writes);                                 // queued, never waits
//! ```
//!
//! What is looked up and stored is only what a fresh evaluation of that snapshot alone would
//! answer the same way, wherever it sits in a request:
//! - decisions, never errors (an error carries the record's position, and `time_limit` can
//!   be transient);
//! - not accounts whose id appears twice in the request (`duplicate_id` is a property of the
//!   batch), nor records that are not snapshots.
//!
//! Misses are evaluated together, in input order; the engine numbers a validation error's
//! `record` by position in what it was given, so [`AccountPlan::finish`] puts each error
//! back at its position in the whole request. The answer's bytes are exactly
//! `serde_json::to_vec(&outcome)` for every account, cached or not.

use super::{CostGate, Key, PolicyId, WriteBatch, snapshot_digest};
use crate::engine::Outcome;
use crate::snapshot::Record;
use bytes::Bytes;
use std::collections::HashMap;

/// One account-level request's lookups.
pub struct AccountPlan {
    policy: PolicyId,
    /// The key of each record that may be cached, `None` for one that is always evaluated.
    slots: Vec<Option<Key>>,
    keys: Vec<Key>,
    /// Per record: whether its fresh decision is written (see [`CostGate::admit`]).
    admit: Vec<bool>,
}

/// The request's answer, every account in input order.
pub struct CachedAnswer {
    /// Each account's outcome as JSON, exactly what `serde_json::to_vec(&outcome)` writes.
    pub accounts: Vec<Bytes>,
    /// The outcomes evaluated now (the misses), with their input positions: for the decision
    /// log and metrics (hits have no `Outcome` object, only bytes).
    pub fresh: Vec<(usize, Outcome)>,
    /// How many accounts came from the cache.
    pub hits: usize,
}

impl CachedAnswer {
    /// `[a,b,...]`: the same bytes as serde_json's array of the outcomes.
    pub fn write_array(&self, buf: &mut Vec<u8>) {
        buf.reserve(2 + self.accounts.iter().map(|a| a.len() + 1).sum::<usize>());
        buf.push(b'[');
        for (i, a) in self.accounts.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(a);
        }
        buf.push(b']');
    }
}

impl AccountPlan {
    /// Every fresh decision is written.
    pub fn new(policy: &PolicyId, records: &[Record]) -> Self {
        Self::build(policy, records, None)
    }

    /// Fresh decisions are written only for snapshots the gate has seen before, so traffic
    /// of one-off snapshots costs no cache writes (latest decisions are always written).
    pub fn gated(policy: &PolicyId, records: &[Record], gate: &CostGate) -> Self {
        Self::build(policy, records, Some(gate))
    }

    fn build(policy: &PolicyId, records: &[Record], gate: Option<&CostGate>) -> Self {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        if records.len() > 1 {
            seen.reserve(records.len());
            for s in records.iter().flatten() {
                *seen.entry(s.id.as_str()).or_default() += 1;
            }
        }
        let mut admit = Vec::with_capacity(records.len());
        let slots: Vec<Option<Key>> = records
            .iter()
            .map(|r| match r {
                Ok(s) if seen.get(s.id.as_str()).copied().unwrap_or(1) == 1 => {
                    let d = snapshot_digest(s);
                    admit.push(gate.is_none_or(|g| g.admit(&d)));
                    Some(policy.account_key(&d))
                }
                _ => {
                    admit.push(false);
                    None
                }
            })
            .collect();
        let keys = slots.iter().flatten().cloned().collect();
        AccountPlan { policy: policy.clone(), slots, keys, admit }
    }

    /// What to pass to [`super::Cache::get_many`].
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Evaluates the misses (`found` answers [`AccountPlan::keys`], in order; a wrong length
    /// reads as all misses), splices cached and fresh answers, and returns what to write:
    /// each fresh decision under its key, and the latest decision of every decided account
    /// (hits too: a hit is the decision made now).
    pub fn finish(
        self,
        records: &[Record],
        found: Vec<Option<Bytes>>,
        evaluate: impl FnOnce(&[Record]) -> Vec<Outcome>,
    ) -> Result<(CachedAnswer, WriteBatch), serde_json::Error> {
        let found =
            if found.len() == self.keys.len() { found } else { vec![None; self.keys.len()] };
        let mut found = found.into_iter();
        let mut cached: Vec<Option<Bytes>> = Vec::with_capacity(records.len());
        let mut misses: Vec<usize> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let hit = if slot.is_some() { found.next().flatten() } else { None };
            if hit.is_none() {
                misses.push(i);
            }
            cached.push(hit);
        }
        let hits = records.len() - misses.len();
        let outcomes = if misses.is_empty() {
            Vec::new()
        } else if misses.len() == records.len() {
            evaluate(records) // all misses: no copy of the snapshots
        } else {
            let subset: Vec<Record> =
                misses.iter().filter_map(|&i| records.get(i).cloned()).collect();
            evaluate(&subset)
        };
        let mut fresh: Vec<(usize, Outcome)> = Vec::with_capacity(misses.len());
        for (j, (&i, mut o)) in misses.iter().zip(outcomes).enumerate() {
            // The engine numbered it j + 1 unless the record came numbered (a parse error).
            let numbered = matches!(records.get(i), Some(Err(e)) if e.record.is_some());
            if let Outcome::Error { error, .. } = &mut o
                && !numbered
                && error.record == Some(j + 1)
            {
                error.record = Some(i + 1);
            }
            fresh.push((i, o));
        }
        let mut writes = WriteBatch::new();
        let mut accounts = cached;
        for (i, o) in &fresh {
            let mut buf = Vec::with_capacity(1024);
            serde_json::to_writer(&mut buf, o)?;
            let bytes = Bytes::from(buf);
            if let (Some(Some(key)), Outcome::Decision(d)) = (self.slots.get(*i), o) {
                if self.admit.get(*i).copied().unwrap_or(false) {
                    writes.put(key.clone(), bytes.clone());
                }
                writes.put_latest(self.policy.latest_key(&d.id), bytes.clone());
            }
            if let Some(a) = accounts.get_mut(*i) {
                *a = Some(bytes);
            }
        }
        for (i, a) in accounts.iter().enumerate() {
            if let (Some(bytes), Some(Ok(s))) = (a, records.get(i))
                && !fresh_at(&fresh, i)
            {
                writes.put_latest(self.policy.latest_key(&s.id), bytes.clone());
            }
        }
        let accounts = accounts.into_iter().map(Option::unwrap_or_default).collect();
        Ok((CachedAnswer { accounts, fresh, hits }, writes))
    }
}

fn fresh_at(fresh: &[(usize, Outcome)], i: usize) -> bool {
    fresh.binary_search_by_key(&i, |(j, _)| *j).is_ok()
}

/// The policy hash a stored decision was made under (its `policy.hash`), for
/// `GET /v1/accounts/{id}/decision`: the latest decision is kept per policy *name*, so after a
/// policy change it may come from the previous version; the handler compares this with the
/// active hash and says so (or re-evaluates). `None` for bytes that are not a decision.
pub fn decision_policy_hash(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Policy {
        hash: String,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        policy: Policy,
    }
    serde_json::from_slice::<Head>(bytes).ok().map(|h| h.policy.hash)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::{Cache, CacheConfig, memory::MemoryCache};
    use crate::policy::Policy;
    use crate::script::Limits;

    fn policy() -> Policy {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/enterprise");
        crate::policy::load_dir(&dir, &Limits::default()).map_err(|e| e.to_string()).unwrap()
    }

    fn records(json: &str) -> Vec<Record> {
        crate::snapshot::read_json(json).unwrap()
    }

    const BOOK: &str = r#"[
        {"id":"a","as_of":"2026-11-01","fields":{"revenue_12m":5000000.0,"potential":2000000.0,"gross_margin":0.4,"relationship":"strategic","strategic_fit":5}},
        {"id":"b","as_of":"2026-11-01","fields":{"revenue_12m":"lots"}},
        {"id":"c","as_of":"2026-11-01","fields":{"revenue_12m":120000.0,"potential":300000.0,"gross_margin":0.2,"relationship":"tactical","strategic_fit":2}},
        {"id":"d","as_of":"2026-11-01","fields":{"revenue_12m":120000.0,"potential":300000.0,"gross_margin":0.2,"relationship":"tactical","strategic_fit":2}},
        {"id":"d","as_of":"2026-11-01","fields":{"revenue_12m":120000.0,"potential":300000.0,"gross_margin":0.2,"relationship":"tactical","strategic_fit":2}},
        {"no_id":1}
    ]"#;

    async fn answer(cache: &dyn Cache, p: &Policy, recs: &[Record]) -> CachedAnswer {
        let pid = PolicyId::new(p.name.as_str(), p.hash.as_str());
        let plan = AccountPlan::new(&pid, recs);
        let found = cache.get_many(plan.keys()).await;
        let (answer, writes) = plan.finish(recs, found, |m| crate::engine::evaluate(p, m)).unwrap();
        cache.put_many(writes);
        answer
    }

    #[tokio::test]
    async fn cold_and_warm_answers_are_the_bytes_of_a_fresh_evaluation() {
        let p = policy();
        let recs = records(BOOK);
        let fresh = serde_json::to_vec(&crate::engine::evaluate(&p, &recs)).unwrap();
        let cache = MemoryCache::new(&CacheConfig::default());
        let cold = answer(&cache, &p, &recs).await;
        assert_eq!(cold.hits, 0);
        let mut buf = Vec::new();
        cold.write_array(&mut buf);
        assert_eq!(String::from_utf8(buf).unwrap(), String::from_utf8(fresh.clone()).unwrap());
        // Only the two clean single decisions were cached: a and c (b is an error, d twice).
        assert_eq!(cache.stats().written, 2 + 2);

        // Warm: a and c hit, the rest is evaluated again, errors keep their positions.
        let warm = answer(&cache, &p, &recs).await;
        assert_eq!(warm.hits, 2);
        assert_eq!(warm.fresh.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
        let mut buf = Vec::new();
        warm.write_array(&mut buf);
        assert_eq!(String::from_utf8(buf).unwrap(), String::from_utf8(fresh).unwrap());

        let latest = cache.get_latest(&p.name, "a").await.unwrap();
        assert_eq!(decision_policy_hash(&latest).as_deref(), Some(p.hash.as_str()));
        assert_eq!(decision_policy_hash(b"{}"), None);

        // The same snapshot elsewhere in another request is a hit too.
        let moved = vec![recs[2].clone(), recs[0].clone()];
        let a = answer(&cache, &p, &moved).await;
        assert_eq!(a.hits, 2);
        assert_eq!(cache.get_latest(&p.name, "c").await.unwrap(), a.accounts[0]);
    }

    #[tokio::test]
    async fn a_gated_plan_writes_a_snapshot_the_second_time_it_is_seen() {
        let p = policy();
        let recs = records(BOOK);
        let pid = PolicyId::new(p.name.as_str(), p.hash.as_str());
        let gate = CostGate::new();
        let cache = MemoryCache::new(&CacheConfig::default());
        let mut written = Vec::new();
        for _ in 0..3 {
            let plan = AccountPlan::gated(&pid, &recs, &gate);
            let found = cache.get_many(plan.keys()).await;
            let (a, w) = plan.finish(&recs, found, |m| crate::engine::evaluate(&p, m)).unwrap();
            written.push((w.entries.len(), w.latest.len(), a.hits));
            cache.put_many(w);
        }
        assert_eq!(
            written,
            vec![(0, 2, 0), (2, 2, 0), (0, 2, 2)],
            "(entries, latest, hits) per round"
        );
    }

    #[test]
    fn a_short_answer_from_the_cache_reads_as_all_misses() {
        let p = policy();
        let recs = records(BOOK);
        let pid = PolicyId::new("enterprise", p.hash.as_str());
        let plan = AccountPlan::new(&pid, &recs);
        assert_eq!(
            plan.keys().len(),
            3,
            "a, b (valid JSON, an error once evaluated: looked up, never stored) and c"
        );
        let (a, _) = plan
            .finish(&recs, vec![Some(Bytes::from_static(b"x"))], |m| crate::engine::evaluate(&p, m))
            .unwrap();
        assert_eq!(a.hits, 0);
    }
}
