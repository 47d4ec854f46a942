//! With the `mujoco` feature, the binary finds the MuJoCo library it was linked against at run
//! time: mujoco-rs links `MUJOCO_DYNAMIC_LINK_DIR/libmujoco.so` (in the PyPI wheel, a symlink
//! we make to `libmujoco.so.3.17.0`) but adds no rpath, so we add one to the folder the
//! library really lives in.
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-env-changed=MUJOCO_DYNAMIC_LINK_DIR");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MUJOCO").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("MUJOCO_DYNAMIC_LINK_DIR") else {
        return;
    };
    let lib = Path::new(&dir).join("libmujoco.so");
    if let Ok(real) = std::fs::canonicalize(&lib) {
        if let Some(parent) = real.parent() {
            println!("cargo::rustc-link-arg=-Wl,-rpath,{}", parent.display());
        }
    }
}
