//! Overlap control (`[adhoc] overlap_control = true`): thresholds cannot stop differencing
//! across queries, so the enclave remembers who stood behind every cell it released and
//! refuses a new cell that differs from a released one on the same measure by fewer than
//! `min_group_size` people.
//!
//! A *cell* is one aggregate of one released group, for one dataset: its measure (the column
//! the aggregate reads, `*` for `COUNT(*)`) and its contributors, the dataset's privacy units
//! behind it (after joins and `WHERE`, where the argument is not null), each with what it
//! contributed: a fingerprint of the multiset of its rows' values of the measure (their number
//! and the wrapping sum of their hashes; for `*`, the number of rows). A person is not only in
//! or out of a cell: after a join they stand behind several rows, and a filter that drops one
//! of their three claims changes a sum by one of their values while the set of people stays
//! the same. The cells are collected by the hidden aggregate `kura_units_set` in the same pass
//! as the threshold's counts, as keyed 64-bit hashes (SipHash with a key drawn when the enclave
//! starts and held only in its memory), sorted by person. The measure's values are hashed as
//! the contract column holds them, before any cast, so that a cast cannot make the same
//! contribution look new.
//!
//! For a new cell *C* and each remembered cell *R* of the same measure and dataset: if every
//! person contributed the same to both, the value is the same and nothing is learnt; otherwise
//! the people who are in one only, or contributed differently, must be at least the minimum. A group any of whose cells fails is suppressed
//! like a small group. The test is exact (up to a hash collision, probability about n²/2⁶⁵ for
//! n people) and pairwise: it catches "the region, then the region without one person", not
//! every linear combination of many cells (a total against three of its parts released in
//! other queries); differential privacy is what covers those.
//!
//! Memory is bounded: the contract's `overlap_memory` (default 10,000,000) caps the number of
//! remembered (cell, person) entries, 16 bytes each. A query whose new cells would pass the cap
//! is refused (rule `overlap-memory`) rather than answered unchecked. The memory lives as long
//! as the enclave instance; a restarted enclave has no data to ask about (the previous
//! instance's keys are gone), so it starts empty.

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, UInt64Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::hash_utils::create_hashes_with_hasher;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, Volatility,
};

use crate::EngineError;

/// The set aggregate's name, as plans and the column-role rules see it.
pub const NAME: &str = "kura_units_set";

/// Default bound of remembered (cell, person) entries.
pub const DEFAULT_MEMORY: u64 = 10_000_000;

/// One person's part in a cell: (keyed hash of the person, fingerprint of what they
/// contributed).
pub(crate) type Part = (u64, u64);

/// A cell: its measure and dataset (`patients.bmi@patients`), and its contributors' parts,
/// sorted by person.
pub(crate) type Cell = (String, Arc<[Part]>);

/// What the enclave remembers of the cells it released.
#[derive(Debug)]
pub struct Overlap {
    hasher: RandomState,
    /// Remembered cells by (measure, dataset), each sorted by person.
    cells: HashMap<String, Vec<Arc<[Part]>>>,
    stored: u64,
    capacity: u64,
}

impl Overlap {
    /// An empty memory holding at most `capacity` (cell, person) entries.
    pub fn new(capacity: u64) -> Self {
        Self {
            hasher: RandomState::new(),
            cells: HashMap::new(),
            stored: 0,
            capacity,
        }
    }

    /// The memory a contract asks for, if it asks for overlap control.
    pub fn of(contract: &kura_contract::Contract) -> Option<Self> {
        let adhoc = contract.adhoc.as_ref()?;
        adhoc
            .overlap_control
            .then(|| Self::new(adhoc.overlap_memory.unwrap_or(DEFAULT_MEMORY)))
    }

    /// Remembered (cell, person) entries.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// The hidden aggregate collecting a cell: each `unit` with the fingerprint of its rows'
    /// `value`s (a constant for a count of rows).
    pub(crate) fn expr(&self, unit: Expr, value: Expr) -> Expr {
        AggregateUDF::from(UnitSet {
            hasher: self.hasher.clone(),
            signature: Signature::any(2, Volatility::Immutable),
        })
        .call(vec![unit, value])
    }

    /// Whether a new cell may be released beside what was released before and `pending` (the
    /// cells of the same answer already accepted).
    fn allowed(&self, key: &str, cell: &[Part], pending: &[Cell], min: u64) -> bool {
        let remembered = self.cells.get(key).into_iter().flatten().map(AsRef::as_ref);
        let same_answer = pending
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, c)| c.as_ref());
        remembered
            .chain(same_answer)
            .all(|old| old == cell || !differs_by_fewer(old, cell, min))
    }

    /// Decides which rows of one aggregation's output may be released: `cells[i][row]` is the
    /// contributor set of the i-th cell column (`keys[i]`) in `row`. Rows already failing
    /// (`keep[row] == false`) are skipped, rows whose cells fail are set to `false`; `accepted`
    /// holds the cells of the same answer accepted so far and receives those of the rows kept.
    pub(crate) fn check(
        &self,
        keys: &[String],
        cells: &[Vec<Arc<[Part]>>],
        keep: &mut [bool],
        min: u64,
        accepted: &mut Vec<Cell>,
    ) {
        for (row, keep) in keep.iter_mut().enumerate() {
            if !*keep {
                continue;
            }
            let row_cells: Vec<Cell> = keys
                .iter()
                .zip(cells)
                .map(|(k, c)| (k.clone(), c[row].clone()))
                .collect();
            *keep = row_cells
                .iter()
                .all(|(k, c)| self.allowed(k, c, accepted, min));
            if *keep {
                accepted.extend(row_cells);
            }
        }
    }

    /// Remembers released cells, or refuses when they would pass the bound.
    pub(crate) fn remember(&mut self, cells: Vec<Cell>) -> Result<(), EngineError> {
        let mut new = Vec::new();
        for (key, cell) in cells {
            let known = self.cells.get(&key).is_some_and(|v| v.contains(&cell))
                || new.iter().any(|(k, c)| *k == key && *c == cell);
            if !known {
                new.push((key, cell));
            }
        }
        let adding: u64 = new.iter().map(|(_, c)| c.len() as u64).sum();
        if self.stored + adding > self.capacity {
            return Err(EngineError::Refused {
                rule: "overlap-memory",
                reason: format!(
                    "overlap control remembers at most {} (cell, person) entries and this answer \
                     would pass that bound; no further ad-hoc answer can be checked for overlap",
                    self.capacity
                ),
            });
        }
        self.stored += adding;
        for (key, cell) in new {
            self.cells.entry(key).or_default().push(cell);
        }
        Ok(())
    }
}

/// Whether two cells (sorted by person) differ, but by fewer than `min` people: those in one
/// only, or whose contributions differ.
fn differs_by_fewer(a: &[Part], b: &[Part], min: u64) -> bool {
    if a.len().abs_diff(b.len()) as u64 >= min {
        return false;
    }
    let (mut i, mut j, mut differ) = (0, 0, 0u64);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                differ += u64::from(x.1 != y.1);
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                differ += 1;
                i += 1;
            }
            (Some(_), Some(_)) | (None, Some(_)) => {
                differ += 1;
                j += 1;
            }
            (Some(_), None) => {
                differ += 1;
                i += 1;
            }
            (None, None) => unreachable!(),
        }
        if differ >= min {
            return false;
        }
    }
    differ > 0
}

/// The cells of a `kura_units_set` output column, one per row.
pub(crate) fn sets(column: &ArrayRef) -> Result<Vec<Arc<[Part]>>, EngineError> {
    let lists = column
        .as_list_opt::<i32>()
        .ok_or_else(|| EngineError::Execution("overlap sets have the wrong type".into()))?;
    Ok((0..lists.len())
        .map(|row| {
            if lists.is_null(row) {
                return Arc::from(Vec::new());
            }
            let values = lists.value(row);
            let flat = values.as_primitive::<UInt64Type>().values();
            Arc::from(
                flat.chunks_exact(2)
                    .map(|p| (p[0], p[1]))
                    .collect::<Vec<Part>>(),
            )
        })
        .collect())
}

/// `kura_units_set(unit, value)`: for each distinct non-null unit of a group, its keyed hash
/// and the fingerprint of its rows' values, flattened (`[unit, fingerprint, unit, ...]`) and
/// sorted by unit.
#[derive(Debug)]
struct UnitSet {
    hasher: RandomState,
    signature: Signature,
}

impl PartialEq for UnitSet {
    fn eq(&self, _other: &Self) -> bool {
        // One key per enclave instance: every instance hashes alike within a plan.
        true
    }
}

impl Eq for UnitSet {}

impl std::hash::Hash for UnitSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        NAME.hash(state);
    }
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)))
}

impl AggregateUDFImpl for UnitSet {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(list_type())
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SetAccumulator {
            hasher: self.hasher.clone(),
            units: HashMap::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_set", args.name),
            list_type(),
            true,
        ))])
    }
}

/// Per unit: how many rows, and the wrapping sum of their values' hashes.
#[derive(Debug)]
struct SetAccumulator {
    hasher: RandomState,
    units: HashMap<u64, (u64, u64)>,
}

impl SetAccumulator {
    fn list(values: Vec<u64>) -> ScalarValue {
        let values = Arc::new(UInt64Array::from(values));
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::UInt64, true)),
            OffsetBuffer::from_lengths([values.len()]),
            values,
            None,
        );
        ScalarValue::List(Arc::new(list))
    }

    fn add(&mut self, unit: u64, rows: u64, sum: u64) {
        let e = self.units.entry(unit).or_default();
        e.0 += rows;
        e.1 = e.1.wrapping_add(sum);
    }
}

impl Accumulator for SetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (units, measure) = (&values[0], &values[1]);
        let mut unit_hashes = vec![0u64; units.len()];
        create_hashes_with_hasher([units], &self.hasher, &mut unit_hashes)?;
        let mut value_hashes = vec![0u64; measure.len()];
        create_hashes_with_hasher([measure], &self.hasher, &mut value_hashes)?;
        for (row, (unit, value)) in unit_hashes.iter().zip(&value_hashes).enumerate() {
            if units.is_valid(row) {
                self.add(*unit, 1, *value);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut parts: Vec<Part> = self
            .units
            .iter()
            .map(|(unit, counted)| {
                (
                    *unit,
                    std::hash::BuildHasher::hash_one(&self.hasher, counted),
                )
            })
            .collect();
        parts.sort_unstable();
        Ok(Self::list(
            parts.into_iter().flat_map(|(u, f)| [u, f]).collect(),
        ))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.units.capacity() * 3 * size_of::<u64>()
    }

    /// Unmerged parts: `[unit, rows, sum, unit, ...]`.
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![Self::list(
            self.units
                .iter()
                .flat_map(|(u, (rows, sum))| [*u, *rows, *sum])
                .collect(),
        )])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for row in 0..lists.len() {
            if lists.is_valid(row) {
                let values = lists.value(row);
                for t in values.as_primitive::<UInt64Type>().values().chunks_exact(3) {
                    self.add(t[0], t[1], t[2]);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(v: &[u64]) -> Arc<[Part]> {
        Arc::from(v.iter().map(|u| (*u, 7)).collect::<Vec<_>>())
    }

    fn parts(v: &[u64]) -> Vec<Part> {
        cell(v).to_vec()
    }

    #[test]
    fn differences_below_the_minimum_are_caught_and_equal_sets_pass() {
        let all = parts(&(0..20).collect::<Vec<_>>());
        let one_less = parts(&(1..20).collect::<Vec<_>>());
        assert!(differs_by_fewer(&all, &one_less, 5));
        assert!(
            !differs_by_fewer(&all, &all, 5),
            "the same people: nothing new"
        );
        let shifted = parts(&(5..25).collect::<Vec<_>>());
        assert!(!differs_by_fewer(&all, &shifted, 5), "10 people differ");
        let swapped = parts(&(0..19).chain([99]).collect::<Vec<_>>());
        assert!(
            differs_by_fewer(&all, &swapped, 5),
            "one out, one in: 2 < 5"
        );
        // The same people, one of whom contributed otherwise (one of their rows filtered out).
        let mut one_changed = all.clone();
        one_changed[3].1 = 8;
        assert!(differs_by_fewer(&all, &one_changed, 5));
        let mut five_changed = all.clone();
        for p in &mut five_changed[..5] {
            p.1 = 8;
        }
        assert!(!differs_by_fewer(&all, &five_changed, 5));
    }

    #[test]
    fn a_cell_close_to_a_remembered_one_is_refused_and_memory_is_bounded() {
        let mut memory = Overlap::new(45);
        let key = vec!["patients.bmi@patients".to_string()];
        // Checks one aggregation's rows; returns the rows kept and the cells to remember.
        let check = |memory: &Overlap, keys: &[String], rows: Vec<Arc<[Part]>>| {
            let mut keep = vec![true; rows.len()];
            let mut cells = Vec::new();
            memory.check(keys, &[rows], &mut keep, 5, &mut cells);
            (keep, cells)
        };
        let region: Vec<u64> = (0..20).collect();
        let (keep, cells) = check(&memory, &key, vec![cell(&region)]);
        assert_eq!(keep, vec![true]);
        memory.remember(cells).unwrap();
        // The region without one person: refused. The same region again: allowed.
        let minus_one: Vec<u64> = (1..20).collect();
        let (keep, _) = check(&memory, &key, vec![cell(&minus_one), cell(&region)]);
        assert_eq!(keep, vec![false, true]);
        // Another measure is another question.
        let other = vec!["claims.amount@patients".to_string()];
        let (keep, cells) = check(&memory, &other, vec![cell(&minus_one)]);
        assert_eq!(keep, vec![true]);
        memory.remember(cells).unwrap();
        assert_eq!(memory.stored(), 39);
        // Past the bound: refused, nothing remembered.
        let big: Vec<u64> = (100..110).collect();
        let (_, cells) = check(&memory, &key, vec![cell(&big)]);
        let err = memory.remember(cells).unwrap_err();
        assert!(matches!(
            err,
            EngineError::Refused {
                rule: "overlap-memory",
                ..
            }
        ));
        assert_eq!(memory.stored(), 39);
    }
}
