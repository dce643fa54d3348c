//! Compiles `kiln/v1/*.proto` with protox (no system `protoc`), and keeps the descriptor set for
//! server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "kiln/v1/build.proto",
        "kiln/v1/worker.proto",
        "kiln/v1/state.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kiln_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Data chunks stay in the buffer they arrived in (no copy into a Vec of their own).
    tonic_prost_build::configure()
        .bytes(".kiln.v1.DataChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
