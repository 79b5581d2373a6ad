//! Policies delivered the ways deployments deliver them, to the real binary and its watcher:
//! an editor's save in place and renamed over, `git checkout`, the folder replaced, a
//! Kubernetes ConfigMap's `..data` swap, a git-sync symlink swap. Each is done ten times in a
//! row and each time the new version must be served within 2 s. Plus the two ways a link
//! can be broken (dangling, a loop): a reload error that keeps the last good version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Running;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How soon a delivery must be served.
const SERVED_WITHIN: Duration = Duration::from_secs(2);
const ROUNDS: usize = 10;

#[allow(clippy::zombie_processes)] // waited for in `Running::drop`
fn start(policies: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--reload-debounce-ms", "50"])
        .args(["--decision-log", "off"])
        .arg("--policies")
        .arg(policies)
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .env_remove("TIERWISE_REDIS_URL")
        .env_remove("TIERWISE_REDIS_CLUSTER")
        .env("TIERWISE_LOG", "warn,tierwise::cli=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    Running { child, addr, stderr }
}

fn get(addr: &str, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap_or(Value::Null)
}

/// The files of the shipped `mid-market` policy with `version = "<v>"`.
fn files(version: &str) -> Vec<(String, Vec<u8>)> {
    let src = common::root().join("policies/mid-market");
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(&src, &src, &mut out);
    for (rel, bytes) in &mut out {
        if rel == "policy.toml" {
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert!(text.contains("version = \"2026.1\""));
            *bytes = text
                .replacen("version = \"2026.1\"", &format!("version = \"{version}\""), 1)
                .into_bytes();
        }
    }
    out
}

fn write_tree(dir: &Path, version: &str) {
    for (rel, bytes) in files(version) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// Waits until `mid-market` serves `version`; how long that took.
fn served(addr: &str, version: &str) -> Duration {
    let t = Instant::now();
    loop {
        let p = get(addr, "/v1/policies/mid-market");
        if p["version"] == version && p["status"] == "active" {
            return t.elapsed();
        }
        assert!(t.elapsed() < SERVED_WITHIN, "version {version} not served within 2 s: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ten deliveries in a row by `deliver(round, version)`, each served within 2 s.
fn ten_in_a_row(what: &str, addr: &str, mut deliver: impl FnMut(usize, &str)) {
    let mut took = Vec::new();
    for round in 1..=ROUNDS {
        let v = format!("{what}-{round}");
        deliver(round, &v);
        took.push(served(addr, &v));
    }
    let max = took.iter().max().unwrap();
    println!("{what}: {ROUNDS} deliveries, slowest served after {max:?}");
}

fn policy_toml(version: &str) -> Vec<u8> {
    files(version).into_iter().find(|(r, _)| r == "policy.toml").unwrap().1
}

#[test]
fn an_editors_save_in_place_and_renamed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies/mid-market");
    write_tree(&dir, "0");
    let srv = start(&tmp.path().join("policies"));
    served(&srv.addr, "0");
    ten_in_a_row("in-place", &srv.addr, |_, v| {
        std::fs::write(dir.join("policy.toml"), policy_toml(v)).unwrap();
    });
    ten_in_a_row("rename-over", &srv.addr, |_, v| {
        // vim / VS Code style: a temp file (an ignored name), then a rename over the old one.
        let tmpf = dir.join(".policy.toml.swp");
        std::fs::write(&tmpf, policy_toml(v)).unwrap();
        std::fs::rename(&tmpf, dir.join("policy.toml")).unwrap();
    });
}

#[test]
fn a_git_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"]);
    for round in 0..=ROUNDS {
        write_tree(&repo.join("policies/mid-market"), &format!("git-{round}"));
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", &format!("round {round}")]);
        git(&["tag", &format!("r{round}")]);
    }
    git(&["checkout", "-q", "r0"]);
    let srv = start(&repo.join("policies"));
    served(&srv.addr, "git-0");
    ten_in_a_row("git", &srv.addr, |round, _| git(&["checkout", "-q", &format!("r{round}")]));
}

#[test]
fn the_policies_folder_replaced_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("policies");
    write_tree(&root.join("mid-market"), "0");
    let srv = start(&root);
    served(&srv.addr, "0");
    ten_in_a_row("replaced", &srv.addr, |round, v| {
        // A deploy script: build the new tree beside it, move the old one away, move the new
        // one in, delete the old. The watched folder itself is another one every time.
        let next = tmp.path().join(format!("policies.new{round}"));
        write_tree(&next.join("mid-market"), v);
        let old = tmp.path().join(format!("policies.old{round}"));
        std::fs::rename(&root, &old).unwrap();
        std::fs::rename(&next, &root).unwrap();
        std::fs::remove_dir_all(&old).unwrap();
    });
}

/// A ConfigMap volume as the kubelet writes it: `..<timestamp>/` with the files, `..data` a
/// link to it, and every entry a link into `..data`; an update writes a new timestamped
/// folder, points `..data_tmp` at it, renames that over `..data` (atomic) and deletes the old.
struct ConfigMap {
    mount: PathBuf,
    current: Option<PathBuf>,
}

impl ConfigMap {
    fn new(mount: &Path, version: &str) -> ConfigMap {
        std::fs::create_dir_all(mount).unwrap();
        let mut c = ConfigMap { mount: mount.to_path_buf(), current: None };
        c.update(0, version);
        for entry in ["policy.toml", "tests"] {
            symlink(format!("..data/{entry}"), mount.join(entry)).unwrap();
        }
        c
    }

    fn update(&mut self, round: usize, version: &str) {
        let stamp = self.mount.join(format!("..2026_12_03_18_00_{round:02}.{round}"));
        write_tree(&stamp, version);
        let tmp = self.mount.join("..data_tmp");
        symlink(stamp.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.mount.join("..data")).unwrap();
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

#[test]
fn a_configmap_data_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("policies");
    let mut cm = ConfigMap::new(&root.join("mid-market"), "0");
    let srv = start(&root);
    served(&srv.addr, "0");
    ten_in_a_row("configmap", &srv.addr, |round, v| cm.update(round, v));
    // The policy is named after its folder, not after `..data`'s target.
    let names: Vec<Value> = get(&srv.addr, "/v1/policies")["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("mid-market")]);
}

#[test]
fn a_configmap_mounted_as_the_policies_folder_itself() {
    // `--policies /etc/tierwise/policy` with one policy whose files are the ConfigMap's.
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("mid-market");
    let mut cm = ConfigMap::new(&mount, "0");
    let srv = start(&mount);
    served(&srv.addr, "0");
    ten_in_a_row("configmap-root", &srv.addr, |round, v| cm.update(round, v));
}

#[test]
fn a_git_sync_symlink_swap() {
    // git-sync v4: `--root /git --link current`: each sync checks out `.worktrees/<sha>`,
    // points a temporary link at it, renames the link over `current`, deletes the old one.
    let tmp = tempfile::tempdir().unwrap();
    let git = tmp.path().join("git");
    let checkout = |round: usize, v: &str| {
        let wt = git.join(format!(".worktrees/{round:040x}"));
        write_tree(&wt.join("policies/mid-market"), v);
        wt
    };
    let mut current = checkout(0, "0");
    symlink(current.strip_prefix(&git).unwrap(), git.join("current")).unwrap();
    let srv = start(&git.join("current/policies"));
    served(&srv.addr, "0");
    ten_in_a_row("git-sync", &srv.addr, |round, v| {
        let wt = checkout(round, v);
        let link = git.join(".current.tmp");
        symlink(wt.strip_prefix(&git).unwrap(), &link).unwrap();
        std::fs::rename(&link, git.join("current")).unwrap();
        std::fs::remove_dir_all(std::mem::replace(&mut current, wt)).unwrap();
    });
}

#[test]
fn a_dangling_link_or_a_loop_is_a_reload_error_that_keeps_the_last_good_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies/mid-market");
    write_tree(&dir, "good");
    // A linked file and a linked folder read as their targets.
    let elsewhere = tmp.path().join("elsewhere");
    write_tree(&elsewhere, "linked");
    std::fs::remove_file(dir.join("policy.toml")).unwrap();
    symlink(elsewhere.join("policy.toml"), dir.join("policy.toml")).unwrap();
    std::fs::remove_dir_all(dir.join("tests")).unwrap();
    symlink(elsewhere.join("tests"), dir.join("tests")).unwrap();
    let srv = start(&tmp.path().join("policies"));
    served(&srv.addr, "linked");

    let error = |addr: &str| {
        let t = Instant::now();
        loop {
            let p = get(addr, "/v1/policies/mid-market");
            if let Some(e) = p["last_error"].as_object() {
                assert_eq!(p["version"], "linked", "the last good version keeps serving: {p}");
                return e["message"].as_str().unwrap().to_string();
            }
            assert!(t.elapsed() < SERVED_WITHIN, "no reload error within 2 s: {p}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let cleared = |addr: &str| {
        let t = Instant::now();
        while get(addr, "/v1/policies/mid-market")["last_error"].is_object() {
            assert!(t.elapsed() < SERVED_WITHIN, "the error did not clear");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    symlink(tmp.path().join("missing.rhai"), dir.join("extra.rhai")).unwrap();
    let msg = error(&srv.addr);
    assert_eq!(
        msg,
        "cannot follow the link `mid-market/extra.rhai`: the link's target does not exist"
    );
    std::fs::remove_file(dir.join("extra.rhai")).unwrap();
    cleared(&srv.addr);

    symlink(".", dir.join("again")).unwrap();
    let msg = error(&srv.addr);
    assert_eq!(
        msg,
        "cannot follow the link `mid-market/again`: the link leads back into a folder it is in (a loop)"
    );
    std::fs::remove_file(dir.join("again")).unwrap();
    cleared(&srv.addr);

    symlink("b.rhai", dir.join("a.rhai")).unwrap();
    symlink("a.rhai", dir.join("b.rhai")).unwrap();
    let msg = error(&srv.addr);
    assert!(
        msg.starts_with("cannot follow the link `mid-market/a.rhai`")
            || msg.starts_with("cannot follow the link `mid-market/b.rhai`"),
        "{msg}"
    );
    assert!(msg.contains("symbolic links"), "{msg}");
}
