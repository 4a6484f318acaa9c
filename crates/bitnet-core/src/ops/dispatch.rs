//! The one place that decides, per op call, which backend and which kernel run.
//!
//! Every public op in [`crate::ops`] starts with [`plan`]: it names its [`OpClass`], its
//! input tensors and the amount of work, and gets back a [`Plan`] (backend device, kernel,
//! whether to split the work over rayon threads). The decision itself is the pure function
//! [`decide`], so the whole table can be tested without GPUs or particular CPUs.
//!
//! Decision table (ARCHITECTURE.md, "Op dispatch", has the same table):
//!
//! 1. Inputs on different devices → [`Error::DeviceMismatch`]. Never a silent copy.
//! 2. Inputs on a GPU device → that backend's kernel if it has one for the op; none exists
//!    yet, so [`Error::Unsupported`] naming the op and device (the caller must move the
//!    tensors with `to_device`; copying behind their back would hide a transfer).
//! 3. Inputs on the CPU while a GPU backend is *preferred* ([`set_preferred_backend`] or
//!    `BITNET_OPS_BACKEND`) → that backend cannot take CPU tensors in this build, so the op
//!    falls back to the CPU: the reason is printed once per (op, backend) on stderr and
//!    counted ([`fallback_count`]).
//! 4. CPU kernel: matmul → `gemm` crate; linear algebra → `faer`; f32 element-wise,
//!    activation, softmax and reduction kernels → AVX2 when the CPU has it and the
//!    work is at least [`SIMD_MIN_ELEMS`], else scalar. A kernel forced with
//!    [`set_forced_kernel`] / `BITNET_OPS_KERNEL` wins, and is an error
//!    ([`Error::KernelUnavailable`]) if this CPU lacks it, never a silent downgrade: a
//!    benchmark that asked for AVX2 must not quietly measure scalar code.
//! 5. Threads: rayon when the work reaches the class's threshold
//!    ([`OpClass::parallel_threshold`]) and the pool has more than one thread.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Below this many elements the SIMD path is not worth its setup (a handful of vector
/// iterations, plus a tail loop): small ops run the scalar code.
pub const SIMD_MIN_ELEMS: usize = 16;

/// Families of ops with the same dispatch rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Cheap element-wise arithmetic (+ - * / min max, comparisons, where, clamp):
    /// memory-bound.
    Elementwise,
    /// Element-wise functions with a transcendental (exp, erf, tanh, pow): compute-bound.
    Transcendental,
    /// Reductions (sum, mean, var, min, max, arg*): memory-bound, one pass.
    Reduce,
    /// Softmax / log-softmax: three passes over each row, one of them exp.
    Softmax,
    /// Copies and gathers (concat, index_select, contiguous): pure memory traffic.
    Copy,
    /// Matrix products through the `gemm` crate (work = multiply-adds).
    Matmul,
    /// Decompositions and solves through `faer` (work = n³).
    Linalg,
}

impl OpClass {
    /// Work (elements, or multiply-adds for matmul) from which splitting over threads pays.
    ///
    /// Why these numbers: a rayon fork/join costs a few microseconds. A memory-bound op
    /// moves ~4–8 GB/s per core here, so 256 Ki elements (1–3 MiB of traffic) take ~200 µs,
    /// and splitting them is a clear win; transcendental ops spend ~5–20 ns per element,
    /// so they pay from 16 Ki elements. gemm decides its own blocking; below 64³
    /// multiply-adds (~50 µs single-threaded) threads only add overhead.
    pub const fn parallel_threshold(self) -> usize {
        match self {
            OpClass::Elementwise | OpClass::Reduce | OpClass::Copy => 1 << 18,
            OpClass::Transcendental | OpClass::Softmax => 1 << 14,
            OpClass::Matmul => 64 * 64 * 64,
            // faer parallelises internally above its own thresholds.
            OpClass::Linalg => 128 * 128 * 128,
        }
    }

    /// Whether this class has hand-written SIMD kernels.
    const fn has_simd(self) -> bool {
        matches!(
            self,
            OpClass::Elementwise | OpClass::Transcendental | OpClass::Reduce | OpClass::Softmax
        )
    }
}

/// A CPU kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable scalar code: the reference every other path is tested against.
    Scalar,
    /// Hand-written AVX2+FMA kernels (`ops::simd`).
    Avx2,
    /// The `gemm` crate (matrix products; it picks its own SIMD micro-kernels).
    Gemm,
    /// The `faer` crate (decompositions and solves).
    Faer,
}

impl Kernel {
    /// Name used by `BITNET_OPS_KERNEL` and benchmark labels.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Gemm => "gemm",
            Kernel::Faer => "faer",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Avx2 => avx2_available(),
            _ => true,
        }
    }
}

/// Whether this CPU has AVX2 and FMA (the AVX2 kernels use both).
pub fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What [`decide`] chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The device whose backend runs the op (always the CPU in this build).
    pub device: Device,
    /// The CPU kernel.
    pub kernel: Kernel,
    /// Whether to split the work over rayon threads.
    pub parallel: bool,
    /// Why a preferred backend was not used, when the op fell back to the CPU.
    pub fallback: Option<String>,
}

/// Everything [`decide`] looks at, so tests can pose any situation.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub op: &'static str,
    pub class: OpClass,
    /// Devices of the inputs, in argument order.
    pub devices: &'a [Device],
    /// Dtype the kernel computes in (f16/bf16 ops compute in f32).
    pub dtype: DType,
    /// Amount of work: elements, or multiply-adds for matmul.
    pub work: usize,
}

/// The machine and configuration side of a decision.
#[derive(Clone, Debug)]
pub struct Env {
    pub avx2: bool,
    pub threads: usize,
    pub forced_kernel: Option<Kernel>,
    pub preferred_backend: Device,
}

impl Env {
    /// This process: detected CPU features, the rayon pool, overrides and env variables.
    pub fn current() -> Result<Env> {
        Ok(Env {
            avx2: avx2_available(),
            threads: rayon::current_num_threads(),
            forced_kernel: forced_kernel()?,
            preferred_backend: preferred_backend()?,
        })
    }
}

/// The decision table (see the module docs). Pure: no logging, no global state.
pub fn decide(req: &Request<'_>, env: &Env) -> Result<Plan> {
    // 1. All inputs on one device.
    let device = match req.devices.split_first() {
        None => Device::Cpu,
        Some((&first, rest)) => {
            if let Some(&other) = rest.iter().find(|&&d| d != first) {
                return Err(Error::DeviceMismatch {
                    op: req.op,
                    a: first.to_string(),
                    b: other.to_string(),
                });
            }
            first
        }
    };
    // 2. GPU inputs: no GPU op kernels exist yet, and copying to the CPU is never implicit.
    if !device.is_cpu() {
        return Err(Error::Unsupported(format!(
            "{}: the {} backend has no kernel for this op (inputs on {device}); move the \
             tensors to the cpu with to_device(&Device::Cpu)",
            req.op,
            device.backend_name()
        )));
    }
    // 3. A preferred GPU backend cannot run CPU tensors in this build.
    let fallback = (!env.preferred_backend.is_cpu()).then(|| {
        let why = match env.preferred_backend.ensure_available() {
            Err(e) => e.to_string(),
            Ok(()) => "the backend has no kernel for this op".to_string(),
        };
        format!(
            "{}: preferred backend {} unavailable ({why}); running on cpu",
            req.op, env.preferred_backend
        )
    });
    // 4. Kernel.
    let kernel = match req.class {
        OpClass::Matmul => Kernel::Gemm,
        OpClass::Linalg => Kernel::Faer,
        class => match env.forced_kernel {
            Some(Kernel::Avx2) if !env.avx2 => {
                return Err(Error::KernelUnavailable(format!(
                    "avx2 (forced for {}; this CPU lacks AVX2/FMA)",
                    req.op
                )))
            }
            // A forced SIMD kernel applies where SIMD kernels exist (f32 element-wise,
            // activation, softmax and reduction ops); elsewhere the scalar code is the
            // only implementation.
            Some(Kernel::Avx2) if class.has_simd() && req.dtype == DType::F32 => Kernel::Avx2,
            Some(_) => Kernel::Scalar,
            None if env.avx2
                && class.has_simd()
                && req.dtype == DType::F32
                && req.work >= SIMD_MIN_ELEMS =>
            {
                Kernel::Avx2
            }
            None => Kernel::Scalar,
        },
    };
    // 5. Threads.
    let parallel = env.threads > 1 && req.work >= req.class.parallel_threshold();
    Ok(Plan {
        device,
        kernel,
        parallel,
        fallback,
    })
}

/// Plan an op on `inputs` in this process, logging a fallback once per (op, reason).
pub fn plan(
    op: &'static str,
    class: OpClass,
    inputs: &[&Tensor],
    dtype: DType,
    work: usize,
) -> Result<Plan> {
    let devices: Vec<Device> = inputs.iter().map(|t| t.device()).collect();
    let req = Request {
        op,
        class,
        devices: &devices,
        dtype,
        work,
    };
    let p = decide(&req, &Env::current()?)?;
    if let Some(reason) = &p.fallback {
        record_fallback(reason);
    }
    Ok(p)
}

static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

fn record_fallback(reason: &str) {
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    static LOGGED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut logged = LOGGED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Once per distinct reason: a per-token op must not flood stderr.
    if logged.insert(reason.to_string()) {
        eprintln!("bitnet-core ops: {reason}");
    }
}

/// How many op calls fell back from a preferred backend to the CPU (process-wide).
pub fn fallback_count() -> usize {
    FALLBACKS.load(Ordering::Relaxed)
}

// ------------------------------------------------------------------ overrides

/// 0 = none, 1 = scalar, 2 = avx2.
static FORCED: AtomicU8 = AtomicU8::new(0);
/// 0 = none set programmatically (use the env variable), 1 = cpu, 2 = cuda, 3 = wgpu.
static PREFERRED: AtomicU8 = AtomicU8::new(0);

/// Force the CPU kernel of SIMD-capable ops (all threads), or clear with `None`. Only
/// `Scalar` and `Avx2` can be forced; `Avx2` errors on a CPU without it.
pub fn set_forced_kernel(kernel: Option<Kernel>) -> Result<()> {
    let code = match kernel {
        None => 0,
        Some(Kernel::Scalar) => 1,
        Some(Kernel::Avx2) if avx2_available() => 2,
        Some(Kernel::Avx2) => return Err(Error::KernelUnavailable("avx2".into())),
        Some(k) => {
            return Err(Error::Unsupported(format!(
                "set_forced_kernel: only scalar and avx2 can be forced, not {}",
                k.name()
            )))
        }
    };
    FORCED.store(code, Ordering::Relaxed);
    Ok(())
}

/// The forced kernel: the programmatic override, else `BITNET_OPS_KERNEL`
/// (`scalar`/`avx2`, read once), else none.
pub fn forced_kernel() -> Result<Option<Kernel>> {
    match FORCED.load(Ordering::Relaxed) {
        1 => return Ok(Some(Kernel::Scalar)),
        2 => return Ok(Some(Kernel::Avx2)),
        _ => {}
    }
    static ENV: OnceLock<std::result::Result<Option<Kernel>, String>> = OnceLock::new();
    ENV.get_or_init(|| match std::env::var("BITNET_OPS_KERNEL") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "scalar" => Ok(Some(Kernel::Scalar)),
            "avx2" => Ok(Some(Kernel::Avx2)),
            _ => Err(v),
        },
    })
    .clone()
    .map_err(|v| {
        Error::KernelUnavailable(format!("{v} (BITNET_OPS_KERNEL must be scalar or avx2)"))
    })
}

/// Prefer a backend for ops on CPU tensors (`None` = back to `BITNET_OPS_BACKEND`, else
/// cpu). A GPU preference that cannot be honoured falls back to the CPU with a logged
/// reason (see the module docs).
pub fn set_preferred_backend(device: Option<Device>) {
    let code = match device {
        None => 0,
        Some(Device::Cpu) => 1,
        Some(Device::Cuda(_)) => 2,
        Some(Device::Wgpu(_)) => 3,
    };
    PREFERRED.store(code, Ordering::Relaxed);
}

/// The preferred backend: the programmatic setting, else `BITNET_OPS_BACKEND` (a device
/// name such as `cpu` or `cuda:0`, read once), else the CPU.
pub fn preferred_backend() -> Result<Device> {
    match PREFERRED.load(Ordering::Relaxed) {
        1 => return Ok(Device::Cpu),
        2 => return Ok(Device::Cuda(0)),
        3 => return Ok(Device::Wgpu(0)),
        _ => {}
    }
    static ENV: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
    ENV.get_or_init(|| match std::env::var("BITNET_OPS_BACKEND") {
        Err(_) => Ok(Device::Cpu),
        Ok(v) if v.trim().is_empty() => Ok(Device::Cpu),
        Ok(v) => Device::parse(&v).ok_or(v),
    })
    .clone()
    .map_err(|v| Error::Unsupported(format!("BITNET_OPS_BACKEND={v:?} names no device")))
}
