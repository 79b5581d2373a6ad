//! Account-level answers with explanations (`/v1/evaluate?explain=full`): each decision with
//! what would move it in business terms ([`crate::engine::explain`]): the single criterion
//! changes that reach the next tier and what holds the account where it is.
//!
//! Explaining needs each account's inputs, which a cached decision does not keep, so the
//! accounts are decided once more, under the request's budget: evaluation is deterministic,
//! so these are the decisions the answer holds (checked by policy hash; a reload in between
//! leaves the answer without explanations rather than with another version's). The answer's
//! own bytes are kept, so every other field keeps its order and its value.

use super::{Loaded, Pipeline, PipelineError};
use crate::engine::{self, Outcome};
use crate::script::{self, Budget};
use crate::snapshot::Record;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The parts of an answer the explanations are spliced into.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    policy: &'a RawValue,
    #[serde(borrow)]
    accounts: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Hash {
    hash: String,
}

impl Pipeline {
    /// `answer` (the bytes [`Pipeline::answer`] gave for `records` at account level) with an
    /// `explanation` added to every decision.
    pub fn explain(
        &self,
        loaded: &Loaded,
        records: &[Record],
        answer: &[u8],
        budget: Arc<Budget>,
    ) -> Result<Vec<u8>, PipelineError> {
        let parsed: Answer<'_> = serde_json::from_slice(answer)
            .map_err(|e| PipelineError::internal("explain: parse the answer", e))?;
        let hash: Option<Hash> = serde_json::from_str(parsed.policy.get()).ok();
        if hash.is_none_or(|h| h.hash != loaded.policy.hash) {
            return Ok(answer.to_vec());
        }
        let outcomes =
            script::with_budget(Some(budget.clone()), || engine::evaluate(&loaded.policy, records));
        if budget.spent() {
            return Err(PipelineError::Timeout);
        }
        let head = answer
            .windows(12)
            .position(|w| w == b"\"accounts\":[")
            .map(|i| i + 12)
            .ok_or_else(|| PipelineError::internal("explain", "no accounts in the answer"))?;
        let mut out = Vec::with_capacity(answer.len() * 2);
        out.extend_from_slice(&answer[..head]);
        for (i, raw) in parsed.accounts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let text = raw.get().trim_end();
            match (outcomes.get(i), records.get(i), text.strip_suffix('}')) {
                (Some(Outcome::Decision(d)), Some(Ok(snap)), Some(open)) => {
                    out.extend_from_slice(open.as_bytes());
                    out.extend_from_slice(b",\"explanation\":");
                    let ex = engine::explain::explain(&loaded.policy, snap, d);
                    serde_json::to_writer(&mut out, &ex)
                        .map_err(|e| PipelineError::internal("explain: serialize", e))?;
                    out.push(b'}');
                }
                _ => out.extend_from_slice(text.as_bytes()),
            }
        }
        // `accounts` is the answer's last field.
        out.extend_from_slice(b"]}");
        let limit = budget.output_limit();
        if out.len() > limit {
            return Err(PipelineError::ResponseTooLarge { limit, rule: None });
        }
        Ok(out)
    }
}
