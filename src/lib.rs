//! icl-eval: how does a model learn from K examples in its prompt?
//!
//! Flow: task (YAML + Jinja) → prompts (few-shot draws) → requests → backend → scores → report.

pub mod backend;
pub mod bench;
pub mod cache;
pub mod chat;
pub mod encoder;
pub mod evaluate;
pub mod hash;
pub mod hub;
pub mod merge;
pub mod metric;
pub mod models;
pub mod prompt;
pub mod record;
pub mod report;
pub mod resume;
pub mod run;
pub mod sampler;
pub mod score;
pub mod seed;
pub mod shard;
pub mod task;
pub mod validate;
