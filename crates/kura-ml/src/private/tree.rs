//! A differentially private classification tree: grown level by level from noisy counts, its
//! leaves rated from noisy counts, split only at the contract's public cut points.
//!
//! The rows are binned by the cut points as an exact tree's are ([`crate::tree`]). The budget ε
//! is split evenly between the levels (`max_depth` of them) and the leaves.
//!
//! - **A level.** The nodes still growing hold disjoint rows. For each of them, each feature,
//!   each of its bins and each class, the rows are counted. A row adds 1 to one count per
//!   feature, so a person with at most `k` rows moves the counts by at most `k · features` in
//!   L1; the engine adds Laplace noise of that sensitivity at the level's ε (OpenDP). Each node
//!   then takes the cut whose two sides, by the noisy counts alone, have the lowest weighted
//!   Gini impurity, if each side's noisy total clears a public floor (three times the standard
//!   deviation of its noise); otherwise it becomes a leaf.
//! - **The leaves.** Each leaf's rows are counted by class: one row adds 1 to one count, so `k`
//!   in L1. The leaf's rate is its noisy count of 1 over its noisy total, each count at least
//!   0, with half a row of each class added so that it is always a rate.
//!
//! Every choice reads noisy counts and public settings only: the tree is post-processing of
//! `max_depth + 1` releases that each spend ε/(max_depth + 1).

use ndarray::Axis;

use super::Release;
use crate::tree::{Node, Tree, bin};
use crate::{MlError, TrainingSet};

/// The settings a contract fixes for a private tree.
#[derive(Clone, Debug)]
pub struct PrivateTreeSettings {
    /// The most splits from the root to a leaf.
    pub max_depth: usize,
    /// The most rows of one person among the rows given.
    pub rows_per_person: u64,
    /// The budget of the whole tree.
    pub epsilon: f64,
}

/// A grown private tree, with the standard deviation of the noise on each leaf's counts.
#[derive(Clone, Debug)]
pub struct PrivateTree {
    pub tree: Tree,
    /// The Laplace scale of the noise on each leaf's two counts.
    pub leaf_scale: f64,
    /// Each leaf's noisy counts of 0 and of 1 (at least 0), by node.
    pub leaf_counts: Vec<(usize, [f64; 2])>,
}

impl PrivateTree {
    /// The standard deviation of each leaf's rate from its counts' noise, by the delta method
    /// on the noisy counts (post-processing: it reads released numbers only), in the order of
    /// [`Tree::leaves`].
    pub fn rate_sd(&self) -> Vec<f64> {
        let order: Vec<usize> = self
            .tree
            .paths()
            .iter()
            .map(|(_, p)| leaf_of(&self.tree, p))
            .collect();
        order
            .iter()
            .map(|leaf| {
                let [zero, one] = self
                    .leaf_counts
                    .iter()
                    .find(|(n, _)| n == leaf)
                    .map_or([0.0; 2], |(_, c)| *c);
                let (a, b) = (one + 0.5, zero + 0.5);
                let total = a + b;
                // ∂r/∂a = b/t², ∂r/∂b = -a/t²; each count's variance is 2·scale².
                (2.0 * self.leaf_scale.powi(2) * (a * a + b * b)).sqrt() / (total * total)
            })
            .collect()
    }
}

/// The leaf a path from the root ends at.
fn leaf_of(tree: &Tree, path: &[(usize, bool)]) -> usize {
    match path.last() {
        None => 0,
        Some(&(split, below)) => match tree.nodes[split] {
            Node::Split {
                below: b, above: a, ..
            } => {
                if below {
                    b
                } else {
                    a
                }
            }
            Node::Leaf { .. } => split,
        },
    }
}

/// Grows a private tree on `set` (label 0 or 1) split only at `cuts`, releasing every count
/// through `release`.
pub fn grow(
    set: &TrainingSet,
    cuts: &[Vec<f64>],
    settings: &PrivateTreeSettings,
    release: &mut Release<'_>,
) -> Result<PrivateTree, MlError> {
    let (n, p) = set.x.dim();
    if n != set.y.len() || p != cuts.len() || p == 0 {
        return Err(MlError::Data("features and labels differ in length".into()));
    }
    if settings.rows_per_person == 0
        || settings.max_depth == 0
        || !(settings.epsilon.is_finite() && settings.epsilon > 0.0)
    {
        return Err(MlError::Data(
            "a private tree needs a depth, a bound on rows per person and a positive ε".into(),
        ));
    }
    let bins: Vec<Vec<usize>> = set
        .x
        .axis_iter(Axis(0))
        .map(|r| {
            r.iter()
                .zip(cuts)
                // A value that is not a number goes above every cut, as the tree routes it.
                .map(|(v, c)| if v.is_nan() { c.len() } else { bin(*v, c) })
                .collect()
        })
        .collect();
    // Nothing here refuses what it reads: a label is 1 or not, any value has a bin.
    let labels: Vec<usize> = set.y.iter().map(|&y| usize::from(y == 1.0)).collect();
    let widths: Vec<usize> = cuts.iter().map(|c| c.len() + 1).collect();
    let epsilon = settings.epsilon / (settings.max_depth + 1) as f64;
    let k = settings.rows_per_person as f64;

    let mut nodes = vec![Node::Leaf { rate: 0.0 }];
    // Each row's node; the nodes still growing.
    let mut node_of = vec![0usize; n];
    let mut growing = vec![0usize];
    for _ in 0..settings.max_depth {
        if growing.is_empty() {
            break;
        }
        let counts = histogram(&bins, &labels, &node_of, &growing, &widths);
        let sensitivity = k * p as f64;
        let noisy = release(counts, sensitivity, epsilon)?;
        let scale = sensitivity / epsilon;
        let mut next = Vec::new();
        let mut at = 0;
        for &node in &growing {
            let mut best: Option<(f64, usize, usize)> = None;
            for (f, &width) in widths.iter().enumerate() {
                let cells = &noisy[at..at + 2 * width];
                at += 2 * width;
                if let Some((impurity, t)) = best_cut(cells, scale)
                    && best.is_none_or(|(b, _, _)| impurity < b)
                {
                    best = Some((impurity, f, t));
                }
            }
            if let Some((_, f, t)) = best {
                let (below, above) = (nodes.len(), nodes.len() + 1);
                nodes.push(Node::Leaf { rate: 0.0 });
                nodes.push(Node::Leaf { rate: 0.0 });
                nodes[node] = Node::Split {
                    feature: f,
                    cut: cuts[f][t - 1],
                    below,
                    above,
                };
                for (r, at) in node_of.iter_mut().enumerate() {
                    if *at == node {
                        *at = if bins[r][f] < t { below } else { above };
                    }
                }
                next.extend([below, above]);
            }
        }
        growing = next;
    }

    // The leaves' counts by class, released at the last share of ε.
    let leaves: Vec<usize> = (0..nodes.len())
        .filter(|&i| matches!(nodes[i], Node::Leaf { .. }))
        .collect();
    let mut counts = vec![0.0; 2 * nodes.len()];
    for (node, label) in node_of.iter().zip(&labels) {
        counts[2 * node + label] += 1.0;
    }
    let exact: Vec<f64> = leaves
        .iter()
        .flat_map(|&l| [counts[2 * l], counts[2 * l + 1]])
        .collect();
    let noisy = release(exact, k, epsilon)?;
    let mut leaf_counts = Vec::new();
    for (i, &leaf) in leaves.iter().enumerate() {
        let (zero, one) = (noisy[2 * i].max(0.0), noisy[2 * i + 1].max(0.0));
        nodes[leaf] = Node::Leaf {
            rate: (one + 0.5) / (zero + one + 1.0),
        };
        leaf_counts.push((leaf, [zero, one]));
    }
    Ok(PrivateTree {
        tree: Tree {
            features: set.features.clone(),
            nodes,
            metrics: Vec::new(),
        },
        leaf_scale: k / epsilon,
        leaf_counts,
    })
}

/// The exact counts one level releases: for each node of `growing` in turn, each feature, each
/// of its bins (`widths`), the rows of class 0 and of class 1.
fn histogram(
    bins: &[Vec<usize>],
    labels: &[usize],
    node_of: &[usize],
    growing: &[usize],
    widths: &[usize],
) -> Vec<f64> {
    let per_node: usize = widths.iter().map(|w| 2 * w).sum();
    let offsets: Vec<usize> = widths
        .iter()
        .scan(0, |at, w| {
            let o = *at;
            *at += 2 * w;
            Some(o)
        })
        .collect();
    let position: std::collections::HashMap<usize, usize> =
        growing.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut counts = vec![0.0; growing.len() * per_node];
    for ((row, label), node) in bins.iter().zip(labels).zip(node_of) {
        if let Some(&i) = position.get(node) {
            for (f, b) in row.iter().enumerate() {
                counts[i * per_node + offsets[f] + 2 * b + label] += 1.0;
            }
        }
    }
    counts
}

/// The best cut of one node on one feature by its noisy `cells` (each bin's count of class 0,
/// then of 1): the weighted Gini impurity of the two sides and the first bin above the cut,
/// among the cuts whose two sides' noisy totals each clear the floor for noise of `scale`.
fn best_cut(cells: &[f64], scale: f64) -> Option<(f64, usize)> {
    let bins = cells.len() / 2;
    let count = |range: std::ops::Range<usize>| -> [f64; 2] {
        range.fold([0.0, 0.0], |[a, b], i| {
            [a + cells[2 * i].max(0.0), b + cells[2 * i + 1].max(0.0)]
        })
    };
    let gini = |[a, b]: [f64; 2]| {
        let t = a + b;
        if t <= 0.0 {
            0.0
        } else {
            t * (1.0 - (a / t).powi(2) - (b / t).powi(2))
        }
    };
    let mut best: Option<(f64, usize)> = None;
    for t in 1..bins {
        let (below, above) = (count(0..t), count(t..bins));
        // Each side's total sums 2·bins noisy counts of variance 2·scale² each.
        let floor = |cells: usize| 3.0 * (2.0 * cells as f64).sqrt() * scale;
        if below[0] + below[1] < floor(2 * t) || above[0] + above[1] < floor(2 * (bins - t)) {
            continue;
        }
        let impurity = gini(below) + gini(above);
        if best.is_none_or(|(b, _)| impurity < b) {
            best = Some((impurity, t));
        }
    }
    // A cut that does not lower the node's impurity is no cut.
    let whole = gini(count(0..bins));
    best.filter(|(impurity, _)| *impurity < whole)
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Rows where the label is 1 exactly when `a >= 50` and `b` is 0.
    fn set(n: usize, seed: u64) -> TrainingSet {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, 2), |(_, j)| match j {
            0 => (rng.r#gen::<f64>() * 100.0).floor(),
            _ => f64::from(u8::from(rng.r#gen::<f64>() < 0.5)),
        });
        let y: Array1<f64> = x
            .rows()
            .into_iter()
            .map(|r| f64::from(u8::from(r[0] >= 50.0 && r[1] == 0.0)))
            .collect();
        TrainingSet {
            features: vec!["a".into(), "b".into()],
            x,
            y,
            owners: Default::default(),
        }
    }

    fn cuts() -> Vec<Vec<f64>> {
        vec![vec![25.0, 50.0, 75.0], vec![0.5]]
    }

    fn settings(depth: usize, epsilon: f64) -> PrivateTreeSettings {
        PrivateTreeSettings {
            max_depth: depth,
            rows_per_person: 1,
            epsilon,
        }
    }

    /// A release that adds Laplace noise of the scale asked for, and keeps what it was asked.
    fn laplace(seed: u64) -> impl FnMut(Vec<f64>, f64, f64) -> Result<Vec<f64>, MlError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        move |values: Vec<f64>, sensitivity: f64, epsilon: f64| {
            let scale = sensitivity / epsilon;
            Ok(crate::private::simulated_laplace(&mut rng, &values, scale))
        }
    }

    /// On many rows the noisy tree finds the two-level rule, and its leaves' rates are near
    /// 0 and 1; the releases spend exactly the tree's ε.
    #[test]
    fn a_private_tree_finds_the_rule_and_spends_its_budget() {
        let s = set(20_000, 1);
        let mut spent = 0.0;
        let mut noise = laplace(2);
        let mut release = |v: Vec<f64>, sensitivity: f64, epsilon: f64| {
            spent += epsilon;
            noise(v, sensitivity, epsilon)
        };
        let grown = grow(&s, &cuts(), &settings(2, 1.0), &mut release).unwrap();
        assert!((spent - 1.0).abs() < 1e-12, "{spent}");
        let t = &grown.tree;
        assert!(t.predict(&[80.0, 0.0]) > 0.95, "{t:?}");
        assert!(t.predict(&[80.0, 1.0]) < 0.05, "{t:?}");
        assert!(t.predict(&[10.0, 0.0]) < 0.05, "{t:?}");
        for node in &t.nodes {
            if let Node::Split { feature, cut, .. } = node {
                assert!(cuts()[*feature].contains(cut), "{node:?}");
            }
        }
        assert_eq!(grown.rate_sd().len(), t.leaves().len());
        assert!(
            grown.rate_sd().iter().all(|sd| *sd < 0.01),
            "{:?}",
            grown.rate_sd()
        );
    }

    /// Nothing read is refused: a label other than 1 is a 0, a value that is not a number
    /// goes above every cut. A refusal made on the exact rows would tell, with no noise, that
    /// someone has such a value.
    #[test]
    fn odd_values_are_grown_on_not_refused() {
        let mut s = set(200, 5);
        s.y[0] = 2.0;
        s.x[[1, 0]] = f64::NAN;
        s.x[[2, 1]] = f64::INFINITY;
        grow(&s, &cuts(), &settings(2, 1.0), &mut laplace(6)).unwrap();
    }

    /// With few rows the noise hides any split: the tree is one leaf, not a refusal.
    #[test]
    fn few_rows_give_a_leaf_not_a_refusal() {
        let s = set(30, 3);
        let grown = grow(&s, &cuts(), &settings(3, 0.1), &mut laplace(4)).unwrap();
        // Each side would have to clear three noise deviations of a scale of 80 rows.
        assert_eq!(grown.tree.nodes.len(), 1, "{:?}", grown.tree);
    }

    proptest! {
        /// One person's rows (at most `k`, anywhere, any label) move every level's counts by
        /// at most `k · features` and the leaves' by at most `k`, in L1, whatever nodes grow.
        #[test]
        fn one_persons_rows_move_the_counts_within_the_sensitivity(
            k in 1usize..4,
            rows in prop::collection::vec((0usize..4, 0usize..2, 0usize..2, 0usize..3), 1..40),
            extra in prop::collection::vec((0usize..4, 0usize..2, 0usize..2, 0usize..3), 1..4),
        ) {
            let widths = [4, 2];
            let split = |rows: &[(usize, usize, usize, usize)]| {
                let bins: Vec<Vec<usize>> = rows.iter().map(|r| vec![r.0, r.1]).collect();
                let labels: Vec<usize> = rows.iter().map(|r| r.2).collect();
                let node_of: Vec<usize> = rows.iter().map(|r| r.3).collect();
                (bins, labels, node_of)
            };
            let (b, l, n) = split(&rows);
            let without = histogram(&b, &l, &n, &[0, 2], &widths);
            let mut more = rows.clone();
            more.extend(extra.iter().take(k));
            let (b, l, n) = split(&more);
            let with = histogram(&b, &l, &n, &[0, 2], &widths);
            let moved: f64 = with.iter().zip(&without).map(|(a, b)| (a - b).abs()).sum();
            prop_assert!(moved <= (k * widths.len()) as f64);
        }
    }
}
