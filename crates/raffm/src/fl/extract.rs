//! Sub-model extraction as index selection (paper eq. 6), over every axis of the family's
//! elastic description.
//!
//! [`select`] chooses which indices of every axis a sub-model of given [`Widths`] keeps,
//! by the index [`Strategy`] and, for depth, the [`DepthPolicy`]; the
//! [`IndexMap`](crate::core::elastic::index::IndexMap) derived from the selection says, for every
//! tensor of the sub-model, which global tensor and which of its indices it came from.
//! Extraction gathers by that map; aggregation scatters back by the same map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::checkpoint::Checkpoint;
use crate::core::contract::Placement;
use crate::core::elastic::index::{index_map, IndexMap, Kept, Selection};
use crate::core::elastic::{Axis, Scope, Widths};
use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::core::tensor::HostTensor;
use crate::models::families::ModelConfig;

/// How the kept indices are chosen, for ablations against the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// RaFFM: leading indices of the prioritized model.
    Salient,
    /// HeteroFL: leading indices of the model as it is (not prioritized).
    Static,
    /// FedRolex: a cyclic window per axis that advances by one index each round.
    Rolling,
    /// Seeded random indices per round, client and layer.
    Random,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "salient" => Ok(Strategy::Salient),
            "static" => Ok(Strategy::Static),
            "rolling" => Ok(Strategy::Rolling),
            "random" => Ok(Strategy::Random),
            _ => Err(format!(
                "unknown strategy `{s}` (expected salient, static, rolling or random)"
            )),
        }
    }
}

/// Which layers a sub-model with fewer layers keeps. Layers are never reordered: they are
/// not interchangeable, so depth follows this policy whatever the index strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepthPolicy {
    /// Evenly spaced, starting with the first (DistilBERT's choice).
    #[default]
    Even,
    /// The first ones: the top layers are dropped.
    Top,
    /// The layers of the largest mean absolute weight, in model order.
    Salience,
}

impl std::str::FromStr for DepthPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "even" => Ok(DepthPolicy::Even),
            "top" => Ok(DepthPolicy::Top),
            "salience" => Ok(DepthPolicy::Salience),
            _ => Err(format!(
                "unknown depth policy `{s}` (expected even, top or salience)"
            )),
        }
    }
}

impl DepthPolicy {
    /// The global layers, in order, that a sub-model of `depth` of `total` layers keeps;
    /// `scores` are the layers' salience (used by [`DepthPolicy::Salience`]).
    pub fn layers(self, total: usize, depth: usize, scores: &[f64]) -> Vec<usize> {
        let depth = depth.clamp(1, total);
        match self {
            DepthPolicy::Top => (0..depth).collect(),
            DepthPolicy::Even => (0..depth).map(|i| i * total / depth).collect(),
            DepthPolicy::Salience => {
                let mut kept = crate::fl::prioritize::descending_order(scores);
                kept.truncate(depth);
                kept.sort_unstable();
                kept
            }
        }
    }

    /// For every depth `0..=total`, the layers kept (index 0 is empty).
    pub fn plan(self, total: usize, scores: &[f64]) -> Vec<Vec<usize>> {
        std::iter::once(Vec::new())
            .chain((1..=total).map(|d| self.layers(total, d, scores)))
            .collect()
    }
}

/// `take` indices of `0..n`, for the strategy.
fn pick(strategy: Strategy, n: usize, take: usize, round: u64, rng: &mut SplitMix64) -> Vec<usize> {
    match strategy {
        Strategy::Salient | Strategy::Static => (0..take).collect(),
        Strategy::Rolling => {
            let start = (round % n as u64) as usize;
            let mut kept: Vec<usize> = (0..take).map(|i| (start + i) % n).collect();
            // Kept in global order, so a full-width window is the identity.
            kept.sort_unstable();
            kept
        }
        Strategy::Random => {
            let mut all: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut all);
            let mut kept = all[..take].to_vec();
            kept.sort_unstable();
            kept
        }
    }
}

/// Chooses the kept indices of every axis of a sub-model with widths `sub` (whose
/// `global_layers` say which global layers it keeps) from a global model with widths
/// `global`. `random` draws from `(seed, round, client)`.
pub fn select(
    config: &ModelConfig,
    strategy: Strategy,
    global: &Widths,
    sub: &Widths,
    round: u64,
    seed: u64,
    client: &str,
) -> Selection {
    let axes = config.axes();
    let own_width =
        |a: &&crate::core::elastic::AxisSpec| a.permutable && a.width_of != Axis::Layers;
    let mut rng = SplitMix64::derive(seed, &format!("select/{round}/{client}"));
    let mut selection = Selection {
        layers: sub.global_layers.clone(),
        ..Selection::default()
    };
    for spec in axes
        .iter()
        .filter(own_width)
        .filter(|a| a.scope == Scope::Global)
    {
        let (n, take) = (
            global.global.get(spec.width_of),
            sub.global.get(spec.width_of),
        );
        let kept = pick(strategy, n, take, round, &mut rng);
        selection.global.insert(spec.axis, Kept::shared(kept));
    }
    for (layer, &g) in sub.global_layers.iter().enumerate() {
        let mut rng = SplitMix64::derive(seed, &format!("select/{round}/{client}/{g}"));
        let mut kept = BTreeMap::new();
        for spec in axes
            .iter()
            .filter(own_width)
            .filter(|a| a.scope == Scope::Layer)
        {
            let n = global.layers[g].get(spec.width_of);
            let take = sub.layers[layer].get(spec.width_of);
            kept.insert(
                spec.axis,
                Kept::shared(pick(strategy, n, take, round, &mut rng)),
            );
        }
        selection.per_layer.push(kept);
    }
    selection
}

/// The index map of a selection from `global` into a model of widths `sub`.
pub fn selection_map(global: &ModelConfig, sub: &Widths, selection: &Selection) -> IndexMap {
    index_map(
        global.axes(),
        &global.tensors(),
        &global.widths(),
        &global.tensors_for_depth(sub.layers.len()),
        selection,
    )
}

/// The global token ids a map keeps of the vocabulary axis, where it cuts it.
pub fn kept_vocabulary(global: &ModelConfig, map: &IndexMap) -> Option<Vec<usize>> {
    let vocab_dim = [crate::core::elastic::Factor::Axis(Axis::Vocab)];
    global.tensors().iter().find_map(|t| {
        let d = t.dims.iter().position(|dim| dim[..] == vocab_dim)?;
        map.get(&t.name)?.dims.get(d)?.as_ref().map(|i| i.0.clone())
    })
}

/// Gathers a sub-model with widths `widths` out of `global` by `map`. A sub-model that
/// keeps part of the vocabulary gets a tokenizer with just those tokens.
pub fn extract(global: &Checkpoint, widths: &Widths, map: &IndexMap) -> Result<Checkpoint> {
    let mut config = global.config.with_widths(widths)?;
    let mut tokenizer = None;
    if let Some(kept) = kept_vocabulary(&global.config, map) {
        crate::fl::vocab::check_kept(&kept, global.config.vocab_size())?;
        config.remap_vocabulary(&kept)?;
        let source = global.source.as_ref().ok_or_else(|| {
            Error::Invalid("a client vocabulary needs the global model's tokenizer files".into())
        })?;
        tokenizer = Some(std::sync::Arc::new(
            crate::fl::vocab::reduced_tokenizer_files(source, &kept)?,
        ));
    }
    let mut tensors = BTreeMap::new();
    for (name, index) in map {
        let source = index.source(name);
        let t = global.tensors.get(source).ok_or_else(|| {
            Error::Invalid(format!(
                "index map names `{source}`, which the global model lacks"
            ))
        })?;
        index
            .check_against(&t.shape)
            .map_err(|e| Error::Invalid(format!("`{name}`: {e}")))?;
        tensors.insert(name.clone(), index.gather(t));
    }
    let sub = Checkpoint {
        config,
        tensors,
        prefixed: global.prefixed,
        source: global.source.clone(),
        files: Vec::new(),
        ignored: Vec::new(),
        processor_files: tokenizer,
    };
    // The sub-model must be exactly what its config describes.
    for (spec, shape) in sub.config.shapes() {
        let got = sub.tensors.get(&spec.name).map(|t| t.shape.clone());
        if got.as_ref() != Some(&shape) {
            return Err(Error::Invalid(format!(
                "extracted `{}` has shape {got:?}, config implies {shape:?}",
                spec.name
            )));
        }
    }
    if sub.tensors.len() != sub.config.tensors().len() {
        return Err(Error::Invalid(
            "the index map names tensors the sub-model's config does not have".into(),
        ));
    }
    Ok(sub)
}

/// Why a sub-model of widths `sub` has no zero-padded equivalent at the global model's
/// shapes, if it has none: it cut an axis where cutting is not the same as zeroing (a
/// dropped layer, a narrower LayerNorm).
pub fn padding_obstacle(global: &ModelConfig, sub: &Widths) -> Option<String> {
    let full = global.widths();
    for spec in global.axes().iter().filter(|a| !a.masked_equivalent) {
        let cut = match (spec.axis, spec.scope) {
            (Axis::Layers, _) => !sub.has_all_layers_of(full.layers.len()),
            (axis, Scope::Global) => sub.global.get(axis) < full.global.get(axis),
            (axis, Scope::Layer) => sub
                .layers
                .iter()
                .zip(&full.layers)
                .any(|(s, f)| s.get(axis) < f.get(axis)),
        };
        if cut {
            return Some(format!(
                "the sub-model cuts the `{}` axis, and a model cut there is not the full model with zeros in place of what was cut",
                spec.axis
            ));
        }
    }
    None
}

/// The zero-padded equivalent of a sub-model at the shapes of `global`: the sub-model's
/// values where its index map places them, zero elsewhere. It is an ordinary checkpoint of
/// the global model's widths, which HF opens, and it computes the sub-model's function
/// (where [`padding_obstacle`] finds nothing).
pub fn padded(global: &ModelConfig, sub: &Checkpoint, map: &IndexMap) -> Result<Checkpoint> {
    if let Some(reason) = padding_obstacle(global, &sub.config.widths()) {
        return Err(Error::Invalid(format!(
            "no zero-padded equivalent: {reason}"
        )));
    }
    let mut tensors: BTreeMap<String, HostTensor> = global
        .shapes()
        .into_iter()
        .map(|(spec, shape)| (spec.name, HostTensor::zeros(shape)))
        .collect();
    for (name, index) in map {
        let t = sub.tensors.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "index map names `{name}`, which the sub-model lacks"
            ))
        })?;
        let target = tensors.get_mut(index.source(name)).ok_or_else(|| {
            Error::Invalid(format!(
                "index map places `{name}` into a tensor the global model lacks"
            ))
        })?;
        index
            .check_against(&target.shape)
            .map_err(|e| Error::Invalid(format!("`{name}`: {e}")))?;
        if index.sub_shape(&target.shape) != t.shape {
            return Err(Error::Invalid(format!(
                "`{name}` has shape {:?}, its index map places {:?}",
                t.shape,
                index.sub_shape(&target.shape)
            )));
        }
        index.scatter(t, target);
    }
    Ok(Checkpoint {
        config: global.clone(),
        tensors,
        prefixed: sub.prefixed,
        source: sub.source.clone(),
        files: Vec::new(),
        ignored: Vec::new(),
        processor_files: None,
    })
}

/// The global model with everything a sub-model drops set to zero (structured masking):
/// a sub-model that [`padding_obstacle`] accepts computes exactly this model's function.
pub fn mask(global: &Checkpoint, widths: &Widths, map: &IndexMap) -> Result<Checkpoint> {
    padded(&global.config, &extract(global, widths, map)?, map)
}

/// Everything that decides one client's sub-model.
#[derive(Debug, Clone)]
pub struct ClientRequest<'a> {
    pub client: &'a str,
    pub budget: crate::fl::search::Budget,
    pub round: u64,
    pub seed: u64,
    pub strategy: Strategy,
    pub policy: crate::fl::search::Policy,
    pub depth_policy: DepthPolicy,
    pub space: &'a crate::fl::search::SearchSpace,
    pub cost_model: &'a crate::fl::cost::CostModel,
    /// The client's own vocabulary, if it gets one (else the whole vocabulary).
    pub vocabulary: Option<&'a crate::fl::vocab::ClientVocabulary>,
}

/// One client's sub-model with the record of how it was made.
#[derive(Debug, Clone)]
pub struct ClientModel {
    pub client: String,
    pub choice: crate::fl::search::Choice,
    pub selection: Selection,
    pub index_map: IndexMap,
    pub checkpoint: Checkpoint,
}

/// The layers a global model keeps at every depth under `policy` (see
/// [`DepthPolicy::plan`]), scored on `global` where the policy needs scores.
pub fn depth_plan(global: &Checkpoint, policy: DepthPolicy) -> Vec<Vec<usize>> {
    let scores = match policy {
        DepthPolicy::Salience => {
            crate::fl::prioritize::layer_salience(global, crate::core::tensor::Norm::L1)
        }
        DepthPolicy::Even | DepthPolicy::Top => Vec::new(),
    };
    policy.plan(global.config.widths().layers.len(), &scores)
}

/// Picks a configuration for the client's budget, chooses its indices by the strategy and
/// gathers the sub-model.
pub fn extract_for_client(global: &Checkpoint, request: &ClientRequest) -> Result<ClientModel> {
    let mut rng = SplitMix64::derive(
        request.seed,
        &format!("policy/{}/{}", request.round, request.client),
    );
    let plan = depth_plan(global, request.depth_policy);
    // A client with its own vocabulary: every candidate has exactly its rows.
    let pinned;
    let cost_model = match request.vocabulary {
        Some(v) => {
            crate::fl::vocab::check_kept(&v.kept, global.config.vocab_size())
                .map_err(|e| e.for_client(request.client))?;
            let sizes = crate::core::elastic::AxisSizes::of(&[(Axis::Vocab, v.kept.len())]);
            pinned = request.cost_model.pinned(&sizes)?;
            &pinned
        }
        None => request.cost_model,
    };
    let choice = crate::fl::search::choose(
        cost_model,
        request.space,
        &request.budget,
        request.policy,
        &plan,
        &mut rng,
    )
    .map_err(|e| e.for_client(request.client))?;
    let model = extract_widths(global, request, &choice.widths)?;
    // The search's record, which also counts the feasible configurations.
    Ok(ClientModel { choice, ..model })
}

/// The sub-model of `global` with widths `widths`, its indices chosen by the request's
/// strategy (the request's budget and policies are not used).
pub fn extract_widths(
    global: &Checkpoint,
    request: &ClientRequest,
    widths: &Widths,
) -> Result<ClientModel> {
    let mut selection = select(
        &global.config,
        request.strategy,
        &global.config.widths(),
        widths,
        request.round,
        request.seed,
        request.client,
    );
    if let Some(v) = request.vocabulary {
        selection
            .global
            .insert(Axis::Vocab, Kept::shared(v.kept.clone()));
    }
    let map = selection_map(&global.config, widths, &selection);
    let checkpoint = extract(global, widths, &map)?;
    Ok(ClientModel {
        client: request.client.to_string(),
        choice: crate::fl::search::Choice {
            widths: widths.clone(),
            cost: request.cost_model.cost(widths),
            feasible_configurations: f64::NAN,
        },
        selection,
        index_map: map,
        checkpoint,
    })
}

/// Extracts a client's sub-model and writes it, with its manifest, to `target`
/// atomically. `parameters` are the command's options, for the manifest; `inputs` are
/// files it read besides the global model (the partition of a client vocabulary).
pub fn write_client(
    global: &Checkpoint,
    request: &ClientRequest,
    target: &std::path::Path,
    parameters: serde_json::Value,
    inputs: &[crate::core::io::FileRecord],
) -> Result<ClientModel> {
    let sub = extract_for_client(global, request)?;
    let mut manifest = sub.manifest(global, request, parameters)?;
    manifest.inputs.extend(inputs.iter().cloned());
    let mut staging = crate::core::io::StagingDir::new(target)?;
    sub.checkpoint.write_into(&mut staging)?;
    manifest.write_into(&mut staging)?;
    staging.commit()?;
    Ok(sub)
}

impl ClientModel {
    /// The client's `manifest.json` (outputs are filled in when it is written).
    pub fn manifest(
        &self,
        global: &Checkpoint,
        request: &ClientRequest,
        parameters: serde_json::Value,
    ) -> Result<crate::core::manifest::Manifest> {
        use crate::core::manifest::{
            ExtractMetrics, Extracted, Manifest, StageRecord, VocabularyRecord,
        };
        use serde_json::json;
        let global_sha256 = global.weights_sha256().ok_or_else(|| {
            Error::Invalid("the global model was not read from a file, so it has no hash".into())
        })?;
        let cost = &self.choice.cost;
        let record = Extracted {
            metrics: ExtractMetrics {
                train_memory_bytes: cost.train_memory_bytes,
                inference_memory_bytes: Some(cost.inference_memory_bytes),
                feasible_configurations: Some(self.choice.feasible_configurations),
                base_parameters: None,
                adapter_parameters: None,
            },
            policy: Some(request.policy),
            depth_policy: Some(request.depth_policy),
            budget: Some(request.budget),
            training_shape: Some(request.cost_model.shape),
            selection: Some(self.selection.clone()),
            vocabulary: request.vocabulary.map(|v| VocabularyRecord {
                tokens: v.kept.len(),
                from_data: v.from_data,
                decoys: v.decoys,
            }),
        };
        let mut m = Manifest::new(StageRecord::Extract(record), "raffm-extract", parameters);
        m.seeds.insert("seed".into(), json!(request.seed));
        m.inputs = global.files.clone();
        m.architecture = Some(self.choice.widths.clone());
        m.parameter_count = Some(self.checkpoint.parameter_count());
        m.bytes_on_wire = Some(self.checkpoint.bytes_on_wire());
        m.placement = Some(Placement {
            client: self.client.clone(),
            round: request.round,
            global_sha256: global_sha256.to_string(),
            strategy: request.strategy,
            index_map: self.index_map.clone(),
            adapter_scaling: None,
        });
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vocabulary of the tiny test models.
    const VOCAB: usize = 64;
    use crate::core::elastic::AxisSizes;
    use crate::models::families::bert::{tiny_model, Variant};

    fn sub_widths(hidden: usize, layer: AxisSizes, layers: Vec<usize>) -> Widths {
        Widths {
            global: AxisSizes::of(&[(Axis::Hidden, hidden), (Axis::Vocab, VOCAB)]),
            layers: vec![layer; layers.len()],
            global_layers: layers,
        }
    }

    fn layer(heads: usize, head_dim: usize, ffn: usize) -> AxisSizes {
        crate::models::families::bert::config::full_layer(heads, head_dim, ffn)
    }

    #[test]
    fn depth_policies_pick_the_expected_layers() {
        assert_eq!(DepthPolicy::Even.layers(6, 3, &[]), vec![0, 2, 4]);
        assert_eq!(DepthPolicy::Even.layers(6, 4, &[]), vec![0, 1, 3, 4]);
        assert_eq!(
            DepthPolicy::Even.layers(6, 6, &[]),
            (0..6).collect::<Vec<_>>()
        );
        assert_eq!(DepthPolicy::Top.layers(6, 2, &[]), vec![0, 1]);
        let scores = [0.1, 0.9, 0.5, 0.7, 0.2, 0.3];
        assert_eq!(DepthPolicy::Salience.layers(6, 3, &scores), vec![1, 2, 3]);
    }

    #[test]
    fn rolling_windows_advance_by_one_each_round_and_cover_every_index() {
        let config = tiny_model(Variant::Bert, 1, 384, 12, 1536, true);
        let global = config.widths();
        let sub = sub_widths(192, layer(6, 16, 512), vec![0]);
        let at = |r| select(&config, Strategy::Rolling, &global, &sub, r, 0, "c");
        let kept = |s: &Selection, axis| s.per_layer[0][&axis].under(0).to_vec();
        for round in [0u64, 1, 5, 11, 12, 1535] {
            let (a, b) = (at(round), at(round + 1));
            let shifted = |x: &[usize], n: usize| {
                let mut v: Vec<usize> = x.iter().map(|i| (i + 1) % n).collect();
                v.sort_unstable();
                v
            };
            assert_eq!(
                kept(&b, Axis::Heads),
                shifted(&kept(&a, Axis::Heads), 12),
                "round {round}"
            );
            assert_eq!(
                kept(&b, Axis::HeadDim),
                shifted(&kept(&a, Axis::HeadDim), 32)
            );
            assert_eq!(kept(&b, Axis::Ffn), shifted(&kept(&a, Axis::Ffn), 1536));
            let hidden = |s: &Selection| s.global[&Axis::Hidden].under(0).to_vec();
            assert_eq!(hidden(&b), shifted(&hidden(&a), 384));
            assert_ne!(a, b);
        }
        // n - k + 1 rounds cover every index of an axis of n with a window of k.
        let mut covered = vec![false; 1536];
        for round in 0..(1536 - 512 + 1) {
            for i in kept(&at(round), Axis::Ffn) {
                covered[i] = true;
            }
        }
        assert!(covered.iter().all(|&c| c));
    }

    #[test]
    fn random_is_seeded_per_round_and_client() {
        let config = tiny_model(Variant::Bert, 2, 384, 12, 64, true);
        let global = config.widths();
        let sub = sub_widths(300, layer(5, 20, 30), vec![0, 1]);
        let draw = |round, seed, client| {
            select(
                &config,
                Strategy::Random,
                &global,
                &sub,
                round,
                seed,
                client,
            )
        };
        assert_eq!(draw(3, 7, "a"), draw(3, 7, "a"));
        assert_ne!(draw(3, 7, "a"), draw(4, 7, "a"));
        assert_ne!(draw(3, 7, "a"), draw(3, 7, "b"));
        assert_ne!(draw(3, 7, "a"), draw(3, 8, "a"));
        let s = &draw(3, 7, "a").per_layer[0][&Axis::Heads];
        let heads = s.under(0);
        assert_eq!(heads.len(), 5);
        assert!(heads.windows(2).all(|w| w[0] < w[1]) && *heads.last().unwrap() < 12);
    }

    #[test]
    fn full_selection_extracts_the_global_model_bit_for_bit() {
        let config = tiny_model(Variant::Bert, 2, 16, 4, 24, true);
        let global = Checkpoint::random(&config, 1);
        let widths = config.widths();
        for strategy in [
            Strategy::Salient,
            Strategy::Static,
            Strategy::Rolling,
            Strategy::Random,
        ] {
            let sel = select(&config, strategy, &widths, &widths, 3, 0, "c");
            let map = selection_map(&config, &widths, &sel);
            assert!(map
                .values()
                .all(|i| i.from.is_none() && i.dims.iter().all(Option::is_none)));
            let sub = extract(&global, &widths, &map).unwrap();
            for (name, t) in &global.tensors {
                assert!(t.bit_eq(&sub.tensors[name]), "{strategy:?} {name}");
            }
        }
    }

    #[test]
    fn a_sub_model_of_fewer_layers_takes_them_from_their_global_positions() {
        let config = tiny_model(Variant::Bert, 3, 16, 4, 24, true);
        let global = Checkpoint::random(&config, 2);
        let full = config.widths();
        let widths = sub_widths(12, layer(4, 4, 24), vec![0, 2]);
        let sel = select(&config, Strategy::Static, &full, &widths, 0, 0, "c");
        let map = selection_map(&config, &widths, &sel);
        let sub = extract(&global, &widths, &map).unwrap();
        assert_eq!(sub.config.widths(), widths);
        assert_eq!(sub.parameter_count(), sub.config.parameter_count());
        let moved: Vec<&str> = map.values().filter_map(|i| i.from.as_deref()).collect();
        assert!(!moved.is_empty() && moved.iter().all(|n| n.contains(".2.")));
        // Layer 1 of the sub-model is layer 2 of the global one, on its first 12 hidden rows.
        for (name, index) in &map {
            let g = &global.tensors[index.source(name)];
            assert!(index.gather(g).bit_eq(&sub.tensors[name]), "{name}");
        }
        assert!(padding_obstacle(&config, &widths).is_some());
    }
}
