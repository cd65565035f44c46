//! What the engine's own CPU kernels ([`super::conv`], [`super::norm`]) share: run-time
//! choice of vector instructions, raw-pointer writes from parallel tasks, and the glue between
//! burn tensors and flex primitives.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};

/// burn-autodiff's tensor on a backend (not exported by name).
pub(crate) type AutodiffTensor<B> = FloatTensor<Autodiff<B>>;

/// Runs `$body` compiled for AVX-512 or AVX2 when the CPU has them (the crate itself is built
/// for baseline x86-64), else as is. Only vector widths change: no FMA contraction, the same
/// operations in the same order, so the results are bit-identical on every path.
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
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the feature.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the feature.
                    return unsafe { v3($($arg),*) };
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
