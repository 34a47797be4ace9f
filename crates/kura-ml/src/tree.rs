//! Classification trees whose every released number is either public or a rate over many
//! people.
//!
//! A tree as CART grows it publishes two kinds of numbers that can single a person out. Its
//! split values are midpoints between two training rows' values, so each lies between two
//! people's amounts; and a leaf may hold a handful of rows, whose rate is then theirs. kura's
//! trees close both:
//!
//! - **Splits only at public cut points.** The contract gives each feature's cut points. Each
//!   value is replaced by its bin (how many cut points lie at or below it) before linfa's CART
//!   looks at it, so every split linfa can choose falls between two bins, and is written back
//!   as the cut point between them: "below the cut" on the raw value is "in a lower bin".
//! - **Every leaf covers `min_units` people of each dataset it holds rows of.** kura grows the
//!   tree one split at a time and routes the training rows itself; a split with a leaf below it
//!   that covers fewer is not made. The rates are computed by kura over the rows that reach
//!   each leaf.
//!
//! Each split is linfa's: a tree of depth one fitted on the node's rows. linfa predicts a
//! leaf's more frequent class and merges sibling leaves that predict the same one, which on a
//! rare label (fraud is a few percent of transactions) would merge nearly every split away. So
//! at each node the classes are weighted to count alike: any split that moves the rate then
//! leaves one side above the node's rate and one below, predicting different classes, and
//! linfa keeps it.

use std::collections::HashSet;

use linfa::prelude::*;
use linfa_trees::{DecisionTree, SplitQuality};
use ndarray::{Array1, Array2, Axis};

use crate::{MlError, TrainingSet};

/// A trained tree: what its receivers get.
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    pub features: Vec<String>,
    /// Node 0 is the root; each split's children come after it.
    pub nodes: Vec<Node>,
    /// Measures on the held-out rows, as a logistic model's.
    pub metrics: Vec<(String, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Rows whose `feature` is below `cut` go to `below`; the others (and a value that is not a
    /// number) to `above`.
    Split {
        feature: usize,
        cut: f64,
        below: usize,
        above: usize,
    },
    /// The share of training rows reaching this leaf whose label is 1.
    Leaf { rate: f64 },
}

/// The settings a contract fixes for a tree.
#[derive(Clone, Debug)]
pub struct TreeSettings {
    /// The most splits from the root to a leaf.
    pub max_depth: usize,
    /// The fewest distinct people of each dataset a leaf may cover.
    pub min_units: usize,
    /// Share of rows held out of the fit and used to measure the tree.
    pub holdout: f64,
}

impl Tree {
    /// The leaf row `row` (raw feature values) reaches.
    fn leaf(&self, row: &[f64]) -> usize {
        let mut at = 0;
        while let Node::Split {
            feature,
            cut,
            below,
            above,
        } = self.nodes[at]
        {
            at = if row[feature] < cut { below } else { above };
        }
        at
    }

    /// The probability that the label of `row` is 1: the rate of the leaf it reaches.
    pub fn predict(&self, row: &[f64]) -> f64 {
        match self.nodes[self.leaf(row)] {
            Node::Leaf { rate } => rate,
            Node::Split { .. } => unreachable!("leaf() stops at a leaf"),
        }
    }

    /// Each leaf as the conditions that lead to it, one per feature split on the way, in the
    /// features' order (`"250 <= amount < 500 and night >= 0.5"`, or `"all rows"` for a tree
    /// of one leaf), and its rate; below before above.
    pub fn leaves(&self) -> Vec<(String, f64)> {
        self.paths()
            .into_iter()
            .map(|(rate, path)| {
                // Each feature's lowest value and the value it stays below, on this path.
                let mut bounds = vec![(None, None); self.features.len()];
                for (split, below) in path {
                    if let Node::Split { feature, cut, .. } = self.nodes[split] {
                        if below {
                            bounds[feature].1 = Some(cut);
                        } else {
                            bounds[feature].0 = Some(cut);
                        }
                    }
                }
                let conditions: Vec<String> = self
                    .features
                    .iter()
                    .zip(bounds)
                    .filter_map(|(name, bound)| match bound {
                        (None, None) => None,
                        (Some(low), None) => Some(format!("{name} >= {low}")),
                        (None, Some(high)) => Some(format!("{name} < {high}")),
                        (Some(low), Some(high)) => Some(format!("{low} <= {name} < {high}")),
                    })
                    .collect();
                let rule = if conditions.is_empty() {
                    "all rows".to_string()
                } else {
                    conditions.join(" and ")
                };
                (rule, rate)
            })
            .collect()
    }

    /// Each leaf's rate and its path: the splits it passes (node indices, root first) and
    /// whether it goes below each; below before above.
    pub fn paths(&self) -> Vec<(f64, Vec<(usize, bool)>)> {
        let mut out = Vec::new();
        let mut stack = vec![(0, Vec::new())];
        while let Some((at, path)) = stack.pop() {
            match self.nodes[at] {
                Node::Leaf { rate } => out.push((rate, path)),
                Node::Split { below, above, .. } => {
                    let mut up = path.clone();
                    up.push((at, false));
                    let mut down = path;
                    down.push((at, true));
                    // Popped last in, so below comes out first.
                    stack.push((above, up));
                    stack.push((below, down));
                }
            }
        }
        out
    }
}

/// Grows a tree on `set`, whose label must be 0 or 1. `people[r]` names the person row `r`
/// belongs to as (dataset, person), numbered by the caller; `cuts[j]` are feature `j`'s public
/// cut points, increasing.
pub fn train_tree(
    set: &TrainingSet,
    people: &[(u32, u32)],
    cuts: &[Vec<f64>],
    settings: &TreeSettings,
) -> Result<Tree, MlError> {
    let (n, p) = set.x.dim();
    if n != set.y.len() || n != people.len() || p != cuts.len() {
        return Err(MlError::Data(
            "features, labels and people differ in length".into(),
        ));
    }
    crate::finite(set)?;
    if cuts.iter().any(|c| {
        c.is_empty() || c.iter().any(|v| !v.is_finite()) || c.windows(2).any(|w| w[0] >= w[1])
    }) {
        return Err(MlError::Data(
            "each feature needs finite cut points in increasing order".into(),
        ));
    }
    // The label is 1 or not: another value is not a refusal, which would tell that someone
    // has it.
    let labels = set.y.mapv(|v| f64::from(u8::from(v == 1.0)));
    let (tested, trained) = crate::hold_out(n, settings.holdout)?;
    let each: crate::Owners = people.iter().map(|&p| [p]).collect();
    crate::support::check_held_out(&each.of_rows(&tested), settings.min_units)?;
    let x = set.x.select(Axis(0), &trained);
    let y = labels.select(Axis(0), &trained);
    let people: Vec<(u32, u32)> = trained.iter().map(|&r| people[r]).collect();
    let rows: Vec<usize> = (0..x.nrows()).collect();
    if !covers(&rows, &people, settings.min_units) {
        return Err(MlError::Data(format!(
            "the training rows come from fewer than {} people of some dataset",
            settings.min_units
        )));
    }

    let grower = Grower {
        x: &x,
        bins: Array2::from_shape_fn(x.dim(), |(r, j)| bin(x[(r, j)], &cuts[j]) as f64),
        labels: y.mapv(|v| v == 1.0),
        cuts,
        people: &people,
        min_units: settings.min_units,
        max_depth: settings.max_depth,
    };
    let mut nodes = Vec::new();
    flatten(grower.grow(rows, 0)?, &y, &mut nodes);
    let mut tree = Tree {
        features: set.features.clone(),
        nodes,
        metrics: Vec::new(),
    };
    if !tested.is_empty() {
        let predicted: Vec<f64> = set
            .x
            .select(Axis(0), &tested)
            .rows()
            .into_iter()
            .map(|r| tree.predict(&r.to_vec()))
            .collect();
        tree.metrics = crate::measure_binary(&predicted, &labels.select(Axis(0), &tested));
    }
    Ok(tree)
}

/// The bin of `value`: how many of `cuts` lie at or below it.
pub(crate) fn bin(value: f64, cuts: &[f64]) -> usize {
    cuts.partition_point(|c| *c <= value)
}

/// A tree before it is numbered: leaves hold the training rows that reach them.
enum Placed {
    Leaf(Vec<usize>),
    Split {
        feature: usize,
        cut: f64,
        below: Box<Placed>,
        above: Box<Placed>,
    },
}

/// What growing a tree needs.
struct Grower<'a> {
    /// The training rows' raw values, which the splits route.
    x: &'a Array2<f64>,
    /// Their bins, which linfa sees.
    bins: Array2<f64>,
    labels: Array1<bool>,
    cuts: &'a [Vec<f64>],
    people: &'a [(u32, u32)],
    min_units: usize,
    max_depth: usize,
}

impl Grower<'_> {
    /// The subtree of `rows` (which cover enough people), `depth` splits below the root:
    /// linfa's best split of them, unless there is none or a side of it would cover too few
    /// people. Each leaf of a subtree is a side some split checked, or the subtree's own rows.
    fn grow(&self, rows: Vec<usize>, depth: usize) -> Result<Placed, MlError> {
        if depth >= self.max_depth {
            return Ok(Placed::Leaf(rows));
        }
        let Some((feature, cut)) = self.split(&rows)? else {
            return Ok(Placed::Leaf(rows));
        };
        let (below, above): (Vec<usize>, Vec<usize>) =
            rows.iter().partition(|&&r| self.x[(r, feature)] < cut);
        let enough = |side: &[usize]| covers(side, self.people, self.min_units);
        if !(enough(&below) && enough(&above)) {
            return Ok(Placed::Leaf(rows));
        }
        Ok(Placed::Split {
            feature,
            cut,
            below: Box::new(self.grow(below, depth + 1)?),
            above: Box::new(self.grow(above, depth + 1)?),
        })
    }

    /// linfa's best split of `rows` (Gini, classes weighted to count alike among them), as a
    /// feature and the cut point it falls on; `None` when linfa makes none.
    fn split(&self, rows: &[usize]) -> Result<Option<(usize, f64)>, MlError> {
        let labels = self.labels.select(Axis(0), rows);
        let ones = labels.iter().filter(|l| **l).count();
        let n = labels.len() as f32;
        let weight = |one: bool| {
            let of_class = if one { ones } else { labels.len() - ones };
            n / 2.0 / (of_class as f32).max(1.0)
        };
        let weights = labels.mapv(weight);
        let stump = DecisionTree::params()
            .split_quality(SplitQuality::Gini)
            .max_depth(Some(1))
            .fit(&DatasetBase::new(self.bins.select(Axis(0), rows), labels).with_weights(weights))
            .map_err(|e| MlError::Fit(e.to_string()))?;
        let root = stump.root_node();
        if root.is_leaf() {
            return Ok(None);
        }
        let (feature, split, _) = root.split();
        // linfa sends bins up to the midpoint below; the bins are whole numbers, so the highest
        // bin below is the split's whole part, and the cut point above that bin separates them.
        Ok(self.cuts[feature]
            .get(split.floor() as usize)
            .map(|&cut| (feature, cut)))
    }
}

/// Whether `rows` cover at least `k` distinct people of every dataset they hold rows of.
fn covers(rows: &[usize], people: &[(u32, u32)], k: usize) -> bool {
    let mut seen: Vec<HashSet<u32>> = Vec::new();
    for &r in rows {
        let (dataset, person) = people[r];
        let d = dataset as usize;
        if seen.len() <= d {
            seen.resize_with(d + 1, HashSet::new);
        }
        seen[d].insert(person);
    }
    !rows.is_empty() && seen.iter().all(|s| s.is_empty() || s.len() >= k)
}

/// Numbers `placed` into `nodes`, parents before children, each leaf with the rate of 1 among
/// its rows' labels `y`; gives the index of its top node.
fn flatten(placed: Placed, y: &Array1<f64>, nodes: &mut Vec<Node>) -> usize {
    let at = nodes.len();
    match placed {
        Placed::Leaf(rows) => {
            let ones: f64 = rows.iter().map(|&r| y[r]).sum();
            nodes.push(Node::Leaf {
                rate: ones / rows.len() as f64,
            });
        }
        Placed::Split {
            feature,
            cut,
            below,
            above,
        } => {
            nodes.push(Node::Leaf { rate: f64::NAN });
            let below = flatten(*below, y, nodes);
            let above = flatten(*above, y, nodes);
            nodes[at] = Node::Split {
                feature,
                cut,
                below,
                above,
            };
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    use super::*;

    const CUTS: [f64; 5] = [100.0, 250.0, 500.0, 1000.0, 1500.0];

    fn settings(min_units: usize, holdout: f64) -> TreeSettings {
        TreeSettings {
            max_depth: 4,
            min_units,
            holdout,
        }
    }

    /// `n` rows of an amount (5 to 2000) and a 0/1 flag, a label 1 with probability `rate`
    /// of them, and people of two datasets, `per` rows each.
    fn rows(
        seed: u64,
        n: usize,
        per: usize,
        rate: impl Fn(f64, f64) -> f64,
    ) -> (TrainingSet, Vec<(u32, u32)>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, 2), |(_, j)| {
            if j == 0 {
                5.0 + (rng.r#gen::<f64>() * 199_500.0).round() / 100.0
            } else {
                f64::from(u8::from(rng.r#gen::<f64>() < 0.3))
            }
        });
        let y = x
            .rows()
            .into_iter()
            .map(|r| f64::from(u8::from(rng.r#gen::<f64>() < rate(r[0], r[1]))))
            .collect();
        let people = (0..n)
            .map(|i| ((i % 2) as u32, (i / 2 / per) as u32))
            .collect();
        let set = TrainingSet {
            features: vec!["amount".into(), "flag".into()],
            x,
            y,
            owners: Default::default(),
        };
        (set, people)
    }

    fn cuts() -> Vec<Vec<f64>> {
        vec![CUTS.to_vec(), vec![0.5]]
    }

    /// The rows of `set` each leaf of `tree` holds, by leaf node.
    fn by_leaf(tree: &Tree, set: &TrainingSet) -> HashMap<usize, Vec<usize>> {
        let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
        for (r, row) in set.x.rows().into_iter().enumerate() {
            out.entry(tree.leaf(&row.to_vec())).or_default().push(r);
        }
        out
    }

    /// A step in the rate at a cut point is found there, and each leaf's rate is the share of
    /// 1s among the rows that reach it.
    #[test]
    fn a_tree_finds_a_step_at_a_cut_point_and_rates_each_leaf_by_its_rows() {
        let (set, people) = rows(1, 20_000, 5, |amount, flag| {
            if amount < 500.0 {
                0.02
            } else {
                0.3 + 0.3 * flag
            }
        });
        let tree = train_tree(&set, &people, &cuts(), &settings(10, 0.0)).unwrap();
        assert!(matches!(
            tree.nodes[0],
            Node::Split { feature: 0, cut, .. } if cut == 500.0
        ));
        assert!(tree.leaves().len() >= 3, "{:?}", tree.leaves());
        for (leaf, members) in by_leaf(&tree, &set) {
            let ones: f64 = members.iter().map(|&r| set.y[r]).sum();
            let Node::Leaf { rate } = tree.nodes[leaf] else {
                panic!("not a leaf")
            };
            assert_eq!(rate, ones / members.len() as f64);
        }
        let rate = |amount: f64, flag: f64| tree.predict(&[amount, flag]);
        assert!((rate(50.0, 0.0) - 0.02).abs() < 0.01, "{}", rate(50.0, 0.0));
        assert!(
            (rate(800.0, 1.0) - 0.6).abs() < 0.03,
            "{}",
            rate(800.0, 1.0)
        );
        assert!(
            (rate(800.0, 0.0) - 0.3).abs() < 0.03,
            "{}",
            rate(800.0, 0.0)
        );
        for (rule, _) in tree.leaves() {
            assert!(rule.matches("amount").count() <= 1, "{rule}");
            assert!(rule.matches("flag").count() <= 1, "{rule}");
        }
    }

    /// One account whose many rows are all fraud, in an amount range nobody else uses, is the
    /// purest split there is: linfa would give it a leaf of its own. Its leaf must still cover
    /// ten accounts of its bank, so its rate is never its own.
    #[test]
    fn one_persons_rows_never_make_a_leaf_of_their_own() {
        let (mut set, mut people) = rows(2, 4_000, 4, |_, _| 0.05);
        for (r, person) in people.iter_mut().enumerate() {
            if r < 400 {
                set.x[(r, 0)] = 1800.0;
                set.y[r] = 1.0;
                *person = (0, 9_999);
            } else {
                set.x[(r, 0)] = set.x[(r, 0)].min(1499.0);
            }
        }
        let tree = train_tree(&set, &people, &cuts(), &settings(10, 0.0)).unwrap();
        let leaves = by_leaf(&tree, &set);
        let theirs = &leaves[&tree.leaf(&[1800.0, 0.0])];
        let bank_a: HashSet<u32> = theirs
            .iter()
            .filter(|&&r| people[r].0 == 0)
            .map(|&r| people[r].1)
            .collect();
        assert!(bank_a.len() >= 10, "{} accounts", bank_a.len());
        // Without the rule, the same data does give that account a leaf of its own.
        let alone = train_tree(&set, &people, &cuts(), &settings(1, 0.0)).unwrap();
        assert_eq!(alone.predict(&[1800.0, 0.0]), 1.0, "{:?}", alone.leaves());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the data and the minimum: every split is at one of the contract's cut
        /// points, and every leaf covers the minimum of people of each dataset it holds rows of.
        #[test]
        fn splits_are_cut_points_and_leaves_cover_the_minimum(
            seed in any::<u64>(),
            n in 50usize..3_000,
            per in 1usize..40,
            min_units in 1usize..30,
            step in 0usize..5,
        ) {
            let (set, people) = rows(seed, n, per, |amount, flag| {
                if amount < CUTS[step] { 0.1 } else { 0.5 + 0.4 * flag }
            });
            let Ok(tree) = train_tree(&set, &people, &cuts(), &settings(min_units, 0.0)) else {
                // Refused only when the rows themselves are too few people.
                let all: Vec<usize> = (0..n).collect();
                prop_assert!(!covers(&all, &people, min_units));
                return Ok(());
            };
            for node in &tree.nodes {
                if let Node::Split { feature, cut, .. } = node {
                    prop_assert!(cuts()[*feature].contains(cut), "{cut}");
                }
            }
            for members in by_leaf(&tree, &set).values() {
                prop_assert!(covers(members, &people, min_units));
            }
        }
    }

    /// A leaf's rule names each feature once, as the range its path narrows it to.
    #[test]
    fn a_leaf_reads_as_the_range_of_each_feature_on_its_path() {
        let split = |feature, cut, below, above| Node::Split {
            feature,
            cut,
            below,
            above,
        };
        let tree = Tree {
            features: vec!["amount".into(), "flag".into()],
            nodes: vec![
                split(0, 500.0, 1, 2),
                Node::Leaf { rate: 0.1 },
                split(0, 1000.0, 3, 6),
                split(1, 0.5, 4, 5),
                Node::Leaf { rate: 0.2 },
                Node::Leaf { rate: 0.3 },
                Node::Leaf { rate: 0.4 },
            ],
            metrics: Vec::new(),
        };
        assert_eq!(
            tree.leaves(),
            [
                ("amount < 500".to_string(), 0.1),
                ("500 <= amount < 1000 and flag < 0.5".to_string(), 0.2),
                ("500 <= amount < 1000 and flag >= 0.5".to_string(), 0.3),
                ("amount >= 1000".to_string(), 0.4),
            ]
        );
        assert_eq!(tree.predict(&[700.0, 1.0]), 0.3);
        let one = Tree {
            nodes: vec![Node::Leaf { rate: 0.5 }],
            ..tree
        };
        assert_eq!(one.leaves(), [("all rows".to_string(), 0.5)]);
    }

    #[test]
    fn too_few_people_or_bad_cuts_are_refused() {
        let (set, people) = rows(3, 200, 10, |_, _| 0.5);
        let refused = train_tree(&set, &people, &cuts(), &settings(11, 0.0)).unwrap_err();
        assert!(
            refused.to_string().contains("fewer than 11 people"),
            "{refused}"
        );
        let mut bad = TrainingSet {
            features: set.features.clone(),
            x: set.x.clone(),
            y: set.y.clone(),
            owners: Default::default(),
        };
        // A label other than 1 is a 0, not a refusal that would tell someone has it.
        bad.y[0] = 2.0;
        let two = train_tree(&bad, &people, &cuts(), &settings(1, 0.0)).unwrap();
        bad.y[0] = 0.0;
        assert_eq!(
            two,
            train_tree(&bad, &people, &cuts(), &settings(1, 0.0)).unwrap()
        );
        let unsorted = vec![vec![500.0, 100.0], vec![0.5]];
        assert!(train_tree(&set, &people, &unsorted, &settings(1, 0.0)).is_err());
    }

    /// Held-out rows of fewer than `min_units` people of a dataset give no measures: the
    /// tree is refused, as a regression is.
    #[test]
    fn held_out_rows_of_few_people_are_refused() {
        let (set, people) = rows(4, 60, 1, |_, _| 0.5);
        // Two datasets of 30 people of one row each, a tenth held out: about 3 of each, under
        // 20, while the rest cover 27.
        let refused = train_tree(&set, &people, &cuts(), &settings(20, 0.1)).unwrap_err();
        assert!(refused.to_string().contains("fewer than 20"), "{refused}");
    }

    /// Held-out rows measure the tree; the rates come from the others.
    #[test]
    fn a_holdout_measures_the_tree() {
        let (set, people) = rows(
            4,
            10_000,
            5,
            |amount, _| if amount < 1000.0 { 0.05 } else { 0.6 },
        );
        let tree = train_tree(&set, &people, &cuts(), &settings(10, 0.25)).unwrap();
        let names: Vec<&str> = tree.metrics.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["holdout_accuracy", "holdout_auc", "holdout_log_loss"]
        );
        assert!(tree.metrics[1].1 > 0.7, "{:?}", tree.metrics);
    }
}
