//! Dropout masks that are a hash of the element index, so nothing has to be stored.

use rayon::prelude::*;

use super::TASK_ELEMENTS;

/// Which elements one dropout call keeps: a counter-based hash of (key, element index), so
/// the mask is the same whether the elements are visited by one thread or several, and
/// the backward pass recomputes it instead of storing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    key: [u32; 2],
    /// An element is dropped when its hash is below this.
    threshold: u32,
    /// `1 / (1 - p)`, the scale of kept elements.
    scale: f32,
}

impl DropoutMask {
    /// `None` when `prob` is 0 (nothing to drop). `prob` must be in `[0, 1)`.
    pub fn new(prob: f64, key: u64) -> Option<Self> {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability {prob} outside [0, 1)"
        );
        (prob > 0.0).then(|| Self {
            key: [key as u32, (key >> 32) as u32],
            threshold: (prob * 4_294_967_296.0).round().min(u32::MAX as f64) as u32,
            scale: (1.0 / (1.0 - prob)) as f32,
        })
    }

    /// The factor for element `index`: 0 if dropped, `1 / (1 - p)` if kept.
    #[inline(always)]
    pub fn factor(&self, index: usize) -> f32 {
        let hash = mix32(mix32(index as u32 ^ self.key[0]).wrapping_add(self.key[1]));
        if hash >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

/// A 32-bit integer hash with full avalanche (Wellons' "lowbias32").
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

multiversion! {
    /// `x[i] *= mask.factor(first + i)`.
    fn apply_mask_chunk(x: &mut [f32], mask: &DropoutMask, first: usize) {
        for (i, v) in x.iter_mut().enumerate() {
            *v *= mask.factor(first + i);
        }
    }
}

/// Multiplies `x` in place by the dropout factors of its elements.
pub fn apply_dropout(x: &mut [f32], mask: &DropoutMask) {
    x.par_chunks_mut(TASK_ELEMENTS)
        .enumerate()
        .for_each(|(c, chunk)| apply_mask_chunk(chunk, mask, c * TASK_ELEMENTS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_the_expected_fraction_and_is_reproducible() {
        let mask = DropoutMask::new(0.1, 42).unwrap();
        let n = 1_000_000;
        let mut x = vec![1.0f32; n];
        apply_dropout(&mut x, &mask);
        let dropped = x.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.002, "dropped {dropped}");
        assert!(x.iter().all(|&v| v == 0.0 || v == (1.0 / 0.9f64) as f32));
        // The same key gives the same mask; another key another one.
        let mut again = vec![1.0f32; n];
        apply_dropout(&mut again, &mask);
        assert_eq!(x, again);
        let mut other = vec![1.0f32; n];
        apply_dropout(&mut other, &DropoutMask::new(0.1, 43).unwrap());
        assert_ne!(x, other);
        assert!(DropoutMask::new(0.0, 1).is_none());
    }
}
