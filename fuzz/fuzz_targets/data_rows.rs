//! Arbitrary bytes as an uploaded JSONL data file: the trainer's row parser must answer without
//! panicking, and the daemon's streaming checker must agree with it line for line.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orpo_trainer::data::{parse_rows, RowChecker};

fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("data.jsonl");
    let parsed = parse_rows(bytes, path);
    let mut checker = RowChecker::default();
    for line in bytes.split(|&b| b == b'\n') {
        checker.check_line(line);
    }
    let checked = checker.finish(path);
    match (&parsed, &checked) {
        (Ok(rows), Ok(n)) => assert_eq!(rows.len(), *n),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse_rows and RowChecker disagree: {parsed:?} vs {checked:?}"),
    }
});
