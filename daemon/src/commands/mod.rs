//! One module per `orpod` verb.

pub mod convert;
pub mod eval;
pub mod train;
