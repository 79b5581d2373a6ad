//! How `account.share_of_wallet` costs in a script function: the engine's indexer-only account
//! type (every property read first fails a getter lookup, which builds an `ErrorDotExpr` with a
//! formatted message, then falls back to the indexer) against one registered getter per input.
//!
//! ```text
//! cargo run --release --example rhai_getters
//! ```
//! Same `account_health` as policies/enterprise/scripts/health.rhai, same engine switches as
//! src/script.rs (raw engine, the same packages, `call_fn_with_options` with
//! `eval_ast(false)`), 200,000 calls per variant, median of 5 passes.

use rhai::packages::{
    BasicArrayPackage, BasicMapPackage, BasicMathPackage, CorePackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{Dynamic, Engine, EvalAltResult, Scope};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
struct View(Arc<[Dynamic]>);

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

const SCRIPT: &str = r#"
fn account_health(account) {
    let wallet = account.share_of_wallet;
    let base = if wallet == () { 1.0 } else { 1.0 + 9.0 * wallet };
    let survey = account.nps;
    let nudge = if survey == () { 0.0 } else if survey >= 50 { 1.0 } else if survey < 0 { -1.0 } else { 0.0 };
    base + nudge
}
"#;

fn engine(getters: bool) -> Engine {
    let mut e = Engine::new_raw();
    for p in [
        CorePackage::new().as_shared_module(),
        LogicPackage::new().as_shared_module(),
        BasicMathPackage::new().as_shared_module(),
        MoreStringPackage::new().as_shared_module(),
        BasicArrayPackage::new().as_shared_module(),
        BasicMapPackage::new().as_shared_module(),
    ] {
        e.register_global_module(p);
    }
    e.set_max_operations(100_000);
    e.set_max_strings_interned(0);
    e.register_type_with_name::<View>("Account");
    let slots: HashMap<String, usize> =
        INPUTS.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect();
    e.register_indexer_get(
        move |a: &mut View, prop: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match slots.get(prop) {
                Some(&i) => Ok(a.0.get(i).cloned().unwrap_or(Dynamic::UNIT)),
                None => Err(format!("`account.{prop}` is not a declared input").into()),
            }
        },
    );
    if getters {
        for (i, name) in INPUTS.iter().enumerate() {
            e.register_get(name, move |a: &mut View| a.0.get(i).cloned().unwrap_or(Dynamic::UNIT));
        }
    }
    e
}

fn main() {
    let n = 200_000;
    let values: Arc<[Dynamic]> = INPUTS
        .iter()
        .map(|k| match *k {
            "share_of_wallet" => Dynamic::from_float(0.4),
            "nps" => Dynamic::from_int(30),
            _ => Dynamic::UNIT,
        })
        .collect::<Vec<_>>()
        .into();
    for (label, getters) in
        [("indexer only (as src/script.rs)", false), ("one getter per input", true)]
    {
        let e = engine(getters);
        let ast = match e.compile(SCRIPT) {
            Ok(a) => a,
            Err(err) => {
                eprintln!("{err}");
                std::process::exit(2);
            }
        };
        let opts = || rhai::CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let mut passes = Vec::new();
        let mut check = 0.0;
        for _ in 0..6 {
            let t = Instant::now();
            for _ in 0..n {
                let v = e.call_fn_with_options::<Dynamic>(
                    opts(),
                    &mut Scope::new(),
                    &ast,
                    "account_health",
                    (View(values.clone()),),
                );
                check += std::hint::black_box(v)
                    .ok()
                    .and_then(|d| d.as_float().ok())
                    .unwrap_or(f64::NAN);
            }
            passes.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        passes.remove(0); // warm-up
        passes.sort_by(f64::total_cmp);
        println!(
            "{label:<34} {:>7.0} ns per call (median of 5; result {})",
            passes[2],
            check / (6 * n) as f64
        );
    }
}
