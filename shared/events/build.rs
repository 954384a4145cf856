//! Generates the Rust types of `proto-schemas/` at build time with protox (pure Rust), so a fresh
//! machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas");
    let file = root.join("ande/events/v1/events.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile([file], [root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
