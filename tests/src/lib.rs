//! Sluice's end-to-end test support: the mock LLM provider that tests, demos and benchmarks
//! use in place of real providers, and what the benchmark binaries share (`bench`). The end-to-end tests themselves live in `tests/`.

pub mod bench;
pub mod hook;
pub mod mock;
pub mod otlp;
