//! What the people rules cost `kura_ml::train` on its own: a linear model on 10 million rows
//! of two 0/1 features, a fifth held out, each row joined to one person of each of two
//! datasets (one million people), fitted without the rules and with them (support counted per
//! person and dataset, leverage within each dataset).
//!
//! `cargo run --release -p kura-ml --example fit_cost`

use std::time::Instant;

fn main() {
    let (n, people) = (10_000_000usize, 1_000_000u64);
    // A fixed xorshift: the same rows every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut x = ndarray::Array2::<f64>::zeros((n, 2));
    let mut y = ndarray::Array1::<f64>::zeros(n);
    let mut owners = kura_ml::Owners::default();
    for i in 0..n {
        let p = next() % people;
        x[[i, 0]] = f64::from(u8::from(p % 10 == 0));
        x[[i, 1]] = f64::from(u8::from(p % 3 == 0));
        y[i] = (next() % 10_000) as f64 / 10.0;
        owners.push([(0, p as u32), (1, p as u32)]);
    }
    let set = kura_ml::TrainingSet {
        features: vec!["a".into(), "b".into()],
        x,
        y,
        owners,
    };
    for rules in [false, true] {
        let settings = kura_ml::Settings {
            family: kura_ml::Family::Linear,
            holdout: 0.2,
            l2: 1.0,
            max_iterations: 100,
            max_leverage: rules.then_some(0.1),
            min_people: rules.then_some(10),
        };
        let start = Instant::now();
        kura_ml::train(&set, &settings).expect("the fit");
        println!(
            "{}: {:.2} s",
            if rules {
                "with the people rules"
            } else {
                "without"
            },
            start.elapsed().as_secs_f64()
        );
    }
}
