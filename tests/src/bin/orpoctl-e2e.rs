//! The `orpoctl` binary under this package's name, for the client tests (same `main`).

fn main() -> std::process::ExitCode {
    orpoctl::main()
}
