//! The README's curl examples, run as written against the real binary on a free port, so they
//! cannot rot: every `curl` in the README's shell blocks must get a 2xx answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tierwise serve` from the repository root with no settings but a free port (as a user
/// runs it), plus an admin token so the admin example can run.
fn serve() -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--decision-log", "off"])
        .current_dir(common::root())
        .env("TIERWISE_ADMIN_TOKEN", "readme-token")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, _stderr) = common::listening(&mut child);
    (Server(child), addr)
}

/// The commands of the README's ```sh blocks that talk to the service, with their shell
/// variables (a command continues on lines ending in `\` or starting with spaces).
fn curl_examples(readme: &str) -> (Vec<String>, Vec<String>) {
    let mut vars = Vec::new();
    let mut cmds = Vec::new();
    let mut in_sh = false;
    let mut current: Option<String> = None;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            if let Some(c) = current.take() {
                cmds.push(c);
            }
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(c) = current.as_mut() {
            if c.ends_with('\\') || line.starts_with("  ") {
                c.push('\n');
                c.push_str(line);
                continue;
            }
            cmds.push(current.take().unwrap());
        }
        let t = line.trim_start();
        let is_var = t.starts_with("A='") || t.starts_with("A=\"");
        if is_var || (t.contains("curl ") && !t.starts_with('#')) {
            current = Some(line.to_string());
        }
    }
    if let Some(c) = current {
        cmds.push(c);
    }
    for c in cmds.iter().filter(|c| c.starts_with("A=")) {
        vars.push(c.clone());
    }
    let curls = cmds.into_iter().filter(|c| c.contains("curl ")).collect();
    (vars, curls)
}

#[test]
fn every_curl_example_in_the_readme_answers() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let (vars, curls) = curl_examples(&readme);
    assert!(
        curls.len() >= 12,
        "expected the README to show every endpoint, found {} curl commands",
        curls.len()
    );
    let (_server, addr) = serve();
    for cmd in &curls {
        // As written, but failing on an HTTP error and reaching our port.
        let script = format!(
            "set -e\nexport TIERWISE_ADMIN_TOKEN=readme-token\n{}\n{}\n",
            vars.join("\n"),
            cmd.replace("localhost:8080", &addr)
                .replace("localhost:8081", &addr)
                .replace("curl -s ", "curl -sS --fail-with-body ")
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(common::root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README example failed:\n{cmd}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "README example answered nothing:\n{cmd}");
    }
}
