//! The mlx-sys / mlx-rs sources the workspace builds against.
//!
//! The root `Cargo.toml` patches both crates to `.ft/patched/<crate>`. This
//! module copies the crates.io releases there and, on Linux only, applies our
//! edits (each one checked to match upstream exactly, so a new upstream
//! release fails loudly instead of silently mis-patching). On macOS the copies
//! are byte-for-byte upstream. See docs/mlx-on-linux.md.

use crate::shell;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

pub const MLX_RS_VERSION: &str = "0.33.0";
pub const MLX_SYS_VERSION: &str = "0.7.0";

/// Bump to force existing checkouts to re-patch (edits and `ft_linux.rs`
/// are also covered by a digest in the stamp).
const PATCH_SET: &str = "mlx-ft-linux-patches-v1";

/// Our build-script module, copied next to mlx-sys's build.rs on Linux.
const FT_LINUX_BUILD: &str = include_str!("../patches/mlx-sys/ft_linux.rs");

/// One textual edit: `find` must occur exactly `count` times in `file`.
struct Edit {
    file: &'static str,
    find: &'static str,
    replace: &'static str,
    count: usize,
    why: &'static str,
}

const MLX_SYS_EDITS: &[Edit] = &[
    Edit {
        file: "build.rs",
        find: "fn main() {\n",
        replace: "#[path = \"ft_linux.rs\"]\nmod ft_linux;\n\nfn main() {\n    // mlx-ft: Linux builds mlx-c against the prebuilt MLX runtime (ft_linux.rs).\n    if ft_linux::applies() {\n        return ft_linux::main();\n    }\n",
        count: 1,
        why: "upstream links Apple frameworks and fetches MLX from Git",
    },
    Edit {
        file: "src/mlx-c/mlx/c/private/io.h",
        find: "#include <streambuf>\n",
        replace: "#include <streambuf>\n#include <sstream>\n#include <string_view>\n\n// mlx-ft: libstdc++ 12 has no <format>; these messages only need `{}`.\nnamespace {\ninline void mlx_ft_format_into(std::ostringstream& out, std::string_view fmt) {\n  out << fmt;\n}\ntemplate <typename T, typename... Rest>\nvoid mlx_ft_format_into(\n    std::ostringstream& out,\n    std::string_view fmt,\n    const T& value,\n    const Rest&... rest) {\n  auto at = fmt.find(\"{}\");\n  if (at == std::string_view::npos) {\n    out << fmt;\n    return;\n  }\n  out << fmt.substr(0, at) << value;\n  mlx_ft_format_into(out, fmt.substr(at + 2), rest...);\n}\ntemplate <typename... Args>\nstd::string mlx_ft_format(std::string_view fmt, const Args&... args) {\n  std::ostringstream out;\n  mlx_ft_format_into(out, fmt, args...);\n  return out.str();\n}\n} // namespace\n",
        count: 1,
        why: "std::format is missing from GCC 12's libstdc++",
    },
    Edit {
        file: "src/mlx-c/mlx/c/private/io.h",
        find: "std::format(",
        replace: "mlx_ft_format(",
        count: 5,
        why: "std::format is missing from GCC 12's libstdc++",
    },
    Edit {
        file: "src/mlx-c/mlx/c/half.h",
        find: "#ifdef __cplusplus\n}\n#endif\n",
        replace: "// mlx-ft: 16-bit storage types on x86-64 so the float16/bfloat16\n// item/data accessors exist; the C side only reinterprets the bits.\n#if defined(__x86_64__) && !defined(HAS_FLOAT16)\n#include <stdint.h>\n#define HAS_FLOAT16\ntypedef uint16_t float16_t;\n#endif\n#if defined(__x86_64__) && !defined(HAS_BFLOAT16)\n#include <stdint.h>\n#define HAS_BFLOAT16\ntypedef uint16_t bfloat16_t;\n#endif\n\n#ifdef __cplusplus\n}\n#endif\n",
        count: 1,
        why: "mlx-c defines float16_t/bfloat16_t only for ARM",
    },
];

const MLX_RS_EDITS: &[Edit] = &[
    Edit {
        file: "src/random.rs",
        find: "use mach_sys::mach_time;\n",
        replace: "#[cfg(target_vendor = \"apple\")]\nuse mach_sys::mach_time;\n",
        count: 1,
        why: "mach_approximate_time exists only on Apple platforms",
    },
    Edit {
        file: "src/random.rs",
        find: "        let now = unsafe { mach_time::mach_approximate_time() };\n",
        replace: "        #[cfg(target_vendor = \"apple\")]\n        let now = unsafe { mach_time::mach_approximate_time() };\n        // mlx-ft: a time-based seed off Apple platforms.\n        #[cfg(not(target_vendor = \"apple\"))]\n        let now = std::time::SystemTime::now()\n            .duration_since(std::time::UNIX_EPOCH)\n            .map(|elapsed| elapsed.as_nanos() as u64)\n            .unwrap_or(0);\n",
        count: 1,
        why: "mach_approximate_time exists only on Apple platforms",
    },
];

/// Makes `.ft/patched/{mlx-sys,mlx-rs}` current. `runtime` is the MLX
/// runtime directory on Linux (None elsewhere).
pub fn ensure_patched(root: &Path, ft: &Path, runtime: Option<&Path>) -> Result<()> {
    let patched = ft.join("patched");
    let stamp_path = patched.join("stamp");
    let stamp = format!(
        "{PATCH_SET}\nmlx-rs {MLX_RS_VERSION}\nmlx-sys {MLX_SYS_VERSION}\nruntime {}\ninputs {:016x}\n",
        runtime.map(|r| r.display().to_string()).unwrap_or_default(),
        patch_inputs_digest()
    );
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && patched.join("mlx-sys/Cargo.toml").is_file()
        && patched.join("mlx-rs/Cargo.toml").is_file()
    {
        return Ok(());
    }
    shell::step("preparing mlx-sys and mlx-rs sources");
    let sys_src = registry_source(root, ft, "mlx-sys", MLX_SYS_VERSION)?;
    let rs_src = registry_source(root, ft, "mlx-rs", MLX_RS_VERSION)?;
    let sys_dst = patched.join("mlx-sys");
    let rs_dst = patched.join("mlx-rs");
    for (src, dst) in [(&sys_src, &sys_dst), (&rs_src, &rs_dst)] {
        if dst.exists() {
            fs::remove_dir_all(dst).with_context(|| format!("removing {}", dst.display()))?;
        }
        copy_tree(src, dst)?;
    }
    if let Some(runtime) = runtime {
        apply(&sys_dst, MLX_SYS_EDITS)?;
        apply(&rs_dst, MLX_RS_EDITS)?;
        fs::write(sys_dst.join("ft_linux.rs"), FT_LINUX_BUILD)?;
        fs::write(
            sys_dst.join("ft_runtime.rs"),
            format!(
                "// Generated by `cargo xtask setup`.\npub const RUNTIME_DIR: &str = {:?};\n",
                runtime.display().to_string()
            ),
        )?;
        eprintln!(
            "    applied {} edits to mlx-sys {MLX_SYS_VERSION} and {} to mlx-rs {MLX_RS_VERSION}",
            MLX_SYS_EDITS.len(),
            MLX_RS_EDITS.len()
        );
    }
    fs::write(&stamp_path, stamp)?;
    Ok(())
}

/// A digest of everything the patched copies are made from, so any change
/// to an edit or to `ft_linux.rs` re-patches (and rebuilds mlx-sys).
fn patch_inputs_digest() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    FT_LINUX_BUILD.hash(&mut hasher);
    for edit in MLX_SYS_EDITS.iter().chain(MLX_RS_EDITS) {
        (edit.file, edit.find, edit.replace, edit.count).hash(&mut hasher);
    }
    hasher.finish()
}

fn apply(crate_dir: &Path, edits: &[Edit]) -> Result<()> {
    for edit in edits {
        let path = crate_dir.join(edit.file);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let found = text.matches(edit.find).count();
        if found != edit.count {
            bail!(
                "patch for {} ({}) expected {} occurrence(s) of {:?}, found {found}: \
                 upstream changed, update xtask/src/sources.rs",
                path.display(),
                edit.why,
                edit.count,
                edit.find
            );
        }
        fs::write(&path, text.replace(edit.find, edit.replace))?;
    }
    Ok(())
}

/// The unpacked crates.io source of `name-version`, fetched through cargo if
/// the local registry does not have it yet.
fn registry_source(root: &Path, ft: &Path, name: &str, version: &str) -> Result<PathBuf> {
    if let Some(found) = find_in_registry(name, version) {
        return Ok(found);
    }
    let fetch_dir = ft.join("fetch");
    fs::create_dir_all(fetch_dir.join("src"))?;
    fs::write(
        fetch_dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"ft-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
             [dependencies]\nmlx-rs = \"={MLX_RS_VERSION}\"\nmlx-sys = \"={MLX_SYS_VERSION}\"\n"
        ),
    )?;
    fs::write(fetch_dir.join("src/lib.rs"), "")?;
    shell::cargo(
        root,
        &[
            "fetch",
            "--manifest-path",
            &path_str(&fetch_dir.join("Cargo.toml")),
        ],
    )?;
    find_in_registry(name, version).with_context(|| {
        format!(
            "cargo fetched {name} {version} but its source is not under $CARGO_HOME/registry/src"
        )
    })
}

fn find_in_registry(name: &str, version: &str) -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let wanted = format!("{name}-{version}");
    fs::read_dir(cargo_home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|index| index.path().join(&wanted))
        .find(|candidate| candidate.join("Cargo.toml").is_file())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

pub fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
