//! Compiling a kernel once per instruction set and choosing one at run time.

/// Compiles `fn name(args) body` for AVX-512, for AVX2 + FMA and for the baseline, and
/// dispatches on what the CPU reports.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                if $crate::models::fused::kernels::simd::simd_level() >= 4 {
                    // SAFETY: the CPU reported these features.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::models::fused::kernels::simd::simd_level() >= 3 {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// 4: AVX-512 (F, DQ, VL); 3: AVX2 + FMA; 0: baseline. Detected once.
#[cfg(target_arch = "x86_64")]
pub(super) fn simd_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let has = |f: &str| match f {
            "avx512f" => is_x86_feature_detected!("avx512f"),
            "avx512dq" => is_x86_feature_detected!("avx512dq"),
            "avx512vl" => is_x86_feature_detected!("avx512vl"),
            "avx2" => is_x86_feature_detected!("avx2"),
            _ => is_x86_feature_detected!("fma"),
        };
        if ["avx512f", "avx512dq", "avx512vl", "avx2", "fma"]
            .iter()
            .all(|f| has(f))
        {
            4
        } else if has("avx2") && has("fma") {
            3
        } else {
            0
        }
    })
}
