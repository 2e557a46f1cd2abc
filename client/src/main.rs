//! `orpoctl`: the client of the orpod daemon.
fn main() {}
