//! What can be tested of the container here (Docker cannot run on our machines): the
//! Dockerfile copies files that exist, and the release layout (binary on PATH, `/app` holding
//! `policies/` and `schemas/`, nothing else) runs with no flags, as the image runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn every_file_the_dockerfile_copies_exists() {
    let root = common::root();
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let mut copies = 0;
    for line in
        text.lines().map(str::trim).filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> =
            line.split_whitespace().skip(1).filter(|w| !w.starts_with("--")).collect();
        let (_dst, srcs) = words.split_last().unwrap();
        for src in srcs {
            assert!(
                root.join(src).exists(),
                "Dockerfile copies `{src}`, which is not in the repository"
            );
            copies += 1;
        }
    }
    assert!(copies >= 6, "expected the Dockerfile to copy the sources, policies and schemas");
    for (what, needle) in [
        ("a non-root user", "USER tierwise"),
        ("the port", "EXPOSE 8080"),
        ("a health check", "HEALTHCHECK"),
        ("/healthz", "/healthz"),
        ("the policies volume", "VOLUME [\"/app/policies\"]"),
    ] {
        assert!(text.contains(needle), "the Dockerfile should declare {what}");
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    common::copy_dir(src, dst);
}

/// `/app` as the image lays it out, with the binary outside it (as in /usr/local/bin).
fn image_layout() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    copy_dir(&common::root().join("policies"), &app.join("policies"));
    copy_dir(&common::root().join("schemas"), &app.join("schemas"));
    let exe = bin.join("tierwise");
    std::fs::copy(env!("CARGO_BIN_EXE_tierwise"), &exe).unwrap();
    // Another test thread forking while the copy's write handle was open leaves that handle in
    // its child until the child execs: running the copy at once can fail with "Text file busy"
    // (ETXTBSY). Wait until it runs.
    for _ in 0..100 {
        match Command::new(&exe).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => break,
        }
    }
    (tmp, app, exe)
}

#[test]
fn the_image_layout_checks_and_tests_the_shipped_policies_with_no_flags() {
    let (_tmp, app, exe) = image_layout();
    for cmd in ["check", "test"] {
        let out = Command::new(&exe).arg(cmd).current_dir(&app).env_clear().output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "`tierwise {cmd}` in the image layout: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_image_layout_serves_with_the_images_environment() {
    use std::io::{Read, Write};
    let (_tmp, app, exe) = image_layout();
    // The image's ENV, on a free port instead of 8080; the command is the image's CMD.
    let mut child = Command::new(&exe)
        .arg("serve")
        .current_dir(&app)
        .env_clear()
        .env("TIERWISE_LISTEN", "127.0.0.1:0")
        .env("TIERWISE_POLICIES", app.join("policies"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, _stderr) = common::listening(&mut child);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `deploy/kubernetes.yaml`: it parses; the probes hit routes the server answers; every
/// `TIERWISE_*` variable and flag it sets is one `tierwise serve` reads; the ConfigMap's policy
/// (with its items put in place) loads and passes its own test cases; the Service targets the
/// container's port.
#[test]
fn the_kubernetes_example_is_consistent() {
    use serde::Deserialize;
    let text = std::fs::read_to_string(common::root().join("deploy/kubernetes.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let (cm, dep, svc) = (kind("ConfigMap"), kind("Deployment"), kind("Service"));
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"], serde_json::json!(["serve"]));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let help =
        Command::new(env!("CARGO_BIN_EXE_tierwise")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut env = std::collections::BTreeMap::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if name != "TIERWISE_ADMIN_TOKEN" {
            assert!(
                help.contains(&format!("env: {name}")),
                "`{name}` is not a variable of `tierwise serve`"
            );
        }
        env.insert(name.to_string(), e["value"].as_str().unwrap_or("").to_string());
    }
    // The server itself answers the probes' paths, and is ready with this policy mounted.
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert!(
        mount.starts_with(&env["TIERWISE_POLICIES"]),
        "the ConfigMap is mounted under the policies folder"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(Path::new(mount).file_name().unwrap());
    let items = pod["volumes"][0]["configMap"]["items"].as_array().unwrap();
    for it in items {
        let body = cm["data"][it["key"].as_str().unwrap()].as_str().unwrap();
        let p = dir.join(it["path"].as_str().unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    assert_eq!(Path::new(mount).file_name().unwrap(), env["TIERWISE_DEFAULT_POLICY"].as_str());
    let out = Command::new(env!("CARGO_BIN_EXE_tierwise")).arg("test").arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's policy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for route in ["/readyz", "/healthz"] {
        assert!(
            tierwise::http::openapi::document_json().contains(&format!("\"{route}\"")),
            "{route}"
        );
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    assert_eq!(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"]);
    assert!(env["TIERWISE_REDIS_CLUSTER"].split(',').all(|u| u.starts_with("redis://")));
}
