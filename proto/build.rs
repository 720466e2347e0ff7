//! Compiles the directory contract with a vendored `protoc`, so a machine with
//! only Rust installed can build the workspace.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    // `set_var` is unsafe in edition 2024 only because of threads.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("peerdex_descriptor.bin"),
        )
        .compile_protos(
            &[
                "proto/peerdex/v1/directory.proto",
                "proto/peerdex/v1/link.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
