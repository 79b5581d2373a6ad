//! Limits on a candidate policy (untrusted: a dry run's folder and its overrides), checked
//! before anything parses its content, and the sizes every policy's lists must stay under.
//!
//! One budget covers a candidate however it is sent: files and overrides are counted against
//! the same byte, count and list-length limits, so overrides are no way around the file limits.
//! Each check is a function of its own, so any path that builds a candidate (the HTTP dry run,
//! the command line, a console) calls it the same way.

use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Most files a candidate folder may hold; also the most overrides one candidate may carry.
pub const MAX_CANDIDATE_FILES: usize = 64;
/// Most bytes of a candidate: its files (paths and texts) and its overrides (paths and JSON
/// values as sent) together.
pub const MAX_CANDIDATE_BYTES: usize = 1024 * 1024;
/// Most items of one list in a policy: `steps.at`, `one_of`, an override's array value, and
/// the arms of one `switch`. Far above what a policy needs (a few dozen); far below what makes
/// loading or evaluating one slow.
pub const MAX_LIST_ITEMS: usize = 1_000;

/// A candidate refused for its size: a stable code, a message for people, and the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    /// `candidate_too_large`.
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

/// How much a candidate holds, for the limits and the decision log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub files: usize,
    pub overrides: usize,
    pub bytes: usize,
}

fn too_large(message: String, size: Size, extra: Value) -> TooLarge {
    let mut details = json!({
        "files": size.files,
        "overrides": size.overrides,
        "bytes": size.bytes,
        "max_files": MAX_CANDIDATE_FILES,
        "max_overrides": MAX_CANDIDATE_FILES,
        "max_bytes": MAX_CANDIDATE_BYTES,
        "max_list_items": MAX_LIST_ITEMS,
    });
    if let (Some(d), Value::Object(e)) = (details.as_object_mut(), extra) {
        d.extend(e);
    }
    TooLarge { code: "candidate_too_large", message, details }
}

/// Checks a candidate's files and raw overrides against the one budget. `files` are path →
/// text; `overrides` path → the JSON value as sent (not parsed yet: a million-element array
/// costs nothing before it is refused).
pub fn check_candidate(
    files: Option<&BTreeMap<String, String>>,
    overrides: Option<&BTreeMap<String, &RawValue>>,
) -> Result<Size, TooLarge> {
    let mut size = Size::default();
    if let Some(f) = files {
        size.files = f.len();
        size.bytes += f.iter().map(|(p, t)| p.len() + t.len()).sum::<usize>();
    }
    if let Some(o) = overrides {
        size.overrides = o.len();
        size.bytes += o.iter().map(|(p, v)| p.len() + v.get().len()).sum::<usize>();
    }
    if size.files > MAX_CANDIDATE_FILES {
        return Err(too_large(
            format!(
                "the candidate folder holds {} files, more than the limit of {MAX_CANDIDATE_FILES}",
                size.files
            ),
            size,
            json!({}),
        ));
    }
    if size.overrides > MAX_CANDIDATE_FILES {
        return Err(too_large(
            format!(
                "the candidate carries {} overrides, more than the limit of {MAX_CANDIDATE_FILES}",
                size.overrides
            ),
            size,
            json!({}),
        ));
    }
    if size.bytes > MAX_CANDIDATE_BYTES {
        let what = match (size.files > 0, size.overrides > 0) {
            (true, true) => "files and overrides hold",
            (false, true) => "overrides hold",
            _ => "folder holds",
        };
        return Err(too_large(
            format!(
                "the candidate {what} {} bytes, more than the limit of {MAX_CANDIDATE_BYTES}",
                size.bytes
            ),
            size,
            json!({}),
        ));
    }
    if let Some(o) = overrides {
        for (path, raw) in o {
            if let Some(n) = longest_list(raw.get()).filter(|n| *n > MAX_LIST_ITEMS) {
                return Err(too_large(
                    format!(
                        "override `{path}` holds a list of {n} items, more than the limit of {MAX_LIST_ITEMS}"
                    ),
                    size,
                    json!({ "path": path, "items": n }),
                ));
            }
        }
    }
    Ok(size)
}

/// The most items of any JSON array in `raw` (already valid JSON), counted without parsing
/// it into values; `None` when it holds no array.
fn longest_list(raw: &str) -> Option<usize> {
    let mut stack: Vec<usize> = Vec::new();
    let mut most: Option<usize> = None;
    let mut in_str = false;
    let mut escaped = false;
    // `[` opens a list (1 item unless `]` follows at once); each `,` at its depth adds one.
    let mut just_opened = false;
    for b in raw.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        let opened = std::mem::take(&mut just_opened);
        match b {
            b'"' => in_str = true,
            b'[' => {
                stack.push(1);
                just_opened = true;
            }
            b'{' => stack.push(usize::MAX),
            b']' => {
                let n = if opened { 0 } else { stack.pop().unwrap_or(0) };
                if opened {
                    stack.pop();
                }
                most = Some(most.map_or(n, |m| m.max(n)));
            }
            b'}' => {
                stack.pop();
            }
            b',' => {
                if let Some(top) = stack.last_mut()
                    && *top != usize::MAX
                {
                    *top += 1;
                }
            }
            _ => {}
        }
    }
    most
}

/// How many `switch` arms (`=>` tokens outside strings and comments) a rhai source holds, in
/// one pass: counted before rhai parses it, since rhai's optimizer takes time quadratic in the
/// arms of one `switch` (100,000 arms: 25 s).
pub fn switch_arms(src: &str) -> usize {
    let b = src.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'`' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'=' if b.get(i + 1) == Some(&b'>') => {
                n += 1;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    n
}

/// The candidate's output budget, out of the operator's response budget: a dry run holds both
/// books' decisions and their difference at once, so the candidate gets a quarter.
pub fn candidate_output(max_response_bytes: usize) -> usize {
    max_response_bytes / 4
}

/// What the decision log keeps of a candidate: a digest of what was sent and its size, never
/// its text (an override can be megabytes).
pub fn digest_of(
    files: Option<&BTreeMap<String, String>>,
    overrides: Option<&BTreeMap<String, &RawValue>>,
) -> String {
    let mut h = Sha256::new();
    for (path, text) in files.into_iter().flatten() {
        h.update(b"f");
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    for (path, raw) in overrides.into_iter().flatten() {
        h.update(b"o");
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((raw.get().len() as u64).to_le_bytes());
        h.update(raw.get().as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn switch_arms_are_counted_outside_strings_and_comments() {
        assert_eq!(switch_arms(r#"switch x { "a" => 1, "b=>" => 2, _ => 3 }"#), 3);
        assert_eq!(switch_arms("// a => b\n/* c => /* d => */ */ x => y"), 1);
        assert_eq!(switch_arms(r#"'=' "\" =>" => 1"#), 1);
    }

    #[test]
    fn lists_are_counted_without_parsing() {
        for (raw, n) in [
            ("[]", Some(0)),
            ("[1]", Some(1)),
            ("[1,2,3]", Some(3)),
            ("[[1,2],[3,4,5,6]]", Some(4)),
            (r#"["a,b", "c]"]"#, Some(2)),
            (r#"{"a": [1, 2], "b": 3}"#, Some(2)),
            ("7", None),
            (r#""[1,2]""#, None),
            (r#"[ "\"", 1 ]"#, Some(2)),
        ] {
            assert_eq!(longest_list(raw), n, "{raw}");
        }
    }

    #[test]
    fn overrides_count_against_the_same_budget_as_files() {
        let big = format!("[{}]", vec!["1"; 2_000].join(","));
        let raw = serde_json::value::RawValue::from_string(big).unwrap();
        let o: BTreeMap<String, &RawValue> =
            [("score.criteria[0].steps.at".to_string(), &*raw)].into();
        let e = check_candidate(None, Some(&o)).unwrap_err();
        assert_eq!(e.code, "candidate_too_large");
        assert!(e.message.contains("2000 items"), "{}", e.message);

        let text = "x".repeat(MAX_CANDIDATE_BYTES / 2 + 10);
        let files: BTreeMap<String, String> = [("policy.toml".to_string(), text.clone())].into();
        let raw = serde_json::value::RawValue::from_string(format!("\"{text}\"")).unwrap();
        let o: BTreeMap<String, &RawValue> = [("policy.description".to_string(), &*raw)].into();
        assert!(check_candidate(Some(&files), None).is_ok());
        assert!(check_candidate(None, Some(&o)).is_ok());
        let e = check_candidate(Some(&files), Some(&o)).unwrap_err();
        assert!(e.message.contains("files and overrides hold"), "{}", e.message);
    }
}
