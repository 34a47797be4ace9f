//! How many people the rows a regression is fitted on, and each of its coefficients, rest on.
//!
//! Counted on exactly the rows the fit uses (after the engine dropped rows with a missing
//! value, and after the held-out rows were drawn), per dataset: a joined row belongs to one
//! person of each dataset it joins, and the same name at two datasets is two people.
//!
//! - **Coverage.** The fitted rows come from at least `k` people of every dataset that has
//!   any of them; so do the held-out rows the measures are taken on, if there are any.
//! - **Support.** For every feature, and for the label, its fitted rows where it is not 0 and
//!   those where it is 0 each come from no one or from at least `k` people of every dataset. A one-hot category
//!   that only one person is in gives a coefficient that is that person's label less the
//!   others'; a dataset cannot make up the count for another's person either, as the "none or
//!   at least `k`" holds for each dataset apart.
//!
//! Every refusal is the same ([`thin`]): which count failed, or that a side holds no one
//! rather than a few, would say something about the people in it.

use ndarray::{ArrayView1, ArrayView2};

use crate::MlError;

/// A person: the dataset (numbered by the caller) and their number there. Numbers need not be
/// dense, but the checks are quickest when each dataset's are.
pub type Person = (u32, u32);

/// Each row's people, row after row, in one flat list (no allocation per row).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    ends: Vec<usize>,
    people: Vec<Person>,
}

impl Owners {
    /// Adds the next row's people (none: the row is a person of its own).
    pub fn push(&mut self, row: impl IntoIterator<Item = Person>) {
        self.people.extend(row);
        self.ends.push(self.people.len());
    }

    /// Rows given.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Row `i`'s people (none for a row not given).
    pub fn row(&self, i: usize) -> &[Person] {
        match self.ends.get(i) {
            Some(&end) => &self.people[if i == 0 { 0 } else { self.ends[i - 1] }..end],
            None => &[],
        }
    }

    /// The rows at `rows` (indices into these, in order), each row of no one a person of its
    /// own in a dataset after every other.
    pub(crate) fn of_rows<'a>(&'a self, rows: &'a [usize]) -> Rows<'a> {
        let spare = self.people.iter().map(|&(d, _)| d + 1).max().unwrap_or(0);
        Rows {
            owners: self,
            rows,
            spare,
        }
    }
}

impl<I: IntoIterator<Item = Person>> FromIterator<I> for Owners {
    fn from_iter<T: IntoIterator<Item = I>>(rows: T) -> Self {
        let mut owners = Self::default();
        for row in rows {
            owners.push(row);
        }
        owners
    }
}

/// Some rows of a training set with their people.
pub(crate) struct Rows<'a> {
    owners: &'a Owners,
    rows: &'a [usize],
    /// The dataset of the rows of no one.
    spare: u32,
}

impl Rows<'_> {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The people of the `j`th of these rows.
    pub(crate) fn people(&self, j: usize) -> impl Iterator<Item = Person> + '_ {
        let i = self.rows[j];
        let mine = self.owners.row(i);
        mine.iter()
            .copied()
            .chain(mine.is_empty().then_some((self.spare, i as u32)))
    }

    /// How many datasets the people's numbers name (the spare one included).
    pub(crate) fn datasets(&self) -> usize {
        self.spare as usize + 1
    }

    fn all(&self) -> impl Iterator<Item = Person> + '_ {
        (0..self.len()).flat_map(|j| self.people(j))
    }
}

/// Refuses unless the rows `x` (with their people, `owners`, numbered in `people`), each side of every
/// feature of `features` and each side of the labels `y` (0 and not 0) rest on at least `k`
/// people of each dataset, as above. A refusal is [`thin`]'s, whichever count failed.
pub(crate) fn check_fitted(
    x: ArrayView2<'_, f64>,
    y: ArrayView1<'_, f64>,
    owners: &Rows<'_>,
    people: &People,
    k: usize,
) -> Result<(), MlError> {
    let cover = people.cover(owners);
    // No rows at all is refused alike: a refusal must not tell no one from a few.
    if cover.iter().all(|&n| n == 0) || cover.iter().any(|&n| n > 0 && n < k) {
        return Err(thin(k));
    }
    let p = x.ncols();
    use std::borrow::Cow;
    let xs: Cow<'_, [f64]> = x
        .to_slice()
        .map_or_else(|| Cow::Owned(x.iter().copied().collect()), Cow::Borrowed);
    let ys: Cow<'_, [f64]> = y
        .to_slice()
        .map_or_else(|| Cow::Owned(y.iter().copied().collect()), Cow::Borrowed);
    let value = |row: usize, c: usize| if c < p { xs[row * p + c] } else { ys[row] };
    let columns: Vec<usize> = (0..=p).collect();
    // In blocks of 4 columns (the features, then the label), two bits per column (not 0, 0)
    // per person: a byte per person, which the caches hold for a few million people.
    for block in columns.chunks(4) {
        for sides in people.sides(block, &value, owners) {
            if sides.iter().any(|&n| n > 0 && n < k) {
                return Err(thin(k));
            }
        }
    }
    Ok(())
}

/// The one refusal of a fit that would rest on too few people, whatever count failed: the rows,
/// a side of a feature or of the label, a combination of features, a person's weight, or a
/// feature that takes one value (no one on its other side). Not which, nor how many: which
/// count failed, or that a side holds no one rather than a few, would tell about the people in
/// it.
pub(crate) fn thin(k: usize) -> MlError {
    MlError::Data(format!(
        "the model would rest on fewer than {k} people of some dataset: the training rows, a \
         value of a feature or of the label (0 or not 0), a combination of feature values that \
         few or no people have, or one person's weight in the fit (more than 1/{k}); leave out \
         the features few people differ on, or fit on more people"
    ))
}

/// Refuses unless the held-out rows (their people, `owners`) come from at least `k` people of
/// each dataset that has any of them: the measures taken on them are statistics of those rows.
pub(crate) fn check_held_out(owners: &Rows<'_>, k: usize) -> Result<(), MlError> {
    let people = People::of(owners);
    if people.cover(owners).iter().any(|&n| n > 0 && n < k) {
        return Err(thin(k));
    }
    Ok(())
}

/// The people of some rows, each given a slot: densely by dataset when the caller numbered its
/// people densely (the engine does), or through a map when the numbers are sparse, so that the
/// memory is never more than a few bytes per person met.
pub(crate) struct People {
    datasets: usize,
    /// The first slot of each dataset's people, when numbered densely.
    offsets: Option<Vec<usize>>,
    map: std::collections::HashMap<Person, usize>,
    slots: usize,
}

impl People {
    pub(crate) fn of(owners: &Rows<'_>) -> Self {
        let mut most: Vec<usize> = Vec::new();
        let mut entries = 0usize;
        for (d, n) in owners.all() {
            let d = d as usize;
            if most.len() <= d {
                most.resize(d + 1, 0);
            }
            most[d] = most[d].max(n as usize + 1);
            entries += 1;
        }
        let dense: usize = most.iter().sum();
        if dense <= 2 * entries + 1024 {
            let offsets: Vec<usize> = most
                .iter()
                .scan(0, |at, m| {
                    let o = *at;
                    *at += m;
                    Some(o)
                })
                .collect();
            return Self {
                datasets: most.len(),
                offsets: Some(offsets),
                map: Default::default(),
                slots: dense,
            };
        }
        let mut map = std::collections::HashMap::new();
        for person in owners.all() {
            let next = map.len();
            map.entry(person).or_insert(next);
        }
        Self {
            datasets: most.len(),
            slots: map.len(),
            offsets: None,
            map,
        }
    }

    /// How many people there are.
    pub(crate) fn len(&self) -> usize {
        self.slots
    }

    pub(crate) fn slot(&self, (d, n): Person) -> usize {
        match &self.offsets {
            Some(o) => o[d as usize] + n as usize,
            None => self.map[&(d, n)],
        }
    }

    /// `cover[d]`: the people of dataset `d` with any row.
    fn cover(&self, owners: &Rows<'_>) -> Vec<usize> {
        let mut seen = vec![false; self.slots];
        let mut cover = vec![0; self.datasets];
        for person in owners.all() {
            if !std::mem::replace(&mut seen[self.slot(person)], true) {
                cover[person.0 as usize] += 1;
            }
        }
        cover
    }

    /// For each dataset, the people with a row where each of `columns` (at most 4; `value`
    /// gives row `j`'s) is not 0 (`[2c]`) and where it is 0 (`[2c + 1]`).
    fn sides(
        &self,
        columns: &[usize],
        value: &impl Fn(usize, usize) -> f64,
        owners: &Rows<'_>,
    ) -> Vec<Vec<usize>> {
        assert!(columns.len() <= 4, "a byte holds four columns' sides");
        let mut seen = vec![0u8; self.slots];
        let mut sides = vec![vec![0; 2 * columns.len()]; self.datasets];
        for row in 0..owners.len() {
            let mut bits = 0u8;
            for (c, &column) in columns.iter().enumerate() {
                bits |= 1 << (2 * c + usize::from(value(row, column) == 0.0));
            }
            for person in owners.people(row) {
                let slot = &mut seen[self.slot(person)];
                let mut new = bits & !*slot;
                *slot |= bits;
                while new != 0 {
                    let side = new.trailing_zeros() as usize;
                    sides[person.0 as usize][side] += 1;
                    new &= new - 1;
                }
            }
        }
        sides
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2};
    use proptest::prelude::*;

    use super::*;

    /// Distinct people per dataset and side, counted the slow way for comparison.
    fn reference(x: &Array2<f64>, owners: &[Vec<Person>]) -> (Vec<usize>, Vec<Vec<usize>>) {
        use std::collections::HashSet;
        let datasets = 3;
        let mut cover = vec![HashSet::new(); datasets];
        let mut sides = vec![vec![HashSet::new(); 2 * x.ncols()]; datasets];
        for (row, mine) in x.rows().into_iter().zip(owners) {
            for &(d, n) in mine {
                cover[d as usize].insert(n);
                for (f, v) in row.iter().enumerate() {
                    sides[d as usize][2 * f + usize::from(*v == 0.0)].insert(n);
                }
            }
        }
        (
            cover.iter().map(HashSet::len).collect(),
            sides
                .iter()
                .map(|d| d.iter().map(HashSet::len).collect())
                .collect(),
        )
    }

    proptest! {
        /// The counts are the distinct people of each dataset, side by side, whether the
        /// people are numbered densely or not.
        #[test]
        fn counts_are_distinct_people_per_dataset(
            rows in prop::collection::vec(
                (prop::collection::vec(0u8..3, 2), prop::collection::vec((0u32..3, 0u32..12), 0..3)),
                0..60,
            ),
            sparse in any::<bool>(),
        ) {
            let x = Array2::from_shape_fn((rows.len(), 2), |(i, f)| f64::from(rows[i].0[f]));
            let owners: Vec<Vec<Person>> = rows
                .iter()
                .map(|r| r.1.iter().map(|&(d, n)| (d, if sparse { n * 1_000_003 } else { n })).collect())
                .collect();
            // Rows of no one are left out of the reference, and of these counts.
            let kept: Vec<usize> = (0..rows.len()).filter(|&i| !owners[i].is_empty()).collect();
            let all: Owners = owners.iter().cloned().collect();
            let view = all.of_rows(&kept);
            let people = People::of(&view);
            prop_assert_eq!(people.offsets.is_none(), sparse && rows.iter().any(|r| r.1.iter().any(|p| p.1 > 0)));
            let cover = people.cover(&view);
            let value = |j: usize, c: usize| x[[kept[j], c]];
            let sides = people.sides(&[0, 1], &value, &view);
            let (want_cover, want_sides) = reference(&x, &owners);
            for d in 0..cover.len() {
                prop_assert_eq!(cover[d], want_cover[d]);
                prop_assert_eq!(&sides[d], &want_sides[d]);
            }
            prop_assert!(want_cover[cover.len()..].iter().all(|&n| n == 0));
        }
    }

    /// A value held by one person of one dataset is refused, though the other dataset has
    /// many people at it: each dataset's people count apart. The label's sides count too.
    #[test]
    fn another_datasets_people_do_not_make_up_a_thin_side() {
        let k = 5;
        // Dataset 0: 20 people, all with the category; dataset 1: 20 people without it, and
        // one with it.
        let mut rows = Vec::new();
        let mut owners = Vec::new();
        for n in 0..20 {
            rows.push(1.0);
            owners.push(vec![(0, n)]);
            rows.push(0.0);
            owners.push(vec![(1, n)]);
        }
        let check = |rows: &[f64], labels: &[f64], owners: &[Vec<Person>]| {
            let x = Array2::from_shape_vec((rows.len(), 1), rows.to_vec()).unwrap();
            let y = Array1::from(labels.to_vec());
            let all: Owners = owners.iter().cloned().collect();
            let every: Vec<usize> = (0..rows.len()).collect();
            let view = all.of_rows(&every);
            check_fitted(x.view(), y.view(), &view, &People::of(&view), k)
        };
        let labels: Vec<f64> = (0..rows.len()).map(|i| (i % 2) as f64).collect();
        check(&rows, &labels, &owners).expect("no dataset has a thin side");
        // The label 1 held by one person of dataset 0.
        let mut one = vec![0.0; rows.len()];
        one[0] = 1.0;
        assert_eq!(check(&rows, &one, &owners).unwrap_err(), thin(k));

        rows.push(1.0);
        owners.push(vec![(1, 99)]);
        let mut labels = labels;
        labels.push(0.0);
        let refused = check(&rows, &labels, &owners).unwrap_err();
        assert_eq!(refused, thin(k));
        assert!(!refused.to_string().contains("99"), "{refused}");
    }

    /// Held-out rows of too few people refuse the measures; none held out is fine.
    #[test]
    fn held_out_rows_must_cover_k_people() {
        let o: Owners = (0..3).map(|n| [(0, n)]).collect();
        let every = [0, 1, 2];
        assert!(check_held_out(&o.of_rows(&every), 4).is_err());
        assert!(check_held_out(&o.of_rows(&every), 3).is_ok());
        assert!(check_held_out(&o.of_rows(&[]), 3).is_ok());
    }

    /// People numbered far apart cost a slot each, not the span of their numbers.
    #[test]
    fn sparse_numbers_take_no_more_memory_than_people() {
        let o: Owners = [[(0, u32::MAX - 1)], [(7, 3)]].into_iter().collect();
        let v = o.of_rows(&[0, 1]);
        let people = People::of(&v);
        assert_eq!(people.slots, 2);
        assert_eq!(people.cover(&v), [1, 0, 0, 0, 0, 0, 0, 1]);
    }
}
