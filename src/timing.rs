//! Timing device work: CUDA events around a batch of calls on a CUDA device (device work is
//! asynchronous, so host clocks alone would time the enqueueing), host clock plus synchronize
//! elsewhere. Warm-up first; the median of many repeats is reported.

use std::time::Instant;

use candle_core::Device;

/// Times of one measured operation, per call.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Timed repeats (each `inner` calls back to back).
    pub repeats: usize,
    pub inner: usize,
}

/// Runs `f` `warmup` times, then `repeats` times `inner` calls, where `inner` is picked so that one
/// repeat lasts about `target_ms` (at least 1 call, at most 1000). Returns per-call times.
pub fn measure<F>(
    dev: &Device,
    warmup: usize,
    repeats: usize,
    target_ms: f64,
    mut f: F,
) -> candle_core::Result<Timing>
where
    F: FnMut() -> candle_core::Result<()>,
{
    for _ in 0..warmup.max(1) {
        f()?;
    }
    dev.synchronize()?;
    let mut timer = Timer::new(dev)?;
    let one = timer.time(dev, 1, &mut f)?;
    let inner = if one > 0.0 {
        ((target_ms / one).round() as usize).clamp(1, 1000)
    } else {
        1000
    };
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        times.push(timer.time(dev, inner, &mut f)? / inner as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing {
        median_ms: times[times.len() / 2],
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        repeats: times.len(),
        inner,
    })
}

enum Timer {
    Host,
    #[cfg(feature = "cuda")]
    Events(std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>),
}

impl Timer {
    fn new(dev: &Device) -> candle_core::Result<Self> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(c) = dev {
            return Ok(Self::Events(c.cuda_stream()));
        }
        let _ = dev;
        Ok(Self::Host)
    }

    /// Milliseconds for `n` back-to-back calls.
    fn time<F>(&mut self, dev: &Device, n: usize, f: &mut F) -> candle_core::Result<f64>
    where
        F: FnMut() -> candle_core::Result<()>,
    {
        match self {
            Self::Host => {
                dev.synchronize()?;
                let t0 = Instant::now();
                for _ in 0..n {
                    f()?;
                }
                dev.synchronize()?;
                Ok(t0.elapsed().as_secs_f64() * 1e3)
            }
            #[cfg(feature = "cuda")]
            Self::Events(stream) => {
                use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
                use candle_core::cuda_backend::WrapErr;
                let start = stream
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .w()?;
                for _ in 0..n {
                    f()?;
                }
                let end = stream
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .w()?;
                let ms = start.elapsed_ms(&end).w()?;
                Ok(ms as f64)
            }
        }
    }
}
