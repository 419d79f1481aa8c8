//! Partitioning a training set over clients: `iid`, `dirichlet` (label skew with
//! concentration `alpha`), `shards` (each client gets k label-sorted shards) and `kshot`
//! (k examples per class per client). Every scheme is seeded; every example goes to at
//! most one client (exactly one, except `kshot`, which takes only what it needs).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::core::rng::SplitMix64;
use crate::data::{DataSource, Dataset};
use crate::fl::pipeline::client_ids;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "scheme")]
pub enum Scheme {
    Iid,
    Dirichlet { alpha: f64 },
    Shards { per_client: usize },
    Kshot { k: usize },
}

/// One client's share of the training set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientShard {
    pub client: String,
    pub examples: Vec<usize>,
    pub label_histogram: Vec<usize>,
}

/// `partition.json`: the data, its split, and every client's examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// The file it was read from (not stored).
    #[serde(skip)]
    pub file: std::path::PathBuf,
    pub data: DataSource,
    pub data_sha256: String,
    /// The sha256 of the data's own test split, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_sha256: Option<String>,
    /// The sha256 of the labels files (IDX) of the data and of its test split: a changed
    /// labels file changes every label without touching the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_labels_sha256: Option<String>,
    pub seed: u64,
    pub scheme: Scheme,
    pub label_names: Vec<String>,
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub clients: Vec<ClientShard>,
}

impl Partition {
    /// Reads `partition.json`. Data paths in it are relative to its folder (or absolute),
    /// so a run works from any directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut p: Partition = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid partition: {e}")))?;
        let folder = path.parent().unwrap_or(Path::new(""));
        p.data.path = folder.join(&p.data.path);
        p.data.labels_path = p.data.labels_path.map(|l| folder.join(l));
        if let Some(v) = &mut p.data.validation {
            v.path = folder.join(&v.path);
            v.labels_path = v.labels_path.as_ref().map(|l| folder.join(l));
        }
        p.file = path.to_path_buf();
        p.check_apart().map_err(|m| Error::format(path, m))?;
        Ok(p)
    }

    /// Validation examples are no client's, and no example is two clients': otherwise
    /// validation accuracy is measured on trained-on data, or one example counts twice.
    /// Checked wherever a partition is read, since a user may have written it.
    fn check_apart(&self) -> std::result::Result<(), String> {
        use std::collections::hash_map::Entry;
        let mut owner: std::collections::HashMap<usize, Option<&str>> = Default::default();
        for &id in &self.validation {
            if owner.insert(id, None).is_some() {
                return Err(format!(
                    "example {id} is listed twice in the validation set"
                ));
            }
        }
        for &id in &self.train {
            if owner.get(&id) == Some(&None) {
                return Err(format!(
                    "example {id} is in both the training and the validation set"
                ));
            }
        }
        for shard in &self.clients {
            for &id in &shard.examples {
                match owner.entry(id) {
                    Entry::Vacant(slot) => {
                        slot.insert(Some(&shard.client));
                    }
                    Entry::Occupied(taken) => {
                        return Err(match taken.get() {
                            None => format!(
                                "example {id} is in client {}'s training data and in the validation set",
                                shard.client
                            ),
                            Some(other) if *other == shard.client => {
                                format!("example {id} is listed twice for client {other}")
                            }
                            Some(other) => format!(
                                "example {id} is in the training data of both client {other} and client {}",
                                shard.client
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The partitioned dataset, checked against the sha256 recorded when it was
    /// partitioned: example ids mean nothing in a file that has changed since.
    pub fn dataset(&self) -> Result<Dataset> {
        self.check_unchanged(&self.data.path, &self.data_sha256)?;
        match (&self.data.validation, &self.validation_sha256) {
            (Some(v), Some(recorded)) => self.check_unchanged(&v.path, recorded)?,
            (None, None) => {}
            _ => {
                return Err(Error::format(
                    &self.file,
                    "gives a validation file without its sha256, or a sha256 without the file",
                ))
            }
        }
        // Partitions written before labels were hashed record none; those are not checked.
        let labels = [
            (self.data.labels_path.as_ref(), &self.labels_sha256),
            (
                self.data
                    .validation
                    .as_ref()
                    .and_then(|v| v.labels_path.as_ref()),
                &self.validation_labels_sha256,
            ),
        ];
        for (path, recorded) in labels {
            if let (Some(path), Some(recorded)) = (path, recorded) {
                self.check_unchanged(path, recorded)?;
            }
        }
        Dataset::load(&self.data)
    }

    fn check_unchanged(&self, path: &Path, recorded: &str) -> Result<()> {
        let got = crate::core::io::sha256_data(path)?;
        if got != recorded {
            return Err(Error::format(
                path,
                format!(
                    "changed since {} was made (sha256 {}..., recorded {}...); partition it again",
                    self.file.display(),
                    crate::core::io::short_hash(&got),
                    crate::core::io::short_hash(recorded)
                ),
            ));
        }
        Ok(())
    }

    /// How `data` is written in a partition file at `partition_path`: relative to the
    /// file's folder.
    /// The examples of a decoder task's partition (format `llm:TASK`), in id order,
    /// checked against the sha256 recorded when it was partitioned.
    pub fn choice_examples(&self) -> Result<Vec<crate::models::llm::task::ChoiceExample>> {
        let crate::data::Format::Llm(task) = self.data.format else {
            return Err(Error::format(
                &self.file,
                "is not a partition of a decoder task (made with --format llm:TASK)",
            ));
        };
        self.check_unchanged(&self.data.path, &self.data_sha256)?;
        crate::models::llm::task::load(task, &self.data.path)
    }

    pub fn stored_path(data: &Path, partition_path: &Path) -> std::path::PathBuf {
        let folder = partition_path.parent().unwrap_or(Path::new(""));
        crate::core::io::relative_to(data, folder)
    }

    pub fn client(&self, id: &str) -> Option<&ClientShard> {
        self.clients.iter().find(|c| c.client == id)
    }
}

/// Assigns `train` (example ids of `dataset`) to `clients` clients by `scheme`.
pub fn partition(
    dataset: &Dataset,
    train: &[usize],
    clients: usize,
    scheme: Scheme,
    seed: u64,
) -> Result<Vec<ClientShard>> {
    if !matches!(dataset.task, crate::data::Task::Classification { .. })
        && !matches!(scheme, Scheme::Iid)
    {
        return Err(Error::Invalid(
            "label-based partitions need a classification task; use iid".into(),
        ));
    }
    // A regression target is no class: its histogram is one count.
    let classification = matches!(dataset.task, crate::data::Task::Classification { .. });
    let labels: Vec<usize> = dataset
        .examples
        .iter()
        .map(|e| if classification { e.label as usize } else { 0 })
        .collect();
    partition_labels(&labels, dataset.num_labels(), train, clients, scheme, seed)
}

/// [`partition`] of any labelled examples (text or images): `labels[id]` is example id's
/// class, out of `classes`.
pub fn partition_labels(
    labels: &[usize],
    classes: usize,
    train: &[usize],
    clients: usize,
    scheme: Scheme,
    seed: u64,
) -> Result<Vec<ClientShard>> {
    if clients == 0 {
        return Err(Error::Invalid("need at least one client".into()));
    }
    let mut rng = SplitMix64::derive(seed, "partition");
    let by_class = |rng: &mut SplitMix64| -> Vec<Vec<usize>> {
        let mut per = vec![Vec::new(); classes];
        for &id in train {
            per[labels[id]].push(id);
        }
        for ids in &mut per {
            rng.shuffle(ids);
        }
        per
    };
    let mut shards: Vec<Vec<usize>> = vec![Vec::new(); clients];
    match scheme {
        Scheme::Iid => {
            let mut ids = train.to_vec();
            rng.shuffle(&mut ids);
            for (i, id) in ids.into_iter().enumerate() {
                shards[i % clients].push(id);
            }
        }
        Scheme::Dirichlet { alpha } => {
            if alpha.is_nan() || alpha <= 0.0 {
                return Err(Error::Invalid(format!(
                    "dirichlet alpha must be positive, got {alpha}"
                )));
            }
            // Redraw until every client has an example, as is customary; very small alpha
            // with many clients may never get there.
            let mut attempt = 0;
            loop {
                shards.iter_mut().for_each(Vec::clear);
                for ids in by_class(&mut rng) {
                    let p = rng.dirichlet(alpha, clients);
                    let mut cumulative = 0.0;
                    let mut start = 0;
                    for (c, share) in p.iter().enumerate() {
                        cumulative += share;
                        let end = if c + 1 == clients {
                            ids.len()
                        } else {
                            (cumulative * ids.len() as f64).round() as usize
                        };
                        shards[c].extend_from_slice(&ids[start..end.max(start)]);
                        start = end.max(start);
                    }
                }
                if shards.iter().all(|s| !s.is_empty()) {
                    break;
                }
                attempt += 1;
                if attempt == 1000 {
                    return Err(Error::Invalid(format!(
                        "dirichlet alpha {alpha} leaves some of {clients} clients empty after 1000 draws; raise alpha or lower the client count"
                    )));
                }
            }
        }
        Scheme::Shards { per_client } => {
            let sorted: Vec<usize> = by_class(&mut rng).into_iter().flatten().collect();
            let n = clients * per_client;
            if per_client == 0 || sorted.len() < n {
                return Err(Error::Invalid(format!(
                    "{} examples cannot make {n} non-empty shards",
                    sorted.len()
                )));
            }
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            for (slot, shard) in order.into_iter().enumerate() {
                let (start, end) = (shard * sorted.len() / n, (shard + 1) * sorted.len() / n);
                shards[slot / per_client].extend_from_slice(&sorted[start..end]);
            }
        }
        Scheme::Kshot { k } => {
            for (class, ids) in by_class(&mut rng).into_iter().enumerate() {
                if ids.len() < k * clients {
                    return Err(Error::Invalid(format!(
                        "class {class} has {} training examples; {k}-shot for {clients} clients needs {}",
                        ids.len(),
                        k * clients
                    )));
                }
                for (c, shard) in shards.iter_mut().enumerate() {
                    shard.extend_from_slice(&ids[c * k..(c + 1) * k]);
                }
            }
        }
    }
    let empty = shards.iter().filter(|s| s.is_empty()).count();
    if empty > 0 {
        return Err(Error::Invalid(format!(
            "{empty} of {clients} clients would get no example ({} training examples); use fewer clients",
            train.len()
        )));
    }
    Ok(client_ids(clients)
        .into_iter()
        .zip(shards)
        .map(|(client, mut examples)| {
            examples.sort_unstable();
            let mut label_histogram = vec![0; classes];
            for &id in &examples {
                label_histogram[labels[id]] += 1;
            }
            ClientShard {
                client,
                examples,
                label_histogram,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kshot_over_image_labels_gives_exactly_k_per_class_and_each_example_once() {
        // 10 classes of 30 examples, shuffled ids; 4 clients, 5-shot, from the first 280.
        let labels: Vec<usize> = (0..300).map(|i| (i * 7) % 10).collect();
        let train: Vec<usize> = (0..280).collect();
        let shards = partition_labels(&labels, 10, &train, 4, Scheme::Kshot { k: 5 }, 3).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for shard in &shards {
            assert_eq!(shard.label_histogram, vec![5; 10], "{}", shard.client);
            for &id in &shard.examples {
                assert!(
                    id < 280 && seen.insert(id),
                    "example {id} twice or outside train"
                );
            }
        }
        let err = partition_labels(&labels, 10, &train, 6, Scheme::Kshot { k: 5 }, 3).unwrap_err();
        assert!(err.to_string().contains("5-shot for 6 clients"), "{err}");
    }
    use crate::data::{Example, Input, Task};

    fn dataset(n: usize, classes: usize) -> Dataset {
        Dataset {
            task: Task::Classification {
                labels: (0..classes).map(|c| c.to_string()).collect(),
            },
            examples: (0..n)
                .map(|id| Example {
                    id,
                    input: Input::Text(String::new()),
                    label: (id % classes) as f32,
                    line: None,
                    group: None,
                })
                .collect(),
            path: "x".into(),
            held_out: None,
        }
    }

    fn assigned_once(shards: &[ClientShard], train: &[usize]) -> bool {
        let mut all: Vec<usize> = shards.iter().flat_map(|s| s.examples.clone()).collect();
        all.sort_unstable();
        all == train
    }

    /// Mean over clients of the largest class share: 1/classes is uniform, 1 is one class.
    fn skew(shards: &[ClientShard]) -> f64 {
        shards
            .iter()
            .map(|s| {
                *s.label_histogram.iter().max().unwrap() as f64 / s.examples.len().max(1) as f64
            })
            .sum::<f64>()
            / shards.len() as f64
    }

    #[test]
    fn a_partition_that_leaks_validation_or_shares_examples_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partition.json");
        let shard = |client: &str, examples: Vec<usize>| ClientShard {
            client: client.into(),
            label_histogram: vec![examples.len()],
            examples,
        };
        let good = Partition {
            file: path.clone(),
            data: DataSource::file(crate::data::Format::Jsonl, "d.jsonl"),
            data_sha256: "0".repeat(64),
            validation_sha256: None,
            labels_sha256: None,
            validation_labels_sha256: None,
            seed: 0,
            scheme: Scheme::Iid,
            label_names: vec!["a".into()],
            train: vec![0, 1, 2, 3],
            validation: vec![4, 5],
            clients: vec![shard("c0", vec![0, 1]), shard("c1", vec![2, 3])],
        };
        let load = |p: &Partition| {
            std::fs::write(&path, serde_json::to_string(p).unwrap()).unwrap();
            Partition::load(&path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(load(&good), Ok(()));
        let mut leaky = good.clone();
        leaky.clients[1].examples.push(5);
        let e = load(&leaky).unwrap_err();
        assert!(
            e.contains("partition.json")
                && e.contains(
                    "example 5 is in client c1's training data and in the validation set"
                ),
            "{e}"
        );
        let mut shared = good.clone();
        shared.clients[1].examples.push(0);
        let e = load(&shared).unwrap_err();
        assert!(
            e.contains("example 0 is in the training data of both client c0 and client c1"),
            "{e}"
        );
        let mut overlap = good.clone();
        overlap.train.push(4);
        assert!(load(&overlap)
            .unwrap_err()
            .contains("both the training and the validation set"));
    }

    #[test]
    fn a_labels_file_changed_after_partitioning_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        crate::core::fixtures::tiny_idx(
            &file("i-idx3-ubyte"),
            &file("l-idx1-ubyte"),
            2,
            2,
            &[0, 1, 1, 0],
        );
        let hash = |name: &str| Some(crate::core::io::sha256_data(&file(name)).unwrap());
        let partition = Partition {
            file: file("partition.json"),
            data: DataSource {
                labels_path: Some(file("l-idx1-ubyte")),
                ..DataSource::file(crate::data::Format::Idx, file("i-idx3-ubyte"))
            },
            data_sha256: hash("i-idx3-ubyte").unwrap(),
            validation_sha256: None,
            labels_sha256: hash("l-idx1-ubyte"),
            validation_labels_sha256: None,
            seed: 0,
            scheme: Scheme::Iid,
            label_names: vec!["0".into(), "1".into()],
            train: vec![0, 1],
            validation: vec![2, 3],
            clients: vec![],
        };
        assert_eq!(partition.dataset().unwrap().examples.len(), 4);
        crate::core::fixtures::tiny_idx(
            &file("i2-idx3-ubyte"),
            &file("l-idx1-ubyte"),
            2,
            2,
            &[1, 1, 1, 0],
        );
        let err = partition.dataset().unwrap_err().to_string();
        assert!(
            err.contains("l-idx1-ubyte") && err.contains("changed since"),
            "{err}"
        );
    }

    #[test]
    fn iid_sizes_are_balanced_within_one_and_seeded() {
        let ds = dataset(1003, 4);
        let train: Vec<usize> = (0..1003).collect();
        let shards = partition(&ds, &train, 10, Scheme::Iid, 1).unwrap();
        let sizes: Vec<usize> = shards.iter().map(|s| s.examples.len()).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        assert!(assigned_once(&shards, &train));
        assert_eq!(shards, partition(&ds, &train, 10, Scheme::Iid, 1).unwrap());
        assert_ne!(shards, partition(&ds, &train, 10, Scheme::Iid, 2).unwrap());
    }

    #[test]
    fn dirichlet_small_alpha_skews_and_large_alpha_is_near_uniform() {
        let ds = dataset(4000, 4);
        let train: Vec<usize> = (0..4000).collect();
        let small = partition(&ds, &train, 10, Scheme::Dirichlet { alpha: 0.1 }, 3).unwrap();
        let large = partition(&ds, &train, 10, Scheme::Dirichlet { alpha: 1000.0 }, 3).unwrap();
        assert!(assigned_once(&small, &train) && assigned_once(&large, &train));
        let (s, l) = (skew(&small), skew(&large));
        assert!(s > 0.7, "alpha 0.1 skew {s}");
        assert!(l < 0.3, "alpha 1000 skew {l} (uniform is 0.25)");
        assert_eq!(
            small,
            partition(&ds, &train, 10, Scheme::Dirichlet { alpha: 0.1 }, 3).unwrap()
        );
    }

    #[test]
    fn shards_give_few_labels_per_client_and_kshot_exact_counts() {
        let ds = dataset(1000, 10);
        let train: Vec<usize> = (0..1000).collect();
        let shards = partition(&ds, &train, 20, Scheme::Shards { per_client: 2 }, 0).unwrap();
        assert!(assigned_once(&shards, &train));
        assert!(shards
            .iter()
            .all(|s| s.label_histogram.iter().filter(|&&n| n > 0).count() <= 2));
        let kshot = partition(&ds, &train, 5, Scheme::Kshot { k: 3 }, 0).unwrap();
        assert!(kshot.iter().all(|s| s.label_histogram == vec![3; 10]));
        let mut all: Vec<usize> = kshot.iter().flat_map(|s| s.examples.clone()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 150, "k-shot clients share examples");
        assert!(partition(&ds, &train, 50, Scheme::Kshot { k: 3 }, 0)
            .unwrap_err()
            .to_string()
            .contains("needs 150"));
    }
}
