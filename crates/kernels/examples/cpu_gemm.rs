//! Times the CPU matrix paths on ESM2-650M's linear shapes (1344 tokens = 8 x 168):
//! candle's f32 `x.matmul(&w.t())` (what `--dtype f32` runs), rten-gemm's f32 kernel on a
//! prepacked weight, and rten-gemm's u8 x i8 kernel (weights per output channel, activations
//! per row) as the int8 linear runs it: quantize the rows, GEMM, remove the zero points (done
//! here: rten-gemm 0.27's own per-row zero point gave wrong sums past the first rows on AVX2),
//! scale back and add the bias.
//!
//! `cargo run --release -p virnucpro-kernels --example cpu_gemm [reps]`; threads: the machine's
//! (`RAYON_NUM_THREADS` sets both candle's and rten's).

use std::time::Instant;

use candle_core::{Device, Tensor};
use rten_gemm::{BiasVector, GemmExecutor, GemmInputA, GemmInputB, GemmOptions};
use rten_tensor::{Matrix, NdTensorView};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let f32_exec = GemmExecutor::<f32>::default();
    let i8_exec = GemmExecutor::<u8, i8, i32>::default();
    let qmax: f32 = if i8_exec.may_saturate() { 63.0 } else { 127.0 };
    println!(
        "threads {} | rten f32 kernel {} | rten int8 kernel {} (may saturate: {}, weights in +-{qmax})",
        candle_core::utils::get_num_threads(),
        f32_exec.kernel_name(),
        i8_exec.kernel_name(),
        i8_exec.may_saturate()
    );
    let m = 1344;
    println!(
        "{:>16} | {:>12} | {:>12} {:>6} | {:>12} {:>6} {:>9}",
        "shape", "candle f32", "rten f32", "x", "rten int8", "x", "rel.err"
    );
    for (name, k, n) in [
        ("qkv 1280->3840", 1280, 3840),
        ("o 1280->1280", 1280, 1280),
        ("ffn1 1280->5120", 1280, 5120),
        ("ffn2 5120->1280", 5120, 1280),
    ] {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (m, k), &dev)? * 1.0)?;
        let w = (Tensor::randn(0f32, 1.0, (n, k), &dev)? * (1.0 / (k as f64).sqrt()))?;
        let bias = Tensor::randn(0f32, 0.1, n, &dev)?;
        let flops = 2.0 * (m * k * n) as f64;

        // candle f32 (the f32 path today)
        let wt = w.t()?;
        let mut y_ref = None;
        let t_candle = time(reps, || {
            y_ref = Some(x.matmul(&wt).unwrap().broadcast_add(&bias).unwrap());
        });
        let y_ref: Vec<f32> = y_ref.unwrap().flatten_all()?.to_vec1()?;

        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let bv: Vec<f32> = bias.to_vec1()?;

        // rten f32, weight prepacked once
        let w_mat: Matrix<f32> = NdTensorView::from_data([n, k], &wv[..]);
        let packed_f32 = f32_exec.prepack_b(w_mat.transposed());
        let mut out = vec![0f32; m * n];
        let t_rf32 = time(reps, || {
            let a: Matrix<f32> = NdTensorView::from_data([m, k], &xv[..]);
            f32_exec
                .gemm(
                    &mut out,
                    GemmInputA::Unpacked(a),
                    GemmInputB::Packed(&packed_f32),
                    GemmOptions {
                        bias: Some(BiasVector::Row(&bv)),
                        ..Default::default()
                    },
                )
                .unwrap();
        });
        let err_f32 = rel_err(&out, &y_ref);

        // rten int8: symmetric per-output-channel weights, packed once
        let mut wq = vec![0i8; n * k];
        let mut w_scale = vec![0f32; n];
        for r in 0..n {
            let row = &wv[r * k..(r + 1) * k];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if amax > 0.0 { amax / qmax } else { 1.0 };
            w_scale[r] = s;
            for (q, v) in wq[r * k..(r + 1) * k].iter_mut().zip(row) {
                *q = (v / s).round().clamp(-qmax, qmax) as i8;
            }
        }
        let w_sum: Vec<i32> = wq
            .chunks(k)
            .map(|r| r.iter().map(|&v| v as i32).sum())
            .collect();
        let wq_mat: Matrix<i8> = NdTensorView::from_data([n, k], &wq[..]);
        let packed_i8 = i8_exec.prepack_b(wq_mat.transposed());
        let mut xq = vec![0u8; m * k];
        let mut x_scale = vec![0f32; m];
        let mut x_zero = vec![0u8; m];
        let mut acc = vec![0i32; m * n];
        let mut out8 = vec![0f32; m * n];
        let t_ri8 = time(reps, || {
            // activations: asymmetric u8 per row (dynamic)
            for r in 0..m {
                let row = &xv[r * k..(r + 1) * k];
                let (lo, hi) = row
                    .iter()
                    .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
                let zp = (-lo / s).round().clamp(0.0, 255.0);
                x_scale[r] = s;
                x_zero[r] = zp as u8;
                for (q, v) in xq[r * k..(r + 1) * k].iter_mut().zip(row) {
                    *q = (v / s + zp).round().clamp(0.0, 255.0) as u8;
                }
            }
            let a: Matrix<u8> = NdTensorView::from_data([m, k], &xq[..]);
            i8_exec
                .gemm(
                    &mut acc,
                    GemmInputA::Unpacked(a),
                    GemmInputB::Packed(&packed_i8),
                    GemmOptions::default(),
                )
                .unwrap();
            // remove the zero point: sum (q - zp) w = sum q w - zp sum w
            for r in 0..m {
                let (sr, zr) = (x_scale[r], x_zero[r] as i32);
                for c in 0..n {
                    let exact = acc[r * n + c] - zr * w_sum[c];
                    out8[r * n + c] = exact as f32 * (sr * w_scale[c]) + bv[c];
                }
            }
        });
        let err_i8 = rel_err(&out8, &y_ref);
        let g = |t: f64| flops / t / 1e9;
        println!(
            "{name:>16} | {:>7.1} GF/s | {:>7.1} GF/s {:>5.2}x | {:>7.1} GF/s {:>5.2}x {:>9.2e}  (rten f32 rel.err {err_f32:.1e})",
            g(t_candle),
            g(t_rf32),
            t_candle / t_rf32,
            g(t_ri8),
            t_candle / t_ri8,
            err_i8
        );
    }
    Ok(())
}
