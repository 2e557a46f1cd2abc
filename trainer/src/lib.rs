//! `orpo-trainer`: ORPO preference fine-tuning (Hong et al. 2024, as TRL's `ORPOTrainer`
//! computes it) with LoRA on a frozen Llama-family base, written on candle.
//!
//! The crate is synchronous: no async, HTTP or database code. The daemon runs it in a worker
//! process; `orpod train` runs it in the foreground.
//!
//! # Layout
//! - [`model`]: loading a base model (Hugging Face folder or GGUF) and the training forward pass.
//! - [`tokenizer`]: the tokenizer with its special tokens and chat template.
//! - [`data`], [`template`]: JSONL preference rows, chat templates, TRL's tokenization.
//! - [`lora`]: the adapter (PEFT format on disk).
//! - [`ops`]: ops with their own backward (frozen linear, output head log-probs).
//! - [`loss`]: the ORPO loss and TRL's metrics.
//! - [`optim`]: AdamW, learning-rate schedules, gradient clipping.
//! - [`train`]: the training and evaluation loops.
//! - [`checkpoint`]: `step-N/` checkpoints (adapter, optimizer, trainer state), written
//!   atomically, and exact resumption from them.
//! - [`runtime`]: process-wide CPU settings (candle's thread spinning, glibc's allocator).
//! - [`estimate`]: the peak memory of a job before it runs, from the config alone.
//! - [`generate`]: the generation engine (candle-transformers, KV cache) and checkpoint samples.
//! - [`export`]: merged Hugging Face folders and GGUF files for llama.cpp.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod estimate;
pub mod export;
pub mod generate;
pub mod lora;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod runtime;
pub mod template;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
