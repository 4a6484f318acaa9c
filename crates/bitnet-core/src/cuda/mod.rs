//! The CUDA backend: device setup, run-time compilation of the kernels with NVRTC, a device
//! buffer pool, and launch wrappers for every kernel of the BitNet forward pass.
//!
//! Nothing here links against CUDA: `cudarc` loads `libcuda` and `libnvrtc` when first
//! asked, and [`CudaDevice::new`] checks that both libraries are present before touching
//! them, so a machine without a driver gets an [`Error::Unsupported`] that says what is
//! missing, never a panic. The kernels (`*.cu` next to their wrappers) are compiled once per
//! process and architecture (PTX for `compute_XY` of the device, which the driver turns into
//! `sm_XY` machine code when the module loads).
//!
//! Buffers are raw device allocations ([`DevBuf`]); launches pass raw pointers, so the
//! context runs without cudarc's per-buffer event tracking and a whole decode step can be
//! captured into a CUDA graph ([`Stream::begin_capture`]).

pub mod attention;
pub mod decode;
pub mod head;
pub mod ops;
pub mod ternary;

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as dres, sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{Error, Result};

/// The kernel sources, in the order they are concatenated into one NVRTC program.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("common.cuh")),
    ("ternary.cu", include_str!("ternary.cu")),
    ("ops.cu", include_str!("ops.cu")),
    ("head.cu", include_str!("head.cu")),
    ("attention.cu", include_str!("attention.cu")),
    ("decode.cu", include_str!("decode.cu")),
];

/// The whole program NVRTC compiles (a `#line` directive before each file keeps compiler
/// messages pointing at the right file and line).
pub fn program_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("CUDA {what}: {e}"))
}

fn drv(e: dres::DriverError) -> Error {
    cuda_err("driver error", e)
}

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library by its known names; no symbol is called.
    unsafe { sys::is_culib_present() }
}

/// Whether the NVRTC library (`libnvrtc.so`) can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: as above, a dlopen probe.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Run `f`, turning a panic inside cudarc (a missing symbol in an old library, say) into
/// an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::Unsupported(format!(
            "CUDA {what} failed: {}",
            crate::error::panic_message(&*p)
        ))),
    }
}

/// Compile every kernel source with NVRTC for `arch` (`compute_90`, `sm_90`, ...) and return
/// the PTX. Needs only `libnvrtc`, no driver and no GPU: CI uses this to catch a kernel that
/// does not compile.
pub fn compile_ptx(arch: &str) -> Result<String> {
    compile_source(&program_source(), arch)
}

/// Compile one CUDA source with this backend's NVRTC options.
pub fn compile_source(src: &str, arch: &str) -> Result<String> {
    if !nvrtc_available() {
        return Err(Error::Unsupported(
            "NVRTC (libnvrtc.so) was not found on the library path: install the CUDA toolkit \
             or the `nvidia-cuda-nvrtc` wheel and add its lib folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    if src.contains('\0') {
        return Err(Error::Unsupported("CUDA source contains a NUL byte".into()));
    }
    guarded("NVRTC compilation", || {
        let opts = CompileOptions {
            // fmad off: products and sums round exactly as the CPU reference's do.
            fmad: Some(false),
            options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
            name: Some("bitnet_kernels.cu".into()),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts)
            .map_err(|e| cuda_err("kernel compilation", e))?;
        Ok(ptx.to_src())
    })
}

/// PTX per architecture, compiled once per process.
fn cached_ptx(arch: &str) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut g = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = g.get(arch) {
        return Ok(p.clone());
    }
    let p = compile_ptx(arch)?;
    g.insert(arch.to_string(), p.clone());
    Ok(p)
}

/// The launch attribute for clusters of `x` blocks along x.
fn cluster_attr(x: u32) -> sys::CUlaunchAttribute {
    let mut a = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value: sys::CUlaunchAttributeValue { pad: [0; 64] },
    };
    a.value.clusterDim.x = x;
    a.value.clusterDim.y = 1;
    a.value.clusterDim.z = 1;
    a
}

/// Number of CUDA devices (an error when the driver is missing or fails to initialise).
pub fn device_count() -> Result<usize> {
    if !driver_available() {
        return Err(no_driver());
    }
    guarded("initialisation", || {
        dres::init().map_err(drv)?;
        Ok(dres::device::get_count().map_err(drv)?.max(0) as usize)
    })
}

fn no_driver() -> Error {
    Error::Unsupported(
        "no CUDA driver: libcuda.so was not found (is an NVIDIA GPU and its driver installed?)"
            .into(),
    )
}

/// The kernels, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum K {
    TernGemv4,
    TernGemv4S2,
    TernGemv4S2U1,
    TernGemvQkv4,
    TernGemvQkv4S2U1,
    TernGemvQkv4S2,
    TernGemm,
    RmsnormQuant,
    RmsnormF32,
    RopeKv,
    EmbedRows,
    HeadGemv,
    HeadI8,
    HeadQ6R1,
    HeadQ6R8,
    RmsnormQ8k,
    ArgmaxF32,
    TopkF32,
    CopyU4,
    Attention,
    GpuSleep,
    AttnDecode,
    AttnDecodeCluster,
    AttnDecodeGqa,
    DecodeD1,
    DecodeD2,
    DecodeD4,
    DecodeD8,
}

const KERNEL_NAMES: &[(K, &str)] = &[
    (K::TernGemv4, "tern_gemv_r4"),
    (K::TernGemv4S2, "tern_gemv_r4s2"),
    (K::TernGemv4S2U1, "tern_gemv_r4s2u1"),
    (K::TernGemvQkv4, "tern_gemv_qkv_r4"),
    (K::TernGemvQkv4S2U1, "tern_gemv_qkv_r4s2u1"),
    (K::TernGemvQkv4S2, "tern_gemv_qkv_r4s2"),
    (K::TernGemm, "tern_gemm"),
    (K::RmsnormQuant, "rmsnorm_quant"),
    (K::RmsnormF32, "rmsnorm_f32"),
    (K::RopeKv, "rope_kv"),
    (K::EmbedRows, "embed_rows"),
    (K::HeadGemv, "head_gemv"),
    (K::HeadI8, "head_i8"),
    (K::HeadQ6R1, "head_q6_r1"),
    (K::HeadQ6R8, "head_q6_r8"),
    (K::RmsnormQ8k, "rmsnorm_q8k"),
    (K::ArgmaxF32, "argmax_f32"),
    (K::TopkF32, "topk_f32"),
    (K::CopyU4, "copy_u4"),
    (K::Attention, "attention"),
    (K::GpuSleep, "gpu_sleep"),
    (K::AttnDecode, "attn_decode"),
    (K::AttnDecodeCluster, "attn_decode_cluster"),
    (K::AttnDecodeGqa, "attn_decode_gqa"),
    (K::DecodeD1, "decode_layers_d1"),
    (K::DecodeD2, "decode_layers_d2"),
    (K::DecodeD4, "decode_layers_d4"),
    (K::DecodeD8, "decode_layers_d8"),
];

/// How a kernel is launched (see [`CudaDevice::launch_impl`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaunchMode {
    Plain,
    Cooperative,
    Cluster(u32),
}

/// One kernel argument (pointers travel as device addresses).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    P(u64),
    I(i32),
    F(f32),
}

/// Plain data that can live in a device buffer.
pub trait DevElem: Copy + Default + Send + Sync + 'static {}
impl DevElem for i8 {}
impl DevElem for u8 {}
impl DevElem for u16 {}
impl DevElem for i32 {}
impl DevElem for u32 {}
impl DevElem for f32 {}
impl DevElem for u64 {}

/// Device memory: free lists by size class, so that buffers freed are reused by the next
/// request of the same class instead of going back to the driver.
pub struct Pool {
    ctx: Arc<CudaContext>,
    free: Mutex<HashMap<usize, Vec<u64>>>,
    allocs: AtomicUsize,
    live_bytes: AtomicUsize,
}

impl Pool {
    fn class(bytes: usize) -> usize {
        bytes.max(256).next_power_of_two()
    }

    fn take(&self, bytes: usize, pooled: bool) -> Result<(u64, usize)> {
        let cap = if pooled {
            Self::class(bytes)
        } else {
            bytes.max(1)
        };
        if pooled {
            let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = f.get_mut(&cap).and_then(|v| v.pop()) {
                return Ok((p, cap));
            }
        }
        self.ctx.bind_to_thread().map_err(drv)?;
        // SAFETY: a plain cuMemAlloc in the bound context; the pointer is owned by the DevBuf
        // that receives it and freed exactly once (Drop of the buffer or of the pool).
        let p = unsafe { dres::malloc_sync(cap) }.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory { bytes: cap }
            } else {
                drv(e)
            }
        })?;
        self.allocs.fetch_add(1, Ordering::Relaxed);
        self.live_bytes.fetch_add(cap, Ordering::Relaxed);
        Ok((p, cap))
    }

    fn give(&self, ptr: u64, cap: usize, pooled: bool) {
        if pooled {
            let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
            f.entry(cap).or_default().push(ptr);
        } else {
            self.release(ptr, cap);
        }
    }

    fn release(&self, ptr: u64, cap: usize) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from malloc_sync in this context and is no longer referenced.
            let _ = unsafe { dres::free_sync(ptr) };
        }
        self.live_bytes.fetch_sub(cap, Ordering::Relaxed);
    }

    /// Allocations made from the driver so far (reuses do not count).
    pub fn driver_allocations(&self) -> usize {
        self.allocs.load(Ordering::Relaxed)
    }

    /// Bytes currently held from the driver (in use or on free lists).
    pub fn live_bytes(&self) -> usize {
        self.live_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let f = std::mem::take(self.free.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (cap, ptrs) in f {
            for p in ptrs {
                self.release(p, cap);
            }
        }
    }
}

/// A typed device buffer of `len` elements. Dropping it returns the memory to the pool
/// (pooled buffers) or to the driver (weights, allocated at their exact size).
pub struct DevBuf<T: DevElem> {
    ptr: u64,
    len: usize,
    cap: usize,
    pooled: bool,
    pool: Arc<Pool>,
    _t: PhantomData<T>,
}

impl<T: DevElem> DevBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Address of element `i` (for kernels that work on a slice of the buffer).
    pub fn ptr_at(&self, i: usize) -> u64 {
        debug_assert!(i <= self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    pub fn nbytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Copy `src` into the start of the buffer (asynchronous on `stream` for the device,
    /// but `src` may be reused when this returns: pageable copies are staged by the driver).
    pub fn copy_from(&mut self, stream: &Stream, src: &[T]) -> Result<()> {
        if src.len() > self.len {
            return Err(Error::shape(
                "DevBuf::copy_from",
                format!("{} values into a buffer of {}", src.len(), self.len),
            ));
        }
        if src.is_empty() {
            return Ok(());
        }
        stream.bind()?;
        // SAFETY: the destination range lies inside this allocation (checked above); the
        // source is a live host slice for the duration of the call.
        unsafe { dres::memcpy_htod_async(self.ptr, src, stream.raw.cu_stream()) }.map_err(drv)
    }

    /// Copy the first `n` elements back to the host (waits for the stream).
    pub fn read(&self, stream: &Stream, n: usize) -> Result<Vec<T>> {
        let n = n.min(self.len);
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        stream.bind()?;
        // SAFETY: reads `n` elements that lie inside the allocation into a host buffer of
        // exactly that size; the stream is synchronized before `out` is used.
        unsafe { dres::memcpy_dtoh_async(&mut out[..], self.ptr, stream.raw.cu_stream()) }
            .map_err(drv)?;
        stream.sync()?;
        Ok(out)
    }

    /// Copy the whole buffer back to the host.
    pub fn to_vec(&self, stream: &Stream) -> Result<Vec<T>> {
        self.read(stream, self.len)
    }

    /// Set every byte to `byte` (for poisoning outputs in tests, or zeroing).
    pub fn fill_bytes(&mut self, stream: &Stream, byte: u8) -> Result<()> {
        stream.bind()?;
        // SAFETY: the range is exactly this allocation's used bytes.
        unsafe { dres::memset_d8_async(self.ptr, byte, self.nbytes(), stream.raw.cu_stream()) }
            .map_err(drv)
    }
}

impl<T: DevElem> Drop for DevBuf<T> {
    fn drop(&mut self) {
        self.pool.give(self.ptr, self.cap, self.pooled);
    }
}

/// A CUDA stream of a device. Each model or test has its own, so that graph capture on one
/// never sees another's launches.
pub struct Stream {
    raw: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl Stream {
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)
    }

    /// Wait for everything queued on the stream; reports an asynchronous kernel fault.
    pub fn sync(&self) -> Result<()> {
        self.raw.synchronize().map_err(drv)
    }

    /// Start capturing the launches of this thread on this stream into a graph.
    pub fn begin_capture(&self) -> Result<()> {
        self.raw
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv)
    }

    /// End the capture and instantiate the graph.
    pub fn end_capture(&self) -> Result<Graph> {
        let g = self
            .raw
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(drv)?
            .ok_or_else(|| Error::Unsupported("CUDA graph capture recorded nothing".into()))?;
        Ok(Graph(g))
    }

    /// A timing event recorded on this stream now.
    pub fn record(&self) -> Result<cudarc::driver::CudaEvent> {
        self.raw
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv)
    }
}

/// A CUDA event (for timing with [`Stream::record`]).
pub type Event = cudarc::driver::CudaEvent;

/// Milliseconds between two recorded events (waits for `end`).
pub fn elapsed_ms(start: &Event, end: &Event) -> Result<f64> {
    end.synchronize().map_err(drv)?;
    Ok(start.elapsed_ms(end).map_err(drv)? as f64)
}

/// An instantiated CUDA graph, replayed on the stream it was captured on.
pub struct Graph(cudarc::driver::CudaGraph);

impl Graph {
    pub fn launch(&self) -> Result<()> {
        self.0.launch().map_err(drv)
    }
}

/// One GPU: its context, the compiled kernels and the buffer pool.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    _module: Arc<CudaModule>,
    funcs: Vec<CudaFunction>,
    pool: Arc<Pool>,
    name: String,
    arch: String,
    ordinal: usize,
    sm_count: usize,
    max_smem_optin: usize,
    /// Programmatic dependent launch (sm_90+; `BITNET_CUDA_PDL=0` turns it off).
    pdl: AtomicBool,
    cc_major: i32,
    clusters: bool,
    /// Per kernel, block size and shared memory: the largest cluster (16, else 8) the
    /// device places, once asked.
    big_cluster: Mutex<HashMap<(usize, u32, u32), u32>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaDevice({} {}, {})",
            self.ordinal, self.name, self.arch
        )
    }
}

impl CudaDevice {
    /// Whether a CUDA device can be used (driver, NVRTC and at least one GPU).
    pub fn is_available() -> bool {
        driver_available() && nvrtc_available() && device_count().map(|n| n > 0).unwrap_or(false)
    }

    /// The device `ordinal`, created once per process (kernels compiled and loaded).
    pub fn new(ordinal: usize) -> Result<Arc<CudaDevice>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
        let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut g = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = g.get(&ordinal) {
            return Ok(d.clone());
        }
        let d = Arc::new(Self::create(ordinal)?);
        g.insert(ordinal, d.clone());
        Ok(d)
    }

    fn create(ordinal: usize) -> Result<CudaDevice> {
        if !driver_available() {
            return Err(no_driver());
        }
        if !nvrtc_available() {
            return Err(Error::Unsupported(
                "CUDA driver found but NVRTC (libnvrtc.so) was not: install the CUDA toolkit's \
                 NVRTC library (the kernels are compiled at run time)"
                    .into(),
            ));
        }
        let n = device_count()?;
        if ordinal >= n {
            return Err(Error::Unsupported(format!(
                "CUDA device {ordinal} requested, but {n} device(s) found"
            )));
        }
        guarded("device setup", || {
            let ctx = CudaContext::new(ordinal).map_err(drv)?;
            // SAFETY: this backend passes raw device pointers to kernels and orders all work
            // on explicit streams (each buffer is used by one stream at a time, synchronized
            // before it is freed), so cudarc's per-buffer events are not needed.
            unsafe { ctx.disable_event_tracking() };
            let (maj, min) = ctx.compute_capability().map_err(drv)?;
            if maj < 8 {
                return Err(Error::Unsupported(format!(
                    "CUDA device {ordinal} has compute capability {maj}.{min}; the int8 \
                     tensor-core kernels need 8.0 or newer"
                )));
            }
            let arch = format!("compute_{maj}{min}");
            let ptx = cached_ptx(&arch)?;
            let module = ctx.load_module(Ptx::from_src(ptx)).map_err(drv)?;
            let mut funcs = Vec::with_capacity(KERNEL_NAMES.len());
            for (i, (k, name)) in KERNEL_NAMES.iter().enumerate() {
                debug_assert_eq!(*k as usize, i);
                funcs.push(module.load_function(name).map_err(drv)?);
            }
            let name = ctx.name().map_err(drv)?;
            let attr = |a| ctx.attribute(a).map_err(drv).map(|v| v.max(0) as usize);
            let sm_count = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let max_smem_optin = attr(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?;
            let pool = Arc::new(Pool {
                ctx: ctx.clone(),
                free: Mutex::new(HashMap::new()),
                allocs: AtomicUsize::new(0),
                live_bytes: AtomicUsize::new(0),
            });
            let pdl = maj >= 9 && std::env::var("BITNET_CUDA_PDL").map_or(true, |v| v != "0");
            Ok(CudaDevice {
                pdl: AtomicBool::new(pdl),
                cc_major: maj,
                clusters: maj >= 9
                    && std::env::var("BITNET_CUDA_CLUSTERS").map_or(true, |v| v != "0"),
                big_cluster: Mutex::new(HashMap::new()),
                ctx,
                _module: module,
                funcs,
                pool,
                name,
                arch: format!("sm_{maj}{min}"),
                ordinal,
                sm_count,
                max_smem_optin,
            })
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sm_90` and the like.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Whether kernels are launched with programmatic dependent launch (each may start
    /// while the previous kernel of its stream drains; on by default on sm_90 and newer).
    pub fn pdl_enabled(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// Turn programmatic dependent launch on or off (only sm_90+ can turn it on); affects
    /// launches queued or captured afterwards.
    pub fn set_pdl(&self, on: bool) {
        self.pdl.store(on && self.cc_major >= 9, Ordering::Relaxed);
    }

    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(drv)
    }

    /// A new non-blocking stream.
    pub fn new_stream(&self) -> Result<Stream> {
        let raw = self.ctx.new_stream().map_err(drv)?;
        Ok(Stream {
            raw,
            ctx: self.ctx.clone(),
        })
    }

    /// A buffer of `len` elements from the pool (contents undefined).
    pub fn alloc<T: DevElem>(&self, len: usize) -> Result<DevBuf<T>> {
        self.alloc_impl(len, true)
    }

    /// A buffer of exactly `len` elements straight from the driver (for weights).
    pub fn alloc_exact<T: DevElem>(&self, len: usize) -> Result<DevBuf<T>> {
        self.alloc_impl(len, false)
    }

    fn alloc_impl<T: DevElem>(&self, len: usize, pooled: bool) -> Result<DevBuf<T>> {
        let bytes = len * std::mem::size_of::<T>();
        let (ptr, cap) = self.pool.take(bytes, pooled)?;
        Ok(DevBuf {
            ptr,
            len,
            cap,
            pooled,
            pool: self.pool.clone(),
            _t: PhantomData,
        })
    }

    /// Upload `src` into a new pooled buffer.
    pub fn upload<T: DevElem>(&self, stream: &Stream, src: &[T]) -> Result<DevBuf<T>> {
        let mut b = self.alloc(src.len())?;
        b.copy_from(stream, src)?;
        Ok(b)
    }

    /// Upload `src` into a new exact-size buffer (weights).
    pub fn upload_exact<T: DevElem>(&self, stream: &Stream, src: &[T]) -> Result<DevBuf<T>> {
        let mut b = self.alloc_exact(src.len())?;
        b.copy_from(stream, src)?;
        Ok(b)
    }

    /// Let `k` use up to `bytes` of dynamic shared memory.
    pub(crate) fn ensure_smem(&self, k: K, bytes: usize) -> Result<()> {
        if bytes <= 48 * 1024 {
            return Ok(());
        }
        if bytes > self.max_smem_optin {
            return Err(Error::Unsupported(format!(
                "kernel needs {bytes} bytes of shared memory, the device allows {}",
                self.max_smem_optin
            )));
        }
        self.funcs[k as usize]
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(drv)
    }

    /// How many blocks of `threads` threads and `smem` bytes of dynamic shared memory of
    /// kernel `k` fit on one multiprocessor at once.
    pub(crate) fn blocks_per_sm(&self, k: K, threads: u32, smem: usize) -> Result<usize> {
        self.funcs[k as usize]
            .occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
            .map(|n| n as usize)
            .map_err(drv)
    }

    /// Launch kernel `k`.
    pub(crate) fn launch(
        &self,
        k: K,
        stream: &Stream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        self.launch_impl(k, stream, grid, block, smem, args, LaunchMode::Plain)
    }

    /// Launch kernel `k` cooperatively: all its blocks are resident at once (the launch
    /// fails rather than queueing blocks), as grid-wide barriers need.
    pub(crate) fn launch_cooperative(
        &self,
        k: K,
        stream: &Stream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        self.launch_impl(k, stream, grid, block, smem, args, LaunchMode::Cooperative)
    }

    /// Whether kernels use thread-block clusters: sm_90+, unless `BITNET_CUDA_CLUSTERS=0`
    /// (then the decode attention merges its splits through global memory instead).
    pub(crate) fn has_clusters(&self) -> bool {
        self.clusters
    }

    /// 16 if the device can place a cluster of 16 blocks of kernel `k` (`threads` threads
    /// and `smem` bytes of dynamic shared memory each; 16 is beyond the portable cluster
    /// size, so the kernel is allowed it first), else 8. Asked once per kernel and block.
    pub(crate) fn cluster_size_up_to_16(&self, k: K, threads: u32, smem: u32) -> Result<u32> {
        let mut g = self.big_cluster.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&c) = g.get(&(k as usize, threads, smem)) {
            return Ok(c);
        }
        self.ctx.bind_to_thread().map_err(drv)?;
        let f = &self.funcs[k as usize];
        let fits = f
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )
            .is_ok()
            && {
                let mut attr = cluster_attr(16);
                let cfg = sys::CUlaunchConfig {
                    gridDimX: 16,
                    gridDimY: 1,
                    gridDimZ: 1,
                    blockDimX: threads,
                    blockDimY: 1,
                    blockDimZ: 1,
                    sharedMemBytes: smem,
                    hStream: std::ptr::null_mut(),
                    attrs: &mut attr,
                    numAttrs: 1,
                };
                let mut n = 0i32;
                // SAFETY: `cfg` and `attr` live across the call, `n` is a valid out-pointer
                // and the function handle belongs to this device's loaded module.
                let r = unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg) };
                r == sys::CUresult::CUDA_SUCCESS && n > 0
            };
        let c = if fits { 16 } else { 8 };
        g.insert((k as usize, threads, smem), c);
        Ok(c)
    }

    /// Launch kernel `k` in clusters of `cluster_x` blocks along x (sm_90+; `grid.0` a
    /// multiple of it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_cluster(
        &self,
        k: K,
        stream: &Stream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
        cluster_x: u32,
    ) -> Result<()> {
        if !self.has_clusters() || cluster_x == 0 || !grid.0.is_multiple_of(cluster_x) {
            return Err(Error::Unsupported(format!(
                "a cluster launch of {cluster_x} blocks (grid {grid:?}) on {}",
                self.arch
            )));
        }
        self.launch_impl(
            k,
            stream,
            grid,
            block,
            smem,
            args,
            LaunchMode::Cluster(cluster_x),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_impl(
        &self,
        k: K,
        stream: &Stream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
        mode: LaunchMode,
    ) -> Result<()> {
        if args.len() > 24 {
            return Err(Error::Unsupported("too many kernel arguments".into()));
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let mut ptrs: [*mut c_void; 24] = [std::ptr::null_mut(); 24];
        for (p, a) in ptrs.iter_mut().zip(args.iter()) {
            *p = match a {
                Arg::P(v) => v as *const u64 as *mut c_void,
                Arg::I(v) => v as *const i32 as *mut c_void,
                Arg::F(v) => v as *const f32 as *mut c_void,
            };
        }
        stream.bind()?;
        let pdl = self.pdl_enabled() && mode != LaunchMode::Cooperative;
        if mode != LaunchMode::Plain || pdl {
            // Programmatic dependent launch: this grid may start while the previous kernel
            // of the stream finishes; every kernel waits (`griddepcontrol.wait`) before it
            // touches data another kernel reads or writes, so only its prologue (loading
            // constant weights) overlaps the previous kernel. A cooperative grid (which does
            // not wait that way) starts after its predecessor as usual.
            let none = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_IGNORE,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue { pad: [0; 64] },
            };
            let mut attrs = [none; 2];
            let mut n = 0;
            if pdl {
                attrs[n].id =
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                attrs[n].value.programmaticStreamSerializationAllowed = 1;
                n += 1;
            }
            match mode {
                LaunchMode::Cooperative => {
                    attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                    attrs[n].value.cooperative = 1;
                    n += 1;
                }
                LaunchMode::Cluster(x) => {
                    attrs[n] = cluster_attr(x);
                    n += 1;
                }
                LaunchMode::Plain => {}
            }
            let cfg = sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block.0,
                blockDimY: block.1,
                blockDimZ: block.2,
                sharedMemBytes: smem,
                hStream: stream.raw.cu_stream(),
                attrs: attrs.as_mut_ptr(),
                numAttrs: n as u32,
            };
            // SAFETY: `cfg` and `attrs` live across the call; `ptrs` points at the argument
            // values in `args`, which outlive the call and match the kernel's parameter list
            // (each wrapper passes exactly the kernel's parameters, pointers as 64-bit device
            // addresses); cuLaunchKernelEx copies them.
            return unsafe {
                sys::cuLaunchKernelEx(
                    &cfg,
                    self.funcs[k as usize].cu_function(),
                    ptrs.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .result()
            .map_err(drv);
        }
        // SAFETY: `ptrs` points at the argument values in `args`, which outlive the call and
        // match the kernel's parameter list (each wrapper passes exactly the kernel's
        // parameters, pointers as 64-bit device addresses); cuLaunchKernel copies them.
        unsafe {
            dres::launch_kernel(
                self.funcs[k as usize].cu_function(),
                grid,
                block,
                smem,
                stream.raw.cu_stream(),
                &mut ptrs[..args.len()],
            )
        }
        .map_err(drv)
    }
}
