//! The HTTP ceiling for `benches/load.sh`: a bare axum JSON echo on the same runtime set-up
//! as `tierwise serve` (tokio multi-thread, one worker per core). It parses the body as JSON
//! and writes it back, nothing else; whatever tierwise adds on top is its own cost.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:18081
//! ```

use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    let app = Router::new().route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("echo: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
