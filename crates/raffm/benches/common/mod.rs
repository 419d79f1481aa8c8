//! What the training benches share: each measurement runs in its own process (so its peak
//! resident memory is its own) and prints one JSON line, to which the caller adds the share
//! of CPU time the hypervisor gave to other guests meanwhile (`steal_percent`).

use std::process::Command;

/// Runs `command` and parses the last line it prints; `None` (after printing its stderr)
/// when it fails.
pub fn run(command: &mut Command) -> Option<serde_json::Value> {
    let before = raffm::core::sys::cpu_jiffies();
    let out = command.output().ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let mut value: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last()?).ok()?;
    if let (Some((s0, t0)), Some((s1, t1))) = (before, raffm::core::sys::cpu_jiffies()) {
        value["steal_percent"] = (100.0 * (s1 - s0) as f64 / (t1 - t0).max(1) as f64).into();
    }
    Some(value)
}
