//! Deterministic account generator for `policies/enterprise` (benchmarks, load tests).
//!
//! ```text
//! cargo run --release --example gen_portfolio -- 100000 > /tmp/accounts.jsonl
//! cargo run --release --example gen_portfolio -- 5000 --format csv > /tmp/accounts.csv
//! cargo run --release --example gen_portfolio -- 100000 --seed 7 --format json > /tmp/accounts.json
//! ```
//!
//! Same arguments, same bytes: a fixed-seed splitmix64, no external randomness. What it makes:
//! - heavy-tailed revenue (log-normal body, Pareto tail), potential correlated with revenue,
//!   revenue of the previous year for most accounts (~15 % of them down more than 10 %);
//! - about N/50 managers, plus two "enterprise desk" managers that own most of the largest
//!   accounts (so some books overflow `capacity.per_manager.max`); ~3 % of accounts without one;
//! - current tiers none / strategic / key / managed (bigger accounts more often key or strategic),
//!   `tier_since` over the last eight years (some inside the 180-day tenure), sometimes absent;
//! - `as_of` = 2026-11-01; optional inputs absent at realistic rates; two undeclared CRM fields
//!   (`region`, `segment`) that the policy ignores;
//! - ~0.5 % invalid accounts: a missing required input, out-of-range or wrong-type values, a
//!   relationship outside `one_of`, an impossible date, an unknown `current_tier`.

use std::fmt::Write as _;
use std::io::Write;

/// splitmix64: tiny, fast, good enough for test data, and fully deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// Uniform integer in [lo, hi].
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64(); // (0, 1]
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
    /// Index by weights.
    fn weighted(&mut self, w: &[f64]) -> usize {
        let total: f64 = w.iter().sum();
        let mut x = self.f64() * total;
        for (i, &wi) in w.iter().enumerate() {
            if x < wi {
                return i;
            }
            x -= wi;
        }
        w.len() - 1
    }
}

const AS_OF: &str = "2026-11-01";

// The library's calendar: the generator writes the dates the engine reads.
use tierwise::date::days_from_civil;

fn date(day: i64) -> String {
    tierwise::date::format_days(day)
}

/// A value in a snapshot's `fields`.
#[derive(Clone)]
enum V {
    Num(f64),
    Int(i64),
    Str(String),
}

impl V {
    fn json(&self, out: &mut String) {
        match self {
            // Rust prints integral floats without a fraction (`1250000`): valid JSON, and what
            // CRM exports do; the policy's `number` accepts it.
            V::Num(f) => write!(out, "{f}").unwrap_or(()),
            V::Int(i) => write!(out, "{i}").unwrap_or(()),
            V::Str(s) => json_str(s, out),
        }
    }
    fn csv(&self) -> String {
        match self {
            V::Num(f) => f.to_string(),
            V::Int(i) => i.to_string(),
            V::Str(s) => s.clone(),
        }
    }
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap_or(()),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The declared inputs of policies/enterprise, in declaration order (CSV columns).
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
const EXTRA: [&str; 2] = ["region", "segment"];

struct Account {
    id: String,
    name: String,
    manager: Option<String>,
    current_tier: Option<String>,
    tier_since: Option<String>,
    as_of: String,
    /// (name, value) in the order written; absent optional inputs are left out (or `null`).
    fields: Vec<(&'static str, Option<V>)>,
}

const SYLLABLES: [&str; 24] = [
    "ac", "bel", "cor", "dyn", "el", "fer", "gal", "hel", "in", "jor", "kel", "lum", "mar", "nor",
    "or", "pra", "quin", "ros", "sol", "tar", "ul", "ver", "wen", "zen",
];
const SUFFIXES: [&str; 10] =
    ["Corp", "GmbH", "Ltd", "Inc.", "SA", "AG", "Group", "Holdings", "BV", "& Co"];

fn company(rng: &mut Rng, i: usize) -> String {
    let mut n = String::new();
    for _ in 0..rng.range(2, 3) {
        n.push_str(rng.pick(&SYLLABLES));
    }
    let mut c = n.chars();
    let mut name: String = c.next().map(|f| f.to_ascii_uppercase()).into_iter().chain(c).collect();
    // A few names that need escaping or are not ASCII, as real CRM data has.
    match i % 997 {
        13 => name.push_str(" \"Holdings\""),
        41 => name.push_str(" Müller & Söhne"),
        77 => name.push_str(", Smith, Jones"),
        _ => {}
    }
    format!("{name} {}", rng.pick(&SUFFIXES))
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let k = 10f64.powi(decimals);
    (x * k).round() / k
}

fn money(rng: &mut Rng, x: f64) -> V {
    // Mostly whole amounts; some with cents.
    if rng.chance(0.7) { V::Num(x.round()) } else { V::Num(round_to(x, 2)) }
}

fn generate(rng: &mut Rng, i: usize, managers: usize, as_of: i64) -> Account {
    // Revenue: log-normal body (median ~180K) with a Pareto tail for the largest accounts.
    let revenue = if rng.chance(0.02) {
        let u = 1.0 - rng.f64();
        2_000_000.0 * u.powf(-1.0 / 1.3) // Pareto, alpha 1.3, from 2M
    } else {
        (180_000f64.ln() + 1.25 * rng.normal()).exp()
    }
    .min(5.0e9);
    let big = revenue >= 2_000_000.0;

    let potential = revenue * (0.3 + 0.9 * rng.normal()).exp();
    let revenue_prev = rng.chance(0.85).then(|| revenue / (0.05 + 0.15 * rng.normal()).exp());
    let gross_margin = round_to((0.3 + 0.12 * rng.normal()).clamp(0.01, 0.85), 3);
    let share_of_wallet = rng.chance(0.6).then(|| round_to(0.05 + 0.9 * rng.f64(), 2));
    let rel_w: &[f64] = if big { &[0.15, 0.35, 0.3, 0.2] } else { &[0.4, 0.35, 0.18, 0.07] };
    let relationship =
        ["tactical", "cooperative", "interdependent", "strategic"][rng.weighted(rel_w)];
    let fit = if big { rng.range(2, 5) } else { rng.range(1, 5) };
    let nps =
        rng.chance(0.7).then(|| (25.0 + 30.0 * rng.normal()).round().clamp(-100.0, 100.0) as i64);
    let nps_prev = nps
        .filter(|_| rng.chance(0.8))
        .map(|n| (n as f64 + 5.0 + 15.0 * rng.normal()).round().clamp(-100.0, 100.0) as i64);
    let last_qbr = rng.chance(0.8).then(|| date(as_of - rng.range(0, 200)));
    let last_ebr = rng.chance(0.6).then(|| date(as_of - rng.range(0, 500)));
    let renewal = rng.chance(0.75).then(|| date(as_of + rng.range(-30, 400)));

    // Managers: ~N/50 of them; two "enterprise desk" managers own most of the big accounts.
    let manager = if rng.chance(0.03) {
        None
    } else if big && rng.chance(0.8) {
        Some(format!("desk.{}", ["north", "south"][rng.range(0, 1) as usize]))
    } else {
        Some(format!("kam.{:05}", rng.range(1, managers as i64)))
    };

    // Current tiers: new accounts have none; big accounts are often key or strategic already.
    let tier_w: &[f64] = if big { &[0.1, 0.2, 0.45, 0.25] } else { &[0.15, 0.003, 0.03, 0.817] };
    let current = [None, Some("strategic"), Some("key"), Some("managed")][rng.weighted(tier_w)];
    let tier_since = current.filter(|_| rng.chance(0.9)).map(|_| {
        // 15 % inside the 180-day tenure, the rest up to eight years back.
        if rng.chance(0.15) {
            date(as_of - rng.range(1, 179))
        } else {
            date(as_of - rng.range(180, 2900))
        }
    });

    let mut fields: Vec<(&'static str, Option<V>)> = vec![
        ("revenue_12m", Some(money(rng, revenue))),
        ("revenue_prev_12m", revenue_prev.map(|r| money(rng, r))),
        ("potential", Some(V::Num((potential / 1000.0).round() * 1000.0))),
        ("gross_margin", Some(V::Num(gross_margin))),
        ("share_of_wallet", share_of_wallet.map(V::Num)),
        ("relationship", Some(V::Str(relationship.into()))),
        ("strategic_fit", Some(V::Int(fit))),
        ("nps", nps.map(V::Int)),
        ("nps_prev", nps_prev.map(V::Int)),
        ("last_qbr", last_qbr.map(V::Str)),
        ("last_ebr", last_ebr.map(V::Str)),
        ("renewal_date", renewal.map(V::Str)),
        ("region", Some(V::Str(rng.pick(&["emea", "amer", "apac"]).into()))),
        ("segment", Some(V::Str(rng.pick(&["enterprise", "upper-mid", "public"]).into()))),
    ];
    // Some exports write absent values as null rather than leaving the key out.
    let null_style = rng.chance(0.2);
    if !null_style {
        fields.retain(|(_, v)| v.is_some());
    }

    let mut a = Account {
        id: format!("acc-{:07}", i + 1),
        name: company(rng, i),
        manager,
        current_tier: current.map(str::to_string),
        tier_since,
        as_of: AS_OF.to_string(),
        fields,
    };

    // ~0.5 % invalid accounts.
    if rng.chance(0.005) {
        let set = |a: &mut Account, k: &'static str, v: Option<V>| {
            if let Some(slot) = a.fields.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = v;
            } else {
                a.fields.push((k, v));
            }
        };
        match rng.range(0, 8) {
            0 => a.fields.retain(|(n, _)| *n != "revenue_12m"), // missing_field
            1 => set(&mut a, "gross_margin", Some(V::Num(1.25))), // out_of_range
            2 => set(&mut a, "strategic_fit", Some(V::Int(7))), // out_of_range
            3 => set(&mut a, "relationship", Some(V::Str("partner".into()))), // not_one_of
            4 => set(&mut a, "nps", Some(V::Int(140))),         // out_of_range
            5 => set(&mut a, "last_qbr", Some(V::Str("2026-02-30".into()))), // bad_date
            6 => set(&mut a, "strategic_fit", Some(V::Num(3.5))), // bad_type
            7 => set(&mut a, "potential", Some(V::Str("n/a".into()))), // bad_type
            _ => a.current_tier = Some("platinum".into()),      // unknown_tier
        }
    }
    a
}

fn jsonl_line(a: &Account, out: &mut String) {
    out.push_str("{\"id\":");
    json_str(&a.id, out);
    out.push_str(",\"name\":");
    json_str(&a.name, out);
    if let Some(m) = &a.manager {
        out.push_str(",\"manager\":");
        json_str(m, out);
    }
    if let Some(t) = &a.current_tier {
        out.push_str(",\"current_tier\":");
        json_str(t, out);
    }
    if let Some(t) = &a.tier_since {
        out.push_str(",\"tier_since\":");
        json_str(t, out);
    }
    out.push_str(",\"as_of\":");
    json_str(&a.as_of, out);
    out.push_str(",\"fields\":{");
    for (k, (name, v)) in a.fields.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        json_str(name, out);
        out.push(':');
        match v {
            Some(v) => v.json(out),
            None => out.push_str("null"),
        }
    }
    out.push_str("}}");
}

#[derive(Clone, Copy, PartialEq)]
pub enum Format {
    Jsonl,
    Json,
    Csv,
}

/// The default seed: `gen_portfolio N` and [`jsonl`]`(N, SEED)` give the same accounts.
pub const SEED: u64 = 0x7131_2026;

/// Writes `n` accounts in `format`, with about `n / 50` managers.
pub fn write_accounts(
    out: &mut impl Write,
    n: usize,
    seed: u64,
    format: Format,
) -> std::io::Result<()> {
    write_accounts_with(out, n, seed, format, (n / 50).max(1))
}

/// [`write_accounts`] with a chosen number of managers.
pub fn write_accounts_with(
    out: &mut impl Write,
    n: usize,
    seed: u64,
    format: Format,
    managers: usize,
) -> std::io::Result<()> {
    let mut rng = Rng(seed);
    let managers = managers.max(1);
    let as_of = days_from_civil(2026, 11, 1);
    match format {
        Format::Jsonl | Format::Json => {
            let mut line = String::with_capacity(512);
            if format == Format::Json {
                out.write_all(b"[\n")?;
            }
            for i in 0..n {
                let a = generate(&mut rng, i, managers, as_of);
                line.clear();
                if format == Format::Json && i > 0 {
                    line.push_str(",\n");
                }
                jsonl_line(&a, &mut line);
                if format == Format::Jsonl {
                    line.push('\n');
                }
                out.write_all(line.as_bytes())?;
            }
            if format == Format::Json {
                out.write_all(b"\n]\n")?;
            }
            Ok(())
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            let mut header: Vec<&str> =
                vec!["id", "name", "manager", "current_tier", "tier_since", "as_of"];
            header.extend(INPUTS);
            header.extend(EXTRA);
            w.write_record(&header)?;
            for i in 0..n {
                let a = generate(&mut rng, i, managers, as_of);
                let mut row: Vec<String> = vec![
                    a.id.clone(),
                    a.name.clone(),
                    a.manager.clone().unwrap_or_default(),
                    a.current_tier.clone().unwrap_or_default(),
                    a.tier_since.clone().unwrap_or_default(),
                    a.as_of.clone(),
                ];
                for col in INPUTS.iter().chain(EXTRA.iter()) {
                    let cell = a
                        .fields
                        .iter()
                        .find(|(k, _)| k == col)
                        .and_then(|(_, v)| v.as_ref())
                        .map(V::csv)
                        .unwrap_or_default();
                    row.push(cell);
                }
                w.write_record(&row)?;
            }
            w.flush()
        }
    }
}

/// `n` accounts as JSON lines, in memory (for benches).
pub fn jsonl(n: usize, seed: u64) -> String {
    let mut buf = Vec::with_capacity(n * 400);
    let _ = write_accounts(&mut buf, n, seed, Format::Jsonl);
    String::from_utf8(buf).unwrap_or_default()
}

fn usage() -> ! {
    eprintln!(
        "usage: gen_portfolio [N=100000] [--format jsonl|json|csv] [--seed S] [--managers M (default N/50)]"
    );
    std::process::exit(2)
}

fn main() {
    let mut n: usize = 100_000;
    let mut format = Format::Jsonl;
    let mut seed: u64 = SEED;
    let mut managers: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--format" => {
                format = match args.next().as_deref() {
                    Some("jsonl") | Some("ndjson") => Format::Jsonl,
                    Some("json") => Format::Json,
                    Some("csv") => Format::Csv,
                    _ => usage(),
                }
            }
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            "--managers" => {
                managers = Some(args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()))
            }
            "-h" | "--help" => usage(),
            s => n = s.replace('_', "").parse().unwrap_or_else(|_| usage()),
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let managers = managers.unwrap_or((n / 50).max(1));
    if let Err(e) =
        write_accounts_with(&mut out, n, seed, format, managers).and_then(|_| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("gen_portfolio: {e}");
        std::process::exit(1);
    }
}
