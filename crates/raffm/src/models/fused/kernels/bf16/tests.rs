//! The bf16 product against an f64 reference within [`error_bound`], on every engine
//! this CPU has (the emulated one always, so CI checks the fallback on any CPU).

use super::*;
use crate::core::rng::SplitMix64;

fn engines() -> Vec<Engine> {
    let mut engines = vec![Engine::Emulated];
    if avx512_bf16_available() {
        engines.push(Engine::Avx512Bf16);
    }
    if amx_available() {
        engines.push(Engine::Amx);
    }
    engines
}

/// A strided operand: `rows × cols` values at `view`, inside a slice padded with NaN so
/// that a read outside the view poisons the result.
struct Operand {
    data: Vec<f32>,
    view: Strided,
}

impl Operand {
    /// Row-major with a row stride of `cols + pad`, or (transposed) column-major.
    fn new(values: &[f32], rows: usize, cols: usize, transposed: bool, pad: usize) -> Self {
        let (outer, inner) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let stride = inner + pad;
        let mut data = vec![f32::NAN; outer * stride + pad];
        let view = if transposed {
            Strided::rows(pad, stride).transposed()
        } else {
            Strided::rows(pad, stride)
        };
        for i in 0..rows {
            for j in 0..cols {
                data[view.at(i, j)] = values[i * cols + j];
            }
        }
        Operand { data, view }
    }
}

fn random(n: usize, rng: &mut SplitMix64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| scale * (2.0 * rng.next_f64() as f32 - 1.0))
        .collect()
}

/// Checks one product against the f64 reference of the bf16-rounded operands' sources:
/// every element within the bound (the operands' rounding included), NaN-free.
#[allow(clippy::too_many_arguments)]
fn check(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    (ta, tb): (bool, bool),
    pad: usize,
    accumulate: bool,
) -> f64 {
    let lhs = Operand::new(a, m, k, ta, pad);
    let rhs = Operand::new(b, k, n, tb, pad);
    let start: Vec<f32> = (0..m * n).map(|x| (x % 7) as f32 - 3.0).collect();
    let mut dst = Operand::new(&start, m, n, false, pad);
    matmul(
        engine,
        (m, n, k),
        &mut dst.data,
        dst.view,
        &lhs.data,
        lhs.view,
        &rhs.data,
        rhs.view,
        accumulate,
    );
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut magnitude) = (0f64, 0f64);
            for p in 0..k {
                let term = a[i * k + p] as f64 * b[p * n + j] as f64;
                exact += term;
                magnitude += term.abs();
            }
            let base = if accumulate {
                start[i * n + j] as f64
            } else {
                0.0
            };
            let got = dst.data[dst.view.at(i, j)] as f64;
            // Adding `base` in fp32 rounds once more: half an ulp of the result.
            let bound = error_bound(k, magnitude) + (got.abs() + base.abs()) * 2f64.powi(-24);
            let error = (got - base - exact).abs();
            assert!(
                error <= bound,
                "{engine:?} [{m}, {k}]·[{k}, {n}] transposed {ta}/{tb} pad {pad}: ({i}, {j}) is {got}, exact {}, error {error:e} > bound {bound:e}",
                exact + base
            );
            if magnitude > 0.0 {
                worst = worst.max(error / error_bound(k, magnitude));
            }
        }
    }
    worst
}

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3f80);
    // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even 1.
    assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
    // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶: up.
    assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    // Just above a tie rounds up.
    assert_eq!(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
    assert_eq!(round_bf16(-2.5), -2.5);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    // Subnormals are kept, not flushed.
    let tiny = f32::from_bits(0x0001_0000);
    assert_eq!(round_bf16(tiny), tiny);
}

#[test]
fn every_remainder_of_the_blocks_within_the_bound() {
    let mut rng = SplitMix64::new(7);
    // Around AVX512-BF16's MR = 8, NR = 32, MC = 64 and KP = 128 pairs (k = 256), and
    // AMX's 16-row tiles, 32 × 32 blocks, 64-row tasks and 32 values of k per tile; odd
    // k included.
    let shapes = [
        (16, 16, 32),
        (32, 32, 64),
        (33, 47, 33),
        (31, 17, 31),
        (64, 96, 96),
        (97, 16, 17),
        (1, 1, 1),
        (1, 33, 3),
        (7, 31, 2),
        (8, 32, 256),
        (9, 33, 257),
        (63, 65, 255),
        (65, 64, 513),
        (130, 97, 130),
        (17, 1, 600),
    ];
    for engine in engines() {
        for (index, &(m, n, k)) in shapes.iter().enumerate() {
            let a = random(m * k, &mut rng, 1.0);
            let b = random(k * n, &mut rng, 3.0);
            let layout = (index % 2 == 1, index % 3 == 1);
            let pad = index % 3;
            check(engine, (m, n, k), &a, &b, layout, pad, index % 2 == 0);
        }
    }
}

#[test]
fn adversarial_values_within_the_bound() {
    let (m, n, k) = (9, 35, 131);
    let mut rng = SplitMix64::new(11);
    // Ties of the rounding, a wide dynamic range, and sums that cancel.
    let tie = 1.0 + 2f32.powi(-8);
    let a: Vec<f32> = (0..m * k)
        .map(|x| match x % 4 {
            0 => tie,
            1 => -tie * 3.0,
            2 => 1e20 * (rng.next_f64() as f32 - 0.5),
            _ => 1e-20 * (rng.next_f64() as f32 - 0.5),
        })
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|x| if x % 2 == 0 { 1e-10 } else { -1e-10 } * (1.0 + (x % 5) as f32))
        .collect();
    for engine in engines() {
        check(engine, (m, n, k), &a, &b, (false, true), 1, false);
    }
}

/// The bound is not slack enough to hide a wrong product: bf16 rounding alone uses a
/// visible share of it, and a product in fp32 (no rounding) is much more accurate.
#[test]
fn the_rounding_is_really_bf16() {
    let (m, n, k) = (16, 40, 300);
    let mut rng = SplitMix64::new(3);
    let (a, b) = (random(m * k, &mut rng, 1.0), random(k * n, &mut rng, 1.0));
    for engine in engines() {
        let worst = check(engine, (m, n, k), &a, &b, (false, false), 0, false);
        assert!(worst > 0.01, "{engine:?}: worst error {worst} of the bound");
    }
    // One operand exactly representable in bf16: the error comes from the other's
    // rounding alone, still at most the bound.
    let exact: Vec<f32> = a.iter().map(|&x| round_bf16(x)).collect();
    check(
        Engine::Emulated,
        (m, n, k),
        &exact,
        &b,
        (false, false),
        0,
        false,
    );
}

#[test]
fn the_result_does_not_depend_on_the_threads() {
    let (m, n, k) = (200, 70, 300);
    let mut rng = SplitMix64::new(5);
    let (a, b) = (random(m * k, &mut rng, 1.0), random(k * n, &mut rng, 1.0));
    for engine in engines() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0f32; m * n];
            pool.install(|| {
                matmul(
                    engine,
                    (m, n, k),
                    &mut out,
                    Strided::rows(0, n),
                    &a,
                    Strided::rows(0, k),
                    &b,
                    Strided::rows(0, n),
                    false,
                )
            });
            out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(one, run(1), "{engine:?}: run to run");
        if engine != Engine::Emulated {
            assert_eq!(one, run(2), "{engine:?}: one thread against two");
        }
    }
}

#[test]
fn the_engine_is_chosen_by_name_and_refused_where_the_cpu_lacks_it() {
    assert_eq!(Engine::select("emulated").unwrap(), Engine::Emulated);
    let auto = Engine::select("auto").unwrap();
    assert_eq!(
        auto == Engine::Avx512Bf16,
        avx512_bf16_available() && !amx_available()
    );
    assert_eq!(auto == Engine::Amx, amx_available());
    match Engine::select("avx512bf16") {
        Ok(engine) => assert_eq!(engine, Engine::Avx512Bf16),
        Err(e) => assert!(e.to_string().contains("no AVX512-BF16"), "{e}"),
    }
    match Engine::select("amx") {
        Ok(engine) => assert_eq!(engine, Engine::Amx),
        Err(e) => assert!(e.to_string().contains("no AMX-BF16"), "{e}"),
    }
    let err = Engine::select("amx512").unwrap_err().to_string();
    assert!(err.contains(ENGINE_VAR) && err.contains("amx512"), "{err}");
}
