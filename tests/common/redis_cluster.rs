//! A throwaway 3-master Redis Cluster for one test: three `redis-server --cluster-enabled
//! yes` on free loopback ports (each port + 10000, the cluster bus, free too), joined by
//! `redis-cli --cluster create`, no replicas, no persistence; every node killed and reaped
//! on drop. A node can be killed, restarted (same port, same node id: it rejoins with its
//! slots), paused and resumed. Include it with
//! `#[path = "common/redis_cluster.rs"] mod redis_cluster;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Milliseconds before the cluster marks a silent node as failed (`cluster-node-timeout`).
pub const NODE_TIMEOUT_MS: u64 = 1000;

pub struct Node {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

pub struct RedisCluster {
    pub nodes: Vec<Node>,
}

impl RedisCluster {
    /// Three masters, slots split evenly, `cluster_state:ok` on every node before it returns.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`RedisCluster::start`], with extra `redis-server` arguments for every node (e.g.
    /// `["--cluster-require-full-coverage", "no"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let mut nodes = Vec::new();
            for _ in 0..3 {
                let Some(port) = free_port_pair() else { continue };
                let mut n = Node { port, child: None, dir: tempfile::tempdir().unwrap() };
                if n.spawn(extra) {
                    nodes.push(n);
                }
            }
            if nodes.len() < 3 {
                continue;
            }
            let c = RedisCluster { nodes };
            let hosts: Vec<String> =
                c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
            let out = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&hosts)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): scripts/test installs it (apt-get install redis-tools)"));
            assert!(
                out.status.success(),
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            c.wait_ok(Duration::from_secs(20));
            return c;
        }
        panic!("could not start a 3-node redis cluster on free ports");
    }

    /// Seed URLs, comma-separated: what `--redis-cluster` takes.
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}/", n.port)).collect()
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub fn wait_ok(&self, limit: Duration) {
        let t = Instant::now();
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(t.elapsed() < limit, "cluster not ok within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node owning `key`'s slot (its index in `nodes`).
    pub fn owner(&self, key: &str) -> usize {
        let slot = tierwise::redis_conn::slot(key.as_bytes());
        let info = self.nodes.iter().find(|n| n.child.is_some()).unwrap().command("CLUSTER SLOTS");
        // CLUSTER SLOTS through redis-cli is hard to parse; ask each node for its own ranges.
        let _ = info;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            let myself = n.command("CLUSTER MYID");
            let myself = myself.trim();
            for line in n.command("CLUSTER NODES").lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.first() != Some(&myself) {
                    continue;
                }
                for range in f.iter().skip(8) {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                        && (a..=b).contains(&slot)
                    {
                        return i;
                    }
                }
            }
        }
        panic!("no running node owns slot {slot} of `{key}`");
    }

    /// Every key on every running node (`KEYS *` per node), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            all.extend(
                n.redis_cli(&["KEYS", "*"]).lines().filter(|l| !l.is_empty()).map(String::from),
            );
        }
        all.sort();
        all
    }

    /// A command's answer from the node owning `key` (redis-cli's plain output).
    pub fn on_owner(&self, key: &str, args: &[&str]) -> String {
        self.nodes[self.owner(key)].redis_cli(args)
    }

    /// `calls=` of `cmdstat_<cmd>` summed over the running nodes.
    pub fn calls(&self, cmd: &str) -> u64 {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.calls(cmd)).sum()
    }

    pub fn reset_stats(&self) {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            n.command("CONFIG RESETSTAT");
        }
    }

    /// SIGKILL node `i`: its connections drop, its port refuses.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its port, from its `nodes.conf` (same id, same slots).
    pub fn restart(&mut self, i: usize, extra: &[&str]) {
        assert!(self.nodes[i].spawn(extra), "node {i} did not restart");
    }

    /// SIGSTOP node `i`: nothing answers, connections stay open.
    pub fn pause(&self, i: usize) {
        self.nodes[i].signal("-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.nodes[i].signal("-CONT");
    }
}

/// A port whose cluster bus port (+10000) is free as well.
fn free_port_pair() -> Option<u16> {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Some(port);
        }
    }
    None
}

impl Node {
    fn spawn(&mut self, extra: &[&str]) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): scripts/test installs it (apt-get install redis-server)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// One command through redis-cli (words split on spaces), its plain output.
    pub fn command(&self, cmd: &str) -> String {
        self.redis_cli(&cmd.split(' ').collect::<Vec<_>>())
    }

    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn calls(&self, cmd: &str) -> u64 {
        let prefix = format!("cmdstat_{cmd}:calls=");
        self.command("INFO commandstats")
            .lines()
            .find_map(|l| l.trim().strip_prefix(&prefix))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("node not running").id();
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} failed");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}
