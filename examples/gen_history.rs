//! Deterministic history of the sample book for `tierwise backtest`: twelve monthly snapshots.
//!
//! ```text
//! cargo run --release --example gen_history -- --out samples/history
//! ```
//!
//! Month 1 (`as_of` 2025-12-01) is the sample book of `gen_portfolio` (2,000 accounts, 18
//! KAMs and two desks), its dates moved eleven months back; each later month, on the first:
//! - revenue drifts: most accounts by a little noise, one in ten grows about 4% a month, one in
//!   ten shrinks about 4% a month (their tiers follow, after the policy's tenure);
//! - NPS is surveyed every quarter, QBRs and EBRs happen at realistic rates, renewals roll over;
//! - twelve accounts oscillate around the key line (score about 5.7 in some months, 6.9 in
//!   others, changing every two months): under the shipped policy the demotion margin and the
//!   tenure keep them key once promoted, without those they flip-flop;
//! - a few accounts join in month 4 and a few leave after month 8.
//!
//! Months 1-10 are JSON lines, month 11 a CSV export and month 12 a JSON array, so the sample
//! shows that a history may mix formats. Same bytes every run (splitmix64, fixed seed).

#[allow(dead_code)]
#[path = "gen_portfolio.rs"]
mod gen_portfolio;

use serde_json::{Map, Value, json};
use std::io::Write;
use tierwise::date::{days_from_civil, format_days, parse_days};

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

const MONTHS: usize = 12;
const DATE_FIELDS: [&str; 3] = ["last_qbr", "last_ebr", "renewal_date"];

fn shift(v: &mut Value, key: &str, by: i64) {
    if let Some(d) = v.get(key).and_then(Value::as_str).and_then(parse_days) {
        v[key] = Value::String(format_days(d + by));
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get("fields")?.get(key)?.as_f64()
}

fn set(v: &mut Value, key: &str, x: Value) {
    if let Some(f) = v.get_mut("fields").and_then(Value::as_object_mut) {
        f.insert(key.to_string(), x);
    }
}

fn money(x: f64) -> Value {
    json!(x.round())
}

/// How an account moves over the year.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Steady,
    Growing,
    Shrinking,
    /// Around the key line, switching every two months.
    Oscillating,
}

fn main() {
    let mut out_dir = std::path::PathBuf::from("samples/history");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out_dir = args.next().map(Into::into).unwrap_or(out_dir),
            _ => {
                eprintln!("usage: gen_history [--out DIR]");
                std::process::exit(2)
            }
        }
    }
    let mut buf = Vec::new();
    if let Err(e) = gen_portfolio::write_accounts_with(
        &mut buf,
        2000,
        gen_portfolio::SEED,
        gen_portfolio::Format::Jsonl,
        18,
    ) {
        eprintln!("gen_history: {e}");
        std::process::exit(1);
    }
    let text = String::from_utf8(buf).unwrap_or_default();
    let last = days_from_civil(2026, 11, 1);
    let first = days_from_civil(2025, 12, 1);
    let back = first - last;
    let mut book: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|mut v| {
            v["as_of"] = Value::String(format_days(first));
            shift(&mut v, "tier_since", back);
            if let Some(f) = v.get_mut("fields") {
                for k in DATE_FIELDS {
                    shift(f, k, back);
                }
            }
            v
        })
        .collect();

    let mut rng = Rng(0x4849_5354_2026);
    let paths: Vec<Path> = (0..book.len())
        .map(|i| {
            if i % 167 == 83 {
                return Path::Oscillating;
            }
            match rng.f64() {
                x if x < 0.1 => Path::Growing,
                x if x < 0.2 => Path::Shrinking,
                _ => Path::Steady,
            }
        })
        .collect();
    // Oscillators get one profile, so the swing, not their other inputs, moves them.
    for (v, p) in book.iter_mut().zip(&paths) {
        if *p == Path::Oscillating {
            v["current_tier"] = json!("managed");
            v["tier_since"] = json!("2024-01-15");
            let f = json!({
                "revenue_12m": 2_150_000.0, "revenue_prev_12m": 2_000_000.0, "potential": 1_500_000.0,
                "gross_margin": 0.3, "share_of_wallet": 0.5, "relationship": "interdependent",
                "strategic_fit": 4, "nps": 30, "nps_prev": 28,
                "last_qbr": format_days(first - 20), "last_ebr": format_days(first - 100),
                "renewal_date": format_days(first + 200), "region": "emea", "segment": "enterprise"
            });
            v["fields"] = f;
        }
    }
    // A few join in month 4; a few leave after month 8.
    let joins = |i: usize| i % 250 == 17;
    let leaves = |i: usize| i % 250 == 131;

    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("gen_history: cannot create {}: {e}", out_dir.display());
        std::process::exit(1);
    }
    for m in 0..MONTHS {
        let (y, mo) = (2025 + (11 + m as i64) / 12, (11 + m as i64) % 12 + 1);
        let as_of = days_from_civil(y, mo, 1);
        if m > 0 {
            for (i, (v, p)) in book.iter_mut().zip(&paths).enumerate() {
                evolve(&mut rng, v, *p, m, as_of, i);
            }
        }
        let month: Vec<&Value> = book
            .iter()
            .enumerate()
            .filter(|(i, _)| !(joins(*i) && m < 3 || leaves(*i) && m > 7))
            .map(|(_, v)| v)
            .collect();
        let name = format_days(as_of).to_string();
        let (file, bytes) = match m {
            10 => (format!("{name}.csv"), csv(&month)),
            11 => {
                let mut s = String::from("[\n");
                for (k, v) in month.iter().enumerate() {
                    if k > 0 {
                        s.push_str(",\n");
                    }
                    s.push_str(&serde_json::to_string(v).unwrap_or_default());
                }
                s.push_str("\n]\n");
                (format!("{name}.json"), s.into_bytes())
            }
            _ => {
                let mut s = String::new();
                for v in &month {
                    s.push_str(&serde_json::to_string(v).unwrap_or_default());
                    s.push('\n');
                }
                (format!("{name}.jsonl"), s.into_bytes())
            }
        };
        let path = out_dir.join(file);
        if let Err(e) = std::fs::File::create(&path).and_then(|mut f| f.write_all(&bytes)) {
            eprintln!("gen_history: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

fn evolve(rng: &mut Rng, v: &mut Value, path: Path, m: usize, as_of: i64, i: usize) {
    v["as_of"] = Value::String(format_days(as_of));
    // The CRM's own tier fields go stale: the replay ignores them after the first month.
    if path == Path::Oscillating {
        let high = (m / 2).is_multiple_of(2);
        set(v, "revenue_12m", money(if high { 2_150_000.0 } else { 800_000.0 }));
        set(v, "relationship", json!(if high { "interdependent" } else { "cooperative" }));
        set(v, "last_qbr", json!(format_days(as_of - 20)));
        return;
    }
    let Some(rev) = num(v, "revenue_12m") else { return };
    let trend = match path {
        Path::Growing => 0.04,
        Path::Shrinking => -0.04,
        _ => 0.0,
    };
    let next = (rev * (trend + 0.015 * rng.normal()).exp()).max(0.0);
    set(v, "revenue_12m", money(next));
    if let Some(prev) = num(v, "revenue_prev_12m") {
        set(v, "revenue_prev_12m", money(prev * (0.005 * rng.normal()).exp()));
    }
    if let Some(p) = num(v, "potential") {
        let p = (p * (trend / 2.0 + 0.01 * rng.normal()).exp() / 1000.0).round() * 1000.0;
        set(v, "potential", json!(p));
    }
    // Surveys every quarter (staggered by account).
    if (m + i).is_multiple_of(3)
        && let Some(n) = v.get("fields").and_then(|f| f.get("nps")).and_then(Value::as_i64)
    {
        let next = (n as f64 + 10.0 * rng.normal()).round().clamp(-100.0, 100.0) as i64;
        set(v, "nps_prev", json!(n));
        set(v, "nps", json!(next));
    }
    if rng.chance(0.3) {
        set(v, "last_qbr", json!(format_days(as_of - rng.range(0, 25))));
    }
    if rng.chance(0.07) {
        set(v, "last_ebr", json!(format_days(as_of - rng.range(0, 25))));
    }
    let renewal = v
        .get("fields")
        .and_then(|f| f.get("renewal_date"))
        .and_then(Value::as_str)
        .and_then(parse_days);
    if let Some(r) = renewal
        && r < as_of - 30
    {
        set(v, "renewal_date", json!(format_days(r + 365)));
    }
}

/// A CRM export of one month: identity columns, then the policy's inputs.
fn csv(month: &[&Value]) -> Vec<u8> {
    const IDENTITY: [&str; 6] = ["id", "name", "manager", "current_tier", "tier_since", "as_of"];
    const INPUTS: [&str; 12] = [
        "revenue_12m",
        "revenue_prev_12m",
        "potential",
        "gross_margin",
        "share_of_wallet",
        "relationship",
        "strategic_fit",
        "nps",
        "nps_prev",
        "last_qbr",
        "last_ebr",
        "renewal_date",
    ];
    let mut w = csv::Writer::from_writer(Vec::new());
    let header: Vec<&str> = IDENTITY.iter().chain(INPUTS.iter()).copied().collect();
    let _ = w.write_record(&header);
    let cell = |v: Option<&Value>| match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    for v in month {
        let empty = Map::new();
        let fields = v.get("fields").and_then(Value::as_object).unwrap_or(&empty);
        let row: Vec<String> = IDENTITY
            .iter()
            .map(|k| cell(v.get(*k)))
            .chain(INPUTS.iter().map(|k| cell(fields.get(*k))))
            .collect();
        let _ = w.write_record(&row);
    }
    w.into_inner().unwrap_or_default()
}
