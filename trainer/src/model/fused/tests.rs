//! Each fused op against the composite ops it replaces (f32, forward and gradients), and against
//! finite differences (f64).

use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::super::causal_mask;
use super::super::layers::{Rotary, attention_composite, rms_norm_composite, silu};
use super::*;
use crate::metrics::token_logps_composite;

/// Deterministic values in [-2, 2], varied enough to exercise every branch.
fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|i| 2.0 * (i as f64 * 0.737 + seed as f64 * 1.31).sin() * (i as f64 * 0.191).cos())
        .collect()
}

fn tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// An op under test: its inputs' shapes and the op itself over them.
type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

struct Case {
    name: &'static str,
    shapes: Vec<Vec<usize>>,
    fused: Op,
    composite: Op,
}

const HEADS: HeadLayout = HeadLayout {
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
};

/// The ops at a size that runs each kernel on the calling thread, or (`large`) one past
/// [`PARALLEL_MIN_WORK`], which runs them on rayon's pool.
fn cases(large: bool) -> Vec<Case> {
    let (rows, width, seq, batch, vocab) = if large {
        (300, 256, 32, 4, 5500)
    } else {
        (6, 16, 5, 2, 11)
    };
    let ids: Vec<u32> = (0..3 * 4).map(|i| (i * 7 % vocab) as u32).collect();
    let ids = Tensor::from_vec(ids, (3, 4), &Device::Cpu).unwrap();
    let rotary = Rotary::from_theta(HEADS.head_dim, 10_000.0);
    let inv_freq = rotary.inv_freq().to_vec();
    let attention = |heads: HeadLayout| {
        let inv_freq = inv_freq.clone();
        let rotary = rotary.clone();
        let (q, kv) = (heads.heads * 8, heads.kv_heads * 8);
        let n = batch * seq;
        Case {
            name: "causal_attention",
            shapes: vec![vec![n, q], vec![n, kv], vec![n, kv]],
            fused: Box::new(move |x| {
                causal_attention(&x[0], &x[1], &x[2], seq, heads, &inv_freq, &[])
            }),
            composite: Box::new(move |x| {
                let (dt, dev) = (x[0].dtype(), x[0].device());
                let (cos, sin) = rotary.tables(seq, dev)?;
                let mask = causal_mask(seq, dev)?.to_dtype(dt)?;
                let (cos, sin) = (cos.to_dtype(dt)?, sin.to_dtype(dt)?);
                attention_composite(&x[0], &x[1], &x[2], seq, heads, &cos, &sin, &mask)
            }),
        }
    };
    vec![
        Case {
            name: "rms_norm",
            shapes: vec![vec![2, rows / 2, width], vec![width]],
            fused: Box::new(|x| rms_norm(&x[0], &x[1], 1e-5)),
            composite: Box::new(|x| rms_norm_composite(&x[0], &x[1], 1e-5)),
        },
        Case {
            name: "swiglu",
            shapes: vec![vec![rows, width], vec![rows, width]],
            fused: Box::new(|x| swiglu(&x[0], &x[1])),
            composite: Box::new(|x| silu(&x[0])? * &x[1]),
        },
        attention(HEADS),
        attention(HeadLayout {
            kv_heads: 4,
            ..HEADS
        }),
        Case {
            name: "token_logps",
            shapes: vec![vec![3, 4, vocab]],
            fused: Box::new({
                let ids = ids.clone();
                move |x| token_logps(&x[0], &ids)
            }),
            composite: Box::new(move |x| token_logps_composite(&x[0], &ids)),
        },
    ]
}

fn max_abs(a: &Tensor) -> f32 {
    (a.abs().unwrap().flatten_all().unwrap().max(D::Minus1))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The largest difference between `a` and `b`, relative to the largest magnitude in `b` (at
/// least 1): f32 sums over hundreds of rows differ in their last bits.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1.0)
}

/// `Σ out · r` for a fixed `r`, so every output element weighs differently in the gradient.
fn weighted_sum(out: &Tensor) -> Tensor {
    let r = tensor(out.dims(), 99, out.dtype());
    (out * r).unwrap().sum_all().unwrap()
}

#[test]
fn fused_ops_match_the_composite_ops_forward_and_backward() {
    for case in cases(false).into_iter().chain(cases(true)) {
        let inputs: Vec<Var> = (case.shapes.iter().enumerate())
            .map(|(i, s)| Var::from_tensor(&tensor(s, i as u64 + 1, DType::F32)).unwrap())
            .collect();
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (fused, composite) = ((case.fused)(&xs).unwrap(), (case.composite)(&xs).unwrap());
        let worst = max_diff(&fused, &composite);
        assert!(worst < 1e-5, "{}: outputs differ by {worst}", case.name);
        let (gf, gc) = (
            weighted_sum(&fused).backward().unwrap(),
            weighted_sum(&composite).backward().unwrap(),
        );
        for (i, x) in xs.iter().enumerate() {
            let (a, b) = (gf.get(x).unwrap(), gc.get(x).unwrap());
            let worst = max_diff(a, b);
            assert!(
                worst < 1e-5,
                "{}: gradient {i} differs by {worst}",
                case.name
            );
        }
    }
}

#[test]
fn fused_op_gradients_match_finite_differences() {
    let h = 1e-6;
    for case in cases(false) {
        let xs: Vec<Tensor> = (case.shapes.iter().enumerate())
            .map(|(i, s)| tensor(s, i as u64 + 1, DType::F64))
            .collect();
        let vars: Vec<Var> = xs.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = weighted_sum(&(case.fused)(&inputs).unwrap())
            .backward()
            .unwrap();
        for (i, var) in vars.iter().enumerate() {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let original: Vec<f64> = xs[i].flatten_all().unwrap().to_vec1().unwrap();
            for j in (0..original.len()).step_by(original.len().div_ceil(7)) {
                let at = |delta: f64| -> f64 {
                    let mut moved = xs.clone();
                    let mut w = original.clone();
                    w[j] += delta;
                    moved[i] = Tensor::from_vec(w, xs[i].shape(), &Device::Cpu).unwrap();
                    let out = (case.fused)(&moved).unwrap();
                    weighted_sum(&out).to_scalar().unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                let g = analytic[j];
                assert!(
                    (numeric - g).abs() <= 1e-7 + 1e-6 * g.abs(),
                    "{}: input {i}[{j}]: backprop {g}, finite difference {numeric}",
                    case.name
                );
            }
        }
    }
}

/// The tiled transpose gives `t()`'s elements, for sizes that are and are not whole tiles, small
/// (one thread) and large (split over rayon), f32 and f64.
#[test]
fn transpose_matches_candles_transposed_copy() {
    for (rows, cols) in [(1, 1), (3, 70), (64, 32), (300, 257), (576, 1536)] {
        for dtype in [DType::F32, DType::F64] {
            let x = tensor(&[rows, cols], 5, dtype);
            let got = transpose(&x).unwrap();
            assert_eq!(got.dims(), [cols, rows]);
            let want = x.t().unwrap().contiguous().unwrap();
            let (got, want): (Vec<f64>, Vec<f64>) = (
                got.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                want.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            );
            assert_eq!(got, want, "{rows}×{cols} {dtype:?}");
        }
    }
}
