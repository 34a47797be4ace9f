//! One row per person, held at upload. A dataset that declares `max_contributions = 1` (the
//! default) is one the rules trust to hold each person once: its columns may group another
//! dataset's figures (`group-keys`), and a join with it cannot repeat a partner's rows, so no
//! per-cell row count is made for them ([`crate::threshold`]). The declaration is the
//! provider's, and a provider that breaks it could place another provider's person in two cells
//! of one answer; so the enclave checks it on every batch as it is parsed, and on every batch
//! appended against the batches already held.
//!
//! Each privacy unit is remembered as a 128-bit keyed hash (SipHash under two different keys
//! drawn at random for this check): a repeat is always found, and two different people share a
//! hash, and are refused as one, only by a collision of both. A NULL unit is refused as a
//! repeat of another NULL. A refusal names the dataset and its privacy-unit column,
//! never a value: the upload log that every party reads gets no identifier from it.

use std::collections::HashSet;
use std::hash::RandomState;

use datafusion::common::hash_utils::create_hashes_with_hasher;
use futures_util::StreamExt;
use kura_contract::{Contract, Dataset};

use crate::{EngineError, RecordBatch, Table, Tables};

/// The privacy units seen so far of a dataset that declares one row per person.
#[derive(Debug)]
pub struct OneRowPerPerson {
    dataset: String,
    unit: String,
    keys: (RandomState, RandomState),
    seen: HashSet<u128>,
    buffers: (Vec<u64>, Vec<u64>),
}

impl OneRowPerPerson {
    /// The check for `dataset`, or `None` when it declares several rows per person.
    pub fn of(dataset: &Dataset) -> Option<Self> {
        (dataset.max_contributions == 1).then(|| Self {
            dataset: dataset.name.clone(),
            unit: dataset.privacy_unit.clone(),
            keys: (RandomState::new(), RandomState::new()),
            seen: HashSet::new(),
            buffers: (Vec::new(), Vec::new()),
        })
    }

    /// Remembers the privacy units of `batch`, or refuses the first one seen before.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let column = batch.column_by_name(&self.unit).ok_or_else(|| {
            EngineError::Execution(format!(
                "dataset {:?}: its privacy unit {:?} is not among the columns kept",
                self.dataset, self.unit
            ))
        })?;
        let rows = batch.num_rows();
        let (a, b) = &mut self.buffers;
        a.clear();
        a.resize(rows, 0);
        b.clear();
        b.resize(rows, 0);
        create_hashes_with_hasher([column], &self.keys.0, a)?;
        create_hashes_with_hasher([column], &self.keys.1, b)?;
        for (x, y) in a.iter().zip(b.iter()) {
            if !self.seen.insert((u128::from(*x) << 64) | u128::from(*y)) {
                return Err(self.repeated());
            }
        }
        Ok(())
    }

    /// Remembers the privacy units of every batch the dataset already holds (`table`), read
    /// through the same session a query would use: what is appended must be new people.
    pub async fn add_held(
        &mut self,
        contract: &Contract,
        table: &Table,
    ) -> Result<(), EngineError> {
        let tables = Tables::from([(self.dataset.clone(), table.clone())]);
        let ctx = crate::session(contract, &tables)?;
        let units = ctx
            .table(self.dataset.as_str())
            .await?
            .select_columns(&[self.unit.as_str()])?;
        let plan = units.create_physical_plan().await?;
        let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())?;
        let mut outcome = Ok(());
        while let Some(batch) = stream.next().await {
            if let Err(e) = batch.map_err(EngineError::from).and_then(|b| self.add(&b)) {
                outcome = Err(e);
                break;
            }
        }
        drop(stream);
        // A repeated person stops the reading early; the rest is read all the same, so the
        // host does not see where in the held batches it was ([`crate::stored::read_through`]).
        crate::stored::read_through(&plan).await?;
        outcome
    }

    /// How many people have been seen.
    pub fn people(&self) -> usize {
        self.seen.len()
    }

    fn repeated(&self) -> EngineError {
        EngineError::Refused {
            rule: "one-row-per-person",
            reason: format!(
                "dataset {:?} declares one row per person (max_contributions = 1, the default), \
                 but a value of its privacy unit {:?} appears in more than one row (of this \
                 upload, or of this upload and a batch already held); nothing was kept. Give each \
                 person one row, or declare how many rows a person may have \
                 (max_contributions) in the contract",
                self.dataset, self.unit,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{UploadFormat, load};

    fn golden_batches(dataset: &str, csv: &str) -> (Contract, Vec<RecordBatch>) {
        let c = crate::golden::contract();
        let batches = load::load(
            c.dataset(dataset).unwrap(),
            UploadFormat::Csv,
            csv.as_bytes(),
        )
        .unwrap();
        (c, batches)
    }

    const HEADER: &str = "patient_id,age_band,sex,region,birth_year,diabetes,bmi\n";

    fn patients(ids: &[&str]) -> String {
        let mut csv = String::from(HEADER);
        for id in ids {
            csv.push_str(&format!("{id},18-39,f,north,1970,false,22.5\n"));
        }
        csv
    }

    #[test]
    fn only_datasets_of_one_row_per_person_are_checked() {
        let c = crate::golden::contract();
        assert!(OneRowPerPerson::of(c.dataset("patients").unwrap()).is_some());
        // Claims declare three rows a patient.
        assert!(OneRowPerPerson::of(c.dataset("claims").unwrap()).is_none());
    }

    #[test]
    fn a_person_twice_is_refused_without_a_value() {
        let (c, batches) = golden_batches("patients", &patients(&["a", "b", "secret-7", "c"]));
        let mut people = OneRowPerPerson::of(c.dataset("patients").unwrap()).unwrap();
        for b in &batches {
            people.add(b).unwrap();
        }
        assert_eq!(people.people(), 4);
        // In a later batch of the same upload.
        let (_, again) = golden_batches("patients", &patients(&["d", "secret-7"]));
        let err = people.add(&again[0]).unwrap_err().to_string();
        assert!(err.contains("one-row-per-person"), "{err}");
        assert!(err.contains("\"patient_id\""), "{err}");
        assert!(!err.contains("secret"), "{err}");
        // Within one batch.
        let (_, within) = golden_batches("patients", &patients(&["x", "y", "x"]));
        let mut fresh = OneRowPerPerson::of(c.dataset("patients").unwrap()).unwrap();
        assert!(fresh.add(&within[0]).is_err());
    }

    #[tokio::test]
    async fn an_appended_batch_is_checked_against_what_is_held() {
        let (c, held) = golden_batches("patients", &patients(&["a", "b", "c"]));
        let table = Table::Held(held);
        let dataset = c.dataset("patients").unwrap();
        let mut new = OneRowPerPerson::of(dataset).unwrap();
        let (_, batch) = golden_batches("patients", &patients(&["d", "e"]));
        new.add(&batch[0]).unwrap();
        new.add_held(&c, &table).await.unwrap();
        assert_eq!(new.people(), 5);
        let mut back = OneRowPerPerson::of(dataset).unwrap();
        let (_, batch) = golden_batches("patients", &patients(&["d", "b"]));
        back.add(&batch[0]).unwrap();
        let err = back.add_held(&c, &table).await.unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::Refused {
                    rule: "one-row-per-person",
                    ..
                }
            ),
            "{err}"
        );
    }
}
