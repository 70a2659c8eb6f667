//! Smoke tests of MLX through mlx-rs on this platform: if these fail, the
//! runtime set-up (docs/mlx-on-linux.md) is broken, not our model code.

use mlx_rs::{transforms, Array};
use std::collections::HashMap;

#[test]
fn matmul_gives_known_values() {
    // [[1,2,3],[4,5,6]] x [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
    let a = Array::from_slice(&[1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = Array::from_slice(&[7.0_f32, 8.0, 9.0, 10.0, 11.0, 12.0], &[3, 2]);
    let c = a.matmul(&b).expect("matmul");
    assert_eq!(c.shape(), &[2, 2]);
    assert_eq!(c.as_slice::<f32>(), &[58.0, 64.0, 139.0, 154.0]);
}

#[test]
fn value_and_grad_of_a_quadratic() {
    // f(w) = sum((w * x - y)^2), df/dw = sum(2 (w x - y) x)
    let x = Array::from_slice(&[1.0_f32, 2.0, 3.0], &[3]);
    let y = Array::from_slice(&[2.0_f32, 3.0, 7.0], &[3]);
    let loss = move |inputs: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        let residual = inputs[0].multiply(&x)?.subtract(&y)?;
        Ok(vec![residual.square()?.sum(None)?])
    };
    let w = Array::from_slice(&[1.5_f32], &[1]);
    let (value, grad) = transforms::value_and_grad(loss)(&[w]).expect("value_and_grad");
    // residuals: -0.5, 0, -2.5 -> value 6.5; grad 2(-0.5*1 + 0*2 - 2.5*3) = -16
    assert!((value[0].as_slice::<f32>()[0] - 6.5).abs() < 1e-6);
    assert!((grad[0].as_slice::<f32>()[0] + 16.0).abs() < 1e-5);
}

#[test]
fn safetensors_round_trip_keeps_names_shapes_and_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weights.safetensors");
    let weight = Array::from_slice(&[0.25_f32, -1.0, 3.5, 8.0, 0.0, -0.125], &[2, 3]);
    let ids = Array::from_slice(&[7_i32, 11, 13], &[3]);
    let arrays: HashMap<String, Array> = [
        ("layers.0.weight".to_string(), weight.clone()),
        ("ids".to_string(), ids.clone()),
    ]
    .into_iter()
    .collect();
    let metadata: HashMap<String, String> = [("format".to_string(), "mlx".to_string())].into();
    Array::save_safetensors(&arrays, &metadata, &path).expect("save");

    let loaded = Array::load_safetensors(&path).expect("load");
    assert_eq!(loaded.len(), 2);
    let weight_back = &loaded["layers.0.weight"];
    assert_eq!(weight_back.shape(), &[2, 3]);
    assert_eq!(weight_back.as_slice::<f32>(), weight.as_slice::<f32>());
    assert_eq!(loaded["ids"].as_slice::<i32>(), &[7, 11, 13]);
}
