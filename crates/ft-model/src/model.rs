//! The Llama/Mistral decoder: RMSNorm, RoPE (with Llama-3 scaling),
//! grouped-query attention with optional sliding window, SwiGLU MLP, tied or
//! separate output head. Field names follow the Hugging Face checkpoint keys.

use crate::config::ModelArgs;
use crate::layers::{Linear, Weight};
use crate::Result;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::{ops, Array, Dtype};

/// A projection inside a decoder layer, named as in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// MLP gate.
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Projection {
    /// All projections, in checkpoint order.
    pub const ALL: [Projection; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The checkpoint module name, e.g. `q_proj`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The parent module: `self_attn` or `mlp`.
    pub fn parent(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        }
    }

    /// Parses a module name such as `v_proj`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The checkpoint key prefix of this projection in `layer`.
    pub fn key(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.parent(), self.name())
    }
}

/// Adds to the output of a projection: how adapters (LoRA, in ft-lora)
/// plug into the decoder without the decoder knowing about them.
pub trait LinearAdapter {
    /// Returns the projection's output given its input, the frozen layer
    /// and the frozen layer's output.
    fn adapt(
        &self,
        layer: usize,
        projection: Projection,
        frozen: &Linear,
        input: &Array,
        base_output: Array,
    ) -> Result<Array>;

    /// For gradient checkpointing: the arrays this adapter trains in decoder
    /// layer `layer`, and an owned adapter for that layer that applies them
    /// when handed (copies of) those arrays, so the layer can be recomputed
    /// in the backward pass with gradients flowing to them. `None` (the
    /// default) leaves the layer un-checkpointed: an adapter with trainable
    /// arrays must return them here for checkpointing to save memory.
    fn layer_adapter(&self, _layer: usize) -> Option<(Vec<Array>, Box<dyn LayerAdapter>)> {
        None
    }
}

/// One decoder layer's share of a [`LinearAdapter`], owning what it needs
/// and taking the layer's trainable arrays as an argument (see
/// [`LinearAdapter::layer_adapter`]).
pub trait LayerAdapter {
    /// [`LinearAdapter::adapt`] for this layer, with `arrays` in place of
    /// the adapter's own arrays of the layer.
    fn adapt(
        &self,
        projection: Projection,
        frozen: &Linear,
        input: &Array,
        base_output: Array,
        arrays: &[Array],
    ) -> Result<Array>;
}

/// A [`LayerAdapter`] with its arrays, seen as a [`LinearAdapter`] of one layer.
struct LayerArrays<'a> {
    layer: usize,
    adapter: &'a dyn LayerAdapter,
    arrays: &'a [Array],
}

impl LinearAdapter for LayerArrays<'_> {
    fn adapt(
        &self,
        layer: usize,
        projection: Projection,
        frozen: &Linear,
        input: &Array,
        base_output: Array,
    ) -> Result<Array> {
        if layer != self.layer {
            return Ok(base_output);
        }
        self.adapter
            .adapt(projection, frozen, input, base_output, self.arrays)
    }
}

/// The identity adapter: the base model.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAdapter;

impl LinearAdapter for NoAdapter {
    fn adapt(
        &self,
        _: usize,
        _: Projection,
        _: &Linear,
        _: &Array,
        base_output: Array,
    ) -> Result<Array> {
        Ok(base_output)
    }
}

/// Self-attention projections.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
}

/// SwiGLU MLP projections.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

/// One decoder block.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    /// RMSNorm weight before attention.
    pub input_layernorm: Array,
    /// Attention.
    pub self_attn: Attention,
    /// RMSNorm weight before the MLP.
    pub post_attention_layernorm: Array,
    /// MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// The linear layer for `projection`.
    pub fn projection(&self, projection: Projection) -> &Linear {
        match projection {
            Projection::Q => &self.self_attn.q_proj,
            Projection::K => &self.self_attn.k_proj,
            Projection::V => &self.self_attn.v_proj,
            Projection::O => &self.self_attn.o_proj,
            Projection::Gate => &self.mlp.gate_proj,
            Projection::Up => &self.mlp.up_proj,
            Projection::Down => &self.mlp.down_proj,
        }
    }

    /// Mutable access to the linear layer for `projection`.
    pub fn projection_mut(&mut self, projection: Projection) -> &mut Linear {
        match projection {
            Projection::Q => &mut self.self_attn.q_proj,
            Projection::K => &mut self.self_attn.k_proj,
            Projection::V => &mut self.self_attn.v_proj,
            Projection::O => &mut self.self_attn.o_proj,
            Projection::Gate => &mut self.mlp.gate_proj,
            Projection::Up => &mut self.mlp.up_proj,
            Projection::Down => &mut self.mlp.down_proj,
        }
    }
}

/// Keys and values of earlier positions, per layer, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Array, Array)>>,
    offset: i32,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            offset: 0,
        }
    }

    /// Number of positions already processed.
    pub fn offset(&self) -> i32 {
        self.offset
    }
}

/// Which keys each query may attend to, beyond causality.
#[derive(Clone, Copy, Debug)]
pub enum AttentionScope<'a> {
    /// Every earlier position of the sequence.
    Causal,
    /// Only earlier positions with the same segment id (packed sequences);
    /// `segments` has shape `(batch, length)`.
    Segments(&'a Array),
}

/// A Llama/Mistral decoder with its weights.
#[derive(Clone, Debug)]
pub struct Model {
    /// Hyper-parameters.
    pub args: ModelArgs,
    /// Token embedding `(vocab, hidden)`.
    pub embed_tokens: Weight,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm weight.
    pub norm: Array,
    /// Output head; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// Llama-3 scaled RoPE periods (None: plain `rope_theta`).
    pub(crate) rope_periods: Option<Array>,
    /// Recompute each layer's activations in the backward pass instead of
    /// keeping them (see [`Model::set_gradient_checkpointing`]).
    gradient_checkpointing: bool,
}

impl Model {
    /// Assembles a model and precomputes what the forward pass needs.
    pub fn new(
        args: ModelArgs,
        embed_tokens: Weight,
        layers: Vec<DecoderLayer>,
        norm: Array,
        lm_head: Option<Linear>,
    ) -> Self {
        let rope_periods = args.rope_scaling.as_ref().map(|scaling| {
            let periods = llama3_rope_periods(args.head_dim, args.rope_theta, scaling);
            Array::from_slice(&periods, &[periods.len() as i32])
        });
        Self {
            args,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_periods,
            gradient_checkpointing: false,
        }
    }

    /// Gradient checkpointing per decoder layer: in a gradient computation,
    /// only each layer's input is kept and the layer is recomputed in the
    /// backward pass (MLX's `checkpoint`), trading about one more forward
    /// pass for the activation memory of all layers but one. Applies to
    /// forward passes without a KV cache, and to layers whose adapter
    /// provides [`LinearAdapter::layer_adapter`].
    pub fn set_gradient_checkpointing(&mut self, enabled: bool) {
        self.gradient_checkpointing = enabled;
    }

    /// Whether gradient checkpointing is on.
    pub fn gradient_checkpointing(&self) -> bool {
        self.gradient_checkpointing
    }

    /// Logits `(batch, length, vocab)` for token ids `(batch, length)`.
    pub fn forward(
        &self,
        ids: &Array,
        adapter: &dyn LinearAdapter,
        cache: Option<&mut KvCache>,
        scope: AttentionScope<'_>,
    ) -> Result<Array> {
        let hidden = self.hidden_states(ids, adapter, cache, scope)?;
        self.logits(&hidden)
    }

    /// Final normalised hidden states `(batch, length, hidden)`.
    pub fn hidden_states(
        &self,
        ids: &Array,
        adapter: &dyn LinearAdapter,
        mut cache: Option<&mut KvCache>,
        scope: AttentionScope<'_>,
    ) -> Result<Array> {
        let shape = ids.shape();
        if shape.len() != 2 {
            return Err(crate::Error::InvalidRequest(format!(
                "token ids must have shape (batch, length), got {shape:?}"
            )));
        }
        let (batch, length) = (shape[0], shape[1]);
        let offset = cache.as_ref().map_or(0, |c| c.offset);
        let mask = self.attention_mask(length, offset, scope)?;
        let flat = ids.reshape(&[-1])?;
        let mut hidden = self.embed_tokens.rows(&flat)?.reshape(&[
            batch,
            length,
            self.args.hidden_size as i32,
        ])?;
        let context = LayerContext {
            args: &self.args,
            rope_periods: self.rope_periods.as_ref(),
        };
        for (index, layer) in self.layers.iter().enumerate() {
            if self.gradient_checkpointing && cache.is_none() {
                if let Some((arrays, layer_adapter)) = adapter.layer_adapter(index) {
                    hidden = self.checkpointed_layer(
                        index,
                        &hidden,
                        arrays,
                        layer_adapter,
                        mask.clone(),
                    )?;
                    continue;
                }
            }
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[index]);
            hidden = context.layer_forward(
                index,
                layer,
                &hidden,
                adapter,
                layer_cache,
                offset,
                mask.as_ref(),
            )?;
        }
        if let Some(cache) = cache {
            cache.offset += length;
        }
        Ok(fast::rms_norm(
            &hidden,
            Some(&self.norm),
            self.args.rms_norm_eps,
        )?)
    }

    /// Output logits for hidden states.
    pub fn logits(&self, hidden: &Array) -> Result<Array> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.embed_tokens.apply(hidden),
        }
    }

    /// Layer `index` through MLX's checkpoint: its inputs are the hidden
    /// states and the layer's trainable arrays; the function owns copies of
    /// the frozen layer and settings, as it may run again in the backward pass.
    fn checkpointed_layer(
        &self,
        index: usize,
        hidden: &Array,
        arrays: Vec<Array>,
        layer_adapter: Box<dyn LayerAdapter>,
        mask: Option<Array>,
    ) -> Result<Array> {
        let layer = self.layers[index].clone();
        let args = self.args.clone();
        let rope_periods = self.rope_periods.clone();
        let function = move |inputs: &[Array]| -> Result<Vec<Array>> {
            let (x, arrays) = inputs.split_first().ok_or_else(|| {
                crate::Error::InvalidRequest("checkpointed layer without input".into())
            })?;
            let context = LayerContext {
                args: &args,
                rope_periods: rope_periods.as_ref(),
            };
            let adapter = LayerArrays {
                layer: index,
                adapter: layer_adapter.as_ref(),
                arrays,
            };
            let out = context.layer_forward(index, &layer, x, &adapter, None, 0, mask.as_ref())?;
            Ok(vec![out])
        };
        let mut inputs = Vec::with_capacity(arrays.len() + 1);
        inputs.push(hidden.clone());
        inputs.extend(arrays);
        crate::grad_checkpoint::call(Box::new(function), &inputs)?
            .pop()
            .ok_or_else(|| crate::Error::InvalidRequest("checkpointed layer gave no output".into()))
    }

    /// An additive mask when plain causal masking is not enough: a cache
    /// offset with several new positions, a sliding window, or segments.
    fn attention_mask(
        &self,
        length: i32,
        offset: i32,
        scope: AttentionScope<'_>,
    ) -> Result<Option<Array>> {
        let total = offset + length;
        let window_applies = self
            .args
            .sliding_window
            .is_some_and(|window| (window as i32) < total);
        let segmented = matches!(scope, AttentionScope::Segments(_));
        // One new position, or a fresh sequence: sdpa's own causal mode suffices.
        if !window_applies && !segmented && (length == 1 || offset == 0) {
            return Ok(None);
        }
        let query_pos = ops::arange::<_, i32>(offset, total, None)?.reshape(&[length, 1])?;
        let key_pos = ops::arange::<_, i32>(0, total, None)?.reshape(&[1, total])?;
        let mut allowed = key_pos.le(&query_pos)?;
        if let Some(window) = self.args.sliding_window {
            let earliest = query_pos.subtract(Array::from_int(window as i32))?;
            allowed = allowed.logical_and(&key_pos.gt(&earliest)?)?;
        }
        if let AttentionScope::Segments(segments) = scope {
            let (batch, seg_len) = (segments.shape()[0], segments.shape()[1]);
            if seg_len != total {
                return Err(crate::Error::InvalidRequest(format!(
                    "segments cover {seg_len} positions, the sequence has {total}"
                )));
            }
            let rows = segments
                .take_axis(ops::arange::<_, i32>(offset, total, None)?, 1)?
                .reshape(&[batch, 1, length, 1])?;
            let cols = segments.reshape(&[batch, 1, 1, total])?;
            allowed = allowed.logical_and(&rows.eq(&cols)?)?;
        }
        let zero = Array::from_f32(0.0).as_dtype(self.compute_dtype())?;
        let blocked = Array::from_f32(f32::NEG_INFINITY).as_dtype(self.compute_dtype())?;
        Ok(Some(ops::select(&allowed, &zero, &blocked)?))
    }

    /// The dtype activations run in (that of the final norm weight).
    pub fn compute_dtype(&self) -> Dtype {
        self.norm.dtype()
    }

    /// Every weight matrix: the embedding, each layer's projections, the
    /// output head when it is not tied.
    pub fn weights(&self) -> impl Iterator<Item = &Weight> {
        std::iter::once(&self.embed_tokens)
            .chain(self.layers.iter().flat_map(|layer| {
                Projection::ALL
                    .into_iter()
                    .map(move |projection| &layer.projection(projection).weight)
            }))
            .chain(self.lm_head.iter().map(|head| &head.weight))
    }

    /// Number of parameters: every matrix's values (quantized ones
    /// unpacked) plus the RMSNorm weights.
    pub fn parameters(&self) -> u64 {
        let norms = (self.layers.len() * 2 + 1) * self.args.hidden_size;
        self.weights().map(Weight::parameters).sum::<u64>() + norms as u64
    }

    /// Every weight array with its checkpoint key (`.weight`, `.scales`, `.biases`).
    pub fn named_weights(&self) -> Vec<(String, Array)> {
        let mut named = Vec::new();
        let mut push_weight = |prefix: &str, weight: &Weight| {
            for (suffix, array) in weight.named_parts() {
                named.push((format!("{prefix}.{suffix}"), array.clone()));
            }
        };
        push_weight("model.embed_tokens", &self.embed_tokens);
        for (index, layer) in self.layers.iter().enumerate() {
            for projection in Projection::ALL {
                push_weight(&projection.key(index), &layer.projection(projection).weight);
            }
        }
        if let Some(head) = &self.lm_head {
            push_weight("lm_head", &head.weight);
        }
        for (index, layer) in self.layers.iter().enumerate() {
            named.push((
                format!("model.layers.{index}.input_layernorm.weight"),
                layer.input_layernorm.clone(),
            ));
            named.push((
                format!("model.layers.{index}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.clone(),
            ));
        }
        named.push(("model.norm.weight".into(), self.norm.clone()));
        named
    }
}

/// What a decoder layer's forward pass needs from the model besides the
/// layer itself (borrowed, so an owned copy can serve a checkpointed layer).
struct LayerContext<'a> {
    args: &'a ModelArgs,
    rope_periods: Option<&'a Array>,
}

impl LayerContext<'_> {
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        index: usize,
        layer: &DecoderLayer,
        x: &Array,
        adapter: &dyn LinearAdapter,
        cache: Option<&mut Option<(Array, Array)>>,
        offset: i32,
        mask: Option<&Array>,
    ) -> Result<Array> {
        let eps = self.args.rms_norm_eps;
        let normed = fast::rms_norm(x, Some(&layer.input_layernorm), eps)?;
        let attended = self.attention(index, layer, &normed, adapter, cache, offset, mask)?;
        let h = x.add(&attended)?;
        let normed = fast::rms_norm(&h, Some(&layer.post_attention_layernorm), eps)?;
        let project = |p: Projection, input: &Array| project(layer, index, adapter, p, input);
        let gate = project(Projection::Gate, &normed)?;
        let up = project(Projection::Up, &normed)?;
        let activated = mlx_rs::nn::silu(&gate)?.multiply(&up)?;
        let down = project(Projection::Down, &activated)?;
        Ok(h.add(&down)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        index: usize,
        layer: &DecoderLayer,
        x: &Array,
        adapter: &dyn LinearAdapter,
        cache: Option<&mut Option<(Array, Array)>>,
        offset: i32,
        mask: Option<&Array>,
    ) -> Result<Array> {
        let args = self.args;
        let (batch, length) = (x.shape()[0], x.shape()[1]);
        let head_dim = args.head_dim as i32;
        let project = |p: Projection, input: &Array| project(layer, index, adapter, p, input);
        let split_heads = |t: Array, heads: usize| -> Result<Array> {
            Ok(t.reshape(&[batch, length, heads as i32, head_dim])?
                .transpose_axes(&[0, 2, 1, 3])?)
        };
        let queries = split_heads(project(Projection::Q, x)?, args.num_heads)?;
        let keys = split_heads(project(Projection::K, x)?, args.num_kv_heads)?;
        let values = split_heads(project(Projection::V, x)?, args.num_kv_heads)?;
        let (base, periods) = match self.rope_periods {
            Some(periods) => (None, Some(periods)),
            None => (Some(args.rope_theta), None),
        };
        let queries = fast::rope(&queries, head_dim, false, base, 1.0, offset, periods)?;
        let mut keys = fast::rope(&keys, head_dim, false, base, 1.0, offset, periods)?;
        let mut values = values;
        if let Some(slot) = cache {
            if let Some((old_keys, old_values)) = slot.take() {
                keys = ops::concatenate(&[old_keys, keys], 2)?;
                values = ops::concatenate(&[old_values, values], 2)?;
            }
            *slot = Some((keys.clone(), values.clone()));
        }
        let scale = 1.0 / (args.head_dim as f32).sqrt();
        let output = match (mask, length) {
            (Some(mask), _) => fast::scaled_dot_product_attention(
                &queries,
                &keys,
                &values,
                scale,
                ScaledDotProductAttentionMask::Array(mask),
                None,
            )?,
            (None, 1) => {
                fast::scaled_dot_product_attention(&queries, &keys, &values, scale, None, None)?
            }
            (None, _) => fast::scaled_dot_product_attention(
                &queries,
                &keys,
                &values,
                scale,
                ScaledDotProductAttentionMask::Causal,
                None,
            )?,
        };
        let merged = output.transpose_axes(&[0, 2, 1, 3])?.reshape(&[
            batch,
            length,
            (args.num_heads as i32) * head_dim,
        ])?;
        project(Projection::O, &merged)
    }
}

/// A projection of `layer` (number `index`) with its adapter applied.
fn project(
    layer: &DecoderLayer,
    index: usize,
    adapter: &dyn LinearAdapter,
    projection: Projection,
    input: &Array,
) -> Result<Array> {
    let frozen = layer.projection(projection);
    let base = frozen.forward(input)?;
    adapter.adapt(index, projection, frozen, input, base)
}

/// Llama-3 RoPE: long wavelengths are stretched by `factor`, short ones
/// kept, the band between interpolated. Returns MLX's `freqs` (periods).
fn llama3_rope_periods(
    head_dim: usize,
    theta: f32,
    scaling: &crate::config::RopeScaling,
) -> Vec<f32> {
    let original = scaling.original_max_position_embeddings as f32;
    let low_freq_wavelen = original / scaling.low_freq_factor;
    let high_freq_wavelen = original / scaling.high_freq_factor;
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            let period = theta.powf(i as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI * period;
            if wavelen > low_freq_wavelen {
                period * scaling.factor
            } else if wavelen < high_freq_wavelen {
                period
            } else {
                let smooth = (original / wavelen - scaling.low_freq_factor)
                    / (scaling.high_freq_factor - scaling.low_freq_factor);
                period / ((1.0 - smooth) / scaling.factor + smooth)
            }
        })
        .collect()
}
