//! The precision of the models' matrix products: fp32, or bf16 operands with fp32
//! accumulation (what `torch.autocast("cpu", dtype=torch.bfloat16)` does to a matmul).
//!
//! Only the products of the linear layers change: master weights, gradients, AdamW's
//! state, the norms, the softmax, the attention products and the loss stay fp32, and
//! checkpoints stay fp32 on disk. The setting belongs to the thread that builds the
//! graph (the fused ops are backend functions, without a model to carry it): a product
//! reads it when it is called, and its backward uses what the forward used. Per thread, so
//! that tests running side by side do not change each other's precision.

use std::cell::Cell;

use super::kernels::bf16::{self, Engine};
use crate::core::device::DeviceChoice;
use crate::core::error::{Error, Result};

/// The precision of the linear layers' products.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    /// bf16 where the products run on AMX tiles (the CPU has them and the device is the
    /// flex CPU backend), fp32 elsewhere: [`Precision::resolve`] says which.
    Auto,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "auto" => Ok(Precision::Auto),
            _ => Err(format!("unknown precision `{s}` (fp32, bf16 or auto)")),
        }
    }
}

const FP32: u8 = 0;
const BF16_AVX512: u8 = 1;
const BF16_EMULATED: u8 = 2;
const BF16_AMX: u8 = 3;

thread_local! {
    static CURRENT: Cell<u8> = const { Cell::new(FP32) };
}

impl Precision {
    /// The precision that runs on `device`: `auto` becomes bf16 where the CPU's bf16
    /// engine is AMX and the device the flex CPU backend, fp32 elsewhere (on the
    /// AVX512-BF16 and emulated engines bf16 is not fast enough to be chosen for the
    /// user). fp32 and bf16 stay as they are.
    pub fn resolve(self, device: &DeviceChoice) -> Result<Precision> {
        if self != Precision::Auto {
            return Ok(self);
        }
        let amx = flex_cpu(device) && bf16::engine()? == Engine::Amx;
        Ok(if amx {
            Precision::Bf16
        } else {
            Precision::Fp32
        })
    }
}

fn flex_cpu(device: &DeviceChoice) -> bool {
    cfg!(feature = "flex") && matches!(device, DeviceChoice::Cpu)
}

/// Refuses bf16 where the products would silently stay fp32: only the flex CPU backend
/// has the bf16 product so far.
pub fn check_device(precision: Precision, device: &DeviceChoice) -> Result<()> {
    if precision == Precision::Bf16 && !flex_cpu(device) {
        return Err(Error::Invalid(format!(
            "--precision bf16: only the flex CPU backend has bf16 products so far, not {device:?}"
        )));
    }
    Ok(())
}

/// Sets the precision of this thread's linear layers (`auto` resolved for the CPU); bf16
/// picks its engine ([`bf16::engine`]), which may refuse (an engine the CPU lacks was
/// asked for).
pub fn set_precision(precision: Precision) -> Result<()> {
    let code = match precision.resolve(&DeviceChoice::Cpu)? {
        Precision::Fp32 | Precision::Auto => FP32,
        Precision::Bf16 => match bf16::engine()? {
            Engine::Amx => BF16_AMX,
            Engine::Avx512Bf16 => BF16_AVX512,
            Engine::Emulated => BF16_EMULATED,
        },
    };
    CURRENT.set(code);
    Ok(())
}

/// The bf16 engine the linear layers use, or `None` for fp32.
pub fn bf16_engine() -> Option<Engine> {
    match CURRENT.get() {
        BF16_AMX => Some(Engine::Amx),
        BF16_AVX512 => Some(Engine::Avx512Bf16),
        BF16_EMULATED => Some(Engine::Emulated),
        _ => None,
    }
}

/// The precision set by [`set_precision`], resolved: fp32 or bf16.
pub fn precision() -> Precision {
    match bf16_engine() {
        Some(_) => Precision::Bf16,
        None => Precision::Fp32,
    }
}

/// One line for logs: the precision and, for bf16, what runs it.
pub fn describe(precision: Precision) -> String {
    match precision.resolve(&DeviceChoice::Cpu).and_then(|p| match p {
        Precision::Bf16 => bf16::engine().map(Some),
        _ => Ok(None),
    }) {
        Ok(Some(engine)) => engine.describe().to_string(),
        Ok(None) => "fp32 matmuls".to_string(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_refused_where_it_would_silently_stay_fp32() {
        let err = check_device(Precision::Bf16, &DeviceChoice::Cuda(0)).unwrap_err();
        assert!(err.to_string().contains("--precision bf16"), "{err}");
        check_device(Precision::Fp32, &DeviceChoice::Cuda(0)).unwrap();
        assert_eq!(
            check_device(Precision::Bf16, &DeviceChoice::Cpu).is_ok(),
            cfg!(feature = "flex")
        );
    }

    #[test]
    fn the_setting_is_the_threads_own() {
        set_precision(Precision::Bf16).unwrap();
        assert_eq!(precision(), Precision::Bf16);
        let other = std::thread::spawn(precision).join().unwrap();
        assert_eq!(other, Precision::Fp32);
        set_precision(Precision::Fp32).unwrap();
        assert_eq!((precision(), bf16_engine()), (Precision::Fp32, None));
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp16".parse::<Precision>().unwrap_err().contains("fp16"));
    }

    #[test]
    fn auto_is_bf16_on_amx_alone() {
        let amx = bf16::engine().unwrap() == Engine::Amx && cfg!(feature = "flex");
        let expected = if amx {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        assert_eq!(
            Precision::Auto.resolve(&DeviceChoice::Cpu).unwrap(),
            expected
        );
        let gpu = Precision::Auto.resolve(&DeviceChoice::Cuda(0)).unwrap();
        assert_eq!(gpu, Precision::Fp32);
        for fixed in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(fixed.resolve(&DeviceChoice::Cuda(0)).unwrap(), fixed);
        }
        set_precision(Precision::Auto).unwrap();
        assert_eq!(precision(), expected);
        set_precision(Precision::Fp32).unwrap();
        assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Auto);
    }
}
