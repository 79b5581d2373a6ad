//! Text from outside (account ids, manager names, tier and alert ids, messages) made safe to
//! print: in a terminal, a table or CSV it cannot move the cursor, recolour, end a line or
//! reverse the text; in markdown it cannot leave its code span or cell, or become a link,
//! an image or HTML.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters shown as escapes rather than printed: C0 controls (ESC, CR, LF, NUL...), DEL,
/// C1 controls, and the bidirectional and zero-width formatting characters that make text
/// read differently from what it holds.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        _ => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// For terminals, tables and CSV: every [`hidden`] character as an escape (`\n`, `\u{1b}`),
/// the rest as it is. Borrowed when there is nothing to escape (the usual case).
pub fn plain(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A markdown code span around `s`, safe in a table cell: fenced with one more backtick than
/// the longest run inside, padded when `s` starts or ends with a backtick, `|` escaped (GitHub
/// splits table cells before it reads code spans), [`hidden`] characters as escapes.
pub fn code(s: &str) -> String {
    let body = plain(s).replace('|', "\\|");
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad =
        if body.starts_with('`') || body.ends_with('`') || body.is_empty() { " " } else { "" };
    format!("{fence}{pad}{body}{pad}{fence}")
}

/// Markdown text (a message, a reason): every character that markdown or HTML gives a
/// meaning inside a line is backslash-escaped (`(` needs none once `]` is escaped), so it reads as written and never becomes emphasis, a link, an
/// image, a tag or a new cell; [`hidden`] characters as escapes.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            escape_into(&mut out, c);
        } else if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&') {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_escapes_what_a_terminal_would_obey() {
        assert_eq!(plain("acme"), "acme");
        assert!(matches!(plain("acme"), Cow::Borrowed(_)));
        assert_eq!(plain("a\u{1b}[31mred\r\nb\0"), "a\\u{1b}[31mred\\r\\nb\\u{0}");
        assert_eq!(plain("abc\u{202E}fed"), "abc\\u{202e}fed");
        assert_eq!(plain("\u{9b}x"), "\\u{9b}x");
    }

    #[test]
    fn code_spans_cannot_be_left() {
        assert_eq!(code("acme"), "`acme`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(code("a``b`"), "``` a``b` ```");
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a\nb"), "`a\\nb`");
        assert_eq!(code(""), "`  `");
    }

    #[test]
    fn markdown_text_is_literal() {
        assert_eq!(md("<img src=x onerror=alert(1)>"), "\\<img src=x onerror=alert(1)\\>");
        assert_eq!(md("[click](http://evil)"), "\\[click\\](http://evil)");
        assert_eq!(md("**bold** | cell"), "\\*\\*bold\\*\\* \\| cell");
        assert_eq!(md("line\nbreak"), "line\\nbreak");
    }
}
