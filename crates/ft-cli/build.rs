//! Gives the installed `ft` binary an absolute rpath to the MLX runtime this
//! checkout's mlx-sys was built against (Linux; mlx-sys publishes it as
//! `DEP_MLX_RUNTIME`). Binaries under target/ also find it through the
//! workspace's relative rpaths; this covers `cargo install --path`.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_RUNTIME");
    if let Some(runtime) = std::env::var_os("DEP_MLX_RUNTIME") {
        let lib = std::path::Path::new(&runtime).join("mlx").join("lib");
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
}
