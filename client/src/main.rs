fn main() -> std::process::ExitCode {
    peerdex_client::main_entry()
}
