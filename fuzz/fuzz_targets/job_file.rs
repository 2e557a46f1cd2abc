//! Arbitrary text as a job file: `JobSpec::parse` must answer without panicking, and a spec it
//! accepts must survive what the daemon does with it, JSON and back, unchanged and still valid
//! (a finding was `epochs = inf`, stored as `null` and never readable again).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use orpo_api::JobSpec;

fuzz_target!(|text: &str| {
    let Ok(spec) = JobSpec::parse(text, Path::new("job.toml")) else {
        return;
    };
    let json = serde_json::to_string(&spec).expect("a valid spec serialises");
    let back: JobSpec = serde_json::from_str(&json).expect("its JSON reads back");
    assert_eq!(back, spec, "JSON round trip changed the spec: {json}");
    back.validate().expect("it is still valid");
});
