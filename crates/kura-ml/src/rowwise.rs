//! A scoring model may compute each row's score from that row alone.
//!
//! An uploaded model runs over a batch of rows. An operator that reduces, sorts, gathers,
//! accumulates or reshapes along the rows (`ReduceMax` over the batch, `TopK`, `CumSum`, a
//! reshape to one long row, `x·xᵀ`) would put another party's values into every row's score,
//! for the model's provider to read back from the distribution it receives, or for a colluding
//! row owner to read from its own scores. So the typed graph is checked before it is accepted:
//! the batch axis (the symbol `N` of the input's first dimension) is followed from the input
//! through every node whose inputs it reaches, and each such node must be an operator this
//! module knows to keep rows apart, with the batch axis where it may be:
//!
//! | operator (tract, decluttered) | allowed when |
//! | --- | --- |
//! | element-wise (`Sigmoid`, `Exp`, `Abs`, ...), `Cast` | always |
//! | binary (`Add`, `Mul`, `Less`, `Max`, ...), `Iff` (`Where`) | every input the rows reach has the batch axis at the same place, and the output keeps it there |
//! | `EinSum` (`MatMul`, `Gemm`) | every input the rows reach has the batch axis under the same letter, and the output keeps that letter (no sum over rows, no product of two rows) |
//! | axis changes (`Unsqueeze`, `Squeeze`, `Transpose`, `Reshape`) | the batch axis is moved as a whole, never merged with or split into others |
//! | `Reduce*`, `Softmax`, `CumSum` | over other axes only |
//! | `Gather` | of the rows' values along another axis, at indices the rows do not reach |
//! | `Concat`, `Slice` | along another axis |
//!
//! Everything else that the rows reach is refused with its operator's name: `TopK`, `Sort`,
//! `Scan`, loops, `NonZero`, shape arithmetic and any operator tract adds later. Nodes the rows
//! do not reach (constants and what is computed from them) are not limited, but for one thing:
//! none may depend on the number of rows (a `Shape` or `Range` of the batch would give every
//! row the count of all parties' rows scored with it). The output must
//! carry the batch axis first. An allow-list, not a block-list: an operator nobody has looked
//! at is refused until somebody has.

use std::collections::{HashMap, HashSet};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{CumSum, Gather, Slice, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, InOut};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::logic::Iff;
use tract_onnx::tract_core::ops::nn::{Reduce, Softmax};

use crate::MlError;

fn mixes(op: &str, how: &str) -> MlError {
    MlError::Data(format!(
        "the model file's operator {op} {how}: a row's score could depend on another row, so \
         the model is refused (a scoring model must compute each row's score from that row \
         alone)"
    ))
}

/// Refuses `model` (decluttered, its input typed as `[N, features]`) unless its first output
/// is computed row by row from its first input ([module docs](self)).
pub(crate) fn check(model: &TypedModel) -> Result<(), MlError> {
    let input = model
        .input_outlets()
        .map_err(|_| mixes("?", "has no input"))?[0];
    // The batch axis of every outlet the rows reach.
    let mut rows: HashMap<OutletId, usize> = HashMap::from([(input, 0)]);
    // The symbols of the batch's size.
    let batch: HashSet<Symbol> = model
        .outlet_fact(input)
        .ok()
        .and_then(|f| f.shape.iter().next().map(|d| d.symbols()))
        .unwrap_or_default();
    let order = model
        .eval_order()
        .map_err(|_| MlError::Data("the model file's graph cannot be ordered".into()))?;
    for id in order {
        let node = model.node(id);
        let reached: Vec<(usize, usize)> = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(slot, outlet)| rows.get(outlet).map(|axis| (slot, *axis)))
            .collect();
        if reached.is_empty() && id != input.node {
            // What the rows do not reach must not depend on how many there are either: a
            // `Shape` or `Range` of the batch is a count of every party's rows in the batch.
            for output in &node.outputs {
                if mentions(&output.fact, &batch) {
                    return Err(mixes(&node.op.name(), "computes with the number of rows"));
                }
            }
            continue;
        }
        if reached.is_empty() {
            continue;
        }
        let op: &dyn TypedOp = node.op.as_ref();
        let name = op.name();
        let facts = |slot: usize| model.outlet_fact(node.inputs[slot]).map(|f| f.rank());
        let rank_in = facts(reached[0].0).map_err(|_| mixes(&name, "has no type"))?;
        let rank_out = model
            .outlet_fact(OutletId::new(id, 0))
            .map(|f| f.rank())
            .map_err(|_| mixes(&name, "has no type"))?;
        let axis = reached[0].1;
        // The batch axis of every input the rows reach, at one place.
        let aligned = || {
            reached
                .iter()
                .all(|&(slot, a)| a == axis && facts(slot).ok() == Some(rank_in))
        };
        let out_axis: usize = if op.downcast_ref::<ElementWiseOp>().is_some()
            || op.downcast_ref::<Cast>().is_some()
        {
            axis
        } else if op.downcast_ref::<TypedBinOp>().is_some() || op.downcast_ref::<Iff>().is_some() {
            if !aligned() || rank_out != rank_in {
                return Err(mixes(&name, "combines values of different rows"));
            }
            axis
        } else if let Some(einsum) = op.downcast_ref::<EinSum>() {
            let letter = |slot: usize, a: usize| {
                einsum
                    .axes
                    .axis((InOut::In(slot), a))
                    .map(|ax| ax.repr)
                    .ok()
            };
            let first = letter(reached[0].0, axis);
            if first.is_none() || reached.iter().any(|&(s, a)| letter(s, a) != first) {
                return Err(mixes(&name, "multiplies values of different rows"));
            }
            let out = einsum
                .axes
                .axis(first.expect("checked"))
                .ok()
                .and_then(|ax| ax.outputs.first().and_then(|o| o.first().copied()));
            match out {
                Some(out) => out,
                None => return Err(mixes(&name, "sums over the rows")),
            }
        } else if let Some(change) = op.downcast_ref::<AxisOp>() {
            match change.transform_axis(axis) {
                Some(out) => out,
                None => return Err(mixes(&name, "reshapes the rows into other axes")),
            }
        } else if let Some(reduce) = op.downcast_ref::<Reduce>() {
            if reduce.axes.contains(&axis) || rank_out != rank_in {
                return Err(mixes(&name, "reduces over the rows"));
            }
            axis
        } else if let Some(softmax) = op.downcast_ref::<Softmax>() {
            if softmax.axes.contains(&axis) {
                return Err(mixes(&name, "normalises over the rows"));
            }
            axis
        } else if let Some(gather) = op.downcast_ref::<Gather>() {
            // Indices the rows reach would pick values by another row's data.
            if reached.iter().any(|&(slot, _)| slot != 0) || gather.axis == axis {
                return Err(mixes(&name, "gathers along the rows"));
            }
            let indices = model
                .outlet_fact(node.inputs[1])
                .map(|f| f.rank())
                .map_err(|_| mixes(&name, "has no type"))?;
            if axis < gather.axis {
                axis
            } else {
                axis + indices - 1
            }
        } else if let Some(concat) = op.downcast_ref::<TypedConcat>() {
            if concat.axis == axis || !aligned() {
                return Err(mixes(&name, "joins values along the rows"));
            }
            axis
        } else if let Some(cumsum) = op.downcast_ref::<CumSum>() {
            if cumsum.axis == axis || reached.iter().any(|&(slot, _)| slot != 0) {
                return Err(mixes(&name, "accumulates along the rows"));
            }
            axis
        } else if let Some(slice) = op.downcast_ref::<Slice>() {
            if slice.axis == axis {
                return Err(mixes(&name, "picks rows"));
            }
            axis
        } else {
            return Err(mixes(&name, "is not one kura knows to keep rows apart"));
        };
        if node.outputs.len() != 1 || out_axis >= rank_out {
            return Err(mixes(&name, "has outputs kura cannot follow"));
        }
        rows.insert(OutletId::new(id, 0), out_axis);
    }
    let output = model
        .output_outlets()
        .map_err(|_| mixes("?", "has no output"))?[0];
    match rows.get(&output) {
        Some(0) => Ok(()),
        _ => Err(MlError::Data(
            "the model file's first output is not computed row by row from its input".into(),
        )),
    }
}

/// Whether `fact`'s shape or constant value depends on one of the `batch` symbols.
fn mentions(fact: &TypedFact, batch: &HashSet<Symbol>) -> bool {
    let hit = |d: &TDim| !d.symbols().is_disjoint(batch);
    fact.shape.iter().any(hit)
        || fact.konst.as_ref().is_some_and(|k| {
            k.datum_type() == TDim::datum_type()
                && k.to_plain_array_view::<TDim>()
                    .is_ok_and(|values| values.iter().any(hit))
        })
}
