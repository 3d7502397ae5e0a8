//! Each loss against a scalar f64 evaluation of its formula in REFERENCE.md, written out again
//! independently of the tensor code.

use candle_core::{Device, Tensor, Var};

use super::*;

const BETA: f64 = 0.1;
// (logp_w, logp_l, ref_w, ref_l, len_w, len_l): margins of both signs, one large.
const PAIRS: [(f64, f64, f64, f64, f64, f64); 4] = [
    (-12.0, -15.0, -13.0, -14.0, 4.0, 5.0),
    (-20.0, -18.5, -19.0, -19.5, 6.0, 3.0),
    (-7.25, -30.0, -9.0, -10.0, 2.0, 7.0),
    (-3.0, -3.5, -3.0, -3.5, 1.0, 2.0),
];

fn sig(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}
fn fdpo(u: f64) -> f64 {
    -sig(u).ln()
}
fn fslic(u: f64) -> f64 {
    (1.0 - u).max(0.0)
}
fn fexp(u: f64) -> f64 {
    (-u).exp()
}
fn z(p: &(f64, f64, f64, f64, f64, f64)) -> f64 {
    BETA * ((p.0 - p.2) - (p.1 - p.3))
}
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}
fn var(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)
}

fn expected(kind: LossKind) -> Vec<f64> {
    let zs: Vec<f64> = PAIRS.iter().map(z).collect();
    PAIRS
        .iter()
        .zip(&zs)
        .map(|(p, &z)| match kind {
            LossKind::Sigmoid => fdpo(z),
            LossKind::Ipo => ((p.0 - p.2) / p.4 - (p.1 - p.3) / p.5 - 1.0 / (2.0 * BETA)).powi(2),
            LossKind::Hinge => fslic(z),
            LossKind::Slic { gamma } => (gamma - (p.0 / p.4 - p.1 / p.5)).max(0.0),
            LossKind::Robust { epsilon: e } => {
                ((1.0 - e) * fdpo(z) - e * fdpo(-z)) / (1.0 - 2.0 * e)
            }
            LossKind::Discopop { tau } => {
                let m = sig(z / tau);
                (1.0 - m) * fdpo(z) + m * fexp(z)
            }
            LossKind::Dbaql => {
                let w = sig(var(&zs.iter().map(|z| z / 0.05).collect::<Vec<_>>()));
                w * fdpo(z / 0.9) + (1.0 - w) * fexp(0.9 * z)
            }
            LossKind::Aql => {
                let mq = 0.5
                    + 0.01 * (sig(mean(&zs.iter().map(|z| z / 0.05).collect::<Vec<_>>())) - 0.5);
                let q = sig(mq - z / 0.05);
                q * fdpo(z) + (1.0 - q) * fslic(z)
            }
            LossKind::Aqfl => {
                let u: Vec<f64> = zs.iter().map(|z| z / 0.05).collect();
                let m1 = var(&u).sqrt() * mean(&u.iter().map(|x| sig(-x)).collect::<Vec<_>>());
                let m2 = m1 + 0.05 * (sig(mean(&u)) - m1);
                let r = sig(0.1 * (z / 0.05 - m2).abs());
                r * fdpo(z) + (1.0 - r) * fslic(z)
            }
            LossKind::Padll => {
                let rho = z / BETA;
                0.9 * (1.0 - 0.5 * f64::from(u8::from(rho < 0.0))) * fdpo(z)
            }
            LossKind::Cell => 0.5 * fexp(z) + 0.5 * fdpo(z),
            LossKind::Pfl => {
                if p.0 > p.1 {
                    fdpo(z) / 2.0
                } else {
                    2.0 * fslic(z)
                }
            }
        })
        .collect()
}

fn column(i: usize) -> Vec<f32> {
    PAIRS
        .iter()
        .map(|p| [p.0, p.1, p.2, p.3, p.4, p.5][i] as f32)
        .collect()
}

fn inputs(chosen: &Tensor) -> PairLogps {
    let t = |i| Tensor::new(column(i), &Device::Cpu).unwrap();
    PairLogps {
        chosen: chosen.clone(),
        rejected: t(1),
        ref_chosen: t(2),
        ref_rejected: t(3),
        chosen_len: t(4),
        rejected_len: t(5),
    }
}

const ALL: [&str; 12] = [
    "sigmoid", "ipo", "hinge", "slic", "robust", "discopop", "dbaql", "aql", "aqfl", "padll",
    "cell", "pfl",
];

#[test]
fn every_loss_matches_its_formula() {
    let chosen = Tensor::new(column(0), &Device::Cpu).unwrap();
    for name in ALL {
        let kind = LossKind::parse(name).unwrap();
        let got: Vec<f32> = pair_losses(kind, &inputs(&chosen), BETA)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, e) in got.iter().zip(expected(kind)) {
            let tol = 1e-5 * e.abs().max(1.0);
            assert!(
                (f64::from(*g) - e).abs() < tol,
                "{name}: got {g}, formula gives {e}"
            );
        }
    }
    let robust = LossKind::Robust { epsilon: 0.1 };
    let got: Vec<f32> = pair_losses(robust, &inputs(&chosen), BETA)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!((f64::from(got[0]) - expected(robust)[0]).abs() < 1e-5);
}

#[test]
fn every_loss_passes_a_gradient_to_the_policy() {
    for name in ALL {
        let kind = LossKind::parse(name).unwrap();
        let chosen = Var::new(column(0), &Device::Cpu).unwrap();
        let loss = objective(kind, &inputs(chosen.as_tensor()), BETA, 1.0).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(chosen.as_tensor()).expect("a gradient");
        let g: Vec<f32> = g.to_vec1().unwrap();
        assert!(
            g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
            "{name}: {g:?}"
        );
    }
}

#[test]
fn dpo_is_ln2_when_policy_equals_reference_and_nll_adds_per_token_nll() {
    let logps = Tensor::new(&[-4.0f32, -9.0], &Device::Cpu).unwrap();
    let lens = Tensor::new(&[2.0f32, 3.0], &Device::Cpu).unwrap();
    let p = PairLogps {
        chosen: logps.clone(),
        rejected: logps.clone(),
        ref_chosen: logps.clone(),
        ref_rejected: logps,
        chosen_len: lens.clone(),
        rejected_len: lens,
    };
    let l: f32 = objective(LossKind::Sigmoid, &p, 0.1, 0.0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((f64::from(l) - std::f64::consts::LN_2).abs() < 1e-6);
    let with_nll: f32 = objective(LossKind::Sigmoid, &p, 0.1, 0.5)
        .unwrap()
        .to_scalar()
        .unwrap();
    let nll = [4.0 / 2.0, 9.0 / 3.0].iter().sum::<f64>() / 2.0;
    assert!((f64::from(with_nll) - (std::f64::consts::LN_2 + 0.5 * nll)).abs() < 1e-5);
}

#[test]
fn logistic_pieces_have_the_right_gradient_at_zero_and_stay_finite_far_out() {
    let u = Var::new(&[0.0f32, 200.0, -200.0, 3.0], &Device::Cpu).unwrap();
    let total = (f_dpo(u.as_tensor()).unwrap() + sigmoid(u.as_tensor()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g: Vec<f32> = total
        .backward()
        .unwrap()
        .get(u.as_tensor())
        .unwrap()
        .to_vec1()
        .unwrap();
    // d/du [−log σ(u) + σ(u)] = −σ(−u) + σ(u)σ(−u).
    let want = |u: f64| -sig(-u) + sig(u) * sig(-u);
    for (got, u) in g.iter().zip([0.0, 200.0, -200.0, 3.0]) {
        assert!(
            (f64::from(*got) - want(u)).abs() < 1e-6,
            "at {u}: {got} vs {}",
            want(u)
        );
    }
    let v: Vec<f32> = f_dpo(u.as_tensor()).unwrap().to_vec1().unwrap();
    assert!((v[2] - 200.0).abs() < 1e-3 && v[1].abs() < 1e-6, "{v:?}");
}
