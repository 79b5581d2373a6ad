//! What-if: the candidate policy, built once for `tierwise diff` and `/v1/dry-run`, and the
//! comparison of a book under the baseline and the candidate.
//!
//! A candidate is a folder's files (a folder on disk, or sent inline), or the baseline's own
//! files, with overrides on top. It is compiled with the caller's sandbox limits exactly as
//! a reload would compile it, and its own test cases are run as a reload runs them: a
//! failing case does not stop the comparison, it is reported beside it (such a candidate
//! would be rejected at reload, the live version kept).
//!
//! [`Pipeline::what_if`] decides the book under the baseline first, then under the
//! candidate with a budget that stops at the candidate's first sandbox limit on an account
//! the baseline decides: such a candidate could never go live (an endless loop, runaway
//! recursion, a string without bound), and a hostile one costs one account's limit, not the
//! book's. Nothing is cached, logged as live or turned into state: a what-if touches nothing
//! shared.

use super::{FailedCase, Pipeline};
use crate::engine::{self, Outcome, testrun};
use crate::policy::{self, Files, Policy, overrides};
use crate::script::{self, Budget, Limits};
use crate::snapshot::Record;
use crate::whatif::{self, FailureDelta, PolicyDiff};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Instant;

/// Where the candidate's files came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A folder (on disk for `diff`, inline for the dry run).
    Files,
    /// The baseline's files with overrides.
    Overrides,
    /// A folder with overrides on top.
    FilesAndOverrides,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Files => "files",
            Source::Overrides => "overrides",
            Source::FilesAndOverrides => "files+overrides",
        }
    }
}

/// The candidate's test cases: how many, and the ones that fail.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestCases {
    pub total: usize,
    pub passed: usize,
    pub failed: Vec<FailedCase>,
}

impl TestCases {
    /// Runs `policy`'s own cases, as a reload does.
    pub fn run(policy: &Policy) -> Self {
        let cases = testrun::run_cases(policy);
        let total = cases.len();
        let failed: Vec<FailedCase> = cases
            .into_iter()
            .filter(|r| !r.passed())
            .map(|r| FailedCase { name: r.name, place: r.place, failures: r.failures })
            .collect();
        TestCases { total, passed: total - failed.len(), failed }
    }

    /// The sentence a diff's reader needs when cases fail (`None` when all pass): markdown
    /// (bold, names in backticks) or plain text.
    pub fn note(&self, markdown: bool) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let mut names: Vec<String> = self
            .failed
            .iter()
            .take(5)
            .map(|c| format!("`{}` ({}:{})", c.name, c.place.file, c.place.line))
            .collect();
        if self.failed.len() > names.len() {
            names.push(format!("and {} more", self.failed.len() - names.len()));
        }
        let what = format!(
            "{} of the candidate's {} test cases fail, so it would not go live: {}",
            self.failed.len(),
            self.total,
            names.join(", ")
        );
        Some(if markdown {
            format!("\n**{what}.**\n")
        } else {
            format!("\n{}\n", what.replace('`', ""))
        })
    }
}

/// The lines a diff's header carries before its figures, for `tierwise diff` and the dry
/// run's table and markdown alike: the warnings the candidate has and the baseline has not
/// (`tiers.gold.min_score=65` above the scale: `unreachable_tier`), then its failing test
/// cases. A reader sees "this would not go live" before "140 demotions".
pub fn header_notes(
    baseline: &Policy,
    candidate: &Policy,
    tests: Option<&TestCases>,
) -> Vec<String> {
    let known: HashSet<(&str, &str)> =
        baseline.warnings.iter().map(|w| (w.code, w.message.as_str())).collect();
    let new: Vec<&policy::Diagnostic> = candidate
        .warnings
        .iter()
        .filter(|w| !known.contains(&(w.code, w.message.as_str())))
        .collect();
    let mut out = Vec::new();
    if !new.is_empty() {
        out.push(format!(
            "the candidate has {} new warning{} (`tierwise check`):",
            new.len(),
            if new.len() == 1 { "" } else { "s" }
        ));
        for w in new.iter().take(10) {
            out.push(format!("  {}: warning[{}]: {}", w.place, w.code, w.message));
        }
        if new.len() > 10 {
            out.push(format!("  and {} more", new.len() - 10));
        }
    }
    if let Some(note) = tests.and_then(|t| t.note(false)) {
        out.push(note.trim().to_string());
    }
    out
}

/// The ids of `p`'s `capacity.tiers`, for ordering a diff's accounts.
pub fn capacity_tiers(p: &Policy) -> Vec<String> {
    let Some(c) = &p.capacity else { return Vec::new() };
    p.tiers.iter().zip(&c.in_book).filter(|(_, b)| **b).map(|(t, _)| t.id.clone()).collect()
}

/// A compiled candidate, with what it was made of.
pub struct Candidate {
    pub policy: Policy,
    pub source: Source,
    /// The overrides applied, as `path=value`, in the order given.
    pub applied: Vec<String>,
}

impl Candidate {
    /// Its own test cases, run as a reload runs them. Run after [`Pipeline::what_if`] found
    /// no sandbox trip: a hostile candidate's cases would each run into the same limit.
    pub fn test_cases(&self) -> TestCases {
        TestCases::run(&self.policy)
    }
}

/// Why there is no candidate.
#[derive(Debug)]
pub enum CandidateError {
    /// Overrides that cannot be applied (a path that names nothing, a value of the wrong type).
    Overrides(Vec<overrides::OverrideError>),
    /// The candidate does not compile; `with_overrides` when overrides were applied.
    Invalid { report: policy::Report, with_overrides: bool },
}

/// Builds the candidate named `name` from `files` (a folder's, or the baseline's own) and
/// the overrides `given` (`None`: none were), compiled under `limits`; `sent_files` says whether
/// `files` are a candidate folder (rather than the baseline's).
pub fn build(
    name: &str,
    mut files: Files,
    sent_files: bool,
    given: Option<&[overrides::Override]>,
    limits: &Limits,
) -> Result<Candidate, CandidateError> {
    let list = given.unwrap_or_default();
    // A candidate without policy.toml is reported by the compiler, not as bad overrides.
    if !list.is_empty() && files.contains_key("policy.toml") {
        files = overrides::apply_files(&files, list).map_err(CandidateError::Overrides)?;
    }
    let applied: Vec<String> = list.iter().map(ToString::to_string).collect();
    let policy = policy::load_files(name, &files, limits).map_err(|report| {
        CandidateError::Invalid { report, with_overrides: !applied.is_empty() }
    })?;
    let source = match (sent_files, given.is_some()) {
        (true, true) => Source::FilesAndOverrides,
        (true, false) => Source::Files,
        (false, _) => Source::Overrides,
    };
    Ok(Candidate { policy, source, applied })
}

/// A book decided under both policies, compared.
pub struct WhatIf {
    pub diff: PolicyDiff,
    /// Accounts the baseline decides and on which the candidate hit a sandbox limit (or was
    /// stopped after its first one): such a candidate could never go live.
    pub tripped: Vec<FailureDelta>,
    /// Accounts answered with an error under the baseline, and under the candidate.
    pub errors: (u64, u64),
    /// The baseline's rule whose alerts passed the output budget over this book, if one did
    /// (the served policy itself fans out: a live request would be refused the same way).
    pub baseline_over: Option<String>,
    /// The candidate's rule whose alerts passed its share of the output budget, if one did.
    pub candidate_over: Option<String>,
    /// The candidate's output budget in bytes.
    pub candidate_limit: usize,
}

impl Pipeline {
    /// The what-if level: `before` decided under `baseline`, then `after` (the same records,
    /// read for the candidate when their format depends on the policy, else `None`: the same)
    /// under `candidate`, at portfolio level, both within `until` when given. `max_output`
    /// bounds the bytes of alerts the baseline renders; both books' decisions and their
    /// difference are held at once, so the candidate gets a quarter of it
    /// ([`crate::policy::limits::candidate_output`]) and stops at the first account past it.
    pub fn what_if(
        &self,
        baseline: &Policy,
        candidate: &Policy,
        before: &[Record],
        after: Option<&[Record]>,
        until: Option<Instant>,
        max_output: usize,
    ) -> WhatIf {
        let base_budget = Budget::with_output(until, max_output);
        let rb = script::with_budget(Some(base_budget.clone()), || {
            engine::evaluate_portfolio(baseline, before)
        });
        let already: HashSet<String> = rb
            .accounts
            .iter()
            .filter_map(|o| match o {
                Outcome::Error { id: Some(id), error } if script::is_limit_code(error.code) => {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect();
        let cand_budget = Budget::tripping_with_output(
            until,
            already,
            crate::policy::limits::candidate_output(max_output),
        );
        let ra = script::with_budget(Some(cand_budget.clone()), || {
            engine::evaluate_portfolio(candidate, after.unwrap_or(before))
        });
        let diff = whatif::compare(&rb, &ra);
        let tripped: Vec<FailureDelta> = diff
            .newly_failing
            .iter()
            .filter(|f| script::is_limit_code(f.error.code))
            .cloned()
            .collect();
        let errors = (rb.summary.error_count, ra.summary.error_count);
        WhatIf {
            diff,
            tripped,
            errors,
            baseline_over: base_budget.output_over(),
            candidate_over: cand_budget.output_over(),
            candidate_limit: cand_budget.output_limit(),
        }
    }
}

/// The tripped accounts that really hit a limit first (they name it and its place), then
/// those stopped after the first hit (never evaluated).
pub fn tripped_in_order(tripped: &[FailureDelta]) -> (Vec<&FailureDelta>, Vec<&FailureDelta>) {
    tripped.iter().partition(|f| f.error.message != script::BUDGET_SPENT_MESSAGE)
}
