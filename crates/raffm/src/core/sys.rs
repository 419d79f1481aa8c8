//! What the operating system tells about this process.

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// (steal, total) CPU jiffies from /proc/stat: the time the hypervisor gave to other guests,
/// for benchmarks to print beside their figures on a shared VM.
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.get(7)?, fields.iter().take(8).sum()))
}

/// Asks mimalloc (the binaries' allocator) to keep freed memory instead of returning it to
/// the system after 10 ms, its default. Training the decoder frees and reallocates
/// activations of hundreds of megabytes every step; returned to the system they come back
/// as fresh pages the kernel must zero, which took a fifth of a LoRA training step.
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc 2 and 3's `mi_option_t` (mimalloc.h); -1: never.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is allowed at any time; mimalloc reads it when it purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
