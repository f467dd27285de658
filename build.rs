// Records the git commit a binary was built from, for the run's config.json.
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ICL_EVAL_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    // With MKL from a folder (scripts/install-mkl.sh), find its OpenMP runtime (libiomp5.so) there
    // at run time too, so the binary runs without LD_LIBRARY_PATH.
    println!("cargo:rerun-if-env-changed=MKLROOT");
    if std::env::var_os("CARGO_FEATURE_MKL").is_some()
        && let Some(root) = std::env::var_os("MKLROOT")
    {
        let lib = std::path::Path::new(&root).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
