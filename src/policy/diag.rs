//! Policy diagnostics: every problem found while loading, with its place.
//!
//! Loading collects all problems instead of stopping at the first, so a rev-ops user fixes
//! a policy in one round. Each [`Diagnostic`] has a stable `code` (for tools and tests), a
//! lowercase message in the cedar style (user input in backticks, no final period), the
//! file, line and column, and the id of the rule it concerns. [`Report`] renders them with
//! miette when a terminal reader wants the source underlined.

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    /// Not a problem: something worth knowing (e.g. a rule that runs through rhai, slower).
    Info,
}

/// Where something is in a policy folder: `file:line:column`, and the rule it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Place {
    /// Path relative to the policy folder, e.g. `policy.toml` or `scripts/fit.rhai`.
    pub file: String,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    /// The rule's id (`tiers.key`, `alerts.nps_drop`, `score.criteria.revenue`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        if let Some(rule) = &self.rule {
            write!(f, " ({rule})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Diagnostic {
    pub level: Level,
    /// Stable machine code, e.g. `unknown_key`, `unknown_variable`, `not_ascending`.
    pub code: &'static str,
    pub message: String,
    pub place: Place,
    /// A hint such as "did you mean `revenue_12m`?".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    /// Byte range in the file, for underlining; not part of the stable output.
    #[serde(skip)]
    pub span: Option<Range<usize>>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
        };
        write!(f, "{}: {level}[{}]: {}", self.place, self.code, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one file to 1-based line and column (in characters).
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let start = self.starts.get(line).copied().unwrap_or(0);
        let col = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line as u32 + 1, col as u32 + 1)
    }
}

/// Collects diagnostics for one policy folder while it loads.
#[derive(Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
    /// File texts by relative path, for rendering with the source.
    pub sources: BTreeMap<String, Arc<str>>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// Records a problem at a byte span of `file`.
    #[allow(clippy::too_many_arguments)] // each is a part of the diagnostic; a builder would only rename them
    pub fn at(
        &mut self,
        level: Level,
        code: &'static str,
        file: &str,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (line, column) = match (&span, self.sources.get(file)) {
            (Some(span), Some(text)) => LineIndex::new(text).line_col(span.start),
            _ => (0, 0),
        };
        self.items.push(Diagnostic {
            level,
            code,
            message: message.into(),
            place: Place { file: file.to_string(), line, column, rule: rule.map(str::to_string) },
            help,
            span,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.level == Level::Error)
    }
}

/// The problems that kept a policy from loading (errors first, then warnings, each group in
/// file order).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The policy's name (its folder's name).
    pub policy: String,
    pub diagnostics: Vec<Diagnostic>,
    #[serde(skip)]
    pub sources: BTreeMap<String, Arc<str>>,
}

impl Report {
    pub fn from_diagnostics(policy: &str, mut d: Diagnostics) -> Self {
        // A word of another language (`elif`) is the cause of the parse errors around it
        // and of the missing functions that follow: it is said first.
        let key = |x: &Diagnostic| {
            (
                x.level != Level::Error,
                x.code != "foreign_syntax",
                x.place.file.clone(),
                x.place.line,
                x.place.column,
            )
        };
        d.items.sort_by_key(key);
        Report { policy: policy.to_string(), diagnostics: d.items, sources: d.sources }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.level == Level::Error)
    }

    /// Renders each diagnostic with its source line underlined (miette's graphical
    /// handler; `color` for terminals).
    pub fn render(&self, color: bool) -> String {
        let theme =
            if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
        let mut out = String::new();
        for d in &self.diagnostics {
            let shown = Shown { d, src: self.sources.get(&d.place.file).cloned() };
            if handler.render_report(&mut out, &shown).is_err() {
                out.push_str(&d.to_string());
            }
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

/// A diagnostic paired with its file, in the form miette renders.
struct Shown<'a> {
    d: &'a Diagnostic,
    src: Option<Arc<str>>,
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.d.message)?;
        if let Some(rule) = &self.d.place.rule {
            write!(f, " (in `{rule}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Shown<'_> {}

impl miette::Diagnostic for Shown<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.d.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.level {
            Level::Error => miette::Severity::Error,
            Level::Warning => miette::Severity::Warning,
            Level::Info => miette::Severity::Advice,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.d.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        // miette wants a long-lived source; the Arc<str> lives in `self`.
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.d.span.clone()?;
        self.src.as_ref()?;
        let len = span.end.saturating_sub(span.start).max(1);
        Some(Box::new(std::iter::once(LabeledSpan::new(
            Some(format!("{}:{}:{}", self.d.place.file, self.d.place.line, self.d.place.column)),
            span.start,
            len,
        ))))
    }
}

/// "did you mean `x`?" for the closest candidate, when one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}
