//! Generates the Rust types of `proto-schemas/` at build time with protox (pure Rust), so a fresh
//! machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas");
    let file = root.join("ande/events/v1/events.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile([file], [root])?;
    // The descriptors themselves, for tools that decode any event generically (andectl).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
