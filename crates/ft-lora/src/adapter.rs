//! LoRA / DoRA adapters: where they sit, their trainable arrays, and the
//! view that plugs them into the decoder's forward pass.

use crate::{LoraError, Result};
use ft_model::{layers::Linear, LayerAdapter, LinearAdapter, Model, ModelArgs, Projection};
use mlx_rs::{random, Array, Dtype};
use std::collections::HashMap;

/// Shape and placement of the adapters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// Rank `r` of the update `B·A`.
    pub rank: usize,
    /// Scaling numerator; the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the adapter input while training.
    pub dropout: f64,
    /// Adapted projections of each adapted layer.
    pub targets: Vec<Projection>,
    /// Adapted decoder layers (indices, ascending).
    pub layers: Vec<usize>,
    /// Weight-decomposed LoRA (a learned magnitude per output feature).
    pub dora: bool,
}

impl LoraSpec {
    /// The spec a configuration asks for on a model with `total_layers` blocks.
    pub fn from_config(config: &ft_config::LoraConfig, total_layers: usize) -> Self {
        let adapted = config.num_layers.resolve(total_layers);
        let targets = config
            .target_modules
            .targets()
            .into_iter()
            .filter_map(|target| Projection::from_name(target.as_str()))
            .collect();
        LoraSpec {
            rank: config.rank as usize,
            alpha: config.alpha,
            dropout: config.dropout,
            targets,
            layers: (total_layers - adapted..total_layers).collect(),
            dora: config.use_dora,
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }
}

/// One adapted projection: where it is and where its arrays start in the
/// parameter vector (`a`, `b`, then `m` for DoRA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraSlot {
    /// Decoder layer.
    pub layer: usize,
    /// Projection within the layer.
    pub projection: Projection,
    /// Input features of the frozen layer.
    pub in_features: i32,
    /// Output features of the frozen layer.
    pub out_features: i32,
    /// Index of `a` in the parameter vector.
    pub first: usize,
}

impl LoraSlot {
    /// The checkpoint key prefix, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn key(&self) -> String {
        self.projection.key(self.layer)
    }
}

/// Where the adapters are and how their arrays are laid out; holds no arrays.
#[derive(Clone, Debug)]
pub struct LoraLayout {
    /// The settings.
    pub spec: LoraSpec,
    /// Adapted projections, in layer then projection order.
    pub slots: Vec<LoraSlot>,
    lookup: HashMap<(usize, Projection), usize>,
}

impl LoraLayout {
    /// Lays adapters out on a model with arguments `args`.
    pub fn new(spec: LoraSpec, args: &ModelArgs) -> Result<Self> {
        if spec.rank == 0 {
            return Err(LoraError::Spec("lora.rank must be >= 1, got 0".into()));
        }
        if spec.targets.is_empty() {
            return Err(LoraError::Spec(
                "lora.target_modules selects no projection".into(),
            ));
        }
        if let Some(&bad) = spec.layers.iter().find(|&&l| l >= args.num_layers) {
            return Err(LoraError::Spec(format!(
                "layer {bad} is adapted but the model has {} layers",
                args.num_layers
            )));
        }
        let per_slot = if spec.dora { 3 } else { 2 };
        let mut slots = Vec::new();
        let mut lookup = HashMap::new();
        for &layer in &spec.layers {
            for &projection in &spec.targets {
                let (out_features, in_features) = args.projection_shape(projection);
                lookup.insert((layer, projection), slots.len());
                slots.push(LoraSlot {
                    layer,
                    projection,
                    in_features,
                    out_features,
                    first: slots.len() * per_slot,
                });
            }
        }
        Ok(Self {
            spec,
            slots,
            lookup,
        })
    }

    /// Arrays per slot: 2 (`a`, `b`) or 3 with DoRA's magnitude `m`.
    pub fn arrays_per_slot(&self) -> usize {
        if self.spec.dora {
            3
        } else {
            2
        }
    }

    /// Number of arrays in the parameter vector.
    pub fn num_arrays(&self) -> usize {
        self.slots.len() * self.arrays_per_slot()
    }

    /// The mlx-lm name of every array, in parameter order
    /// (`<key>.lora_a`, `<key>.lora_b`, `<key>.m`).
    pub fn array_names(&self) -> Vec<String> {
        let suffixes: &[&str] = if self.spec.dora {
            &["lora_a", "lora_b", "m"]
        } else {
            &["lora_a", "lora_b"]
        };
        self.slots
            .iter()
            .flat_map(|slot| suffixes.iter().map(move |s| format!("{}.{s}", slot.key())))
            .collect()
    }

    /// The expected shape of every array, in parameter order.
    pub fn array_shapes(&self) -> Vec<Vec<i32>> {
        let rank = self.spec.rank as i32;
        self.slots
            .iter()
            .flat_map(|slot| {
                let mut shapes = vec![vec![slot.in_features, rank], vec![rank, slot.out_features]];
                if self.spec.dora {
                    shapes.push(vec![slot.out_features]);
                }
                shapes
            })
            .collect()
    }

    /// Trainable parameters: the exact element count of all arrays.
    pub fn trainable_parameters(&self) -> u64 {
        self.array_shapes()
            .iter()
            .map(|shape| shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// The slot of a projection, if it is adapted.
    pub fn slot(&self, layer: usize, projection: Projection) -> Option<&LoraSlot> {
        self.lookup
            .get(&(layer, projection))
            .map(|&index| &self.slots[index])
    }

    /// A view that adapts the decoder with `params` (laid out as this layout
    /// says); `dropout_seed` turns dropout on (training) with masks drawn
    /// from that seed.
    pub fn view<'a>(&'a self, params: &'a [Array], dropout_seed: Option<u64>) -> LoraView<'a> {
        LoraView {
            layout: self,
            params,
            dropout_seed,
        }
    }
}

/// Adapters with their trainable arrays.
#[derive(Clone, Debug)]
pub struct LoraAdapters {
    /// Placement and layout.
    pub layout: LoraLayout,
    /// Trainable arrays, float32, in layout order.
    pub params: Vec<Array>,
}

impl LoraAdapters {
    /// Fresh adapters for `model`: `a` uniform in ±1/sqrt(in) (the LoRA
    /// paper's Kaiming-uniform init, as PEFT and mlx-lm do), `b` zero, so the
    /// adapted model starts equal to the base; DoRA's `m` starts at the row
    /// norms of the frozen weight.
    pub fn init(model: &Model, spec: LoraSpec, seed: u64) -> Result<Self> {
        let layout = LoraLayout::new(spec, &model.args)?;
        let rank = layout.spec.rank as i32;
        let mut key = random::key(seed)?;
        let mut params = Vec::with_capacity(layout.num_arrays());
        for slot in &layout.slots {
            let (next, sub) = random::split(&key, 2)?;
            key = next;
            let bound = 1.0 / (slot.in_features as f32).sqrt();
            params.push(random::uniform::<_, f32>(
                -bound,
                bound,
                &[slot.in_features, rank][..],
                &sub,
            )?);
            params.push(mlx_rs::ops::zeros::<f32>(&[rank, slot.out_features])?);
            if layout.spec.dora {
                let frozen = model.layers[slot.layer].projection(slot.projection);
                params.push(row_norms(&frozen.weight.dense(Dtype::Float32)?)?);
            }
        }
        mlx_rs::transforms::eval(params.iter())?;
        Ok(Self { layout, params })
    }

    /// The view used for inference (no dropout).
    pub fn view(&self) -> LoraView<'_> {
        self.layout.view(&self.params, None)
    }

    /// Bytes of the arrays as saved (float32).
    pub fn size_bytes(&self) -> u64 {
        self.layout.trainable_parameters() * 4
    }
}

/// `sqrt(sum(w^2))` over the input axis: one value per output feature.
pub(crate) fn row_norms(weight: &Array) -> mlx_rs::error::Result<Array> {
    weight.square()?.sum_axis(1, false)?.sqrt()
}

/// The adapted weight `W + scale·(AB)^T` of a frozen projection, float32
/// `(out, in)`: what DoRA normalises and what fusing writes.
pub(crate) fn merged_weight(
    frozen: &ft_model::Weight,
    a: &Array,
    b: &Array,
    scale: &Array,
) -> ft_model::Result<Array> {
    let weight = frozen.dense(Dtype::Float32)?;
    Ok(weight.add(&a.matmul(b)?.t().multiply(scale)?)?)
}

/// Adapters applied with a given set of arrays.
#[derive(Clone, Copy)]
pub struct LoraView<'a> {
    layout: &'a LoraLayout,
    params: &'a [Array],
    dropout_seed: Option<u64>,
}

/// Inverted dropout of a projection's input with probability `p`, the mask
/// drawn from `seed` and the slot (the same mask when a checkpointed layer
/// is recomputed); the identity without a seed (evaluation) or with `p = 0`.
fn dropout(
    p: f64,
    seed: Option<u64>,
    input: &Array,
    slot_index: usize,
) -> mlx_rs::error::Result<Array> {
    match seed {
        Some(seed) if p > 0.0 => {
            let key = random::key(ft_config::rng::mix_seed(seed, slot_index as u64))?;
            let keep = Array::from_f32((1.0 - p) as f32);
            let mask = random::bernoulli(&keep, input.shape(), &key)?;
            input
                .multiply(&mask.as_dtype(input.dtype())?)?
                .divide(&keep.as_dtype(input.dtype())?)
        }
        _ => Ok(input.clone()),
    }
}

impl LinearAdapter for LoraView<'_> {
    fn adapt(
        &self,
        layer: usize,
        projection: Projection,
        frozen: &Linear,
        input: &Array,
        base_output: Array,
    ) -> ft_model::Result<Array> {
        let Some(&slot_index) = self.layout.lookup.get(&(layer, projection)) else {
            return Ok(base_output);
        };
        let first = self.layout.slots[slot_index].first;
        let per_slot = self.layout.arrays_per_slot();
        apply_slot(
            &self.layout.spec,
            self.dropout_seed,
            slot_index,
            &self.params[first..first + per_slot],
            frozen,
            input,
            base_output,
        )
    }

    fn layer_adapter(&self, layer: usize) -> Option<(Vec<Array>, Box<dyn LayerAdapter>)> {
        let per_slot = self.layout.arrays_per_slot();
        let mut slots = Vec::new();
        let mut arrays = Vec::new();
        for (index, slot) in self.layout.slots.iter().enumerate() {
            if slot.layer == layer {
                slots.push((slot.projection, index));
                arrays.extend_from_slice(&self.params[slot.first..slot.first + per_slot]);
            }
        }
        let owned = LoraLayer {
            spec: self.layout.spec.clone(),
            dropout_seed: self.dropout_seed,
            slots,
        };
        Some((arrays, Box::new(owned)))
    }
}

/// One layer's adapters, owning their settings: what a gradient-checkpointed
/// layer recomputes with (see [`LinearAdapter::layer_adapter`]).
struct LoraLayer {
    spec: LoraSpec,
    dropout_seed: Option<u64>,
    /// Adapted projections of the layer with their slot index, in the order
    /// their arrays are handed over.
    slots: Vec<(Projection, usize)>,
}

impl LayerAdapter for LoraLayer {
    fn adapt(
        &self,
        projection: Projection,
        frozen: &Linear,
        input: &Array,
        base_output: Array,
        arrays: &[Array],
    ) -> ft_model::Result<Array> {
        let Some(position) = self.slots.iter().position(|(p, _)| *p == projection) else {
            return Ok(base_output);
        };
        let per_slot = if self.spec.dora { 3 } else { 2 };
        let mine = arrays
            .get(position * per_slot..(position + 1) * per_slot)
            .ok_or_else(|| {
                ft_model::Error::InvalidRequest(format!(
                    "{} adapter arrays for a layer with {} adapted projections",
                    arrays.len(),
                    self.slots.len()
                ))
            })?;
        apply_slot(
            &self.spec,
            self.dropout_seed,
            self.slots[position].1,
            mine,
            frozen,
            input,
            base_output,
        )
    }
}

/// A projection's output with its LoRA (or DoRA) update: `arrays` are the
/// slot's `a`, `b` and, with DoRA, `m`; dropout masks are drawn per slot.
fn apply_slot(
    spec: &LoraSpec,
    dropout_seed: Option<u64>,
    slot_index: usize,
    arrays: &[Array],
    frozen: &Linear,
    input: &Array,
    base_output: Array,
) -> ft_model::Result<Array> {
    let (a, b) = (&arrays[0], &arrays[1]);
    let scale = Array::from_f32(spec.scale() as f32);
    let x = dropout(spec.dropout, dropout_seed, input, slot_index)?;
    let update = x.matmul(a)?.matmul(b)?.multiply(&scale)?;
    let out_dtype = base_output.dtype();
    let output = base_output.add(&update.as_dtype(out_dtype)?)?;
    if !spec.dora {
        return Ok(output);
    }
    // DoRA: rescale rows by m / ||W + s·(AB)^T||, the norm held constant
    // in the backward pass as the DoRA paper recommends.
    let magnitude = &arrays[2];
    let adapted = merged_weight(&frozen.weight, a, b, &scale)?;
    let norms = mlx_rs::stop_gradient(&row_norms(&adapted)?)?;
    let factor = magnitude.divide(&norms)?.as_dtype(out_dtype)?;
    Ok(output.multiply(&factor)?)
}
