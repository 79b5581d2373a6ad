//! The pipeline with events on: step 5 of [`super::pipeline`]'s list made real. Every account
//! is decided (no decision cache: the transition needs the decisions themselves), the
//! transitions run through the state store (state and outbox change per account in one
//! atomic step, before the answer is sent), and each decided account is answered with its
//! `events` (type and id) and, at portfolio level, the book's (`book: {name, events}`).
//! The latest decisions and the decision log are written as on the cached path.

use super::encode::write_json;
use super::pipeline::{Answer, Input, Level, Pipeline, PipelineError, Request, off_thread};
use crate::cache::WriteBatch;
use crate::decision_log;
use crate::engine::transition::{self, AccountInput, BookInput};
use crate::events::{EventRef, Hub};
use crate::script;
use crate::snapshot::Record;
use std::sync::Arc;

/// The book's name when a request gives none.
const DEFAULT_BOOK: &str = "default";

/// The days of a record's `as_of` and `tier_since` (none when it is not a snapshot).
fn days(r: &Record) -> (Option<i64>, Option<i64>) {
    match r {
        Ok(s) => (
            crate::date::parse_days(&s.as_of),
            s.tier_since.as_deref().and_then(crate::date::parse_days),
        ),
        Err(_) => (None, None),
    }
}

impl Pipeline {
    /// [`Pipeline::answer`] with account state and events kept in `hub`'s store.
    pub async fn answer_events<E, F>(
        &self,
        hub: Arc<Hub>,
        req: Request,
        input: F,
    ) -> Result<Answer, E>
    where
        F: FnOnce() -> Result<Input, E> + Send + 'static,
        E: From<PipelineError> + Send + 'static,
    {
        let (level, inline) = (req.level, req.inline);
        let me = self.clone();
        let budget = req.budget.clone();
        let (input, outcomes, summary) = off_thread(inline, move || {
            let input = input()?;
            let (outcomes, summary) = script::with_budget(Some(budget), || match level {
                Level::Account => (me.decide_accounts(&input.loaded, &input.records, 0), None),
                Level::Portfolio => {
                    let r = me.decide_portfolio(&input.loaded, &input.records);
                    (r.accounts, Some(r.summary))
                }
            });
            Ok::<_, E>((input, outcomes, summary))
        })
        .await??;
        if req.budget.spent() {
            return Err(PipelineError::Timeout.into());
        }
        let Input { loaded, records, undeclared, book } = input;
        let book = book.unwrap_or_else(|| DEFAULT_BOOK.to_string());

        // Step 5: the transitions, through the store.
        let tlevel = match level {
            Level::Account => transition::Level::Account,
            Level::Portfolio => transition::Level::Portfolio,
        };
        let rules = hub.rules(&loaded.policy);
        let dated: Vec<(Option<i64>, Option<i64>)> = records.iter().map(days).collect();
        let items: Vec<AccountInput<'_>> = outcomes
            .iter()
            .zip(&dated)
            .map(|(o, &(as_of, tier_since))| AccountInput {
                level: tlevel,
                outcome: o,
                as_of: as_of.unwrap_or(i64::MIN),
                tier_since,
            })
            .collect();
        let unavailable =
            |e: crate::events::StoreError| PipelineError::StateUnavailable(e.to_string());
        let per_account = hub.store.apply(&items, &rules.account).await.map_err(unavailable)?;
        let book_events = match &summary {
            Some(summary) => {
                let as_of = transition::book_as_of(
                    outcomes.iter().zip(&dated).filter_map(|(o, (a, _))| a.map(|a| (o, a))),
                );
                let input = BookInput { policy: &loaded.pref, book: &book, as_of, summary };
                hub.store.apply_book(input, &rules.portfolio).await.map_err(unavailable)?
            }
            None => Vec::new(),
        };
        drop(items);
        for e in &per_account {
            hub.count(e);
        }
        hub.count(&book_events);

        // Step 4: the answer's bytes, each decision with its events.
        let decision_id = uuid::Uuid::now_v7().to_string();
        let ser = |e| PipelineError::internal("serialize", e);
        let n = outcomes.len();
        let mut buf = Vec::with_capacity(256 + n * 900);
        buf.extend_from_slice(b"{\"decision_id\":");
        write_json(&mut buf, &decision_id).map_err(ser)?;
        buf.extend_from_slice(b",\"policy\":");
        write_json(&mut buf, &*loaded.pref).map_err(ser)?;
        if let Some(s) = &summary {
            buf.extend_from_slice(b",\"summary\":");
            write_json(&mut buf, s).map_err(ser)?;
        }
        buf.extend_from_slice(b",\"accounts\":[");
        let mut latest = WriteBatch::new();
        let mut one = Vec::with_capacity(1024);
        for (i, (o, events)) in outcomes.iter().zip(&per_account).enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            one.clear();
            write_json(&mut one, o).map_err(ser)?;
            match o.decision() {
                Some(dec) if one.last() == Some(&b'}') => {
                    if level == Level::Account {
                        latest.put_latest(
                            loaded.cache_id.latest_key(&dec.id),
                            bytes::Bytes::copy_from_slice(&one),
                        );
                    }
                    buf.extend_from_slice(&one[..one.len() - 1]);
                    buf.extend_from_slice(b",\"events\":");
                    let refs: Vec<EventRef> = events.iter().map(EventRef::of).collect();
                    write_json(&mut buf, &refs).map_err(ser)?;
                    buf.push(b'}');
                }
                _ => buf.extend_from_slice(&one),
            }
        }
        buf.push(b']');
        if level == Level::Portfolio {
            buf.extend_from_slice(b",\"book\":");
            let refs: Vec<EventRef> = book_events.iter().map(EventRef::of).collect();
            write_json(&mut buf, &serde_json::json!({ "name": book, "events": refs }))
                .map_err(ser)?;
        }
        buf.push(b'}');
        // The state moved already (the events are told); an answer past the output budget is
        // still refused whole, as on the cached path, and the events can be read from
        // `/v1/events`.
        let limit = req.budget.output_limit();
        if let Some(rule) = req.budget.output_over() {
            return Err(PipelineError::ResponseTooLarge { limit, rule: Some(rule) }.into());
        }
        if buf.len() > limit {
            return Err(PipelineError::ResponseTooLarge { limit, rule: None }.into());
        }

        // Steps 6 and 7: the latest decisions, the decision log.
        if let Some(cache) = self.cache()
            && !latest.is_empty()
        {
            cache.put_many(latest);
        }
        let errors = outcomes.iter().filter(|o| o.decision().is_none()).count() as u64;
        let hash = loaded.policy.hash.clone();
        self.log_job(decision_log::Job {
            at: std::time::SystemTime::now(),
            decision_id: decision_id.clone(),
            request_id: req.request_id.clone(),
            level: level.as_str(),
            policy: loaded.pref.clone(),
            duration_ms: req.start.elapsed().as_secs_f64() * 1e3,
            outcomes,
            summary,
            cached: Vec::new(),
            cached_book: None,
        });
        Ok(Answer { bytes: buf, decision_id, hash, hits: 0, accounts: n, errors, undeclared })
    }
}
