//! The integration tests: one binary (one link of candle and polars), a module per area.
//!
//! Tests that need something installed outside the repository — the bundled models
//! (`scripts/fetch-models.sh`), llama-cpp-python's server (`scripts/install-llama-server.sh`), the
//! shared reference checkpoints or benchmark data beside the checkout, chromedriver — are
//! `#[ignore = "needs …"]`, one gate for all: `cargo test` runs the hermetic rest,
//! `cargo test -- --include-ignored` everything, `cargo test --test it AREA::` one area.

mod chat;
mod checkpoints;
mod cli;
mod common;
mod encoder;
mod gguf_families;
mod hub;
mod layers;
mod library;
mod llama_server;
mod lm_eval_parity;
mod parity;
mod protocol;
mod report;
mod resume;
mod server;
mod tasks;
mod tokenizers;
