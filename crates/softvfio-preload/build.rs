//! Builds the C-variadic exec functions (csrc/execl.c): see that file.
fn main() {
    println!("cargo:rerun-if-changed=csrc/execl.c");
    cc::Build::new()
        .file("csrc/execl.c")
        .flag_if_supported("-fvisibility=hidden")
        .compile("softvfio_execl");
}
