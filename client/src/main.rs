//! `orpoctl`: the client of the orpod daemon (the verbs live in the library).
fn main() -> std::process::ExitCode {
    orpoctl::main()
}
