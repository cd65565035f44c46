//! What the engine's own CPU kernels ([`super::conv`], [`super::norm`]) share: run-time
//! choice of vector instructions, raw-pointer writes from parallel tasks, and the glue between
//! burn tensors and flex primitives.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};

/// burn-autodiff's tensor on a backend (not exported by name).
pub(crate) type AutodiffTensor<B> = FloatTensor<Autodiff<B>>;

/// The vector instruction level of our own kernels' loops ([`multiversion!`]).
///
/// Only our loops follow it: the `gemm` crate (matrix kernels, ours and burn's) and burn-flex's
/// own SIMD (macerator) pick their kernels from the CPU's features by themselves, with no way
/// to override them (docs/engine.md, "Reproducibility").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// The build's target (x86-64 baseline: SSE2).
    Baseline = 1,
    Avx2 = 2,
    Avx512 = 3,
}

impl Isa {
    pub(crate) const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|l| l.name() == s.trim().to_ascii_lowercase())
    }

    /// The highest level this CPU runs.
    pub(crate) fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            3 => Isa::Avx512,
            2 => Isa::Avx2,
            _ => Isa::Baseline,
        }
    }
}

/// The level in effect (0: not yet read).
static LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The environment variable that caps our kernels' level: `avx512`, `avx2` or `baseline`
/// (read once, at the first kernel call; a level above the CPU's is lowered to the CPU's, an
/// unknown value is ignored).
pub(crate) const ISA_ENV: &str = "DISTILLERY_ISA";

/// The level our kernels run at: the CPU's, or lower when [`ISA_ENV`] or [`set_isa`] says so.
/// Never above what the CPU runs.
#[inline]
pub(crate) fn isa() -> Isa {
    match LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
        0 => init_isa(),
        v => Isa::from_u8(v),
    }
}

#[cold]
fn init_isa() -> Isa {
    let cpu = Isa::detected();
    let want = std::env::var(ISA_ENV).ok().and_then(|v| Isa::parse(&v)).unwrap_or(cpu);
    let level = want.min(cpu);
    // A concurrent `set_isa` wins over the environment.
    let _ = LEVEL.compare_exchange(
        0,
        level as u8,
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    Isa::from_u8(LEVEL.load(std::sync::atomic::Ordering::Relaxed))
}

/// Sets the level of our kernels for the whole process (lowered to what the CPU runs) and
/// returns the level now in effect. Calls running meanwhile finish at the level they started
/// with. For tests; runs choose with [`ISA_ENV`].
#[cfg(test)]
pub(crate) fn set_isa(want: Isa) -> Isa {
    let level = want.min(Isa::detected());
    LEVEL.store(level as u8, std::sync::atomic::Ordering::Relaxed);
    level
}

/// What decides the engine's CPU arithmetic in this process, for a node's metrics and `doctor`: the CPU's
/// level (which the `gemm` crate and burn-flex follow) and our kernels' level, e.g.
/// `"avx512"` or `"avx512 (own kernels: avx2)"`.
pub(crate) fn isa_summary() -> String {
    let (cpu, ours) = (Isa::detected(), isa());
    if cpu == ours {
        cpu.name().to_string()
    } else {
        format!("{} (own kernels: {})", cpu.name(), ours.name())
    }
}

/// Runs `$body` compiled for AVX-512 or AVX2 when [`isa`] says so (the crate itself is built
/// for baseline x86-64), else as is. Only vector widths change: no FMA contraction, the same
/// operations in the same order, so the results are bit-identical at every level
/// (`engine_tests::own_kernels_are_bit_identical_at_every_isa_level`).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2")]
                unsafe fn v3($($arg: $ty),*) { body($($arg),*) }
                match $crate::engine::cpu::isa() {
                    // SAFETY: `isa()` is never above what the CPU runs.
                    $crate::engine::cpu::Isa::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above.
                    $crate::engine::cpu::Isa::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::engine::cpu::Isa::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// `dst[i] += src[i]`.
    pub(crate) fn add_into(src: &[f32], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += *s;
        }
    }
}

/// Raw pointer that parallel tasks may share; every use writes a region no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only used for disjoint writes (see each use).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer moved by `offset` (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer was taken from.
        unsafe { self.0.add(offset) }
    }

    /// Elements `r` as a slice.
    ///
    /// # Safety
    /// `r` lies inside the buffer, and no other task reads or writes it meanwhile.
    pub(crate) unsafe fn run<'a>(self, r: std::ops::Range<usize>) -> &'a mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start), r.len()) }
    }

    /// Like [`SendPtr::run`], for a buffer not yet initialised.
    ///
    /// # Safety
    /// As for [`SendPtr::run`].
    pub(crate) unsafe fn run_uninit<'a>(
        self,
        r: std::ops::Range<usize>,
    ) -> &'a mut [std::mem::MaybeUninit<f32>] {
        // SAFETY: guaranteed by the caller; MaybeUninit makes no claim about the contents.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start).cast(), r.len()) }
    }
}

/// A flex tensor's values (borrowed when contiguous, else copied). The caller has checked the
/// dtype is f32.
pub(crate) fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    if t.is_contiguous()
        && let Some((a, b)) = t.layout().contiguous_offsets()
    {
        return std::borrow::Cow::Borrowed(&t.storage::<f32>()[a..b]);
    }
    let c = t.to_contiguous();
    let (a, b) = c.layout().contiguous_offsets().expect("a contiguous copy");
    std::borrow::Cow::Owned(c.storage::<f32>()[a..b].to_vec())
}

/// A contiguous f32 flex tensor.
pub(crate) fn flex(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// The f32 flex primitive of a tensor tracked by autodiff (tracked or not by a graph).
pub(crate) fn tracked<const D: usize>(t: &Tensor<D>) -> Option<AutodiffTensor<Flex>> {
    let p = t.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    (p.primitive().dtype() == DType::F32).then_some(p)
}

/// The f32 flex primitive of a tensor without autodiff.
pub(crate) fn plain<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    (p.dtype() == DType::F32).then_some(p)
}
