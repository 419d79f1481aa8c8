//! The device a command runs on, as given on the command line: `cpu` (the CPU backend
//! chosen by cargo features) or `cuda`, `cuda:N` (with the `cuda` feature).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(DeviceChoice::Cuda(i)),
                _ => Err(format!(
                    "unknown device `{s}` (expected cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Runs `$body` with the type alias `$B` bound to the autodiff backend of `$choice` and
/// `$device` to its device: `with_backend!(args.device, B, device, train::<B>(&ckpt, &device))`.
#[macro_export]
macro_rules! with_backend {
    ($choice:expr, $B:ident, $device:ident, $body:expr) => {{
        match $choice {
            $crate::core::device::DeviceChoice::Cpu => {
                type $B = $crate::burn::backend::Autodiff<$crate::CpuBackend>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::core::device::DeviceChoice::Cuda(index) => {
                type $B = $crate::burn::backend::Autodiff<$crate::CudaBackend>;
                let $device = $crate::burn::backend::cuda::CudaDevice::new(index);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::core::device::DeviceChoice::Cuda(_) => {
                return Err($crate::Error::Invalid(
                    "this build has no CUDA backend: rebuild with `--features cuda`".into(),
                )
                .into());
            }
        }
    }};
}
