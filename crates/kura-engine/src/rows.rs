//! The threshold's bound on one person's rows in a cell: the most rows any one privacy unit
//! has in a group, counted only up to a cap.
//!
//! A join repeats a row of one dataset once for every row it meets in another, so a party that
//! provides the other dataset decides how often a person of the first is counted: twice in one
//! band and once in another, beside the same others, and the difference of two released sums
//! of one answer is that person's value. The rule ([`crate::threshold`]) needs to know, for each
//! group, whether some person of a dataset stands behind more rows than the dataset's
//! `max_contributions`, never how many more. This aggregate keeps, per group, a count per unit
//! (by a 64-bit hash of its value) until one reaches the cap, after which the group is decided
//! and its rows cost one comparison. Its value is `min(most rows of one unit, cap)`.
//!
//! Two units whose hashes collide count as one: the group may then be suppressed although no
//! person exceeds the bound (about n² / 2⁶⁵ for n people in a group), never released wrongly.
//!
//! Like [`crate::units`], the function is not registered in the SQL session: only the threshold
//! rule can put it in a plan, under its reserved names.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, UInt32Array, UInt64Array,
    new_empty_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt32Type, UInt64Type};
use datafusion::common::Result;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature,
    Volatility,
};

/// The function's name, as plans and the column-role rules see it.
pub const NAME: &str = "kura_rows_per_unit";

/// Every partition and every executor hashes units alike, so that partial counts merge.
const HASHING: RandomState = RandomState::with_seed(0x6b75_7261_726f_7773);

/// The keys of the per-group maps are already hashes: they are used as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Counts = HashMap<u64, u32, BuildHasherDefault<Prehashed>>;

/// `kura_rows_per_unit(unit)` counting up to `cap` (a dataset's `max_contributions` + 1).
pub fn expr(unit: Expr, cap: u64) -> Expr {
    udaf(cap).call(vec![unit])
}

/// The aggregate with the cap `cap`.
pub fn udaf(cap: u64) -> AggregateUDF {
    AggregateUDF::from(RowsPerUnit {
        cap: cap.max(1),
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// The cap of `udaf`, if it is this aggregate (for a plan codec).
pub fn cap_of(udaf: &AggregateUDF) -> Option<u64> {
    let inner: &dyn std::any::Any = udaf.inner().as_ref();
    inner.downcast_ref::<RowsPerUnit>().map(|u| u.cap)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowsPerUnit {
    cap: u64,
    signature: Signature,
}

impl AggregateUDFImpl for RowsPerUnit {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(crate::units::Single {
            groups: Groups::new(self.cap),
            empty: new_empty_array(args.expr_fields[0].data_type()),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new_list(
                format!("{}_units", args.name),
                Field::new_list_field(DataType::UInt64, true),
                true,
            )),
            Arc::new(Field::new_list(
                format!("{}_rows", args.name),
                Field::new_list_field(DataType::UInt32, true),
                true,
            )),
            Arc::new(Field::new(
                format!("{}_reached", args.name),
                DataType::Boolean,
                true,
            )),
        ])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups::new(self.cap)))
    }
}

/// One group's progress.
#[derive(Debug)]
enum Group {
    /// Rows per unit (by hash) so far, each below the cap, and the most of them.
    Open(Counts, u32),
    /// Some unit has at least `cap` rows: nothing more to learn.
    Reached,
}

impl Default for Group {
    fn default() -> Self {
        Group::Open(Counts::default(), 0)
    }
}

#[derive(Debug)]
struct Groups {
    cap: u64,
    groups: Vec<Group>,
    /// How many of `groups` are still open; once none is, a batch has nothing to tell.
    open: usize,
    hashes: Vec<u64>,
}

impl Groups {
    fn new(cap: u64) -> Self {
        Self {
            cap,
            groups: Vec::new(),
            open: 0,
            hashes: Vec::new(),
        }
    }

    fn resize(&mut self, total: usize) {
        if self.groups.len() < total {
            self.open += total - self.groups.len();
            self.groups.resize_with(total, Group::default);
        }
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<Group> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.open -= taken
            .iter()
            .filter(|g| matches!(g, Group::Open(..)))
            .count();
        taken
    }

    /// Adds `rows` rows of the unit hashed `hash` to `group`.
    fn add(&mut self, group: usize, hash: u64, rows: u32) {
        let cap = self.cap;
        let reached = match &mut self.groups[group] {
            Group::Open(counts, most) => {
                let n = counts.entry(hash).or_insert(0);
                *n = n.saturating_add(rows);
                *most = (*most).max(*n);
                u64::from(*most) >= cap
            }
            Group::Reached => return,
        };
        if reached {
            self.groups[group] = Group::Reached;
            self.open -= 1;
        }
    }

    fn hash(&mut self, units: &ArrayRef) -> Result<()> {
        self.hashes.clear();
        self.hashes.resize(units.len(), 0);
        create_hashes([units.as_ref()], &HASHING, &mut self.hashes)?;
        Ok(())
    }

    fn value(&self, group: &Group) -> i64 {
        let n = match group {
            Group::Open(_, most) => u64::from(*most).min(self.cap),
            Group::Reached => self.cap,
        };
        n.min(i64::MAX as u64) as i64
    }

    /// The state of `groups` as (list of unit hashes, list of their rows, reached) columns.
    fn state_of(groups: &[Group]) -> Result<Vec<ArrayRef>> {
        let mut lengths = Vec::with_capacity(groups.len());
        let (mut hashes, mut rows) = (Vec::new(), Vec::new());
        let mut reached = Vec::with_capacity(groups.len());
        for g in groups {
            match g {
                Group::Open(counts, _) => {
                    lengths.push(counts.len());
                    for (h, n) in counts {
                        hashes.push(*h);
                        rows.push(*n);
                    }
                    reached.push(false);
                }
                Group::Reached => {
                    lengths.push(0);
                    reached.push(true);
                }
            }
        }
        state(&lengths, hashes, rows, reached)
    }

    fn merge(&mut self, states: &[ArrayRef], group_of: impl Fn(usize) -> usize) {
        let hashes = states[0].as_list::<i32>();
        let rows = states[1].as_list::<i32>();
        let reached = states[2].as_boolean();
        for row in 0..hashes.len() {
            let group = group_of(row);
            if reached.is_valid(row) && reached.value(row) {
                if matches!(self.groups[group], Group::Open(..)) {
                    self.groups[group] = Group::Reached;
                    self.open -= 1;
                }
                continue;
            }
            if hashes.is_null(row) || rows.is_null(row) {
                continue;
            }
            let (h, n) = (hashes.value(row), rows.value(row));
            let (h, n) = (
                h.as_primitive::<UInt64Type>(),
                n.as_primitive::<UInt32Type>(),
            );
            for i in 0..h.len().min(n.len()) {
                self.add(group, h.value(i), n.value(i));
            }
        }
    }
}

/// A state of groups: per group, `lengths[g]` of the unit hashes and their rows, and whether
/// the group reached the cap.
fn state(
    lengths: &[usize],
    hashes: Vec<u64>,
    rows: Vec<u32>,
    reached: Vec<bool>,
) -> Result<Vec<ArrayRef>> {
    let list = |values: ArrayRef, ty: DataType| -> Result<ArrayRef> {
        Ok(Arc::new(ListArray::try_new(
            Arc::new(Field::new_list_field(ty, true)),
            OffsetBuffer::from_lengths(lengths.iter().copied()),
            values,
            None,
        )?))
    };
    Ok(vec![
        list(Arc::new(UInt64Array::from(hashes)), DataType::UInt64)?,
        list(Arc::new(UInt32Array::from(rows)), DataType::UInt32)?,
        Arc::new(BooleanArray::from(reached)),
    ])
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        if self.open == 0 {
            return Ok(());
        }
        let units = &values[0];
        self.hash(units)?;
        let hashes = std::mem::take(&mut self.hashes);
        for (row, &group) in group_indices.iter().enumerate() {
            if !units.is_valid(row)
                || opt_filter.is_some_and(|f| !(f.is_valid(row) && f.value(row)))
            {
                continue;
            }
            self.add(group, hashes[row], 1);
        }
        self.hashes = hashes;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = self.take(emit_to);
        Ok(Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|g| self.value(g)),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = self.take(emit_to);
        Self::state_of(&groups)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        self.merge(values, |row| group_indices[row]);
        Ok(())
    }

    /// Each row on its own, as a state: its unit's hash with one row (nothing when null or
    /// filtered out).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let units = &values[0];
        let mut hashes = vec![0; units.len()];
        create_hashes([units.as_ref()], &HASHING, &mut hashes)?;
        let keep: Vec<bool> = (0..units.len())
            .map(|row| {
                units.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
            })
            .collect();
        let kept: Vec<u64> = hashes
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(h, _)| *h)
            .collect();
        let ones = vec![1u32; kept.len()];
        let lengths: Vec<usize> = keep.iter().map(|k| usize::from(*k)).collect();
        state(&lengths, kept, ones, vec![false; units.len()])
    }

    fn size(&self) -> usize {
        let maps: usize = self
            .groups
            .iter()
            .map(|g| match g {
                Group::Open(counts, _) => counts.capacity() * 16,
                Group::Reached => 0,
            })
            .sum();
        std::mem::size_of_val(self)
            + self.groups.capacity() * std::mem::size_of::<Group>()
            + self.hashes.capacity() * 8
            + maps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn values(acc: &mut Groups) -> Vec<i64> {
        let out = acc.evaluate(EmitTo::All).unwrap();
        out.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn gives_the_most_rows_of_one_unit_up_to_the_cap() {
        let mut acc = Groups::new(3);
        let units: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("a"),
            None,
            Some("b"),
            Some("x"),
            Some("x"),
            Some("x"),
            Some("x"),
            Some("y"),
        ]));
        // Group 0: a twice, b once -> 2; group 1: x four times -> capped at 3; group 2: none.
        acc.update_batch(&[units], &[0, 0, 0, 0, 1, 1, 1, 1, 1], None, 3)
            .unwrap();
        assert_eq!(acc.open, 2);
        assert_eq!(values(&mut acc), vec![2, 3, 0]);
    }

    #[test]
    fn partial_states_merge_to_the_same_answer() {
        // Each partition sees one row of unit 7: only the merge sees two.
        let part = |ids: Vec<i64>| {
            let mut acc = Groups::new(2);
            let n = ids.len();
            let units: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(ids));
            acc.update_batch(&[units], &vec![0; n], None, 1).unwrap();
            acc.state(EmitTo::All).unwrap()
        };
        let (a, b) = (part(vec![7, 8]), part(vec![7, 9]));
        let mut fin = Groups::new(2);
        fin.merge_batch(&a, &[0], 1).unwrap();
        assert_eq!(values(&mut fin), vec![1]);
        let mut fin = Groups::new(2);
        fin.merge_batch(&a, &[0], 1).unwrap();
        fin.merge_batch(&b, &[0], 1).unwrap();
        assert_eq!(values(&mut fin), vec![2]);
        // Rows passed on as states without partial aggregation merge the same way.
        let rows: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(vec![
            Some(4),
            None,
            Some(4),
            Some(5),
        ]));
        let states = Groups::new(2).convert_to_state(&[rows], None).unwrap();
        let mut fin = Groups::new(2);
        fin.merge_batch(&states, &[0, 0, 0, 1], 2).unwrap();
        assert_eq!(values(&mut fin), vec![2, 1]);
        // A reached partial state stays reached.
        let reached = part(vec![3, 3, 3]);
        let mut fin = Groups::new(2);
        fin.merge_batch(&reached, &[0], 1).unwrap();
        assert_eq!(values(&mut fin), vec![2]);
        assert_eq!(fin.open, 0);
    }
}
