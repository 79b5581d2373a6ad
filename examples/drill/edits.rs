//! Policy edits for the reload drill (HARDENING item 5), shared by `examples/drill` and
//! `tests/reload_drill.rs`: good edits, syntax errors, edits whose policy tests fail,
//! half-written files, an emptied folder and an unreadable one (swapped for a file, or a
//! dangling symlink: we run as root, so `chmod 000` would not stop a read).
//!
//! Each edit is made on disk, then the server is asked (through `get`, which returns
//! `GET /v1/policies/{name}`) until it shows the expected state: a good edit serving its own
//! hash; a bad one rejected with the right code and a place, the last good hash still serving.
//! A bad edit is then undone and the server must be back to the last good version, error
//! cleared. Every hash an edit makes good is in [`Editor::good`] before it is written, so
//! the load can check that every answer names one of them.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Files = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A new `version` in policy.toml: a new hash goes live.
    Good,
    /// A TOML syntax error in policy.toml or a rhai syntax error in a script.
    Syntax,
    /// The strategic line moved so that the policy's own test cases fail.
    TestsFail,
    /// A good version written in two steps: the first half (cut inside a string) is seen by a
    /// reload and rejected, then the rest is appended and goes live.
    HalfWritten,
    /// Every file moved out of the folder.
    Emptied,
    /// The folder swapped for a regular file of the same name.
    SwappedForFile,
    /// The folder swapped for a symlink to nothing.
    DanglingSymlink,
}

pub const ALL: [Kind; 7] = [
    Kind::Good,
    Kind::Syntax,
    Kind::TestsFail,
    Kind::HalfWritten,
    Kind::Emptied,
    Kind::SwappedForFile,
    Kind::DanglingSymlink,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::Syntax => "syntax",
            Kind::TestsFail => "tests",
            Kind::HalfWritten => "half",
            Kind::Emptied => "emptied",
            Kind::SwappedForFile => "file",
            Kind::DanglingSymlink => "symlink",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        ALL.into_iter().find(|k| k.name() == s)
    }

    /// The code the server must report for the bad state, if any.
    fn code(self) -> Option<&'static str> {
        match self {
            Kind::Good => None,
            Kind::Syntax | Kind::HalfWritten => Some("invalid_policy"),
            Kind::TestsFail => Some("tests_failed"),
            Kind::Emptied | Kind::SwappedForFile | Kind::DanglingSymlink => Some("read_error"),
        }
    }
}

/// What one edit did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: Kind,
    /// Reloads the edit needed (1 for a good edit, 2 for a bad one and its undo).
    pub reloads: u32,
    /// Every expected state was seen in time.
    pub ok: bool,
    /// The failure's place as reported (`policy.toml:12:5`, a test case's place, the folder),
    /// or why the edit is not ok.
    pub detail: String,
    /// From the first write until the server showed the last expected state.
    pub took: Duration,
}

pub struct Editor {
    dir: PathBuf,
    stash: PathBuf,
    /// The last good version written (what the server must serve when an edit is bad).
    current: Files,
    current_hash: String,
    n: u64,
    /// Full hashes of every version made good, the original first.
    pub good: Vec<String>,
    pub timeout: Duration,
}

fn read(dir: &Path) -> std::io::Result<Files> {
    tierwise::policy::read_dir(dir).map_err(std::io::Error::other)
}

fn hash(files: &Files) -> String {
    tierwise::policy::content_hash(files)
}

fn text(files: &Files, path: &str) -> String {
    String::from_utf8_lossy(files.get(path).map_or(&[][..], |v| v.as_slice())).into_owned()
}

impl Editor {
    /// `dir` is the policy folder the server serves; `stash` a folder outside the watched
    /// tree on the same filesystem (files are moved there and back).
    pub fn new(dir: &Path, stash: &Path) -> std::io::Result<Editor> {
        fs::create_dir_all(stash)?;
        let current = read(dir)?;
        let current_hash = hash(&current);
        Ok(Editor {
            dir: dir.to_path_buf(),
            stash: stash.to_path_buf(),
            good: vec![current_hash.clone()],
            current,
            current_hash,
            n: 0,
            timeout: Duration::from_secs(10),
        })
    }

    pub fn current_hash(&self) -> &str {
        &self.current_hash
    }

    /// Makes one edit of `kind` and waits for the server to show each expected state.
    pub fn run(&mut self, kind: Kind, get: &mut dyn FnMut() -> Option<Value>) -> Outcome {
        self.n += 1;
        let t = Instant::now();
        let r = self.edit(kind, get);
        let (ok, detail, reloads) = match r {
            Ok((detail, reloads)) => (true, detail, reloads),
            Err(why) => {
                // Put the last good version back so the next edit starts from a known state.
                let _ = self.restore();
                (false, why, 0)
            }
        };
        Outcome { kind, reloads, ok, detail, took: t.elapsed() }
    }

    fn edit(
        &mut self,
        kind: Kind,
        get: &mut dyn FnMut() -> Option<Value>,
    ) -> Result<(String, u32), String> {
        let n = self.n;
        let io = |e: std::io::Error| format!("edit failed: {e}");
        match kind {
            Kind::Good => {
                let next = self.with_version(&format!("drill-{n}"));
                self.go_live(next, n.is_multiple_of(2)).map_err(io)?;
                self.wait_good(get)?;
                Ok((String::new(), 1))
            }
            Kind::Syntax | Kind::TestsFail => {
                let mut bad = self.current.clone();
                if kind == Kind::TestsFail {
                    let toml =
                        text(&bad, "policy.toml").replacen("min_score = 8.0", "min_score = 9.9", 1);
                    bad.insert("policy.toml".into(), format!("{toml}\n# drill {n}\n").into_bytes());
                } else if n.is_multiple_of(2) {
                    let toml = text(&bad, "policy.toml").replacen(
                        "[[tiers]]",
                        &format!("# drill {n}\n[[tiers]"),
                        1,
                    );
                    bad.insert("policy.toml".into(), toml.into_bytes());
                } else {
                    let script = bad
                        .keys()
                        .find(|k| k.ends_with(".rhai"))
                        .cloned()
                        .unwrap_or_else(|| "scripts/drill.rhai".into());
                    let body = format!(
                        "{}\n// drill {n}\nfn drill_broken(a) {{ let x = ; }}\n",
                        text(&bad, &script)
                    );
                    bad.insert(script, body.into_bytes());
                }
                self.write_all(&bad).map_err(io)?;
                let place = self.wait_rejected(kind, Some(hash(&bad)), get)?;
                self.restore().map_err(io)?;
                self.wait_good(get)?;
                Ok((place, 2))
            }
            Kind::HalfWritten => {
                let next = self.with_version(&format!("drill-{n}"));
                let full = next.get("policy.toml").cloned().unwrap_or_default();
                let cut = cut_inside_string(&full, n as usize);
                let mut half = self.current.clone();
                half.insert("policy.toml".into(), full[..cut].to_vec());
                let path = self.dir.join("policy.toml");
                {
                    let mut f = fs::File::create(&path).map_err(io)?;
                    f.write_all(&full[..cut]).map_err(io)?;
                    f.sync_data().map_err(io)?;
                    let place = self.wait_rejected(kind, Some(hash(&half)), get)?;
                    self.good.push(hash(&next));
                    f.write_all(&full[cut..]).map_err(io)?;
                    f.sync_data().map_err(io)?;
                    self.current_hash = hash(&next);
                    self.current = next;
                    self.wait_good(get)?;
                    Ok((place, 2))
                }
            }
            Kind::Emptied | Kind::SwappedForFile | Kind::DanglingSymlink => {
                let aside = self.stash.join(format!("{}-{n}", kind.name()));
                match kind {
                    Kind::Emptied => {
                        fs::create_dir_all(&aside).map_err(io)?;
                        for e in fs::read_dir(&self.dir).map_err(io)? {
                            let e = e.map_err(io)?;
                            fs::rename(e.path(), aside.join(e.file_name())).map_err(io)?;
                        }
                    }
                    Kind::SwappedForFile => {
                        fs::rename(&self.dir, &aside).map_err(io)?;
                        fs::write(&self.dir, b"not a policy folder\n").map_err(io)?;
                    }
                    _ => {
                        fs::rename(&self.dir, &aside).map_err(io)?;
                        std::os::unix::fs::symlink(self.stash.join("nothing-here"), &self.dir)
                            .map_err(io)?;
                    }
                }
                let place = self.wait_rejected(kind, None, get)?;
                // Undo exactly: the very folder (or files) moved back.
                if kind == Kind::Emptied {
                    for e in fs::read_dir(&aside).map_err(io)? {
                        let e = e.map_err(io)?;
                        fs::rename(e.path(), self.dir.join(e.file_name())).map_err(io)?;
                    }
                    let _ = fs::remove_dir(&aside);
                } else {
                    fs::remove_file(&self.dir).map_err(io)?;
                    fs::rename(&aside, &self.dir).map_err(io)?;
                }
                self.wait_good(get)?;
                Ok((place, 2))
            }
        }
    }

    /// The last good version with another `version` line (same policy, new hash).
    fn with_version(&self, version: &str) -> Files {
        let mut next = self.current.clone();
        let toml = text(&next, "policy.toml");
        let mut out = String::with_capacity(toml.len() + 16);
        let mut done = false;
        for line in toml.split_inclusive('\n') {
            if !done && line.starts_with("version = ") {
                out.push_str(&format!("version = \"{version}\"\n"));
                done = true;
            } else {
                out.push_str(line);
            }
        }
        next.insert("policy.toml".into(), out.into_bytes());
        next
    }

    /// Writes a good version: its hash is in `good` before any byte reaches the folder.
    /// `atomic`: a temp file renamed over (as most editors save); else in place.
    fn go_live(&mut self, next: Files, atomic: bool) -> std::io::Result<()> {
        let h = hash(&next);
        self.good.push(h.clone());
        let bytes = next.get("policy.toml").cloned().unwrap_or_default();
        if atomic {
            let tmp = self.stash.join(format!("policy.toml.{}", self.n));
            fs::write(&tmp, &bytes)?;
            fs::rename(&tmp, self.dir.join("policy.toml"))?;
        } else {
            fs::write(self.dir.join("policy.toml"), &bytes)?;
        }
        self.current = next;
        self.current_hash = h;
        Ok(())
    }

    /// Writes every file of `files` that differs from what is on disk (in place).
    fn write_all(&self, files: &Files) -> std::io::Result<()> {
        for (path, bytes) in files {
            if self.current.get(path) != Some(bytes) {
                fs::write(self.dir.join(path), bytes)?;
            }
        }
        Ok(())
    }

    /// Puts the last good version back on disk, whatever state the folder is in.
    fn restore(&self) -> std::io::Result<()> {
        if let Ok(m) = self.dir.symlink_metadata()
            && !m.is_dir()
        {
            fs::remove_file(&self.dir)?;
        }
        for (path, bytes) in &self.current {
            let p = self.dir.join(path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            if fs::read(&p).ok().as_ref() != Some(bytes) {
                fs::write(&p, bytes)?;
            }
        }
        Ok(())
    }

    fn wait(
        &self,
        what: &str,
        get: &mut dyn FnMut() -> Option<Value>,
        ok: &mut dyn FnMut(&Value) -> bool,
    ) -> Result<Value, String> {
        let t = Instant::now();
        let mut last = Value::Null;
        loop {
            if let Some(v) = get() {
                if ok(&v) {
                    return Ok(v);
                }
                last = v;
            }
            if t.elapsed() > self.timeout {
                return Err(format!(
                    "{what}: not seen within {:?}; last answer: {}",
                    self.timeout,
                    short(&last)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_good(&self, get: &mut dyn FnMut() -> Option<Value>) -> Result<(), String> {
        let want = self.current_hash.clone();
        self.wait(&format!("serving {}", &want[..12]), get, &mut |v| {
            v["hash"] == want.as_str() && v["last_error"].is_null() && v["status"] == "active"
        })
        .map(|_| ())
    }

    /// Waits for the rejection (`bad`: the rejected files' hash, when they can be read);
    /// checks the last good version still serves; returns the reported place.
    fn wait_rejected(
        &self,
        kind: Kind,
        bad: Option<String>,
        get: &mut dyn FnMut() -> Option<Value>,
    ) -> Result<String, String> {
        let code = kind.code().unwrap_or("");
        let v = self.wait(&format!("{} rejected", kind.name()), get, &mut |v| {
            let e = &v["last_error"];
            e["code"] == code && bad.as_deref().is_none_or(|h| e["hash"] == h)
        })?;
        if v["hash"] != self.current_hash.as_str() || v["status"] != "active" {
            return Err(format!(
                "{}: the last good version {} is not serving: {}",
                kind.name(),
                &self.current_hash[..12],
                short(&v)
            ));
        }
        let e = &v["last_error"];
        let place = |p: &Value| -> Option<String> {
            let file = p["file"].as_str().filter(|f| !f.is_empty())?;
            Some(format!("{file}:{}:{}", p["line"], p["column"]))
        };
        let found = match kind {
            Kind::TestsFail => e["failed_cases"].get(0).and_then(|c| {
                place(&c["place"]).map(|p| format!("{p} ({})", c["name"].as_str().unwrap_or("")))
            }),
            Kind::Syntax | Kind::HalfWritten => e["diagnostics"].get(0).and_then(|d| {
                place(&d["place"]).filter(|_| d["place"]["line"].as_u64().unwrap_or(0) > 0)
            }),
            // A read error names the path it could not read.
            _ => {
                let name = self
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                e["message"].as_str().filter(|m| m.contains(&name)).map(|m| m.to_string())
            }
        };
        found.ok_or_else(|| format!("{}: rejected without a place: {}", kind.name(), short(e)))
    }
}

/// A cut point inside a one-line quoted string (after `label = "` and 3 more bytes), so
/// the first part is never valid TOML; which string depends on `n`.
fn cut_inside_string(toml: &[u8], n: usize) -> usize {
    let text = String::from_utf8_lossy(toml);
    let starts: Vec<usize> =
        text.match_indices("label = \"").map(|(i, m)| i + m.len() + 3).collect();
    if starts.is_empty() {
        return toml.len() / 2;
    }
    starts[n % starts.len()].min(toml.len())
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 { format!("{}…", &s[..s.floor_char_boundary(600)]) } else { s }
}
