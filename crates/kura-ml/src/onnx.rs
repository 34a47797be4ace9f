//! Models as ONNX files: a trained model written out for its receivers ([`export`]), and a
//! party's uploaded model run inside the enclave ([`Scorer`], with tract).
//!
//! The exported graph is the model's own formula and nothing else: `features` (float, one row
//! per example) times the coefficients, plus the intercept, through `Sigmoid` for a logistic
//! model; one output `score` with a row per example. A tree is written in standard operators
//! too ([`export_tree`]), so a scoring analysis runs a trained tree like any other model. The
//! file is written from the released parameters alone, byte for byte the same for the same
//! model, so a receiver can check that the file it got is the table it got. It computes in
//! 32-bit floats: a value within a float's rounding of a tree's cut may fall on the other side.
//!
//! A scorer accepts any ONNX file whose first input takes `rows × features` floats and whose
//! first output has one number per row. The file comes from a party the enclave does not
//! trust: it is read only after its hash matched the contract's, its size is capped, and
//! anything tract cannot type for that shape is refused with the reason.

use std::sync::Arc;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::tree::{Node, Tree};
use crate::{Family, MlError, Model};

/// The largest model file kura will read.
pub const MAX_MODEL_BYTES: usize = 64 << 20;

/// Rows scored per call of the model: the input tensor never holds more.
const CHUNK_ROWS: usize = 65_536;

/// The ONNX operator set the exported graphs use.
const OPSET: i64 = 13;

/// `model` as an ONNX file (IR version 8, opset 13): input `features` (float `[N, k]`), output
/// `score` (float `[N, 1]`). The feature names and the family are in its metadata.
pub fn export(model: &Model) -> Vec<u8> {
    let k = model.coefficients.len() as i64;
    let (family, linear_output) = match model.family {
        Family::Linear => ("linear", "score"),
        Family::Logistic => ("logistic", "log_odds"),
    };
    let mut nodes = vec![
        node("MatMul", &["features", "coefficients"], "weighted"),
        node("Add", &["weighted", "intercept"], linear_output),
    ];
    if model.family == Family::Logistic {
        nodes.push(node("Sigmoid", &["log_odds"], "score"));
    }
    let names: Vec<&str> = model.coefficients.iter().map(|(n, _)| n.as_str()).collect();
    file(
        family,
        &names,
        nodes,
        vec![
            floats(
                "coefficients",
                vec![k, 1],
                model.coefficients.iter().map(|(_, w)| *w as f32).collect(),
            ),
            floats("intercept", vec![1], vec![model.intercept as f32]),
        ],
    )
}

/// `tree` as an ONNX file with the same input and output as [`export`]'s, in standard operators
/// only (tract reads no `ai.onnx.ml` regressor):
///
/// 1. `Gather` takes each split's feature, `Less` compares it with the split's cut: `below`,
///    one 0/1 column per split (a value that is not a number is not below, as in
///    [`Tree::predict`]).
/// 2. A leaf is reached when every split on its path goes its way. `MatMul` of `below` with
///    `paths` (+1 where the path goes below, −1 where it goes above) plus `aboves` (how many
///    times it goes above) counts the splits that agree, and `Equal` to the path's length marks
///    the one leaf reached.
/// 3. That 0/1 row times the leaves' rates is the score.
///
/// A tree of one leaf gets one split that no path uses, so that the graph keeps its shape.
pub fn export_tree(tree: &Tree) -> Vec<u8> {
    // The splits in node order, each a column of `below`.
    let mut column = vec![usize::MAX; tree.nodes.len()];
    let mut splits: Vec<(usize, f32)> = Vec::new();
    for (at, node) in tree.nodes.iter().enumerate() {
        if let Node::Split { feature, cut, .. } = node {
            column[at] = splits.len();
            splits.push((*feature, *cut as f32));
        }
    }
    if splits.is_empty() {
        splits.push((0, 0.0));
    }
    let leaves: Vec<(f32, Vec<(usize, bool)>)> = tree
        .paths()
        .into_iter()
        .map(|(rate, path)| {
            let path = path.into_iter().map(|(at, below)| (column[at], below));
            (rate as f32, path.collect())
        })
        .collect();
    let (s, l) = (splits.len(), leaves.len());
    let mut paths = vec![0f32; s * l];
    let mut aboves = vec![0f32; l];
    for (j, (_, path)) in leaves.iter().enumerate() {
        for &(split, below) in path {
            if below {
                paths[split * l + j] = 1.0;
            } else {
                paths[split * l + j] = -1.0;
                aboves[j] += 1.0;
            }
        }
    }
    let lengths: Vec<f32> = leaves.iter().map(|(_, p)| p.len() as f32).collect();
    let mut cast = node("Cast", &["is_below"], "below");
    cast.attribute.push(int_attribute("to", FLOAT));
    let mut gather = node("Gather", &["features", "split_features"], "split_values");
    gather.attribute.push(int_attribute("axis", 1));
    let mut reached = node("Cast", &["is_reached"], "reached");
    reached.attribute.push(int_attribute("to", FLOAT));
    let nodes = vec![
        gather,
        node("Less", &["split_values", "cuts"], "is_below"),
        cast,
        node("MatMul", &["below", "paths"], "agreeing_below"),
        node("Add", &["agreeing_below", "aboves"], "agreeing"),
        node("Equal", &["agreeing", "lengths"], "is_reached"),
        reached,
        node("MatMul", &["reached", "rates"], "score"),
    ];
    let names: Vec<&str> = tree.features.iter().map(String::as_str).collect();
    file(
        "tree",
        &names,
        nodes,
        vec![
            pb::TensorProto {
                dims: vec![s as i64],
                data_type: pb::tensor_proto::DataType::Int64 as i32,
                int64_data: splits.iter().map(|(f, _)| *f as i64).collect(),
                name: "split_features".to_string(),
                ..Default::default()
            },
            floats(
                "cuts",
                vec![s as i64],
                splits.iter().map(|(_, c)| *c).collect(),
            ),
            floats("paths", vec![s as i64, l as i64], paths),
            floats("aboves", vec![l as i64], aboves),
            floats("lengths", vec![l as i64], lengths),
            floats(
                "rates",
                vec![l as i64, 1],
                leaves.iter().map(|(r, _)| *r).collect(),
            ),
        ],
    )
}

/// ONNX's code for 32-bit floats.
const FLOAT: i64 = pb::tensor_proto::DataType::Float as i64;

/// A model file: `nodes` and their constants between input `features` (`[N, k]` for the `k`
/// feature `names`) and output `score` (`[N, 1]`), with the family and names as metadata.
fn file(
    family: &str,
    names: &[&str],
    nodes: Vec<pb::NodeProto>,
    initializer: Vec<pb::TensorProto>,
) -> Vec<u8> {
    let k = names.len() as i64;
    let meta = |key: &str, value: String| pb::StringStringEntryProto {
        key: key.to_string(),
        value,
    };
    pb::ModelProto {
        ir_version: 8,
        producer_name: "kura".to_string(),
        producer_version: String::new(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!("A {family} model trained by kura inside an attested enclave."),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            meta("kura.family", family.to_string()),
            meta("kura.features", names.join(",")),
        ],
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "kura_model".to_string(),
            initializer,
            input: vec![value("features", &[None, Some(k)])],
            output: vec![value("score", &[None, Some(1)])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A float tensor of shape `dims` (`None`: the rows, named `N`).
fn value(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(match d {
                                Some(n) => Dim::DimValue(*n),
                                None => Dim::DimParam("N".to_string()),
                            }),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn floats(name: &str, dims: Vec<i64>, values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        dims,
        data_type: FLOAT as i32,
        float_data: values,
        name: name.to_string(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: output.to_string(),
        op_type: op.to_string(),
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// A model file ready to score rows of `features` numbers.
#[derive(Clone)]
pub struct Scorer {
    plan: Arc<TypedRunnableModel>,
    features: usize,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// What tract said, without the model's own names: a refusal goes to the log, and node names
/// are the model owner's words.
fn refused(what: &str) -> impl Fn(TractError) -> MlError + '_ {
    move |_| MlError::Data(format!("the model file {what}"))
}

impl Scorer {
    /// Reads an ONNX file for rows of `features` numbers. Refuses a file over
    /// [`MAX_MODEL_BYTES`], one that is not ONNX tract can read, and one that does not take
    /// `rows × features` floats or does not give one number per row.
    pub fn load(bytes: &[u8], features: usize) -> Result<Self, MlError> {
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(MlError::Data(format!(
                "the model file is larger than {} MiB",
                MAX_MODEL_BYTES >> 20
            )));
        }
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(refused("is not an ONNX model kura can read"))?;
        if model.inputs.is_empty() || model.outputs.is_empty() {
            return Err(MlError::Data(
                "the model file has no input or no output".into(),
            ));
        }
        let rows = model.sym("N");
        let fact = f32::fact(&[TDim::from(rows.clone()), TDim::from(features)]);
        model
            .set_input_fact(0, fact.into())
            .map_err(refused("does not take rows of the analysis's features"))?;
        model.inputs.truncate(1);
        model.outputs.truncate(1);
        let typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(refused(
                "cannot be typed for rows of the analysis's features",
            ))?;
        // Each row's score from that row alone, checked on the graph before it runs.
        crate::rowwise::check(&typed)?;
        let typed = typed.into_optimized().map_err(refused(
            "cannot be typed for rows of the analysis's features",
        ))?;
        let out = typed
            .output_fact(0)
            .map_err(refused("has no typed output"))?
            .clone();
        let dims: Vec<TDim> = out.shape.iter().cloned().collect();
        let one_per_row = match dims.as_slice() {
            [n] => *n == TDim::from(rows.clone()),
            [n, one] => *n == TDim::from(rows.clone()) && *one == TDim::from(1),
            _ => false,
        };
        if !one_per_row || !out.datum_type.is_float() {
            return Err(MlError::Data(
                "the model file's first output is not one number per row".into(),
            ));
        }
        let plan = typed
            .into_runnable()
            .map_err(refused("cannot be prepared to run"))?;
        Ok(Self { plan, features })
    }

    /// The model's number for each row of `x` (row-major, `features` values per row).
    pub fn score(&self, x: &[f64]) -> Result<Vec<f64>, MlError> {
        if self.features == 0 || !x.len().is_multiple_of(self.features) {
            return Err(MlError::Data("rows of the wrong width".into()));
        }
        let mut out = Vec::with_capacity(x.len() / self.features);
        for chunk in x.chunks(CHUNK_ROWS * self.features) {
            let n = chunk.len() / self.features;
            let input: Vec<f32> = chunk.iter().map(|v| *v as f32).collect();
            let tensor = Tensor::from_shape(&[n, self.features], &input)
                .map_err(refused("cannot take these rows"))?;
            let result = self
                .plan
                .run(tvec!(tensor.into()))
                .map_err(refused("failed while scoring"))?;
            let scores = result[0]
                .cast_to::<f64>()
                .map_err(refused("gave no numbers"))?;
            let scores = scores
                .to_plain_array_view::<f64>()
                .map_err(refused("gave no numbers"))?;
            let scores: Vec<f64> = scores.iter().copied().collect();
            if scores.len() != n {
                return Err(MlError::Data(
                    "the model file gave a different number of scores than rows".into(),
                ));
            }
            out.extend(scores);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(family: Family) -> Model {
        Model {
            family,
            intercept: -2.5,
            coefficients: vec![
                ("amount".into(), 0.0015),
                ("night".into(), 1.2),
                ("foreign".into(), -0.7),
            ],
            metrics: Vec::new(),
        }
    }

    fn rows() -> Vec<Vec<f64>> {
        (0..1000)
            .map(|i| {
                let i = f64::from(i);
                vec![(i * 37.0) % 4000.0, i % 2.0, (i % 3.0).min(1.0)]
            })
            .collect()
    }

    #[test]
    fn an_exported_model_scores_as_its_formula() {
        for family in [Family::Linear, Family::Logistic] {
            let m = model(family);
            let scorer = Scorer::load(&export(&m), 3).expect("kura's own export loads");
            let rows = rows();
            let scores = scorer.score(&rows.concat()).unwrap();
            assert_eq!(scores.len(), rows.len());
            for (row, score) in rows.iter().zip(&scores) {
                let expected = m.predict(row);
                // Float32 inside the graph: agreement to single precision.
                assert!(
                    (score - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                    "{family:?}: {score} against {expected}"
                );
            }
        }
    }

    #[test]
    fn the_export_is_the_same_bytes_for_the_same_model() {
        let m = model(Family::Logistic);
        assert_eq!(export(&m), export(&m));
        let mut other = m.clone();
        other.intercept += 0.5;
        assert_ne!(export(&m), export(&other));
    }

    #[test]
    fn more_rows_than_one_chunk_are_all_scored() {
        let m = model(Family::Linear);
        let scorer = Scorer::load(&export(&m), 3).unwrap();
        let n = CHUNK_ROWS + 17;
        let x: Vec<f64> = (0..n * 3).map(|i| (i % 7) as f64).collect();
        let scores = scorer.score(&x).unwrap();
        assert_eq!(scores.len(), n);
        let last = &x[(n - 1) * 3..];
        assert!((scores[n - 1] - m.predict(last)).abs() < 1e-4);
    }

    /// A tree of three leaves: amount below 500; at or above it, by night.
    fn tree() -> Tree {
        Tree {
            features: vec!["amount".into(), "night".into(), "foreign".into()],
            nodes: vec![
                Node::Split {
                    feature: 0,
                    cut: 500.0,
                    below: 1,
                    above: 2,
                },
                Node::Leaf { rate: 0.02 },
                Node::Split {
                    feature: 1,
                    cut: 0.5,
                    below: 3,
                    above: 4,
                },
                Node::Leaf { rate: 0.25 },
                Node::Leaf { rate: 0.625 },
            ],
            metrics: Vec::new(),
        }
    }

    /// The exported tree gives each row its leaf's rate, as the tree itself does: on every
    /// side of every cut, for a value that is not a number, and for a tree of one leaf.
    #[test]
    fn an_exported_tree_scores_as_the_tree() {
        let one_leaf = Tree {
            nodes: vec![Node::Leaf { rate: 0.125 }],
            ..tree()
        };
        let mut rows = rows();
        rows.push(vec![f64::NAN, 1.0, 0.0]);
        rows.push(vec![500.0, 0.5, 0.0]);
        for t in [tree(), one_leaf] {
            let scorer = Scorer::load(&export_tree(&t), 3).expect("kura's own export loads");
            let scores = scorer.score(&rows.concat()).unwrap();
            assert_eq!(scores.len(), rows.len());
            for (row, score) in rows.iter().zip(&scores) {
                let expected = t.predict(row);
                assert!(
                    (score - expected).abs() <= 1e-6,
                    "{row:?}: {score} against {expected}"
                );
            }
        }
        assert_eq!(export_tree(&tree()), export_tree(&tree()));
    }

    #[test]
    fn files_that_are_not_a_fitting_model_are_refused() {
        let m = model(Family::Logistic);
        let good = export(&m);
        // The wrong number of features for the graph's coefficients.
        let wrong_width = Scorer::load(&good, 4).unwrap_err();
        assert!(
            wrong_width.to_string().contains("model file"),
            "{wrong_width}"
        );
        // Not ONNX at all, and a truncated file.
        assert!(Scorer::load(b"not a model", 3).is_err());
        assert!(Scorer::load(&good[..good.len() / 2], 3).is_err());
        // Too large, whatever it holds.
        let huge = vec![0u8; MAX_MODEL_BYTES + 1];
        assert!(
            Scorer::load(&huge, 3)
                .unwrap_err()
                .to_string()
                .contains("MiB")
        );
        // Rows of the wrong width are refused, not misread.
        let scorer = Scorer::load(&good, 3).unwrap();
        assert!(scorer.score(&[1.0, 2.0]).is_err());
    }

    /// Attributes and constants the crafted graphs below need.
    fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.to_string(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: values.to_vec(),
            ..Default::default()
        }
    }

    fn int64s(name: &str, dims: Vec<i64>, values: Vec<i64>) -> pb::TensorProto {
        pb::TensorProto {
            dims,
            data_type: 7,
            int64_data: values,
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn with(mut n: pb::NodeProto, attributes: Vec<pb::AttributeProto>) -> pb::NodeProto {
        n.attribute = attributes;
        n
    }

    /// A graph over three features ending in `mixed` (`[N, 3]`), summed per row into `score`.
    fn crafted(mut nodes: Vec<pb::NodeProto>, mut init: Vec<pb::TensorProto>) -> Vec<u8> {
        nodes.push(node("MatMul", &["mixed", "ones"], "score"));
        init.push(floats("ones", vec![3, 1], vec![1.0; 3]));
        file("crafted", &["a", "b", "c"], nodes, init)
    }

    /// Models that read across rows, one per family of operators that can: each is refused
    /// when it is loaded, with the operator named, before it sees a row.
    #[test]
    fn models_that_read_across_rows_are_refused() {
        let add = |from: &str| node("Add", &["features", from], "mixed");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "the largest value of each column over the rows, added to every row",
                crafted(
                    vec![
                        with(
                            node("ReduceMax", &["features"], "top"),
                            vec![ints("axes", &[0]), int_attribute("keepdims", 1)],
                        ),
                        add("top"),
                    ],
                    vec![],
                ),
            ),
            (
                "a running sum down the rows",
                crafted(
                    vec![node("CumSum", &["features", "axis"], "mixed")],
                    vec![int64s("axis", vec![], vec![0])],
                ),
            ),
            (
                "a softmax over the rows",
                crafted(
                    vec![with(
                        node("Softmax", &["features"], "mixed"),
                        vec![int_attribute("axis", 0)],
                    )],
                    vec![],
                ),
            ),
            (
                "the first row, added to every row",
                crafted(
                    vec![
                        with(
                            node("Gather", &["features", "first"], "row"),
                            vec![int_attribute("axis", 0)],
                        ),
                        add("row"),
                    ],
                    vec![int64s("first", vec![1], vec![0])],
                ),
            ),
            (
                "each row times every row (x·xᵀ), averaged",
                file(
                    "crafted",
                    &["a", "b", "c"],
                    vec![
                        with(
                            node("Transpose", &["features"], "t"),
                            vec![ints("perm", &[1, 0])],
                        ),
                        node("MatMul", &["features", "t"], "gram"),
                        with(
                            node("ReduceMean", &["gram"], "score"),
                            vec![ints("axes", &[1]), int_attribute("keepdims", 1)],
                        ),
                    ],
                    vec![],
                ),
            ),
            (
                "the number of rows in the batch, added to every row's score",
                file(
                    "crafted",
                    &["a", "b", "c"],
                    vec![
                        node("Shape", &["features"], "shape"),
                        with(
                            node("Gather", &["shape", "zero"], "count"),
                            vec![int_attribute("axis", 0)],
                        ),
                        with(node("Cast", &["count"], "n"), vec![int_attribute("to", 1)]),
                        node("MatMul", &["features", "ones"], "sum"),
                        node("Add", &["sum", "n"], "score"),
                    ],
                    vec![
                        int64s("zero", vec![1], vec![0]),
                        floats("ones", vec![3, 1], vec![1.0; 3]),
                    ],
                ),
            ),
            (
                "all rows reshaped into one, its largest value added to every row",
                crafted(
                    vec![
                        node("Reshape", &["features", "flat"], "long"),
                        with(
                            node("ReduceMax", &["long"], "top"),
                            vec![ints("axes", &[1]), int_attribute("keepdims", 1)],
                        ),
                        add("top"),
                    ],
                    vec![int64s("flat", vec![2], vec![1, -1])],
                ),
            ),
        ];
        for (what, bytes) in cases {
            let refused = Scorer::load(&bytes, 3).expect_err(what).to_string();
            eprintln!("{what}: {refused}");
            assert!(
                refused.contains("each row's score from that row alone")
                    || refused.contains("not computed row by row"),
                "{what}: {refused}"
            );
        }
    }

    /// Models that keep rows apart are accepted, and score a row the same alone as in a batch
    /// of others: kura's own exports, and a graph with reductions, a softmax and transposes
    /// along the features.
    #[test]
    fn row_wise_models_score_a_row_alone_as_in_a_batch() {
        let along_features = crafted(
            vec![
                with(
                    node("Softmax", &["features"], "soft"),
                    vec![int_attribute("axis", 1)],
                ),
                with(
                    node("ReduceMax", &["features"], "top"),
                    vec![ints("axes", &[1]), int_attribute("keepdims", 1)],
                ),
                node("Mul", &["soft", "top"], "scaled"),
                with(
                    node("Transpose", &["scaled"], "t"),
                    vec![ints("perm", &[1, 0])],
                ),
                with(
                    node("Transpose", &["t"], "back"),
                    vec![ints("perm", &[1, 0])],
                ),
                node("Add", &["back", "features"], "mixed"),
            ],
            vec![],
        );
        let files = [
            export(&model(Family::Linear)),
            export(&model(Family::Logistic)),
            export_tree(&tree()),
            along_features,
        ];
        let batch = rows();
        for bytes in files {
            let scorer = Scorer::load(&bytes, 3).unwrap();
            let together = scorer.score(&batch.concat()).unwrap();
            for (row, score) in batch.iter().zip(&together) {
                assert_eq!(scorer.score(row).unwrap(), vec![*score]);
            }
        }
    }

    /// One step of a generated graph on `[N, 3]` values, along axis 0 (the rows) or 1.
    #[derive(Clone, Debug)]
    enum Step {
        /// The largest value along the axis, added back to every element.
        Max(i64),
        Softmax(i64),
        CumSum(i64),
        /// The first element along the axis, added back to every element.
        First(i64),
        /// Transposed and back.
        Transposes,
        /// The number of rows in the batch, added to every element.
        Count,
        Sigmoid,
        Square,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..2i64).prop_map(Step::Max),
            (0..2i64).prop_map(Step::Softmax),
            (0..2i64).prop_map(Step::CumSum),
            (0..2i64).prop_map(Step::First),
            Just(Step::Transposes),
            Just(Step::Count),
            Just(Step::Sigmoid),
            Just(Step::Square),
        ]
    }

    /// The ONNX file of `steps`, applied in turn to the features.
    fn generated(steps: &[Step]) -> Vec<u8> {
        let mut nodes = Vec::new();
        let mut init = vec![int64s("zero", vec![1], vec![0])];
        let mut at = "features".to_string();
        for (i, s) in steps.iter().enumerate() {
            let out = if i + 1 == steps.len() {
                "mixed".to_string()
            } else {
                format!("v{i}")
            };
            let tmp = format!("t{i}");
            match s {
                Step::Max(axis) => {
                    nodes.push(with(
                        node("ReduceMax", &[&at], &tmp),
                        vec![ints("axes", &[*axis]), int_attribute("keepdims", 1)],
                    ));
                    nodes.push(node("Add", &[&at, &tmp], &out));
                }
                Step::Softmax(axis) => nodes.push(with(
                    node("Softmax", &[&at], &out),
                    vec![int_attribute("axis", *axis)],
                )),
                Step::CumSum(axis) => {
                    let a = format!("axis{i}");
                    init.push(int64s(&a, vec![], vec![*axis]));
                    nodes.push(node("CumSum", &[&at, &a], &out));
                }
                Step::First(axis) => {
                    nodes.push(with(
                        node("Gather", &[&at, "zero"], &tmp),
                        vec![int_attribute("axis", *axis)],
                    ));
                    nodes.push(node("Add", &[&at, &tmp], &out));
                }
                Step::Transposes => {
                    nodes.push(with(
                        node("Transpose", &[&at], &tmp),
                        vec![ints("perm", &[1, 0])],
                    ));
                    nodes.push(with(
                        node("Transpose", &[&tmp], &out),
                        vec![ints("perm", &[1, 0])],
                    ));
                }
                Step::Count => {
                    let (shape, count) = (format!("shape{i}"), format!("count{i}"));
                    nodes.push(node("Shape", &[&at], &shape));
                    nodes.push(with(
                        node("Gather", &[&shape, "zero"], &count),
                        vec![int_attribute("axis", 0)],
                    ));
                    nodes.push(with(
                        node("Cast", &[&count], &tmp),
                        vec![int_attribute("to", 1)],
                    ));
                    nodes.push(node("Add", &[&at, &tmp], &out));
                }
                Step::Sigmoid => nodes.push(node("Sigmoid", &[&at], &out)),
                Step::Square => nodes.push(node("Mul", &[&at, &at], &out)),
            }
            at = out;
        }
        crafted(nodes, init)
    }

    /// Generated graphs of operators along the rows or along the features: whatever the check
    /// accepts scores every row of a batch as it scores that row alone (a differential test
    /// against tract running the same file), and every graph with a step along the rows is
    /// refused.
    #[test]
    fn generated_graphs_are_accepted_only_where_rows_stay_apart() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let batch: Vec<Vec<f64>> = (0..12)
            .map(|i| {
                let i = f64::from(i);
                vec![(i * 0.37) % 2.0, 1.0 - i / 12.0, (i % 3.0) - 1.0]
            })
            .collect();
        let accepted = std::cell::Cell::new((0u32, 0u32));
        let strategy = proptest::collection::vec(step(), 1..5);
        let mut runner = TestRunner::new(Config {
            cases: 200,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&strategy, |steps| {
                let along_rows = steps.iter().any(|s| {
                    matches!(
                        s,
                        Step::Max(0)
                            | Step::Softmax(0)
                            | Step::CumSum(0)
                            | Step::First(0)
                            | Step::Count
                    )
                });
                let (yes, no) = accepted.get();
                match Scorer::load(&generated(&steps), 3) {
                    Ok(scorer) => {
                        prop_assert!(!along_rows, "accepted: {steps:?}");
                        accepted.set((yes + 1, no));
                        let together = scorer.score(&batch.concat()).unwrap();
                        for (row, score) in batch.iter().zip(&together) {
                            let alone = scorer.score(row).unwrap()[0];
                            prop_assert!(
                                (alone - score).abs() <= 1e-5 * score.abs().max(1.0),
                                "{steps:?}: {alone} alone, {score} in a batch"
                            );
                        }
                    }
                    Err(e) => {
                        // A step along the features only is never refused for mixing rows.
                        prop_assert!(along_rows, "refused: {steps:?}: {e}");
                        accepted.set((yes, no + 1));
                    }
                }
                Ok(())
            })
            .unwrap();
        let (yes, no) = accepted.get();
        assert!(yes > 10 && no > 10, "{yes} accepted, {no} refused");
    }
}
