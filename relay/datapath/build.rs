//! Builds the XDP steer program (`relay-ebpf`) and embeds the object file.
//!
//! The eBPF crate needs the nightly toolchain with `rust-src` (for
//! `-Z build-std=core`) and a `bpf-linker` that speaks the nightly's LLVM
//! version. Both are set up here, idempotently, so that `cargo build` on a
//! fresh machine of the project's kind works without a separate step. The
//! linker is built once against the nightly's own libLLVM and cached per
//! nightly commit under `$RELAY_BUILD_CACHE` (default `~/.cache/relay-build`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    if let Err(message) = run() {
        // A build script can only fail loudly; say what to do about it.
        eprintln!("\nerror: building the XDP steer program failed:\n{message}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("relay/datapath is not two levels below the workspace root")?
        .to_path_buf();
    let ebpf_dir = root.join("relay-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);

    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        root.join("relay/common/src"),
        root.join("relay/common/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=RELAY_BUILD_CACHE");

    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    let linker_dir = ensure_bpf_linker(&sysroot)?;

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("relay-ebpf");
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        env::var("PATH").unwrap_or_default()
    );
    let mut cmd = clean_cargo_command();
    cmd.args(["build", "--release", "--locked", "-Z", "build-std=core"])
        .args(["--target", BPF_TARGET])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    run_command(&mut cmd, "cargo +nightly build (relay-ebpf)")?;

    let object = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join("relay-ebpf");
    let embedded = out_dir.join("relay-steer.bpf.o");
    fs::copy(&object, &embedded).map_err(|e| {
        format!(
            "copying {} to {}: {e}",
            object.display(),
            embedded.display()
        )
    })?;
    Ok(())
}

/// A `cargo +nightly` without the variables the outer cargo set for this build
/// script, which would otherwise leak host flags, the host target dir lock or
/// the stable toolchain into the nested build.
fn clean_cargo_command() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", NIGHTLY, "cargo"]);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTUP_TOOLCHAIN"
                    | "CARGO"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if leaks && key != "CARGO_HOME" {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn nightly_sysroot() -> Result<PathBuf, String> {
    let out = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("running rustup: {e}; install rustup and a nightly toolchain (`rustup toolchain install nightly`)"))?;
    if !out.status.success() {
        return Err(format!(
            "no nightly toolchain: `rustup toolchain install nightly` first\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn ensure_rust_src(sysroot: &Path) -> Result<(), String> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!(
        "cargo:warning=installing the nightly's rust-src component (needed for -Z build-std=core)"
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
        .env_remove("RUSTUP_TOOLCHAIN");
    run_command(
        &mut cmd,
        "rustup component add rust-src --toolchain nightly",
    )
}

/// The nightly's own libLLVM, e.g. `libLLVM-22-rust-1.97.0-nightly.so`.
fn nightly_llvm(sysroot: &Path) -> Result<String, String> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).map_err(|e| format!("reading {}: {e}", lib.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so"))
            && stem.starts_with("LLVM-")
        {
            return Ok(stem.to_string());
        }
    }
    Err(format!(
        "no libLLVM-*.so in {}: is the nightly complete?",
        lib.display()
    ))
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<PathBuf, String> {
    let llvm = nightly_llvm(sysroot)?;
    let major = llvm
        .strip_prefix("LLVM-")
        .and_then(|rest| rest.split('-').next())
        .ok_or_else(|| format!("cannot read the LLVM major version from {llvm}"))?;
    let cache = env::var_os("RELAY_BUILD_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/relay-build")))
        .ok_or("neither RELAY_BUILD_CACHE nor HOME is set")?;
    // The binary links that exact library file: one cached linker per nightly.
    let root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{llvm}"));
    let bin = root.join("bin");
    if bin.join("bpf-linker").is_file() {
        return Ok(bin);
    }
    println!(
        "cargo:warning=building bpf-linker {BPF_LINKER_VERSION} against the nightly's {llvm} (once, cached in {})",
        root.display()
    );
    let lib = sysroot.join("lib");
    let mut cmd = clean_cargo_command();
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
    ])
    .args(["--no-default-features", "--features"])
    .arg(format!("llvm-{major},no-llvm-linking"))
    .arg("--root")
    .arg(&root)
    .env(
        "RUSTFLAGS",
        format!(
            "-L native={lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}",
            lib = lib.display()
        ),
    );
    run_command(&mut cmd, "cargo install bpf-linker")?;
    Ok(bin)
}

fn run_command(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
