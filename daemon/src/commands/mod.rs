//! One module per `orpod` verb.

pub mod calibrate;
pub mod convert;
pub mod eval;
pub mod export;
pub mod generate;
pub mod openapi;
pub mod serve;
pub mod train;
pub mod users;
pub mod worker;
