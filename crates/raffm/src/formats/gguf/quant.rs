//! ggml's tensor storage types and their dequantization to F32.
//!
//! Quantized types store blocks of 32 elements with one F16 scale (and, for Q4_1, one F16
//! minimum). Each value is computed in F32 as `d * q` (`+ m`), the same operations in the
//! same order as llama.cpp's and the `gguf` Python package's reference dequantizers, so
//! the result is bit-identical to theirs.

use half::{bf16, f16};
use rayon::prelude::*;

/// The storage types this reader dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    /// 32 values: F16 scale d, 16 bytes of 4-bit q; x = d * (q - 8).
    Q4_0,
    /// 32 values: F16 scale d, F16 minimum m, 16 bytes of 4-bit q; x = d * q + m.
    Q4_1,
    /// 32 values: F16 scale d, 32 signed bytes q; x = d * q.
    Q8_0,
}

impl GgmlType {
    pub const SUPPORTED: &'static str = "F32, F16, BF16, Q4_0, Q4_1, Q8_0";

    /// The type with ggml's numeric id, if this reader handles it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn block_elements(self) -> u64 {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
        }
    }

    pub fn block_bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of `elements` values, or `None` if they are not whole blocks.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        elements
            .is_multiple_of(self.block_elements())
            .then(|| (elements / self.block_elements()).checked_mul(self.block_bytes()))
            .flatten()
    }
}

/// ggml's name for a type id, for error messages about types this reader lacks.
pub fn type_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// Dequantizes whole blocks (the caller checked `bytes` is a whole number of them).
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let block_bytes = kind.block_bytes() as usize;
    let per_block = kind.block_elements() as usize;
    let mut out = vec![0f32; bytes.len() / block_bytes * per_block];
    // Chunks of 1024 blocks keep the parallel overhead small against the work.
    out.par_chunks_mut(per_block * 1024)
        .zip(bytes.par_chunks(block_bytes * 1024))
        .for_each(|(out, bytes)| {
            for (x, b) in out
                .chunks_exact_mut(per_block)
                .zip(bytes.chunks_exact(block_bytes))
            {
                dequantize_block(kind, b, x);
            }
        });
    out
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn dequantize_block(kind: GgmlType, b: &[u8], x: &mut [f32]) {
    match kind {
        GgmlType::F32 => x[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => x[0] = half_at(b, 0),
        GgmlType::BF16 => x[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q4_0 => {
            let d = half_at(b, 0);
            // Low nibbles are values 0..16, high nibbles 16..32.
            for (j, &q) in b[2..18].iter().enumerate() {
                x[j] = d * ((q & 0x0f) as i32 - 8) as f32;
                x[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half_at(b, 0), half_at(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                x[j] = d * (q & 0x0f) as f32 + m;
                x[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = half_at(b, 0);
            for (x, &q) in x.iter_mut().zip(&b[2..34]) {
                *x = d * (q as i8) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn blocks_dequantize_to_their_closed_forms() {
        // Q8_0: d = 0.5, q = -16..16.
        let mut q8 = h(0.5).to_vec();
        q8.extend((-16i8..16).map(|q| q as u8));
        let want: Vec<f32> = (-16..16).map(|q| 0.5 * q as f32).collect();
        assert_eq!(dequantize(GgmlType::Q8_0, &q8), want);

        // Q4_1: d = 0.25, m = -1; byte j holds q_j = j in its low nibble and q_{j+16} =
        // 15 - j in its high one.
        let mut q41 = [h(0.25), h(-1.0)].concat();
        q41.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let mut want = vec![0f32; 32];
        for j in 0..16 {
            want[j] = 0.25 * j as f32 - 1.0;
            want[j + 16] = 0.25 * (15 - j) as f32 - 1.0;
        }
        assert_eq!(dequantize(GgmlType::Q4_1, &q41), want);

        // Q4_0: d = 2, every nibble 8 -> 0 and 0 -> -16.
        let mut q40 = h(2.0).to_vec();
        q40.extend([0x08u8; 16]);
        let out = dequantize(GgmlType::Q4_0, &q40);
        assert!(out[..16].iter().all(|&v| v == 0.0) && out[16..].iter().all(|&v| v == -16.0));

        // Two blocks stay in order, across the parallel chunking.
        let many: Vec<u8> = (0..3000).flat_map(|_| q8.iter().copied()).collect();
        let out = dequantize(GgmlType::Q8_0, &many);
        assert_eq!(out.len(), 3000 * 32);
        assert!(out.chunks(32).all(|c| c == &out[..32]));
    }

    #[test]
    fn sizes_follow_the_blocks() {
        assert_eq!(GgmlType::Q4_1.byte_len(64), Some(40));
        assert_eq!(GgmlType::Q8_0.byte_len(33), None);
        assert_eq!(GgmlType::F32.byte_len(3), Some(12));
        assert_eq!(type_name(12), "Q4_K");
        assert_eq!(GgmlType::from_id(12), None);
    }
}
