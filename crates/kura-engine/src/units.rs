//! The threshold's hidden count: distinct privacy units per group, counted only up to the
//! minimum group size.
//!
//! The rule needs to know whether a group covers at least `min_group_size` people, never how
//! many more. `COUNT(DISTINCT unit)` keeps a hash set of every unit of every group to the end;
//! this aggregate stops tracking a group once it has seen `cap` distinct units, after which its
//! rows cost one comparison. Its value is `min(distinct units, cap)`, so `value >= cap` exactly
//! when the group has at least `cap` people, which is all the threshold compares (the
//! `UNION ALL` padding of `i64::MAX` stays above any cap). On a 10-million-row join this takes the
//! rule's overhead from more than doubling the query to a few percent (docs/performance.md).
//!
//! The function is not registered in the SQL session: only the threshold rule can put it in a
//! plan, and the column-role rules accept it only under the rule's reserved names.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, UInt32Array, new_empty_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature,
    Volatility,
};

/// The function's name, as plans and the column-role rules see it.
pub const NAME: &str = "kura_units_at_least";

/// `kura_units_at_least(unit)` with the cap `cap` (the contract's minimum group size).
pub fn expr(unit: Expr, cap: u64) -> Expr {
    udaf(cap).call(vec![unit])
}

/// The aggregate with the cap `cap`.
pub fn udaf(cap: u64) -> AggregateUDF {
    AggregateUDF::from(UnitsAtLeast {
        cap: cap.max(1),
        signature: Signature::any(1, Volatility::Immutable),
    })
}

/// The cap of `udaf`, if it is this aggregate (for a plan codec).
pub fn cap_of(udaf: &AggregateUDF) -> Option<u64> {
    let inner: &dyn std::any::Any = udaf.inner().as_ref();
    inner.downcast_ref::<UnitsAtLeast>().map(|u| u.cap)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UnitsAtLeast {
    cap: u64,
    signature: Signature,
}

impl AggregateUDFImpl for UnitsAtLeast {
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
        let unit = unit_type(&args);
        Ok(Box::new(Single {
            empty: new_empty_array(&unit),
            groups: Groups::new(self.cap, unit),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let unit = args.input_fields[0].data_type().clone();
        Ok(vec![
            Arc::new(Field::new_list(
                format!("{}_units", args.name),
                Field::new_list_field(unit, true),
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
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups::new(self.cap, unit_type(&args))))
    }
}

fn unit_type(args: &AccumulatorArgs) -> DataType {
    args.expr_fields[0].data_type().clone()
}

/// One group's progress.
#[derive(Debug)]
enum Group {
    /// The distinct units seen so far (fewer than the cap; an empty set allocates nothing).
    Open(HashSet<ScalarValue>),
    /// At least `cap` distinct units: nothing more to learn.
    Reached,
}

impl Default for Group {
    fn default() -> Self {
        Group::Open(HashSet::new())
    }
}

#[derive(Debug)]
struct Groups {
    cap: u64,
    unit: DataType,
    groups: Vec<Group>,
    /// How many of `groups` are still open: once none is, a batch has nothing to tell (the
    /// usual case, since groups that pass the rule reach the cap early).
    open: usize,
}

impl Groups {
    fn new(cap: u64, unit: DataType) -> Self {
        Self {
            cap,
            unit,
            groups: Vec::new(),
            open: 0,
        }
    }

    fn resize(&mut self, total: usize) {
        if self.groups.len() < total {
            self.open += total - self.groups.len();
            self.groups.resize_with(total, Group::default);
        }
    }

    /// The groups `emit_to` asks for, taken out.
    fn take(&mut self, emit_to: EmitTo) -> Vec<Group> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.open -= taken.iter().filter(|g| matches!(g, Group::Open(_))).count();
        taken
    }

    fn reach(&mut self, group: usize) {
        if let Group::Open(_) = std::mem::replace(&mut self.groups[group], Group::Reached) {
            self.open -= 1;
        }
    }

    fn add(&mut self, group: usize, units: &ArrayRef, row: usize) -> Result<()> {
        if let Group::Open(set) = &mut self.groups[group]
            && units.is_valid(row)
        {
            set.insert(ScalarValue::try_from_array(units, row)?);
            if set.len() as u64 >= self.cap {
                self.reach(group);
            }
        }
        Ok(())
    }

    fn count(&self, group: &Group) -> i64 {
        let n = match group {
            Group::Open(set) => set.len() as u64,
            Group::Reached => self.cap,
        };
        n.min(i64::MAX as u64) as i64
    }

    /// The state of `groups` as (list of units, reached) columns.
    fn state_of(&self, groups: &[Group]) -> Result<Vec<ArrayRef>> {
        let mut lengths = Vec::with_capacity(groups.len());
        let mut values = Vec::new();
        let mut reached = Vec::with_capacity(groups.len());
        for g in groups {
            match g {
                Group::Open(set) => {
                    lengths.push(set.len());
                    values.extend(set.iter().cloned());
                    reached.push(false);
                }
                Group::Reached => {
                    lengths.push(0);
                    reached.push(true);
                }
            }
        }
        let values = if values.is_empty() {
            new_empty_array(&self.unit)
        } else {
            ScalarValue::iter_to_array(values)?
        };
        let list = ListArray::try_new(
            Arc::new(Field::new_list_field(self.unit.clone(), true)),
            OffsetBuffer::from_lengths(lengths),
            values,
            None,
        )?;
        Ok(vec![Arc::new(list), Arc::new(BooleanArray::from(reached))])
    }

    fn merge(&mut self, states: &[ArrayRef], group_of: impl Fn(usize) -> usize) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        let reached = states[1].as_boolean();
        for row in 0..lists.len() {
            let group = group_of(row);
            if reached.is_valid(row) && reached.value(row) {
                self.reach(group);
                continue;
            }
            if lists.is_null(row) {
                continue;
            }
            let units = lists.value(row);
            for i in 0..units.len() {
                self.add(group, &units, i)?;
            }
        }
        Ok(())
    }
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
        for (row, &group) in group_indices.iter().enumerate() {
            if opt_filter.is_some_and(|f| !(f.is_valid(row) && f.value(row))) {
                continue;
            }
            self.add(group, units, row)?;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = self.take(emit_to);
        Ok(Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|g| self.count(g)),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = self.take(emit_to);
        self.state_of(&groups)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        self.merge(values, |row| group_indices[row])
    }

    /// Each row on its own, as a state: a list of its unit (empty when null or filtered out).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let units = &values[0];
        let keep: Vec<bool> = (0..units.len())
            .map(|row| {
                units.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
            })
            .collect();
        let rows = UInt32Array::from_iter_values(
            (0..units.len() as u32).filter(|row| keep[*row as usize]),
        );
        let list = ListArray::try_new(
            Arc::new(Field::new_list_field(self.unit.clone(), true)),
            OffsetBuffer::from_lengths(keep.iter().map(|k| usize::from(*k))),
            take(units, &rows, None)?,
            None,
        )?;
        Ok(vec![
            Arc::new(list),
            Arc::new(BooleanArray::from(vec![false; units.len()])),
        ])
    }

    fn size(&self) -> usize {
        let sets: usize = self
            .groups
            .iter()
            .map(|g| match g {
                Group::Open(set) => set.capacity() * std::mem::size_of::<ScalarValue>(),
                _ => 0,
            })
            .sum();
        std::mem::size_of_val(self) + self.groups.capacity() * std::mem::size_of::<Group>() + sets
    }
}

/// A groups accumulator used for an aggregation without GROUP BY: one group, group 0. `empty`
/// is an empty array of the aggregate's input type, fed once so that the group exists even
/// when no row arrives.
#[derive(Debug)]
pub(crate) struct Single<G> {
    pub(crate) groups: G,
    pub(crate) empty: ArrayRef,
}

impl<G: GroupsAccumulator> Single<G> {
    fn one_group(&mut self) -> Result<()> {
        self.groups
            .update_batch(std::slice::from_ref(&self.empty), &[], None, 1)
    }
}

impl<G: GroupsAccumulator + Sync + std::fmt::Debug> Accumulator for Single<G> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |v| v.len());
        self.groups.update_batch(values, &vec![0; rows], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.one_group()?;
        ScalarValue::try_from_array(&self.groups.evaluate(EmitTo::All)?, 0)
    }

    fn size(&self) -> usize {
        self.groups.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.one_group()?;
        self.groups
            .state(EmitTo::All)?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |s| s.len());
        self.groups.merge_batch(states, &vec![0; rows], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn counts(acc: &mut Groups) -> Vec<i64> {
        let out = acc.evaluate(EmitTo::All).unwrap();
        out.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn counts_distinct_units_up_to_the_cap_and_ignores_nulls() {
        let mut acc = Groups::new(3, DataType::Utf8);
        let units: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            Some("a"),
            None,
            Some("b"),
            Some("x"),
            Some("y"),
            Some("z"),
            Some("w"),
        ]));
        // Group 0: a, a, null, b -> 2; group 1: x, y, z, w -> capped at 3; group 2: nothing.
        acc.update_batch(&[units], &[0, 0, 0, 0, 1, 1, 1, 1], None, 3)
            .unwrap();
        assert_eq!(counts(&mut acc), vec![2, 3, 0]);
    }

    #[test]
    fn once_every_group_is_full_batches_are_skipped_but_new_groups_still_count() {
        let mut acc = Groups::new(2, DataType::Int64);
        let ids = |v: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        acc.update_batch(&[ids(vec![1, 2, 3, 4])], &[0, 0, 1, 1], None, 2)
            .unwrap();
        assert_eq!(acc.open, 0);
        // Group 2 appears later: it is counted; groups 0 and 1 stay at the cap.
        acc.update_batch(&[ids(vec![5, 6, 7])], &[0, 1, 2], None, 3)
            .unwrap();
        assert_eq!(acc.open, 1);
        // Emitting the first two groups leaves the open one open.
        let first = acc.evaluate(EmitTo::First(2)).unwrap();
        assert_eq!(
            first
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values()
                .to_vec(),
            vec![2, 2]
        );
        assert_eq!(acc.open, 1);
        acc.update_batch(&[ids(vec![8])], &[0], None, 1).unwrap();
        assert_eq!(acc.open, 0);
        assert_eq!(counts(&mut acc), vec![2]);
    }

    #[test]
    fn partial_states_merge_to_the_same_answer() {
        // Two partitions each see 2 of the group's 3 distinct units: neither reaches the cap
        // alone, the merge must.
        let cap = 3;
        let part = |ids: Vec<i64>| {
            let mut acc = Groups::new(cap, DataType::Int64);
            let n = ids.len();
            let units: ArrayRef = Arc::new(Int64Array::from(ids));
            acc.update_batch(&[units], &vec![0; n], None, 1).unwrap();
            acc.state(EmitTo::All).unwrap()
        };
        let (a, b) = (part(vec![1, 2, 2]), part(vec![2, 3]));
        let mut fin = Groups::new(cap, DataType::Int64);
        fin.merge_batch(&a, &[0], 1).unwrap();
        assert_eq!(counts(&mut fin), vec![2]);
        let mut fin = Groups::new(cap, DataType::Int64);
        fin.merge_batch(&a, &[0], 1).unwrap();
        fin.merge_batch(&b, &[0], 1).unwrap();
        assert_eq!(counts(&mut fin), vec![3]);
        // Rows passed on as states without partial aggregation merge the same way.
        let rows: ArrayRef = Arc::new(Int64Array::from(vec![Some(4), None, Some(4), Some(5)]));
        let states = Groups::new(cap, DataType::Int64)
            .convert_to_state(&[rows], None)
            .unwrap();
        let mut fin = Groups::new(cap, DataType::Int64);
        fin.merge_batch(&states, &[0, 0, 1, 0], 2).unwrap();
        assert_eq!(counts(&mut fin), vec![2, 1]);
        // A reached partial state stays reached.
        let reached = part(vec![7, 8, 9, 10]);
        let mut fin = Groups::new(cap, DataType::Int64);
        fin.merge_batch(&reached, &[0], 1).unwrap();
        assert_eq!(counts(&mut fin), vec![3]);
    }
}
