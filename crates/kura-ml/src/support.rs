//! How many people the rows a regression is fitted on, and each of its coefficients, rest on.
//!
//! Counted on exactly the rows the fit uses (after the engine dropped rows with a missing
//! value, and after the held-out rows were drawn), per dataset: a joined row belongs to one
//! person of each dataset it joins, and the same name at two datasets is two people.
//!
//! - **Coverage.** The fitted rows come from at least `k` people of every dataset that has
//!   any of them; so do the held-out rows the measures are taken on, if there are any.
//! - **Support.** For every feature, its fitted rows where it is not 0 and those where it is 0
//!   each come from no one or from at least `k` people of every dataset. A one-hot category
//!   that only one person is in gives a coefficient that is that person's label less the
//!   others'; a dataset cannot make up the count for another's person either, as the "none or
//!   at least `k`" holds for each dataset apart.
//!
//! A refusal names the rule and the feature, never a count or a person.

use ndarray::ArrayView2;

use crate::MlError;

/// A person: the dataset (numbered by the caller) and their number there. Numbers need not be
/// dense, but the check's memory grows with the largest.
pub type Person = (u32, u32);

/// Refuses unless the rows `x` (with their people, `owners[i]` for row `i`) and each side of
/// every feature of `features` rest on at least `k` people of each dataset, as above.
pub(crate) fn check_fitted(
    x: ArrayView2<'_, f64>,
    owners: &[&[Person]],
    features: &[String],
    k: usize,
) -> Result<(), MlError> {
    let counts = Counts::of(x, owners);
    // No rows at all is refused alike: a refusal must not tell no one from a few.
    if counts.cover.iter().all(|&n| n == 0) || counts.cover.iter().any(|&n| n > 0 && n < k) {
        return Err(MlError::Data(format!(
            "the fitted rows come from fewer than {k} people of some dataset"
        )));
    }
    for (f, name) in features.iter().enumerate() {
        let thin = |side: usize| {
            counts
                .sides
                .iter()
                .any(|d| d[2 * f + side] > 0 && d[2 * f + side] < k)
        };
        if thin(0) || thin(1) {
            return Err(MlError::Data(format!(
                "the feature {name:?} is 0 in the fitted rows of fewer than {k} people of some \
                 dataset, or other than 0 in those of fewer than {k}: its coefficient would \
                 rest on them (a category needs {k} people on each side, or none)"
            )));
        }
    }
    Ok(())
}

/// Refuses unless the held-out rows (their people, `owners`) come from at least `k` people of each
/// dataset that has any of them: the measures taken on them are statistics of those rows.
pub(crate) fn check_held_out(owners: &[&[Person]], k: usize) -> Result<(), MlError> {
    let counts = Counts::of(ndarray::Array2::zeros((owners.len(), 0)).view(), owners);
    if counts.cover.iter().any(|&n| n > 0 && n < k) {
        return Err(MlError::Data(format!(
            "the held-out rows come from fewer than {k} people of some dataset: the model's \
             measures would rest on them; raise holdout, or set it to 0"
        )));
    }
    Ok(())
}

/// Distinct people per dataset: of all the rows, and of each side of each feature.
struct Counts {
    /// `cover[d]`: the people of dataset `d` with any row.
    cover: Vec<usize>,
    /// `sides[d][2f]`: the people of dataset `d` with a row where feature `f` is not 0;
    /// `sides[d][2f + 1]`: where it is 0.
    sides: Vec<Vec<usize>>,
}

impl Counts {
    /// One pass over the rows, marking each person's (feature, side) the first time it is seen.
    fn of(x: ArrayView2<'_, f64>, owners: &[&[Person]]) -> Self {
        let p = x.ncols();
        let datasets = owners
            .iter()
            .flat_map(|o| o.iter())
            .map(|&(d, _)| d as usize + 1)
            .max()
            .unwrap_or(0);
        let people = owners
            .iter()
            .flat_map(|o| o.iter())
            .map(|&(_, n)| n as usize + 1)
            .max()
            .unwrap_or(0);
        // For each (dataset, person): one bit per feature and side, and one for "seen".
        let width = 2 * p + 1;
        let mut seen = vec![false; datasets * people * width];
        let mut cover = vec![0; datasets];
        let mut sides = vec![vec![0; 2 * p]; datasets];
        for (row, mine) in x.rows().into_iter().zip(owners) {
            for &(d, n) in mine.iter() {
                let (d, at) = (d as usize, (d as usize * people + n as usize) * width);
                if !std::mem::replace(&mut seen[at + 2 * p], true) {
                    cover[d] += 1;
                }
                for (f, v) in row.iter().enumerate() {
                    let side = 2 * f + usize::from(*v == 0.0);
                    if !std::mem::replace(&mut seen[at + side], true) {
                        sides[d][side] += 1;
                    }
                }
            }
        }
        Self { cover, sides }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use proptest::prelude::*;

    use super::*;

    fn names(p: usize) -> Vec<String> {
        (0..p).map(|f| format!("f{f}")).collect()
    }

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
        /// The one-pass counts are the distinct people of each dataset, side by side.
        #[test]
        fn counts_are_distinct_people_per_dataset(
            rows in prop::collection::vec(
                (prop::collection::vec(0u8..3, 2), prop::collection::vec((0u32..3, 0u32..12), 0..3)),
                0..60,
            ),
        ) {
            let x = Array2::from_shape_fn((rows.len(), 2), |(i, f)| f64::from(rows[i].0[f]));
            let owners: Vec<Vec<Person>> = rows.iter().map(|r| r.1.clone()).collect();
            let views: Vec<&[Person]> = owners.iter().map(Vec::as_slice).collect();
            let counts = Counts::of(x.view(), &views);
            let (cover, sides) = reference(&x, &owners);
            for d in 0..counts.cover.len() {
                prop_assert_eq!(counts.cover[d], cover[d]);
                prop_assert_eq!(&counts.sides[d], &sides[d]);
            }
            prop_assert!(cover[counts.cover.len()..].iter().all(|&n| n == 0));
        }
    }

    /// A category held by one person of one dataset is refused, though the other dataset has
    /// many people in it: each dataset's people count apart.
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
        let x = Array2::from_shape_vec((rows.len(), 1), rows.clone()).unwrap();
        let v: Vec<&[Person]> = owners.iter().map(Vec::as_slice).collect();
        check_fitted(x.view(), &v, &names(1), k).expect("no dataset has a thin side");

        rows.push(1.0);
        owners.push(vec![(1, 99)]);
        let x = Array2::from_shape_vec((rows.len(), 1), rows).unwrap();
        let v: Vec<&[Person]> = owners.iter().map(Vec::as_slice).collect();
        let refused = check_fitted(x.view(), &v, &names(1), k).unwrap_err();
        assert!(refused.to_string().contains("\"f0\""), "{refused}");
        assert!(!refused.to_string().contains("99"), "{refused}");
    }

    /// Held-out rows of too few people refuse the measures; none held out is fine.
    #[test]
    fn held_out_rows_must_cover_k_people() {
        let o: Vec<Vec<Person>> = (0..3).map(|n| vec![(0, n)]).collect();
        let v: Vec<&[Person]> = o.iter().map(Vec::as_slice).collect();
        assert!(check_held_out(&v, 4).is_err());
        assert!(check_held_out(&v, 3).is_ok());
        assert!(check_held_out(&[], 3).is_ok());
    }
}
