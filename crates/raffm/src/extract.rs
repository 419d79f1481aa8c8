//! Sub-model extraction as index selection (paper eq. 6).
//!
//! A [`LayerSelection`] says which heads, Q/K channels, V channels and FFN neurons of a
//! global layer a sub-model keeps; the [`IndexMap`] derived from it says, for every
//! tensor of the sub-model, which rows and columns of the global tensor it came from.
//! Extraction gathers by that map; aggregation scatters back by the same map.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::checkpoint::{expected_shapes, Checkpoint};
use crate::config::LayerArch;
use crate::error::{Error, Result};
use crate::layout::layer_tensor;
use crate::rng::SplitMix64;
use crate::tensor::HostTensor;

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

/// The global indices one sub-model layer keeps. Q/K channels are shared by Q and K (and
/// by every kept head); V channels go with the output projection's columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSelection {
    pub heads: Vec<usize>,
    pub qk_channels: Vec<usize>,
    pub v_channels: Vec<usize>,
    pub ffn_neurons: Vec<usize>,
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

/// Chooses the kept indices of every layer of a sub-model with widths `sub` from a global
/// model with widths `global`. `random` draws from `(seed, round, client)`.
pub fn select(
    strategy: Strategy,
    global: &[LayerArch],
    sub: &[LayerArch],
    round: u64,
    seed: u64,
    client: &str,
) -> Vec<LayerSelection> {
    global
        .iter()
        .zip(sub)
        .enumerate()
        .map(|(layer, (g, s))| {
            let mut rng = SplitMix64::derive(seed, &format!("select/{round}/{client}/{layer}"));
            LayerSelection {
                heads: pick(strategy, g.num_heads, s.num_heads, round, &mut rng),
                qk_channels: pick(strategy, g.head_dim, s.head_dim, round, &mut rng),
                v_channels: pick(strategy, g.head_dim, s.head_dim, round, &mut rng),
                ffn_neurons: pick(
                    strategy,
                    g.intermediate_size,
                    s.intermediate_size,
                    round,
                    &mut rng,
                ),
            }
        })
        .collect()
}

/// A list of indices, written as `[start, length]` runs so leading ranges stay tiny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indices(pub Vec<usize>);

impl Serialize for Indices {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut runs: Vec<[usize; 2]> = Vec::new();
        for &i in &self.0 {
            match runs.last_mut() {
                Some([start, len]) if *start + *len == i => *len += 1,
                _ => runs.push([i, 1]),
            }
        }
        runs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Indices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let runs = Vec::<[usize; 2]>::deserialize(d)?;
        Ok(Indices(
            runs.into_iter()
                .flat_map(|[start, len]| start..start + len)
                .collect(),
        ))
    }
}

/// Which rows and columns of a global tensor a sub-model tensor holds (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorIndex {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Indices>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<Indices>,
}

impl TensorIndex {
    const ALL: TensorIndex = TensorIndex {
        rows: None,
        cols: None,
    };

    /// The sub-tensor of `global` this index selects.
    pub fn gather(&self, global: &HostTensor) -> HostTensor {
        let t = match &self.rows {
            Some(rows) => global.select_rows(&rows.0),
            None => global.clone(),
        };
        match &self.cols {
            Some(cols) => t.select_cols(&cols.0),
            None => t,
        }
    }

    /// The shape `gather` gives for a global tensor of shape `global`.
    pub fn sub_shape(&self, global: &[usize]) -> Vec<usize> {
        let mut shape = global.to_vec();
        if let Some(rows) = &self.rows {
            shape[0] = rows.0.len();
        }
        if let Some(cols) = &self.cols {
            shape[1] = cols.0.len();
        }
        shape
    }
}

/// Canonical tensor name -> where the sub-model's tensor sits in the global one.
pub type IndexMap = BTreeMap<String, TensorIndex>;

/// The index map of a selection on a global model with per-layer widths `global`.
pub fn index_map(global: &Checkpoint, selections: &[LayerSelection]) -> IndexMap {
    let config = &global.config;
    let mut map: IndexMap = expected_shapes(config, global.has_pooler(), global.has_classifier())
        .into_iter()
        .map(|(name, _)| (name, TensorIndex::ALL))
        .collect();
    for (layer, (arch, sel)) in config.layers.iter().zip(selections).enumerate() {
        let rows_of = |channels: &[usize]| {
            Indices(
                sel.heads
                    .iter()
                    .flat_map(|&h| channels.iter().map(move |&c| h * arch.head_dim + c))
                    .collect(),
            )
        };
        let (qk, v) = (rows_of(&sel.qk_channels), rows_of(&sel.v_channels));
        let ffn = Indices(sel.ffn_neurons.clone());
        let rows = |i: &Indices| TensorIndex {
            rows: Some(i.clone()),
            cols: None,
        };
        let cols = |i: &Indices| TensorIndex {
            rows: None,
            cols: Some(i.clone()),
        };
        for (suffix, index) in [
            ("attention.self.query.weight", rows(&qk)),
            ("attention.self.query.bias", rows(&qk)),
            ("attention.self.key.weight", rows(&qk)),
            ("attention.self.key.bias", rows(&qk)),
            ("attention.self.value.weight", rows(&v)),
            ("attention.self.value.bias", rows(&v)),
            ("attention.output.dense.weight", cols(&v)),
            ("intermediate.dense.weight", rows(&ffn)),
            ("intermediate.dense.bias", rows(&ffn)),
            ("output.dense.weight", cols(&ffn)),
        ] {
            map.insert(layer_tensor(layer, suffix), index);
        }
    }
    map
}

/// Gathers a sub-model with widths `layers` out of `global` by `map`.
pub fn extract(global: &Checkpoint, layers: &[LayerArch], map: &IndexMap) -> Result<Checkpoint> {
    let config = global.config.with_layers(layers.to_vec())?;
    let mut tensors = BTreeMap::new();
    for (name, index) in map {
        let t = global.tensors.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "index map names `{name}`, which the global model lacks"
            ))
        })?;
        tensors.insert(name.clone(), index.gather(t));
    }
    let sub = Checkpoint {
        config,
        tensors,
        prefixed: global.prefixed,
        source: global.source.clone(),
        files: Vec::new(),
        ignored: Vec::new(),
    };
    // The sub-model must be exactly what its config describes.
    for (name, shape) in expected_shapes(&sub.config, sub.has_pooler(), sub.has_classifier()) {
        let got = &sub.tensors.get(&name).map(|t| t.shape.clone());
        if got.as_ref() != Some(&shape) {
            return Err(Error::Invalid(format!(
                "extracted `{name}` has shape {got:?}, config implies {shape:?}"
            )));
        }
    }
    Ok(sub)
}

/// The global model with everything a sub-model drops set to zero (structured masking):
/// a sub-model computes exactly this model's function.
pub fn mask(global: &Checkpoint, map: &IndexMap) -> Checkpoint {
    let mut out = global.clone();
    for (name, index) in map {
        let t = out.tensor_mut(name);
        let keep_rows = index.rows.as_ref().map(|r| membership(t.shape[0], &r.0));
        let keep_cols = index.cols.as_ref().map(|c| membership(t.shape[1], &c.0));
        let row_len: usize = t.shape[1..].iter().product();
        for (i, row) in t.data.chunks_mut(row_len.max(1)).enumerate() {
            let row_kept = keep_rows.as_ref().is_none_or(|k| k[i]);
            for (j, v) in row.iter_mut().enumerate() {
                if !row_kept || keep_cols.as_ref().is_some_and(|k| !k[j]) {
                    *v = 0.0;
                }
            }
        }
    }
    out
}

fn membership(n: usize, indices: &[usize]) -> Vec<bool> {
    let mut kept = vec![false; n];
    for &i in indices {
        kept[i] = true;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tiny_config;
    use crate::config::Family;

    #[test]
    fn indices_serialize_as_runs_and_back() {
        let i = Indices(vec![0, 1, 2, 7, 9, 10]);
        let text = serde_json::to_string(&i).unwrap();
        assert_eq!(text, "[[0,3],[7,1],[9,2]]");
        assert_eq!(serde_json::from_str::<Indices>(&text).unwrap(), i);
    }

    #[test]
    fn rolling_windows_advance_by_one_each_round_and_cover_every_index() {
        let global = vec![LayerArch {
            num_heads: 12,
            head_dim: 32,
            intermediate_size: 1536,
        }];
        let sub = vec![LayerArch {
            num_heads: 6,
            head_dim: 16,
            intermediate_size: 512,
        }];
        let at = |r| select(Strategy::Rolling, &global, &sub, r, 0, "c").remove(0);
        for round in [0u64, 1, 5, 11, 12, 1535] {
            let (a, b) = (at(round), at(round + 1));
            let shifted = |x: &[usize], n: usize| {
                let mut v: Vec<usize> = x.iter().map(|i| (i + 1) % n).collect();
                v.sort_unstable();
                v
            };
            assert_eq!(b.heads, shifted(&a.heads, 12), "round {round}");
            assert_eq!(b.qk_channels, shifted(&a.qk_channels, 32));
            assert_eq!(b.ffn_neurons, shifted(&a.ffn_neurons, 1536));
            assert_ne!(a, b);
        }
        // n - k + 1 rounds cover every index of an axis of n with a window of k.
        let mut covered = vec![false; 1536];
        for round in 0..(1536 - 512 + 1) {
            for i in at(round).ffn_neurons {
                covered[i] = true;
            }
        }
        assert!(covered.iter().all(|&c| c));
        let heads: std::collections::BTreeSet<usize> = (0..7).flat_map(|r| at(r).heads).collect();
        assert_eq!(heads.len(), 12);
    }

    #[test]
    fn random_is_seeded_per_round_and_client() {
        let global = vec![
            LayerArch {
                num_heads: 12,
                head_dim: 32,
                intermediate_size: 64
            };
            2
        ];
        let sub = vec![
            LayerArch {
                num_heads: 5,
                head_dim: 20,
                intermediate_size: 30
            };
            2
        ];
        let draw =
            |round, seed, client| select(Strategy::Random, &global, &sub, round, seed, client);
        assert_eq!(draw(3, 7, "a"), draw(3, 7, "a"));
        assert_ne!(draw(3, 7, "a"), draw(4, 7, "a"));
        assert_ne!(draw(3, 7, "a"), draw(3, 7, "b"));
        assert_ne!(draw(3, 7, "a"), draw(3, 8, "a"));
        let s = &draw(3, 7, "a")[0];
        assert_eq!(s.heads.len(), 5);
        assert!(s.heads.windows(2).all(|w| w[0] < w[1]) && *s.heads.last().unwrap() < 12);
    }

    #[test]
    fn full_selection_extracts_the_global_model_bit_for_bit() {
        let config = tiny_config(Family::Bert, 2, 16, 4, 24);
        let global = Checkpoint::random(&config, 1, true, true);
        for strategy in [
            Strategy::Salient,
            Strategy::Static,
            Strategy::Rolling,
            Strategy::Random,
        ] {
            let sel = select(strategy, &config.layers, &config.layers, 3, 0, "c");
            let map = index_map(&global, &sel);
            let sub = extract(&global, &config.layers, &map).unwrap();
            for (name, t) in &global.tensors {
                assert!(t.bit_eq(&sub.tensors[name]), "{strategy:?} {name}");
            }
        }
    }
}

/// Everything that decides one client's sub-model.
#[derive(Debug, Clone)]
pub struct ClientRequest<'a> {
    pub client: &'a str,
    pub budget: crate::search::Budget,
    pub round: u64,
    pub seed: u64,
    pub strategy: Strategy,
    pub policy: crate::search::Policy,
    pub space: &'a crate::search::SearchSpace,
    pub cost_model: &'a crate::cost::CostModel,
}

/// One client's sub-model with the record of how it was made.
#[derive(Debug, Clone)]
pub struct ClientModel {
    pub client: String,
    pub choice: crate::search::Choice,
    pub selections: Vec<LayerSelection>,
    pub index_map: IndexMap,
    pub checkpoint: Checkpoint,
}

/// Picks a configuration for the client's budget, chooses its indices by the strategy and
/// gathers the sub-model.
pub fn extract_for_client(global: &Checkpoint, request: &ClientRequest) -> Result<ClientModel> {
    let mut rng = SplitMix64::derive(
        request.seed,
        &format!("policy/{}/{}", request.round, request.client),
    );
    let choice = crate::search::choose(
        request.cost_model,
        request.space,
        &request.budget,
        request.policy,
        &mut rng,
    )
    .map_err(|e| Error::Invalid(format!("client {}: {e}", request.client)))?;
    let model = extract_layers(global, request, &choice.layers)?;
    // The search's record, which also counts the feasible configurations.
    Ok(ClientModel { choice, ..model })
}

/// The sub-model of `global` with per-layer widths `layers`, its indices chosen by the
/// request's strategy (the request's budget and policy are not used).
pub fn extract_layers(
    global: &Checkpoint,
    request: &ClientRequest,
    layers: &[LayerArch],
) -> Result<ClientModel> {
    let selections = select(
        request.strategy,
        &global.config.layers,
        layers,
        request.round,
        request.seed,
        request.client,
    );
    let map = index_map(global, &selections);
    let checkpoint = extract(global, layers, &map)?;
    Ok(ClientModel {
        client: request.client.to_string(),
        choice: crate::search::Choice {
            layers: layers.to_vec(),
            cost: request.cost_model.cost(layers),
            feasible_configurations: f64::NAN,
        },
        selections,
        index_map: map,
        checkpoint,
    })
}

/// Extracts a client's sub-model and writes it, with its manifest, to `target`
/// atomically. `parameters` are the command's options, for the manifest.
pub fn write_client(
    global: &Checkpoint,
    request: &ClientRequest,
    target: &std::path::Path,
    parameters: serde_json::Value,
) -> Result<ClientModel> {
    let sub = extract_for_client(global, request)?;
    let mut manifest = sub.manifest(global, request, parameters);
    let mut staging = crate::io::StagingDir::new(target)?;
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
    ) -> crate::manifest::Manifest {
        use serde_json::json;
        let mut m = crate::manifest::Manifest::new("extract", "raffm-extract", parameters);
        m.seeds.insert("seed".into(), json!(request.seed));
        m.inputs = global.files.clone();
        m.architecture = Some(json!(self.choice.layers));
        m.parameter_count = Some(self.checkpoint.parameter_count());
        m.bytes_on_wire = Some(self.checkpoint.bytes_on_wire());
        let cost = &self.choice.cost;
        m.metrics
            .insert("train_memory_bytes".into(), json!(cost.train_memory_bytes));
        m.metrics.insert(
            "inference_memory_bytes".into(),
            json!(cost.inference_memory_bytes),
        );
        m.metrics.insert(
            "feasible_configurations".into(),
            json!(self.choice.feasible_configurations),
        );
        let d = &mut m.details;
        d.insert("client".into(), json!(self.client));
        d.insert("round".into(), json!(request.round));
        d.insert("strategy".into(), json!(request.strategy));
        d.insert("policy".into(), json!(request.policy));
        d.insert("budget".into(), json!(request.budget));
        d.insert("training_shape".into(), json!(request.cost_model.shape));
        d.insert("global_sha256".into(), json!(global.weights_sha256()));
        d.insert("selection".into(), json!(self.selections));
        d.insert("index_map".into(), json!(self.index_map));
        m
    }
}
