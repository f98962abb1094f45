#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    drawbridge::cli::main()
}
