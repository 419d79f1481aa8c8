//! Helpers of the end-to-end tests (`tests/`): where the stage binaries and the assets
//! are, a small finished run built by the real binaries ([`stages`]), and the tiny
//! pipeline driven through the Makefile ([`rounds`]).
//!
//! The tests run the binaries of the whole workspace, which `make test` builds first
//! (`cargo build --workspace --bins`).

pub mod rounds;
pub mod stages;

use std::path::{Path, PathBuf};

pub use rounds::*;
pub use stages::*;

/// The folder of the workspace's binaries: the profile folder this test runs from
/// (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("a folder");
    deps.parent().expect("the profile folder").to_path_buf()
}

/// The path of binary `name`, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries (`cargo build --release --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

/// The workspace's root folder.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace folder")
}

/// The assets folder the Makefile fetches into (`RAFFM_ASSETS`, else the workspace's).
pub fn assets() -> PathBuf {
    std::env::var_os("RAFFM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"))
}
